"""Where a run loses the direction of its training shifts: stage 1's latents, stage 2's means, or its spread.

For every perturbed training condition of a count-mode run, stage 1 is refitted exactly as the run's
(``lcd ensemble`` does the same) and four sets of cells are decoded through the run's count model and
scored like the fit check (top-20 DE genes: Pearson r and magnitude of the mean shift against the observed
one, beside the split-half ceiling):

- ``stage1``: stage 1's own latent states (what stage 2 learned from);
- ``lcd``: LCD's generated states (the run's sampler and guidance);
- ``rescaled``: LCD's generated states with each gene's spread set to stage 1's, the means LCD's own.

In the latent space, the generated mean shift against stage 1's (r and least-squares slope over the top
genes), and the ratio of generated to stage-1 spread per gene: variance (median over the top genes, and over
all genes) and interquartile range (top genes; a variance ratio far above the IQR ratio means tails).

    python benchmarks/bench_spread.py --run assets/norman_run --data assets/norman2019_k562_subset.h5ad --name norman

Writes ``benchmarks/results/spread_<name>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lcd_core import KEYS
from lcd_core.data import read_screen
from lcd_core.metrics import condition_rng, top_de_genes
from lcd_core.model import LCD, RunDir
from lcd_core.model._fit import fit_condition
from lcd_core.model._train import stage2_samples
from lcd_core.train import fit_stage1

ROOT = Path(__file__).resolve().parents[1]


def _iqr(x: np.ndarray) -> np.ndarray:
    q1, q3 = np.percentile(x, [25, 75], axis=0)
    return q3 - q1


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--cells", type=int, default=1000, help="cells per condition and kind")
    p.add_argument("--name", required=True, help="results file: benchmarks/results/spread_<name>.json")
    args = p.parse_args()
    rd, screen = RunDir(args.run), read_screen(args.data)
    cfg, config, conds, held = rd.trained_from(screen, "the latents are re-derived from the run's own screen")
    if cfg["mode"] != "counts":
        raise SystemExit("a count-mode run is needed: the spread is read through its count model")
    model = LCD.load(args.run, device="cpu")
    t0 = time.monotonic()
    torch.manual_seed(config.seed)
    latents, _, noise, _ = stage2_samples(
        screen, conds, held, config, lambda c, u, **kw: fit_stage1(c, u, config.stage1, device="cpu", **kw),
        counts_mode=True)
    model.noise = noise  # the refitted stage 1 (the run's seed): its latents and its count model together
    seconds_stage1 = time.monotonic() - t0
    control = screen.log1p(KEYS.CONTROL).astype(np.float64)
    n = args.cells
    gen0 = model.mu + model.sd * model.sample_standardised(KEYS.CONTROL, n, seed=0)
    lat0 = latents[0][:n]
    rows = []
    for i, c in enumerate(conds):
        if c == KEYS.CONTROL:
            continue
        obs = screen.log1p(c).astype(np.float64)
        genes = top_de_genes(obs, control, k=20)
        lat = latents[i][:n].astype(np.float64)
        gen = model.mu + model.sd * model.sample_standardised(c, n, seed=0)
        rescaled = (gen - gen.mean(0)) * (lat.std(0) / np.maximum(gen.std(0), 1e-9)) + gen.mean(0)
        row = {"condition": c}
        for kind, states in (("stage1", lat), ("lcd", gen), ("rescaled", rescaled)):
            e = fit_condition(model.decode(states.astype(np.float32), seed=0).astype(np.float64), obs, control,
                              n_splits=3, rng=condition_rng(0, c))
            row.update({f"r_{kind}": e["r"], f"magnitude_{kind}": e["magnitude"]})
            row["r_ceiling"] = e["r_ceiling"]
        a, b = (lat.mean(0) - lat0.mean(0))[genes], (gen.mean(0) - gen0.mean(0))[genes]
        row.update(latent_mean_r=float(np.corrcoef(a, b)[0, 1]), latent_mean_slope=float(a @ b / (a @ a)),
                   var_ratio_top=float(np.median(gen[:, genes].var(0) / np.maximum(lat[:, genes].var(0), 1e-12))),
                   var_ratio_all=float(np.median(gen.var(0) / np.maximum(lat.var(0), 1e-12))),
                   iqr_ratio_top=float(np.median(_iqr(gen[:, genes]) / np.maximum(_iqr(lat[:, genes]), 1e-12))),
                   sd_top_standardised=float(np.median(lat[:, genes].std(0) / model.sd[genes])))
        rows.append(row)
        print(f"{c:18s} r stage1 {row['r_stage1']:.2f}  lcd {row['r_lcd']:.2f}  rescaled {row['r_rescaled']:.2f}  "
              f"(ceiling {row['r_ceiling']:.2f})  var ratio top {row['var_ratio_top']:.2f}", flush=True)
    df = pd.DataFrame(rows)
    summary = {k: float(df[k].median()) for k in df.columns if k != "condition"}
    summary.update(conditions=len(df), guidance=model.guidance, seconds_stage1=round(seconds_stage1, 1),
                   seconds=round(time.monotonic() - t0, 1))
    print(df.round(3).to_string(index=False))
    print(json.dumps(summary, indent=2))
    out = ROOT / "benchmarks" / "results" / f"spread_{args.name}.json"
    out.write_text(json.dumps({"machine": f"{platform.machine()}, load {__import__('os').getloadavg()[0]:.1f}",
                               "run": args.run, "data": args.data, "summary": summary, "per_condition": rows},
                              indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
