"""Benchmark CLIPR: solve times at d = 1000, fixed points of an MLP drift, and causal recovery.

Run: ``OMP_WAIT_POLICY=PASSIVE .venv/bin/python benchmarks/bench_clipr.py [--parts solve,fixed,recovery]
[--device cpu|cuda] [--out benchmarks/results/clipr.json]``. Prints a table and writes JSON.

Parts
-----
solve     paper CLIPR (ridge solve) and directed CLIPR at d = K = 1000 on exact inputs (METHOD §8
          linear generator), wall time, peak traced memory, error against the truth.
fixed     fixed points of 1001 conditions under an untrained default-size score MLP (2 × 1024 tanh,
          METHOD §2), fast schedule; the reference schedule timed on a few levels and extrapolated.
end2end   ``get_clipr`` of both variants at d = K = 1000 on an untrained default-size LCD (see
          :func:`part_end2end`; the directed variant's sampling extrapolated from a subset).
recovery  METHOD §4's finite-sample numbers: d = 50, K = 0, 10, 25, 50 (directed CLIPR on empirical
          moments) and d = 100, K = 100 (interventional inversion), 200 cells per condition.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import tracemalloc
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import scipy.linalg as sla
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from lcd_core.clipr import clipr_directed, clipr_paper, fixed_points, interventional_inversion  # noqa: E402
from lcd_core.tl._recovery import causal_recovery  # noqa: E402

SIGMAS = np.geomspace(10, 0.01, 30)


def linear_screen(d, rng, out_edges=10.0):
    """METHOD §8 paper generator (ER graph): returns SDE matrix A (rows = targets), b, Σ, C, targets."""
    p = min(1.0, out_edges / (d - 1))
    W = (rng.random((d, d)) < p) * rng.choice([-1, 1], (d, d)) * rng.uniform(1, 3, (d, d))
    np.fill_diagonal(W, 0)
    Ac = W - (np.max(np.linalg.eigvals(W).real) + 0.5) * np.eye(d)
    A = Ac.T
    b = rng.uniform(-3, 3, d)
    Sigma = sla.solve_continuous_lyapunov(A, -np.eye(d))
    targets = rng.permutation(d)
    C = np.zeros((d, d + 1))
    C[targets, np.arange(1, d + 1)] = rng.choice([-1, 1], d) * rng.uniform(5, 15, d)
    return A, b, 0.5 * (Sigma + Sigma.T), C, targets


def timed(fn):
    tracemalloc.start()
    t0 = time.perf_counter()
    out = fn()
    wall = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return out, wall, peak / 2**20


def part_solve(d=1000):
    rng = np.random.default_rng(0)
    A, b, Sigma, C, targets = linear_screen(d, rng)
    L = -np.linalg.solve(A, b[:, None] + C)  # exact limit responses (state space)
    V = -A @ L  # exact initial responses at the origin: v_q = A·0 + b + c_q = −A l_q
    rows = []
    (Ah, _, _, info), wall, peak = timed(lambda: clipr_paper(V, L, lam=1e-4))
    rows.append({"what": f"paper CLIPR ridge solve d={d} K={d} lam=1e-4", "wall_s": wall, "peak_MiB": peak,
                 "rel_err": float(np.abs(Ah - A).max() / np.abs(A).max())})
    dL = L[:, 1:] - L[:, :1]
    (Ad, inf), wall, peak = timed(lambda: clipr_directed(Sigma, dL, targets, solver="cg", tol=1e-10, return_info=True))
    rows.append({"what": f"directed CLIPR (CG) d={d} K={d}", "wall_s": wall, "peak_MiB": peak,
                 "rel_err": float(np.abs(Ad - A).max() / np.abs(A).max()), "iterations": inf["iterations"]})
    (Ai), wall, peak = timed(lambda: interventional_inversion(dL, targets, Sigma=Sigma))
    rows.append({"what": f"interventional inversion d={d}", "wall_s": wall, "peak_MiB": peak,
                 "rel_err": float(np.abs(Ai - A).max() / np.abs(A).max())})
    K = d // 2  # not identified (null space (d-K)(d-K-1)/2): CG capped, report what it reaches
    (Ad2, inf2), wall, peak = timed(lambda: clipr_directed(Sigma, dL[:, :K], targets[:K], solver="cg", tol=1e-8,
                                                           max_iter=60, return_info=True))
    rec = causal_recovery(Ad2.T, A.T)
    rows.append({"what": f"directed CLIPR (CG, max 60 it) d={d} K={K}", "wall_s": wall, "peak_MiB": peak,
                 "iterations": inf2["iterations"], "rel_residual": inf2["rel_residual"],
                 "sign_auroc": rec["sign_auroc"], "pearson": rec["pearson"]})
    return rows


class ScoreMLP(torch.nn.Module):
    """Untrained stand-in of METHOD §2's score network (2 × 1024 tanh, level and perturbation shifts)."""

    def __init__(self, d, n_cond, width=1024, emb=1024, n_levels=30):
        super().__init__()
        self.inp = torch.nn.Linear(d, width)
        self.hid = torch.nn.Linear(width, width)
        self.out = torch.nn.Linear(width, d)
        self.pert = torch.nn.Embedding(n_cond, emb)
        torch.nn.init.normal_(self.pert.weight, std=0.01)
        self.u1 = torch.nn.Linear(emb, width, bias=False)
        self.u2 = torch.nn.Linear(emb, width, bias=False)
        self.lev = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.Tanh(), torch.nn.Linear(width, width))
        self.n_levels = n_levels

    def forward(self, x, sigma, cond):
        k = torch.full((x.shape[0],), float(np.log(sigma)), device=x.device)
        freqs = torch.exp(torch.linspace(0, 6, 32, device=x.device))
        t = torch.cat([torch.sin(k[:, None] * freqs), torch.cos(k[:, None] * freqs)], 1)
        e = self.pert(cond)
        xs = x / np.sqrt(1 + sigma**2)
        h = torch.tanh(self.inp(xs) + self.lev(t) + self.u1(e))
        h = torch.tanh(self.hid(h) + self.u2(e))
        D = xs - sigma * self.out(h)  # denoiser; score = (D − x)/σ² (METHOD §2)
        return (D - x) / sigma**2


