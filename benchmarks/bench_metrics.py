"""Time and peak memory of each metric at 5,000 × 5,000 cells × 1,000 genes (METHOD.md §7).

Run: ``OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_metrics.py [--cells 5000 --genes 1000]``.
Prints a table and writes ``benchmarks/results/metrics.json``.

Each case runs in a forked child process; its peak memory is the rise of the child's peak resident
set (``VmHWM``) during the call, after resetting it through ``/proc/self/clear_refs`` (Linux). It
includes NumPy and torch allocations, not the (shared) input arrays.
The data are simulated log1p CP10k cells (Poisson counts, library-size normalised).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

# run as a script from anywhere: import the checkout this file belongs to
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch

from lcd_core import NORM_TARGET_SUM
from lcd_core.metrics import (
    de_recovery,
    energy_distance,
    evaluate_condition,
    mmd,
    pearson_delta,
    rmse,
    top_de_genes,
    wasserstein,
)


def _hwm_kib() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # "5" resets the peak RSS to the current RSS
        return True
    except OSError:
        return False


def _rss_kib() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def _simulate(rng: np.random.Generator, n: int, rates: np.ndarray) -> np.ndarray:
    counts = rng.poisson(rates, size=(n, rates.shape[0])).astype(np.float64)
    lib = counts.sum(1, keepdims=True)
    return np.log1p(counts / np.maximum(lib, 1.0) * NORM_TARGET_SUM)


def _measure_here(fn, conn) -> None:
    ok = _reset_hwm()
    base = _rss_kib()
    t0 = time.perf_counter()
    fn()
    seconds = time.perf_counter() - t0
    peak = _hwm_kib() if ok else None
    conn.send((seconds, None if peak is None else (peak - base) / 1024.0))
    conn.close()


def _measure(fn) -> tuple[float, float | None]:
    """Run ``fn`` in a forked child, so memory freed-but-kept by an earlier case's allocator cannot
    hide this case's peak; the child shares the input arrays copy-on-write."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    parent, child = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_measure_here, args=(fn, child))
    proc.start()
    result = parent.recv()
    proc.join()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=5000, help="cells in each of pred, obs and control")
    parser.add_argument("--genes", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "metrics.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    rates = rng.gamma(0.6, 2.0, size=args.genes)  # mean ~1.2 UMI per gene and cell: sparse, like 10x
    effect = np.exp(rng.normal(scale=0.5, size=args.genes) * (rng.uniform(size=args.genes) < 0.1))
    control = _simulate(rng, args.cells, rates)
    obs = _simulate(rng, args.cells, rates * effect)
    pred = _simulate(rng, args.cells, rates * effect**0.8)
    train_mean = control.mean(0)

    cases = {
        "mmd (all genes)": lambda: mmd(pred, obs),
        "energy (all genes)": lambda: energy_distance(pred, obs),
        "wasserstein (all genes)": lambda: wasserstein(pred, obs),
        "rmse": lambda: rmse(pred.mean(0), obs.mean(0)),
        "pearson_delta": lambda: pearson_delta(pred.mean(0), obs.mean(0), control.mean(0)),
        "top-20 DE (rank-sum)": lambda: top_de_genes(obs, control, k=20),
        "de_recovery (top 100)": lambda: de_recovery(obs, control, pred.mean(0), top=100),
        "evaluate_condition max_cells=2000": lambda: evaluate_condition(
            pred, obs, control, train_perturbed_mean=train_mean, max_cells=2000
        ),
        "evaluate_condition max_cells=None": lambda: evaluate_condition(
            pred, obs, control, train_perturbed_mean=train_mean, max_cells=None
        ),
    }
    results = []
    print(f"{args.cells} x {args.cells} cells x {args.genes} genes, torch threads={args.threads}")
    print(f"{'metric':40s} {'seconds':>9s} {'peak MiB':>9s}")
    for name, fn in cases.items():
        seconds, peak = _measure(fn)
        results.append({"metric": name, "seconds": round(seconds, 3), "peak_mib": None if peak is None else round(peak, 1)})
        print(f"{name:40s} {seconds:9.2f} {'n/a' if peak is None else f'{peak:9.1f}':>9s}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "n_cells": args.cells,
        "n_genes": args.genes,
        "torch_threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "input_mib_each": round(pred.nbytes / 2**20, 1),
        # the CPU is shared: the 1-minute load average says how much the timings are inflated
        "load_average_1min_at_end": round(os.getloadavg()[0], 2),
        "note": "peak_mib = rise of peak RSS of a forked child during the call (VmHWM after clear_refs); "
        "it includes first-touch of library code (e.g. sklearn import in de_recovery)",
        "results": results,
    }
    args.out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
