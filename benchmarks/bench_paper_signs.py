"""Why the paper variant's sign-AUROC is below chance on the demo run (issue 16 item 6).

Scores the shipped demo run's paper and directed CLIPR against the demo screen's true effect matrix
(rows = sources): as returned, transposed, negated, symmetric / antisymmetric parts; by block of
source → target (P = one of the K perturbed genes, U = the d − K others) and by identifiability label; the
paper variant at the other reference point, noise levels and λ (same limit responses: only V is
re-read); and the drift's own Jacobian at the control mean (finite differences). Reads the run's cached
CLIPR (computed on the first call). ``python benchmarks/bench_paper_signs.py`` (~1 min on 2 loaded cores).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from lcd_core import KEYS
from lcd_core.clipr import clipr_options, clipr_paper, get_clipr, identifiability, single_gene_conditions
from lcd_core.data import read_screen
from lcd_core.model import LCD
from lcd_core.tl import causal_recovery
from lcd_core.tl._recovery import _auc

ROOT = Path(__file__).resolve().parents[1]


def sign_auroc_of(e: np.ndarray, t: np.ndarray, thr: float = 0.5) -> float:
    """METHOD §7's 3-class sign AUROC on a subset of entries (flattened)."""
    cls = np.where(t >= thr, 1, np.where(t <= -thr, -1, 0))
    a = [_auc(e[cls == hi], e[cls == lo]) for lo, hi in ((-1, 0), (0, 1), (-1, 1))]
    a = [x for x in a if np.isfinite(x)]
    return float(np.mean(a)) if a else float("nan")


def main() -> None:
    warnings.simplefilter("ignore")
    model = LCD.load(ROOT / "assets/demo_run", device="cpu")
    T = np.asarray(read_screen(ROOT / "assets/demo_screen.h5ad").truth["causal_matrix"], float)
    d = T.shape[0]
    conds, targets = single_gene_conditions(model)
    P = np.zeros(d, bool)
    P[targets] = True
    off = ~np.eye(d, dtype=bool)
    print(f"demo run: d = {d}, K = {len(conds)} perturbed genes")
    res = {v: get_clipr(model, clipr_options(variant=v)) for v in ("paper", "directed")}
    for v, r in res.items():
        E = r.effects
        s = {name: causal_recovery(M, T)["sign_auroc"] for name, M in
             (("E", E), ("E.T", E.T), ("-E", -E), ("sym", (E + E.T) / 2), ("antisym", (E - E.T) / 2))}
        print(f"{v:9s} sign-AUROC " + "  ".join(f"{k} {x:.3f}" for k, x in s.items()))
        blocks = {f"{a}->{b}": np.outer(sa, sb) & off for a, sa in (("P", P), ("U", ~P)) for b, sb in (("P", P), ("U", ~P))}
        print("          by block  " + "  ".join(f"{k} {sign_auroc_of(E[m], T[m]):.3f} (n true {int((np.abs(T[m]) >= .5).sum())})"
                                           for k, m in blocks.items()))
        ident = identifiability(r)
        print("          by label  " + "  ".join(f"{lab} {sign_auroc_of(E[m], T[m]):.3f} (n {int(m.sum())})"
                                           for lab in ("identified", "partly identified", "not identified")
                                           for m in [(ident.labels == lab) & off] if m.sum()))
    p = res["paper"]
    labels = [KEYS.CONTROL, *conds]
    score_fn = model.score_fn_for(labels)
    mu, sd = np.asarray(model.mu, float), np.asarray(model.sd, float)
    n = len(labels)
    sigmas = model.net.sde.sigmas.cpu().numpy()

    def V_at(s0, sigma):
        x = torch.as_tensor(np.broadcast_to((s0 - mu) / sd, (n, d)).copy(), dtype=torch.float32)
        with torch.no_grad():
            f = score_fn(x, float(sigma), torch.arange(n)).double().numpy()
        return (f / sd[None, :]).T

    for ref in ("control_mean", "origin"):
        s0 = mu if ref == "control_mean" else np.zeros(d)
        for target in (0.05, 0.17, 0.5):
            sig = float(sigmas[np.argmin(np.abs(np.log(sigmas / target)))])
            for lam in (1e-4, 1e-2):
                A, *_ = clipr_paper(V_at(s0, sig), p.L, lam, ref=None if ref == "origin" else s0)
                print(f"paper ref {ref:12s} σ {sig:.3f} λ {lam:g}: sign-AUROC {causal_recovery(A.T, T)['sign_auroc']:.3f}")
    sig = float(p.params["ref_sigma"])
    eps = 0.05
    x = torch.zeros(d + 1, d)
    x[1:] += eps * torch.eye(d)
    with torch.no_grad():
        f = score_fn(x, sig, torch.zeros(d + 1, dtype=torch.long)).double().numpy()
    J = ((f[1:] - f[0]) / eps / sd[None, :]) / sd[:, None]  # J[i, j] = ∂f_j / ∂s_i: rows = sources
    print(f"drift Jacobian at the control mean (σ {sig:.3f}): sign-AUROC {causal_recovery(J, T)['sign_auroc']:.3f}, "
          f"transposed {causal_recovery(J.T, T)['sign_auroc']:.3f}")


if __name__ == "__main__":
    main()
