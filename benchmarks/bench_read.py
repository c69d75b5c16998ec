"""Benchmark: reading a large sparse screen (time and peak memory of ``read_screen``).

Generates (once, cached) a 100k-cell x 30k-gene sparse count screen, then reads it in fresh
subprocesses, in memory and backed, and reports wall time and peak RSS. Not part of the tests.

    .venv/bin/python benchmarks/bench_read.py [--cells 100000] [--genes 30000] [--density 0.05]

Writes ``benchmarks/results/read.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import resource
import subprocess
import sys
import time

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing


def generate(path: Path, n_cells: int, n_genes: int, density: float, seed: int = 0) -> dict:
    """Write a realistic sparse screen: per-gene detection rates spread over orders of magnitude."""
    import anndata as ad
    import pandas as pd
    import scipy.sparse as sp

    from lcd_core import KEYS

    rng = np.random.default_rng(seed)
    genes = np.array([f"G{i:05d}" for i in range(n_genes)])
    # gene popularity: log-normal, so a few genes are in most cells and many are rare
    p = rng.lognormal(0.0, 1.5, n_genes)
    p /= p.sum()
    n_single, n_combo = 300, 100
    per = max(2, int(0.8 * n_cells / (n_single + n_combo)))  # 200 cells per condition at 100k cells
    targets = rng.choice(n_genes, n_single, replace=False)
    singles = list(genes[targets])
    combos = [f"{a}+{b}" for a, b in (rng.choice(singles, 2, replace=False) for _ in range(n_combo))]
    labels = np.array(["ctrl"] * (n_cells - per * (n_single + n_combo)) + sum([[c] * per for c in singles + combos], []))
    rng.shuffle(labels)
    blocks = []
    step = 5000
    for start in range(0, n_cells, step):
        n = min(step, n_cells - start)
        nnz_row = np.maximum(rng.normal(density * n_genes, 0.3 * density * n_genes, n), 50).astype(np.int64)
        rows = np.repeat(np.arange(n), nnz_row)
        cols = rng.choice(n_genes, size=rows.size, p=p)
        vals = rng.geometric(0.6, rows.size).astype(np.float32)
        m = sp.csr_matrix((vals, (rows, cols)), shape=(n, n_genes))
        m.sum_duplicates()
        blocks.append(m)
    x = sp.vstack(blocks, format="csr")
    del blocks
    obs = pd.DataFrame({KEYS.PERT: pd.Categorical(labels)}, index=[f"cell{i}" for i in range(n_cells)])
    adata = ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))
    path.parent.mkdir(parents=True, exist_ok=True)
    adata.write_h5ad(path)
    return {"nnz": int(x.nnz), "density": x.nnz / (n_cells * n_genes), "file_bytes": path.stat().st_size}


def _peak_rss_gib() -> float:
    """Peak resident memory of this process in GiB.

    VmHWM rather than ru_maxrss: ru_maxrss survives fork+exec, so a child would report the parent's
    peak (the generator's) instead of its own.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024**2  # kB -> GiB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def measure(path: str, backed: bool) -> None:
    """Run in a fresh process: read, summarise, slice one condition; print JSON."""
    from lcd_core.data import read_screen

    t0 = time.perf_counter()
    screen = read_screen(path, backed=backed)
    t_read = time.perf_counter() - t0
    t0 = time.perf_counter()
    text = screen.format_summary()
    t_summary = time.perf_counter() - t0
    t0 = time.perf_counter()
    digest = screen.data_hash
    t_hash = time.perf_counter() - t0
    t0 = time.perf_counter()
    y = screen.counts(screen.singles[0])
    t_counts = time.perf_counter() - t0
    peak = _peak_rss_gib()
    print(json.dumps({
        "backed": backed, "read_s": t_read, "summary_s": t_summary, "data_hash_s": t_hash, "sha256": digest, "counts_one_condition_s": t_counts,
        "counts_shape": list(y.shape), "peak_rss_gib": peak, "summary": text,
    }))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=100_000)
    ap.add_argument("--genes", type=int, default=30_000)
    ap.add_argument("--density", type=float, default=0.05)
    ap.add_argument("--file", default="/tmp/lcd_bench/read_{cells}x{genes}_{density}.h5ad")
    ap.add_argument("--measure", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--backed", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        measure(args.measure, args.backed)
        return
    path = Path(args.file.format(cells=args.cells, genes=args.genes, density=args.density))
    info: dict = {}
    if not path.exists():
        t0 = time.perf_counter()
        info = generate(path, args.cells, args.genes, args.density)
        info["generate_s"] = time.perf_counter() - t0
    import h5py

    info["file_bytes"] = path.stat().st_size
    with h5py.File(path, "r") as fh:
        info["nnz"] = int(fh["X"]["data"].shape[0])
    info["density"] = info["nnz"] / (args.cells * args.genes)
    rows = []
    for backed in (False, True):
        out = subprocess.run([sys.executable, __file__, "--measure", str(path)] + (["--backed"] if backed else []),
                             capture_output=True, text=True, check=True, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    result = {"cells": args.cells, "genes": args.genes, "density_requested": args.density, **info, "runs": rows,
              "machine": f"{os.cpu_count()} CPU(s), shared"}
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "read.json").write_text(json.dumps(result, indent=2))
    print(rows[0]["summary"])
    print(f"\nfile: {path} ({info['file_bytes'] / 1024**3:.2f} GiB)")
    print(f"{'mode':<10}{'read s':>10}{'summary s':>12}{'hash s':>10}{'1 cond s':>10}{'peak RSS GiB':>14}")
    for r in rows:
        mode = "backed" if r["backed"] else "memory"
        print(f"{mode:<10}{r['read_s']:>10.1f}{r['summary_s']:>12.2f}{r['data_hash_s']:>10.1f}"
              f"{r['counts_one_condition_s']:>10.2f}{r['peak_rss_gib']:>14.2f}")


if __name__ == "__main__":
    main()
