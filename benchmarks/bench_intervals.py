"""Calibration of the prediction intervals on held-out doubles (issue 16.3).

For every held-out double of a run that has an ensemble (``lcd ensemble``): the 90 % interval of each of
its top-20 DE genes' mean shift (observed against control, Wilcoxon), and whether the observed shift falls
inside once its own sampling error is counted (:func:`lcd_core.model.interval_coverage`). The target is
80–95 % of the (double, gene) pairs. Intervals around the same prediction: the shipped one (ensemble + the
calibration the run picks for an unseen double: its ensemble's cross-fit when it has one, else its training
conditions'), the ensemble alone, the calibration alone (the run's own network), the cells drawn alone, and
with a cross-fitted ensemble, the ensemble + the training conditions' calibration (what it was before).
``--guidance W`` measures the run as if it had been made at weight W: every network samples at W, and both
calibrations (the fit check's and the cross-fit's) are scored again at W.

    python benchmarks/bench_intervals.py --run assets/demo_run --data assets/demo_screen.h5ad
    python benchmarks/bench_intervals.py --run runs/heldout_nl300_anchor/run --data runs/heldout_nl300_anchor/screen.h5ad

Writes ``benchmarks/results/intervals_<run name>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd

from lcd_core import KEYS
from lcd_core.data import read_screen
from lcd_core.metrics import top_de_genes
from lcd_core.model import LCD, Ensemble, IntervalSources, fit_report, interval_coverage, read_fit, shift_intervals
from lcd_core.model._ensemble import score_crossfit
from lcd_core.model._intervals import interval_table

ROOT = Path(__file__).resolve().parents[1]


def norm_q(level: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--cells", type=int, default=500, help="cells per network and double")
    p.add_argument("--top", type=int, default=20, help="top DE genes per double")
    p.add_argument("--level", type=float, default=0.9)
    p.add_argument("--guidance", type=float, help="sample at this guidance weight (default: the run's)")
    p.add_argument("--name", help="name of the results file (default: the run folder's)")
    args = p.parse_args()
    model = LCD.load(args.run, device="cpu")
    screen = read_screen(args.data)
    ensemble, fit = Ensemble.load(args.run, model), read_fit(args.run)
    if args.guidance is not None and args.guidance != model.guidance:
        model.info["guidance"] = args.guidance  # the members are shallow copies made below: they follow
        t0 = time.monotonic()
        if fit is not None:
            fit = fit_report(model, screen, conditions=[c for c in (fit.get("conditions") or {})], seed=fit["seed"],
                             n_cells=fit["n_cells"], top=fit["top"], n_splits=1)
        if ensemble is not None and ensemble.heldout_calibration() is not None:
            ensemble.info["crossfit"] = score_crossfit(ensemble, model, screen, seed=model.info.get("seed", 0))
        print(f"calibrations scored again at guidance {args.guidance} in {time.monotonic() - t0:.0f} s", flush=True)
    src = IntervalSources.of(model, ensemble, fit)
    if len(src.models) == 1:
        print(f"{args.run} has no ensemble (`lcd ensemble`): the calibration and the cells only", flush=True)
    models = src.models
    control = screen.log1p(KEYS.CONTROL)
    cmean = control.mean(0)
    doubles = [c for c in model.info.get("heldout", []) if c in set(screen.conditions) and "+" in c]
    if src.calibration is None and src.heldout is None:
        raise SystemExit(f"{args.run}'s fit.json has no calibration scores: run `lcd fit {args.run} --data {args.data}`")
    rows, t0 = [], time.monotonic()
    for label in doubles:
        obs = screen.log1p(label)
        genes = top_de_genes(obs, control, k=args.top)
        calibration = src.calibration_for(label)
        both = shift_intervals(models, label, cmean, n_cells=args.cells, level=args.level, calibration=calibration)
        # the same networks' summaries without the calibration, and the calibration with the run's network alone
        means = np.stack([both["predicted_shift"].to_numpy() + cmean])
        cells_var = np.stack([both["se_cells"].to_numpy() ** 2])
        variants = {
            "ensemble + calibration": both,
            "ensemble only": both.assign(half_width=both["t"] * both["shift_se"]),
            "calibration only": interval_table(means, cells_var, cmean, model.genes, n_cells=args.cells,
                                               level=args.level, calibration=calibration),
            "cells only": both.assign(half_width=norm_q(args.level) * both["se_cells"]),
        }
        if src.heldout is not None and src.calibration is not None:  # what the intervals were before the cross-fit
            trained = src.calibration.half_width(both["predicted_shift"].to_numpy(), args.level)[0]
            variants["ensemble + training calibration"] = both.assign(
                half_width=np.sqrt((both["t"] * both["shift_se"]) ** 2 + trained ** 2))
        if len(models) == 1:  # no ensemble: "both" is the calibration with the run's network alone
            variants = {k: v for k, v in variants.items() if "ensemble" not in k}
        obs_shift = obs.mean(0) - cmean
        row = {"double": label, "n_obs": len(obs)}
        for name, iv in variants.items():
            row[f"coverage: {name}"] = float(interval_coverage(iv, obs, control, genes).mean())
            row[f"median half-width: {name}"] = float(np.median(iv["half_width"].to_numpy()[genes]))
        row.update({"median_sd_model": float(np.median(both["sd_model"].to_numpy()[genes])),
                    "median_se_cells": float(np.median(both["se_cells"].to_numpy()[genes])),
                    "median_abs_error": float(np.median(np.abs(both["predicted_shift"].to_numpy() - obs_shift)[genes]))})
        rows.append(row)
        print(f"{label:24s} " + ", ".join(f"{k.split(': ')[1]} {v:.2f}" for k, v in row.items() if k.startswith("coverage")),
              flush=True)
    df = pd.DataFrame(rows)
    summary = {"pairs": int(len(df) * args.top), "doubles": len(df), "networks": len(models), "level": args.level,
               "guidance": model.guidance,
               "calibrated_on": calibration.describe(), "n_calibration": int(len(calibration)),
               "scale_floor": calibration.floor(args.level),
               **{k: float(df[k].mean() if k.startswith("coverage") else df[k].median())
                  for k in df.columns if k not in ("double", "n_obs")},
               "seconds": round(time.monotonic() - t0, 1)}
    print(df.round(3).to_string(index=False))
    print(json.dumps(summary, indent=2))
    name = args.name or Path(args.run).resolve().name
    if name == "run":
        name = Path(args.run).resolve().parent.name
    out = ROOT / "benchmarks" / "results" / f"intervals_{name}.json"
    out.write_text(json.dumps({"machine": f"{platform.machine()}, load {__import__('os').getloadavg()[0]:.1f}",
                               "run": args.run, "data": args.data, "summary": summary, "per_double": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
