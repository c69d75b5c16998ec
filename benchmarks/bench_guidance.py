"""Guidance [ours] (README, "Guidance"): LCD's own prediction at several weights W, on one trained run.

For each W (the run's network unchanged, only the sampling: ``LCD.predict(..., guidance=W)``):

- held-out conditions the screen measures (if any): LCD against the additive and control baselines on
  mmd_top20 (wins, one-sided Wilcoxon p), mean mmd_top20, pearson_delta_top20 and RMSE (as a ratio of
  additive's), 500 cells, seed 0, scored by ``lcd_core.metrics.score_predictions`` as ``lcd evaluate`` does;
- the training singles' reproduction (``lcd_core.model._fit.fit_report``, 500 cells): median top-20 shift r over
  its split-half ceiling, median magnitude ratio, and how many are within replicate noise (issue 13's Papalexi
  target: r / ceiling ≥ 0.95, magnitude in [0.85, 1.15]);
- the cost: seconds to sample 300 cells of one condition on one thread (median over 5 conditions).

    python benchmarks/bench_guidance.py --run runs/real_papalexi_auto/run --data ../shared/data/papalexi2021_thp1_subset.h5ad
    python benchmarks/bench_guidance.py --run assets/demo_run --data assets/demo_screen.h5ad

Writes ``benchmarks/results/guidance_<name>.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from lcd_core import KEYS
from lcd_core.baselines import make_baselines
from lcd_core.data import read_screen
from lcd_core.metrics import score_predictions
from lcd_core.model import LCD, heldout_conditions, training_reference
from lcd_core.model._fit import fit_report

ROOT = Path(__file__).resolve().parents[1]


def heldout(model: LCD, screen, weight: float) -> dict | None:
    from scipy.stats import wilcoxon

    conds = heldout_conditions(model, screen)
    if not conds:
        return None
    cells, tpm = training_reference(model, screen)
    fitted = {k: b.fit(cells, KEYS.CONTROL, var_names=screen.genes) for k, b in make_baselines().items()
              if k in ("additive", "control")}
    rows = []
    for c in conds:
        preds = {"lcd": model.predict([c], 500, seed=0, guidance=weight).cells[c],
                 **{k: b.predict(c, 500, seed=0) for k, b in fitted.items()}}
        rows.append(score_predictions(preds, screen.log1p(c), cells[KEYS.CONTROL], train_perturbed_mean=tpm, seed=0))
    col = {f"{m}_{k}": np.array([r[m][k] for r in rows]) for m in ("lcd", "additive", "control")
           for k in ("mmd_top20", "pearson_delta_top20", "rmse")}
    return {
        "n": len(conds),
        "mmd_top20": float(col["lcd_mmd_top20"].mean()),
        "additive_mmd_top20": float(col["additive_mmd_top20"].mean()),
        "wins_vs_additive": int((col["lcd_mmd_top20"] < col["additive_mmd_top20"]).sum()),
        "p_vs_additive": float(wilcoxon(col["lcd_mmd_top20"], col["additive_mmd_top20"], alternative="less").pvalue)
        if len(conds) > 1 else float("nan"),
        "wins_vs_control": int((col["lcd_mmd_top20"] < col["control_mmd_top20"]).sum()),
        "pearson_delta_top20": float(col["lcd_pearson_delta_top20"].mean()),
        "additive_pearson_delta_top20": float(col["additive_pearson_delta_top20"].mean()),
        "rmse_over_additive": float(col["lcd_rmse"].mean() / col["additive_rmse"].mean()),
    }


def reproduction(model: LCD, screen, weight: float) -> dict:
    singles = [c for c in model.conditions if c != KEYS.CONTROL and "+" not in c]
    own = model.info.get("guidance")
    model.info["guidance"] = weight  # fit_report predicts with the run's weight
    try:
        rep = fit_report(model, screen, conditions=singles, anchored=False, n_cells=500)
    finally:
        model.info.pop("guidance") if own is None else model.info.update(guidance=own)
    e = list(rep["conditions"].values())
    return {"n": len(e), "median_r_over_ceiling": float(np.median([x["r"] / x["r_ceiling"] for x in e])),
            "median_magnitude": float(np.median([x["magnitude"] for x in e])),
            "within": int(sum(x["status"] == "within" for x in e))}


def cost(model: LCD, weight: float) -> float:
    torch.set_num_threads(1)
    labels = [c for c in model.conditions if c != KEYS.CONTROL][:5]
    seconds = []
    for i, label in enumerate(labels):
        t0 = time.perf_counter()
        model.predict([label], 300, seed=100 + i, guidance=weight)
        seconds.append(time.perf_counter() - t0)
    return float(np.median(seconds))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--weights", default="1,1.3,1.5")
    ap.add_argument("--name", help="result name (default: the run folder's parent or its own name)")
    args = ap.parse_args()
    run = Path(args.run)
    name = args.name or (run.parent.name if run.name == "run" else run.name)
    model, screen = LCD.load(run, device="cpu"), read_screen(args.data)
    out = {"run": str(run), "data": str(args.data), "weights": {}}
    for w in (float(x) for x in args.weights.split(",")):
        out["weights"][str(w)] = {"heldout": heldout(model, screen, w), "training_singles": reproduction(model, screen, w),
                                  "seconds_300_cells": cost(model, w)}
    print(f"{name}: W | held-out: mmd_top20, wins vs additive (p), vs control, pearson_delta_top20, RMSE/additive "
          "| singles: r/ceiling, magnitude, within | s per 300 cells")
    for w, r in out["weights"].items():
        h, s = r["heldout"], r["training_singles"]
        held = (f"{h['mmd_top20']:.4f}, {h['wins_vs_additive']}/{h['n']} (p {h['p_vs_additive']:.2g}), "
                f"{h['wins_vs_control']}/{h['n']}, {h['pearson_delta_top20']:.3f}, {h['rmse_over_additive']:.3f}"
                if h else "–")
        print(f"  {w:>4} | {held} | {s['median_r_over_ceiling']:.3f}, {s['median_magnitude']:.3f}, "
              f"{s['within']}/{s['n']} | {r['seconds_300_cells']:.3f}")
    path = ROOT / "benchmarks" / "results" / f"guidance_{name}.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