def part_fixed(d=1000, n_cond=1001, device="cpu", fast_levels=0, ref_levels=2, ref_steps=20):
    """``fast_levels`` > 0 runs only that many levels of the fast schedule and extrapolates to 30 × 50
    steps (no early stop: the untrained network never converges, so this is the worst case)."""
    torch.manual_seed(0)
    net = ScoreMLP(d, n_cond).to(device).eval()
    conds = torch.arange(n_cond, device=device)
    x0 = torch.zeros(n_cond, d, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = []
    with torch.inference_mode():
        net(x0, 1.0, conds)  # warm-up
        sync()
        t0 = time.perf_counter()
        levels = SIGMAS if fast_levels <= 0 else SIGMAS[:fast_levels]
        xf, info = fixed_points(net, levels, conds, x0, schedule="fast", device=device, sigma_min=float(SIGMAS[-1]))
        sync()
        wall = time.perf_counter() - t0
        per = wall / info["n_evals"]
        extra = fast_levels > 0
        rows.append({"what": f"fixed points fast, {n_cond} conditions, d={d}, {device}"
                     + (f" (extrapolated from {info['n_evals']} evals)" if extra else ""),
                     "wall_s": per * (30 * 50 + 1) if extra else wall,
                     "n_evals": 30 * 50 + 1 if extra else info["n_evals"], "s_per_eval": per,
                     "extrapolated": extra, "converged_frac": float(np.mean(info["converged"]))})
        # reference: 500 steps per level at the reference step; time a few steps, extrapolate to 15,000
        t0 = time.perf_counter()
        _, rinfo = fixed_points(net, SIGMAS[:ref_levels], conds, x0, schedule="reference", max_steps=ref_steps,
                                device=device, sigma_min=float(SIGMAS[-1]))
        sync()
        w = time.perf_counter() - t0
        per = w / rinfo["n_evals"]
        extra = rinfo["n_evals"] < 30 * 500 + 1
        label = f" (extrapolated from {rinfo['n_evals']} evals)" if extra else ""
        rows.append({"what": f"fixed points reference{label}, {device}",
                     "wall_s": per * (30 * 500 + 1), "n_evals": 30 * 500 + 1, "s_per_eval": per,
                     "extrapolated": extra})
    return rows


def part_end2end(d=1000, device="cpu", directed_subset=25):
    """``get_clipr`` end to end at d = K = 1000 on an untrained default-size LCD (METHOD §2 network:
    2 × 1024 tanh, embeddings 1024, σ₀ = 1; genes g0…g999, control + 1000 singles, no count model).

    Paper variant: the whole call, default schedule. An untrained drift never meets the convergence test,
    so every level runs its full step count: the worst case. The reference schedule (15,001 evaluations)
    is extrapolated from the same call's cost per evaluation. Directed variant: end to end with
    ``source="fixed_points"``; with the default ``source="cells"`` its cost is sampling 300 cells of each
    of 1001 conditions: ``directed_subset`` conditions are sampled and timed, the rest extrapolated (the
    CG solve, in the 'solve' part, comes on top)."""
    import resource

    from lcd_core import KEYS
    from lcd_core.model import LCD, get_clipr
    from lcd_core.module import ScoreNet

    torch.manual_seed(0)
    genes = [f"g{i}" for i in range(d)]
    net = ScoreNet(d, d, sigma_out=1.0)
    model = LCD(genes=genes, pert_genes=genes, conditions=[KEYS.CONTROL, *genes], net=net.to(device),
                mu=np.zeros(d), sd=np.ones(d), noise=None, info={})
    rows = []
    t0 = time.perf_counter()
    res = get_clipr(model, variant="paper", use_cache=False)
    wall = time.perf_counter() - t0
    fp = res.info["fixed_points"]
    rows.append({"what": f"paper CLIPR end to end (get_clipr), d=K={d}, schedule {res.params['schedule']}, {device}",
                 "wall_s": wall, "n_evals": fp["n_evals"], "converged_frac": float(np.mean(fp["converged"])),
                 "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    per_eval = wall / fp["n_evals"]  # an upper bound: the wall also holds the solve
    rows.append({"what": f"paper CLIPR, reference schedule (extrapolated: 15001 evals x {per_eval:.3f} s), {device}",
                 "wall_s": per_eval * 15001, "n_evals": 15001, "extrapolated": True})
    t0 = time.perf_counter()
    res = get_clipr(model, variant="directed", source="fixed_points", use_cache=False)
    rows.append({"what": f"directed CLIPR end to end (get_clipr, source fixed_points), d=K={d}, {device}",
                 "wall_s": time.perf_counter() - t0, "n_evals": res.info["fixed_points"]["n_evals"],
                 "cg_iterations": res.info.get("iterations"), "cg_rel_residual": res.info.get("rel_residual"),
                 "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    labels = [KEYS.CONTROL, *genes[:directed_subset - 1]]
    t0 = time.perf_counter()
    model.predict(labels, n_cells=300, seed=0)
    per_cond = (time.perf_counter() - t0) / len(labels)
    rows.append({"what": f"directed CLIPR sampling (extrapolated: {d + 1} conditions x 300 cells from {len(labels)} "
                 f"timed; the CG solve is in 'solve'), {device}", "wall_s": per_cond * (d + 1), "s_per_condition": per_cond,
                 "extrapolated": True, "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})
    return rows


def part_recovery(seeds=(0, 1, 2)):
    """Directed CLIPR on empirical moments (200 cells per condition); Σ pooled over all conditions."""
    rows = []
    for d, Ks, methods in ((50, (0, 10, 25, 50), ("lyapunov",)), (100, (100,), ("inversion", "lyapunov"))):
        acc = {(K, m): [] for K in Ks for m in methods}
        sym = []
        for seed in seeds:
            rng = np.random.default_rng(100 + seed)
            A, b, Sigma, C, targets = linear_screen(d, rng)
            chol = np.linalg.cholesky(Sigma)
            means = -np.linalg.solve(A, b[:, None] + C)
            cells = [means[:, k] + rng.normal(size=(200, d)) @ chol.T for k in range(d + 1)]
            emp = np.stack([c.mean(0) for c in cells], 1)
            S = sum((c - c.mean(0)).T @ (c - c.mean(0)) for c in cells) / (200 * (d + 1) - (d + 1))
            dL = emp[:, 1:] - emp[:, :1]
            sym.append(causal_recovery(-0.5 * np.linalg.inv(S), A.T))
            for K, method in acc:
                if method == "inversion":
                    Ah = interventional_inversion(dL, targets, Sigma=S)
                else:
                    Ah = clipr_directed(S, dL[:, :K], targets[:K], solver="cg", tol=1e-8, max_iter=3000)
                acc[K, method].append(causal_recovery(Ah.T, A.T))
        for (K, method), recs in acc.items():
            m = {k: float(np.mean([r[k] for r in recs])) for k in recs[0]}
            rows.append({"d": d, "K": K, "method": method, **m, "n_seeds": len(seeds),
                         "sym_auroc": float(np.mean([r["sign_auroc"] for r in sym])),
                         "sym_pearson": float(np.mean([r["pearson"] for r in sym]))})
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="solve,fixed,recovery")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--fast-levels", type=int, default=None, help="levels of the fast schedule to run (0: all)")
    ap.add_argument("--ref-levels", type=int, default=None)
    ap.add_argument("--ref-steps", type=int, default=None)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "clipr.json"))
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)) if args.device == "cpu" else torch.get_num_threads())
    res = {"machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "device": args.device,
                       "torch": torch.__version__,
                       "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}}
    parts = args.parts.split(",")
    if "solve" in parts:
        res["solve"] = part_solve()
        for r in res["solve"]:
            print(f"{r['what']:<52} {r['wall_s']:8.2f} s {r['peak_MiB']:8.0f} MiB  "
                  + "  ".join(f"{k}={v:.3g}" for k, v in r.items() if k not in ("what", "wall_s", "peak_MiB")))
    if "fixed" in parts:
        cpu = args.device == "cpu"  # on a CPU the full schedules take many minutes: time a part, extrapolate
        res["fixed" if args.device == "cpu" else "fixed_" + args.device.split(":")[0]] = part_fixed(
            device=args.device,
            fast_levels=args.fast_levels if args.fast_levels is not None else (2 if cpu else 0),
            ref_levels=args.ref_levels if args.ref_levels is not None else (1 if cpu else 30),
            ref_steps=args.ref_steps if args.ref_steps is not None else (20 if cpu else 500),
        )
        for r in res.get("fixed", res.get("fixed_cuda", [])):
            print(f"{r['what']:<70} {r['wall_s']:9.1f} s  evals={r['n_evals']}  {r['s_per_eval'] * 1e3:.1f} ms/eval")
    if "end2end" in parts:
        res["end2end" if args.device == "cpu" else "end2end_" + args.device.split(":")[0]] = rows = part_end2end(
            device=args.device)
        for r in rows:
            print(f"{r['what']:<100} {r['wall_s']:9.1f} s" + (f"  evals={r['n_evals']}" if "n_evals" in r else "")
                  + (f"  CG iterations={r['cg_iterations']}" if r.get("cg_iterations") is not None else "")
                  + (f"  peak RSS {r['peak_rss_MiB']:.0f} MiB" if "peak_rss_MiB" in r else ""))
    if "recovery" in parts:
        res["recovery"] = part_recovery()
        print(f"{'d':>4} {'K':>4} {'method':<10} {'AUROC':>6} {'F1':>6} {'Pearson':>7} | symmetric AUROC/Pearson")
        for r in res["recovery"]:
            print(f"{r['d']:>4} {r['K']:>4} {r['method']:<10} {r['sign_auroc']:6.3f} {r['sign_f1']:6.3f} "
                  f"{r['pearson']:7.3f} | {r['sym_auroc']:.3f}/{r['sym_pearson']:.3f}")
    out = Path(args.out)
    old = json.loads(out.read_text()) if out.exists() else {}
    old.update({k: v for k, v in res.items() if k != "machine"})
    old.setdefault("machines", {})[",".join(parts) + "@" + args.device] = res["machine"]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(old, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
