"""Scoring several predictions of one condition: the observed side once (``score_predictions``) against
once per prediction (each scored alone, as before it was shared).

Two sizes: the Perturb page's (300 predicted and 200 observed cells, 1,000 control cells, 144 genes, LCD and
4 baselines) and an evaluation of a real screen's condition (500 predicted, 400 observed, 3,000 control cells,
2,000 genes, 7 methods). Simulated log1p CP10k cells (Poisson counts, library-size normalised).

    .venv/bin/python benchmarks/bench_scoring.py [--repeats 5]

Prints a table and writes ``benchmarks/results/scoring.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from lcd_core import NORM_TARGET_SUM
from lcd_core.metrics import score_predictions

CASES = {"Perturb page": dict(pred=300, obs=200, control=1000, genes=144, methods=5),
         "evaluation (real-screen size)": dict(pred=500, obs=400, control=3000, genes=2000, methods=7)}


def _cells(rng: np.random.Generator, n: int, rates: np.ndarray) -> np.ndarray:
    counts = rng.poisson(rates, size=(n, len(rates))).astype(float)
    return np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1.0) * NORM_TARGET_SUM)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "scoring.json")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    print(f"{'case':32s}{'one at a time s':>17s}{'shared s':>10s}{'ratio':>8s}")
    for name, c in CASES.items():
        rates = rng.gamma(0.6, 2.0, size=c["genes"])
        control, obs = _cells(rng, c["control"], rates), _cells(rng, c["obs"], rates * 1.3)
        preds = {f"m{i}": _cells(rng, c["pred"], rates * (1 + 0.1 * i)) for i in range(c["methods"])}
        tpm = control.mean(0)

        def alone():
            return {k: score_predictions({k: p}, obs, control, train_perturbed_mean=tpm)[k] for k, p in preds.items()}

        def shared():
            return score_predictions(preds, obs, control, train_perturbed_mean=tpm)

        a, b = alone(), shared()  # warm-up, and the two give the same numbers
        assert all(np.allclose([a[k][m] for m in a[k]], [b[k][m] for m in a[k]], rtol=1e-9, equal_nan=True) for k in a)
        times = {"alone": [], "shared": []}
        for _ in range(args.repeats):  # interleaved: the machine's noise falls on both
            for key, fn in (("alone", alone), ("shared", shared)):
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
        ta, ts = statistics.median(times["alone"]), statistics.median(times["shared"])
        rows.append({"case": name, **c, "one_at_a_time_s": round(ta, 3), "shared_s": round(ts, 3),
                     "ratio": round(ts / ta, 3)})
        print(f"{name:32s}{ta:17.3f}{ts:10.3f}{ts / ta:8.2f}")
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
                                    "repeats": args.repeats, "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
