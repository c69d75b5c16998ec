"""Benchmark of the samplers (METHOD.md §3): accuracy against exact samples of a known law, and latency.

1. Simulate a linear Gaussian screen (METHOD.md §8 paper generator, d = 100, control + 9 single-gene
   perturbations, 2000 exact latent draws per condition, standardised as METHOD.md §2) and train stage 2
   with the default width (2 × 1024, E = 1024) for a few minutes (mixed batches of 1024).
2. On perturbed conditions, 500 cells each: MMD² (METHOD.md §7) against 500 exact draws of the true law
   and seconds, for the reference annealed Langevin sampler (15,000 evaluations, run once, on one
   condition) and the fast sampler at several evaluation budgets.
3. Latency of the fast sampler for 500 cells at d = 1000 (untrained default-width net).

Writes ``benchmarks/results/sampling.json`` and prints a table. Runtime ≤ 10 minutes on an idle 2-core CPU
(the reference's 15,000 evaluations dominate; under heavy load it takes several times longer).
``benchmarks/results/sampling_h200.json`` holds a one-off check of the same comparison on an H200 with a
well-trained net (15k steps of 8192), where the CPU's few minutes of training leave the net undertrained.

Usage: ``python benchmarks/bench_sampling.py [--train-seconds 150] [--quick]``
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import time
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from lcd_core.module._score import ScoreNet
from lcd_core.sampling import sample
from lcd_core.train._stage2 import Stage2Config, fit_stage2

RESULTS = Path(__file__).parent / "results" / "sampling.json"


def linear_gaussian_screen(d=100, n_single=9, n_cells=2000, seed=0):
    """METHOD.md §8: ER graph (~10 out-edges), weights ±U(1, 3), A = (W − (max Re eig W + 0.5) I)ᵀ,
    A Σ + Σ Aᵀ = −I, b ~ U(−3, 3), c_q = ±U(5, 15) e_j; exact draws standardised by the control mean
    and the pooled per-gene std. Returns standardised draws, multi-hots, true means and covariance."""
    rng = np.random.default_rng(seed)
    w = (rng.random((d, d)) < 10 / (d - 1)) * rng.uniform(1, 3, (d, d)) * rng.choice([-1, 1], (d, d))
    np.fill_diagonal(w, 0)
    a = (w - (np.linalg.eigvals(w).real.max() + 0.5) * np.eye(d)).T
    cov = scipy.linalg.solve_continuous_lyapunov(a, -np.eye(d))
    b = rng.uniform(-3, 3, d)
    targets = rng.choice(d, n_single, replace=False)
    cs = [np.zeros(d)] + [np.eye(d)[j] * rng.choice([-1, 1]) * rng.uniform(5, 15) for j in targets]
    mus = [-np.linalg.solve(a, b + c) for c in cs]
    chol = np.linalg.cholesky(cov)
    s = [m + rng.standard_normal((n_cells, d)) @ chol.T for m in mus]
    centre, scale = s[0].mean(0), np.concatenate(s).std(0)
    x = [((si - centre) / scale).astype(np.float32) for si in s]
    pert = np.zeros((len(cs), d), np.float32)
    for q, j in enumerate(targets):
        pert[q + 1, j] = 1
    return x, pert, [(m - centre) / scale for m in mus], cov / np.outer(scale, scale)


def mmd2(x, y) -> float:
    """Unbiased MMD², RBF kernels averaged over 10 length-scales logspace(−2, 1)·√d (METHOD.md §7)."""
    x, y = torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y, dtype=torch.float64)
    n, m = len(x), len(y)
    dxx, dyy, dxy = torch.cdist(x, x) ** 2, torch.cdist(y, y) ** 2, torch.cdist(x, y) ** 2
    total = 0.0
    for ell in np.logspace(-2, 1, 10) * np.sqrt(x.shape[1]):
        kxx, kyy, kxy = (torch.exp(-dd / (2 * ell**2)) for dd in (dxx, dyy, dxy))
        total += ((kxx.sum() - kxx.trace()) / (n * (n - 1)) + (kyy.sum() - kyy.trace()) / (m * (m - 1)) - 2 * kxy.mean()).item()
    return total / 10


def exact_draws(mu, cov, n, seed):
    return mu + np.random.default_rng(seed).standard_normal((n, len(cov))) @ np.linalg.cholesky(cov).T


def run_sampler(net, name, pert_row, n_cells, seed, **kw):
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    xs = sample(name, net.score, net.sde, torch.as_tensor(pert_row), n_cells, generator=g, dim=net.n_genes, **kw)
    return xs, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train-seconds", type=float, default=150.0)
    ap.add_argument("--quick", action="store_true", help="skip the reference sampler (smoke run)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = {"cpu_threads": 1, "load_avg_start": os.getloadavg()[0]}

    # 1. data and training
    x, pert, mus, cov = linear_gaussian_screen()
    cfg = Stage2Config(batch_size=1024, steps=1200, log_every=100)
    t0 = time.perf_counter()
    res = fit_stage2(x, pert, cfg, max_seconds=args.train_seconds)
    net = res.net
    out["training"] = {"steps": res.state_dict()["step"], "seconds": time.perf_counter() - t0,
                       "final_loss": res.history[-1]["loss"] if res.history else None, "config": res.state_dict()["config"]}
    save(out, [])
    print(f"trained {res.state_dict()['step']} steps in {out['training']['seconds']:.0f} s")

    # per-evaluation cost at d = 100
    with torch.inference_mode():
        xb, p0 = torch.randn(500, 100), torch.as_tensor(pert[1:2])
        net.score(xb, 0.5, p0)
        t0 = time.perf_counter()
        for _ in range(10):
            net.score(xb, 0.5, p0)
        out["seconds_per_eval_d100_500cells"] = (time.perf_counter() - t0) / 10

    # 2. accuracy: conditions 1 and 5 (two perturbations, 5–9 standardised units from control)
    conds, n_cells = [1, 5], 500
    truth = {q: exact_draws(mus[q], cov, n_cells, 100 + q) for q in conds}
    floor = {q: mmd2(exact_draws(mus[q], cov, n_cells, 7), truth[q]) for q in conds}
    out["mmd2_exact_vs_exact"] = floor
    rows = []
    with torch.inference_mode():
        if not args.quick:  # the baseline: 15,000 evaluations, once, on the first condition
            q = conds[0]
            xs, sec = run_sampler(net, "reference", pert[q], n_cells, q)
            rows.append({"sampler": "reference", "n_evals": 15000, "cond": q, "mmd2": mmd2(xs, truth[q]), "seconds": sec})
        save(out, rows)
        for n_evals in (12, 20, 32, 64):
            for q in conds:
                xs, sec = run_sampler(net, "fast", pert[q], n_cells, q, n_evals=n_evals)
                rows.append({"sampler": "fast", "n_evals": n_evals, "cond": q, "mmd2": mmd2(xs, truth[q]), "seconds": sec})
        variants = {  # the deterministic ODE of METHOD.md §3 notes, churn at all levels, predictor-corrector
            "ode (churn=0)": {"churn": 0.0},
            "churn all σ": {"churn": 10.0, "s_tmax": float("inf")},
            "pc (1 corr.)": {},
        }
        for label, kw in variants.items():
            for q in conds:
                name = "pc" if label.startswith("pc") else "fast"
                xs, sec = run_sampler(net, name, pert[q], n_cells, q, n_evals=32, **kw)
                rows.append({"sampler": label, "n_evals": 32, "cond": q, "mmd2": mmd2(xs, truth[q]), "seconds": sec})
    save(out, rows)

    # 3. latency at d = 1000 (untrained default-width net)
    big = ScoreNet(1000, 1000).eval()
    pb = torch.zeros(1000)
    pb[3] = 1
    with torch.inference_mode():
        run_sampler(big, "fast", pb, 500, 0, n_evals=4)  # warm-up
        lat = {n: min(run_sampler(big, "fast", pb, 500, s, n_evals=n)[1] for s in range(2)) for n in (20, 32)}
    out["latency_d1000_500cells"] = lat
    out["load_avg_end"] = os.getloadavg()[0]

    # table
    print(f"\n{'sampler':<16}{'evals':>7}{'cond':>6}{'MMD²':>11}{'seconds':>9}")
    for r in rows:
        print(f"{r['sampler']:<16}{r['n_evals']:>7}{r['cond']:>6}{r['mmd2']:>11.2e}{r['seconds']:>9.2f}")
    print("exact-vs-exact MMD²:", {q: f"{v:.1e}" for q, v in floor.items()})
    print("seconds per evaluation (d=100, 500 cells):", f"{out['seconds_per_eval_d100_500cells']:.3f}")
    print("fast sampler latency, d=1000, 500 cells:", {n: f"{s:.2f} s" for n, s in lat.items()})
    print("load average start/end:", out["load_avg_start"], out["load_avg_end"])
    save(out, rows)


def save(out: dict, rows: list) -> None:
    """Write what is measured so far (a run cut short still leaves its numbers)."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({**out, "rows": rows}, indent=1, default=float))


if __name__ == "__main__":
    main()
