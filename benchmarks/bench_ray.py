"""Stage 1 across Ray workers vs the local backend, on a simulated 500-condition screen (d = 200).

Run: ``OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_ray.py`` (3 to 6 minutes on 2 shared cores).
Prints a table and writes ``benchmarks/results/ray.json``.

Cases, each a fixed number of stage-1 steps (every condition in every step) from the same warm start:
- ``local tN``: :func:`lcd_core.train.fit_stage1` in a fresh process with ``OMP_NUM_THREADS=N``;
- ``ray wN``: :func:`lcd_core.backends.ray.fit_stage1_sharded` with N shards, each a Ray task on 1 CPU,
  against a private Ray instance on this machine (started before timing; workers warmed up by a
  one-step call, so the times are steady-state: data to the object store, fit, state back, averaging).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # the private instance binds 127.0.0.1 only

K = int(os.environ.get("BENCH_K", "500"))  # conditions (control + perturbations)
D = int(os.environ.get("BENCH_D", "200"))  # genes
CELLS = 60  # cells per condition
STEPS = int(os.environ.get("BENCH_STEPS", "4"))


def simulate_counts(seed: int = 0) -> list:
    """ZIP counts: condition k shifts the latent state of its target gene (and a few random others)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    base = rng.normal(1.0, 0.7, D)
    out = []
    for k in range(K):
        s = base + rng.normal(0, 0.5, (CELLS, D))
        if k:
            s[:, (k - 1) % D] += rng.choice([-2.0, 2.0])
            s[:, rng.choice(D, 3, replace=False)] += rng.normal(0, 0.7, 3)
        rate = 3.0 * np.log1p(np.exp(s))
        y = rng.poisson(rate) * (rng.random((CELLS, D)) > 0.05)
        out.append(y.astype(np.float32))
    return out


def config(steps: int):
    from lcd_core.train import Stage1Config

    return Stage1Config(generator="gaussian", n_samples=256, batch_size=64, steps=steps, warmup=2, lr=3e-3,
                        log_every=steps)


def main() -> None:
    import torch

    from lcd_core.module import unit_scale_from_counts

    counts = simulate_counts()
    u = unit_scale_from_counts(counts[0])
    rows = []
    print(f"stage 1: K = {K} conditions, d = {D}, {CELLS} cells each, {STEPS} steps, gaussian generators, "
          f"M = 256, B = 64, every condition every step; {os.cpu_count()} CPUs on this machine")

    results = {}
    for threads in (1, 2):
        # a fresh process with OMP_NUM_THREADS set before torch starts, as a Ray worker gets it: setting
        # torch.set_num_threads later measured 2x slower here (numpy's BLAS keeps its own threads)
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        out = subprocess.run([sys.executable, __file__, "--local"], env=env, capture_output=True, text=True,
                             check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        results[f"local t{threads}"] = torch.as_tensor(row.pop("dropout"))
        rows.append({"case": f"local t{threads}", "backend": "local", "workers": 1, "threads": threads, **row})
        print(f"  local, {threads} thread(s): {row['seconds']:.1f} s", flush=True)

    from lcd_core.backends import get_backend
    from lcd_core.backends.ray import fit_stage1_sharded

    t0 = time.perf_counter()
    backend = get_backend("ray", num_cpus=2)
    ray_start = time.perf_counter() - t0
    try:
        fit_stage1_sharded(counts[:4], u, config(1), n_shards=2)  # start and warm up two worker processes
        for workers in (1, 2):
            t0 = time.perf_counter()
            res = fit_stage1_sharded(counts, u, config(STEPS), n_shards=workers)
            sec = time.perf_counter() - t0
            ref = results["local t1"]
            rows.append({"case": f"ray w{workers}", "backend": "ray", "workers": workers, "threads": 1,
                         "seconds": sec, "loss": res.history[-1]["loss"],
                         "dropout_spread": res.history[-1]["dropout_spread"],
                         "dropout_vs_local_max_abs": float((res.noise.dropout.detach() - ref).abs().max())})
            print(f"  ray, {workers} worker(s): {sec:.1f} s", flush=True)
    finally:
        backend.close()

    base = {r["case"]: r["seconds"] for r in rows}
    print(f"\n{'case':<10}{'workers':>8}{'threads':>8}{'seconds':>9}{'vs local t1':>13}{'vs local t2':>13}{'loss':>10}")
    for r in rows:
        r["speedup_vs_local_t1"] = base["local t1"] / r["seconds"]
        r["speedup_vs_local_t2"] = base["local t2"] / r["seconds"]
        print(f"{r['case']:<10}{r['workers']:>8}{r['threads']:>8}{r['seconds']:>9.1f}"
              f"{r['speedup_vs_local_t1']:>12.2f}x{r['speedup_vs_local_t2']:>12.2f}x{r['loss']:>10.2f}")
    print(f"(Ray instance start, not in the times above: {ray_start:.1f} s)")
    estimate = (
        "8 GPUs, 1000+ conditions: ~7x over 1 GPU (estimate, not measured). A stage-1 step costs "
        "K*B*M*3d multiply-adds for the likelihood plus K*M*64*d for the generators, linear in the "
        "conditions per shard, and shards exchange nothing but d dropout probabilities per round, so "
        "the compute splits 8 ways. Overheads per round: the shards' states through the object store "
        "(gaussian generators ~65k floats per condition at d = 1000, x3 with Adam: ~0.8 GB per round for "
        "1000 conditions, seconds on a 10 GbE/NVLink node) and the slowest shard; with rounds of a few "
        "minutes (the run's checkpoint interval) that is < 10%. With the paper's one condition per step, "
        "8 shards give every condition 8x the updates per second: the same per-condition step count in "
        "1/8 of the wall time. Sharding is also what fits genome scale in memory: all 1000 conditions in "
        "one step at M = 20000, d = 1000 would need ~80 GB for the latent samples alone.")
    print(estimate)
    out = Path(__file__).parent / "results" / "ray.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "K": K, "d": D, "cells_per_condition": CELLS, "steps": STEPS, "n_samples": 256, "batch_size": 64,
        "generator": "gaussian", "machine_cpus": os.cpu_count(), "ray_start_seconds": ray_start,
        "rows": rows, "estimate_8_gpus": estimate,
        "note": "2 CPU cores shared with other jobs: times are noisy; 'ray wN' includes data to the "
                "object store, state back and the dropout averaging, not the Ray start.",
        "python": sys.version.split()[0],
    }, indent=2))
    print(f"wrote {out}")


def local_case() -> None:
    """One local fit (in a subprocess of :func:`main`): warm-up, then the timed fit; one JSON line."""
    import torch

    from lcd_core.module import unit_scale_from_counts
    from lcd_core.train import fit_stage1

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    counts = simulate_counts()
    u = unit_scale_from_counts(counts[0])
    fit_stage1(counts[:4], u, config(1))  # warm up torch, as the Ray workers are warmed up
    t0 = time.perf_counter()
    res = fit_stage1(counts, u, config(STEPS))
    print(json.dumps({"seconds": time.perf_counter() - t0, "loss": res.history[-1]["loss"],
                      "dropout": res.noise.dropout.detach().tolist()}))


if __name__ == "__main__":
    local_case() if "--local" in sys.argv else main()
