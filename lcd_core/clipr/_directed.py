"""[ours] Directed CLIPR: Lyapunov + on-target equations identify a directed drift matrix (METHOD §4).

Why: the paper's CLIPR reads a gradient-field drift and so returns about −Σ⁻¹, a symmetric matrix. Two
facts it leaves unused identify the direction of links (METHOD §4, "Directed CLIPR"):

(a) Lyapunov: the stationary covariance of ``ds = A s dt + sqrt(2) dW`` within a condition satisfies
    ``A Σ + Σ Aᵀ = −s I`` (s = 2 for the model's diffusion; any s > 0 only sets the scale of Â);
(b) on-target: a single-gene perturbation of j shifts only j's drift, c_q = δ_j e_j, so
    ``(A Δl_q)_i = 0`` for every i ≠ j, with Δl_q = l_q − l_ctrl.

Both are linear in A; we solve them together by (ridge-regularised) least squares. (Over 400 lines: the
equations, their two solvers and the minimum-norm projection are one system, read together.)
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import scipy.linalg as sla

from .._blas import shared_blas
from .._settings import CLIPR
from ..errors import ConfigError, LCDError
from ._result import CliprResult

#: above this d the dense d² × d² normal matrix is too large; use matrix-free CG
_DENSE_MAX_D = 30


def clipr_directed(
    Sigma: np.ndarray,
    delta_L: np.ndarray,
    targets: Sequence[int],
    *,
    weight_on_target: float = CLIPR.weight_on_target,
    ridge: float = CLIPR.ridge,
    scale: float = 1.0,
    solver: str = "auto",
    tol: float = 1e-10,
    max_iter: int = 2000,
    return_info: bool = False,
    x0: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, dict]:
    """Directed drift matrix from the Lyapunov and on-target equations, by least squares.

    Minimises ``‖(A Σ + Σ Aᵀ + s I)/σ̄‖² + w² Σ_q Σ_{i≠j_q} (A Δl̃_q)_i² + ridge ‖A‖²`` over A, where
    σ̄ = tr(Σ)/d makes the Lyapunov residual scale-free and Δl̃_q = Δl_q/‖Δl_q‖ (the on-target equations
    are homogeneous, so normalising columns weights every perturbation equally). The scale is fixed by
    ``s``: with ``s = 1`` the exact A of ``A Σ + Σ Aᵀ = −I`` is returned (the METHOD §8 convention);
    multiply by 2 for the model's sqrt(2) diffusion. With no perturbations the solution is the
    symmetric −(s/2) Σ⁻¹ (the paper's CLIPR limit).

    Identification (exact Σ and Δl): the solutions differ by S Σ⁻¹ with S skew-symmetric and S Σ⁻¹ Δl_q
    = 0 for every q (apply gᵀ S g = 0 to g = Σ⁻¹ Δl_q), a null space of dimension (d − K)(d − K − 1)/2.
    So A is identified exactly only for K ≥ d − 1; with fewer perturbations the ridge picks the
    minimum-norm member, which recovers signs well but not exactly (METHOD §4's "about d/2" is the
    equation count, not identification).

    Parameters
    ----------
    Sigma
        ``(d, d)`` within-condition covariance of the latent states (symmetric positive definite).
    delta_L
        ``(d, K)`` limit-response shifts l_q − l_ctrl of single-gene conditions (K may be 0).
    targets
        ``(K,)`` target gene index of each column.
    weight_on_target
        Weight w of the on-target equations relative to the Lyapunov equations.
    ridge
        Ridge on ‖A‖² (makes K < d/2 well posed; picks the minimum-norm solution).
    scale
        s in A Σ + Σ Aᵀ = −s I.
    solver
        ``"dense"`` (explicit d² × d² system, SVD least squares, d ≲ 30), ``"cg"`` (matrix-free preconditioned
        conjugate gradients on the normal equations; each iteration is a few d × d products, so d = 1000
        with 10⁶ unknowns is fine) or ``"auto"``.
    tol, max_iter
        CG stop: relative normal-equation residual, iteration cap.
    x0
        ``(d, d)`` a drift matrix near the answer (e.g. the estimate a bootstrap resample perturbs): CG
        starts from it when its residual is the smallest of the starts. The answer is the same to ``tol``.
    return_info
        Also return a dict: ``solver``, ``iterations``, ``rel_residual``, ``lyapunov_residual``
        (relative), ``on_target_residual`` (relative).

    Returns
    -------
    A
        ``(d, d)`` SDE drift matrix (rows = targets); the causal effects reported to users are ``A.T``.
    """
    S = np.asarray(Sigma, dtype=float)
    D = np.asarray(delta_L, dtype=float)
    d = S.shape[0]
    if S.shape != (d, d):
        raise ConfigError(f"Sigma must be square, got {S.shape}.")
    if D.ndim == 1:
        D = D[:, None]
    if D.shape[0] != d:
        raise ConfigError(f"delta_L must have {d} rows (genes), got {D.shape}.")
    t = np.asarray(list(targets), dtype=int).ravel()
    if t.size != D.shape[1]:
        raise ConfigError(f"{t.size} targets for {D.shape[1]} columns of delta_L.")
    if t.size and (t.min() < 0 or t.max() >= d):
        raise ConfigError("target indices must lie in [0, d).")
    if not (np.isfinite(S).all() and np.isfinite(D).all()):
        raise LCDError("Sigma or delta_L contains NaN/inf.")
    S = 0.5 * (S + S.T)
    try:  # a Cholesky factorisation is the cheapest positive-definiteness check
        cS = sla.cho_factor(S)
        rc = sla.lapack.dpocon(cS[0], np.abs(S).sum(0).max(), uplo="U")[0]
    except np.linalg.LinAlgError:
        rc = 0.0
    if rc <= 1e-13:
        raise LCDError(
            "Sigma is singular (fewer cells than genes in the pooled covariance?): directed CLIPR needs a "
            "positive-definite covariance; use more cells or latent samples."
        )
    norms = np.linalg.norm(D, axis=0)
    keep = norms > 0
    if not keep.all():
        warnings.warn(f"{int((~keep).sum())} perturbation(s) with zero shift ignored.", stacklevel=2)
    D, t = D[:, keep] / norms[keep], t[keep]
    sbar = np.trace(S) / d
    Sn = S / sbar
    w2 = float(weight_on_target) ** 2
    mask = np.ones(D.shape, dtype=bool)
    mask[t, np.arange(t.size)] = False
    rhs_scale = scale / sbar  # A Sn + Sn Aᵀ = −(s/σ̄) I

    if solver == "auto":
        solver = "dense" if d <= _DENSE_MAX_D else "cg"
    if solver not in ("dense", "cg"):
        raise ConfigError(f"solver must be 'auto', 'dense' or 'cg', got {solver!r}.")
    with shared_blas():  # numpy products and scipy solves alternate: see lcd_core._blas
        if solver == "dense":
            A, info = _solve_dense(Sn, D, mask, w2, ridge, rhs_scale)
        else:
            A, info = _solve_cg(S, Sn, D, t, mask, w2, ridge, rhs_scale, scale, tol, max_iter, x0)
            # preconditioned CG lands on *a* least-squares solution; move it to the minimum-norm one
            # (nothing to do when d − 1 or more genes are perturbed: the null space is then empty)
            if len(set(t.tolist())) < d - 1:
                A, info["null_space_dim"] = _min_norm(A, Sn, D)
            else:
                info["null_space_dim"] = 0
    lyap = A @ Sn
    info["lyapunov_residual"] = float(np.linalg.norm(lyap + lyap.T + rhs_scale * np.eye(d)) / (rhs_scale * np.sqrt(d)))
    info["on_target_residual"] = float(
        np.linalg.norm((A @ D) * mask) / max(np.linalg.norm(A) * np.sqrt(max(t.size, 1)), 1e-300)
    )
    info["solver"] = solver
    return (A, info) if return_info else A


def _solve_dense(Sn, D, mask, w2, ridge, c):
    """Stacked system over vec(A) (row-major), solved by SVD least squares (minimum norm when the
    equations leave a null space); fine up to d ≈ 50 (d⁴ memory)."""
    d, K = D.shape
    I = np.eye(d)
    Kn = np.kron(I, Sn)  # vec(A Sn) = (I ⊗ Sn) vec(A) for row-major vec and symmetric Sn
    perm = np.arange(d * d).reshape(d, d).T.ravel()
    blocks = [Kn + Kn[perm]]  # vec(Sn Aᵀ) is vec(A Sn) transposed: a row permutation
    rhs = [-c * I.ravel()]
    if K:
        blocks.append(np.sqrt(w2) * np.kron(I, D.T)[mask.ravel()])  # rows (i, q), i ≠ j_q: (A Δl_q)_i
        rhs.append(np.zeros(int(mask.sum())))
    if ridge > 0:
        blocks.append(np.sqrt(ridge) * np.eye(d * d))
        rhs.append(np.zeros(d * d))
    a = sla.lstsq(np.vstack(blocks), np.concatenate(rhs), lapack_driver="gelsd", cond=1e-12)[0]
    return a.reshape(d, d), {"iterations": 0, "rel_residual": 0.0}


def _solve_cg(S, Sn, D, t, mask, w2, ridge, c, scale, tol, max_iter, x0=None):
    """Preconditioned CG on the normal equations, matrix-free in A (d × d products only).

    In single precision when ``tol`` ≥ 1e-6 (float32 resolves residuals to ~1e-7; its products take half
    the time of float64 ones, and at d = 1000 they are the whole cost)."""
    d, K = D.shape
    dtype = np.float32 if tol >= 1e-6 else np.float64
    D64, Sn, D = D, Sn.astype(dtype), D.astype(dtype)

    def normal(A):
        R1 = A @ Sn
        R1 = R1 + R1.T  # Lyapunov residual operator, symmetric
        out = 2.0 * (R1 @ Sn)  # its adjoint on a symmetric R is R Sn + Rᵀ Sn = 2 R Sn
        if K:
            out += w2 * (((A @ D) * mask) @ D.T)
        return out + ridge * A

    # Preconditioner: the row-separable part of the normal operator, A ↦ A M0 with
    # M0 = 2 Sn² + w² D Dᵀ + ridge I, minus each row's own perturbation (Sherman–Morrison)
    M0 = 2.0 * (Sn @ Sn) + w2 * (D @ D.T) + ridge * np.eye(d, dtype=dtype)
    cho = sla.cho_factor(M0)
    Y = sla.cho_solve(cho, D) if K else np.zeros((d, 0))
    first = {}
    for q, j in enumerate(t):
        first.setdefault(int(j), q)
    rows = np.array(list(first.keys()), dtype=int)
    cols = np.array(list(first.values()), dtype=int)
    denom = 1.0 - w2 * np.einsum("ij,ij->j", D[:, cols], Y[:, cols]) if rows.size else None

    def precond(R):
        Z = sla.cho_solve(cho, R.T).T
        if rows.size:
            coef = w2 * np.einsum("ij,ji->i", Z[rows], D[:, cols]) / np.maximum(denom, 1e-12)
            Z[rows] += coef[:, None] * Y[:, cols].T
        return Z

    rhs = (-2.0 * c * Sn).astype(dtype)
    # Warm start: the K = 0 solution −(s/2)Σ⁻¹, or, with every gene perturbed, the interventional
    # inversion (row-scaled by the Lyapunov diagonal) if its residual is smaller. The inversion is the
    # answer on exact inputs, but it amplifies the noise of estimated means: at d = K = 1000 with means
    # from 200 cells, CG needed ~300 iterations from it and 50 from −Σ⁻¹/2 for the same estimate.
    S_inv = np.linalg.inv(S)
    A = (-0.5 * scale * S_inv).astype(dtype)
    r = rhs - normal(A)
    if K and set(first) == set(range(d)):
        A_inv = _inversion(D64[:, cols], rows, S, scale).astype(dtype)
        r_inv = rhs - normal(A_inv)
        if np.linalg.norm(r_inv) < np.linalg.norm(r):
            A, r = A_inv, r_inv
    if x0 is not None:  # the answer of a nearby system (a bootstrap resample's estimate): fewer iterations
        # moved onto this Σ's Lyapunov solutions first (A Σ + Σ Aᵀ = −s I exactly, as the default start):
        # x0's Lyapunov residual under the new Σ would otherwise outweigh its on-target advantage
        x0 = np.asarray(x0, dtype=np.float64)
        E = x0 @ S + S @ x0.T + scale * np.eye(d)
        A_x0 = (x0 - 0.5 * E @ S_inv).astype(dtype)
        r_x0 = rhs - normal(A_x0)
        if np.linalg.norm(r_x0) < np.linalg.norm(r):
            A, r = A_x0, r_x0
    z = precond(r)
    p = z.copy()
    rz = np.vdot(r, z)
    bnorm = np.linalg.norm(rhs)
    it = 0
    rel = np.linalg.norm(r) / bnorm
    while rel > tol and it < max_iter:
        Np = normal(p)
        alpha = rz / np.vdot(p, Np)
        A += alpha * p
        r -= alpha * Np
        rel = np.linalg.norm(r) / bnorm
        it += 1
        if rel <= tol:
            break
        z = precond(r)
        rz_new = np.vdot(r, z)
        p = z + (rz_new / rz) * p
        rz = rz_new
    if rel > tol:
        warnings.warn(f"Directed CLIPR: CG stopped after {it} iterations at relative residual {rel:.2e}.", stacklevel=3)
    return A.astype(np.float64), {"iterations": it, "rel_residual": float(rel), "precision": np.dtype(dtype).name}


def _min_norm(A, Sn, D):
    """Remove the component of A in the null space N = {Q T Qᵀ Σ⁻¹ : T skew} of the equations
    (Q: orthonormal basis of span(Σ⁻¹ ΔL)^⊥; see clipr_directed's notes) in closed form.

    Minimising ‖A − Q T Qᵀ W‖_F (W = Σ⁻¹) over skew T gives the Sylvester equation
    T B + B T = 2 skew(Qᵀ A W Q) with B = Qᵀ W² Q, solved in B's eigenbasis."""
    d, K = D.shape
    W = np.linalg.inv(Sn)
    W = 0.5 * (W + W.T)
    if K:
        U, sv, _ = np.linalg.svd(W @ D, full_matrices=True)
        r = int((sv > sv[0] * 1e-10).sum()) if sv.size and sv[0] > 0 else 0
        Q = U[:, r:]
    else:
        Q = np.eye(d)
    m = Q.shape[1]
    if m < 2:
        return A, 0
    WQ = W @ Q
    B = WQ.T @ WQ
    R = Q.T @ A @ WQ
    R = R - R.T  # 2 · skew part
    lam, U = np.linalg.eigh(B)
    Tp = (U.T @ R @ U) / (lam[:, None] + lam[None, :])
    T = U @ Tp @ U.T
    return A - Q @ T @ WQ.T, m * (m - 1) // 2


def _inversion(D, targets, Sigma, scale):
    """Â_i· = −(ΔL⁻¹)_i· / (ΔL⁻¹)_ii, rows rescaled so that diag(A Σ + Σ Aᵀ) = −s when Σ is given."""
    d = D.shape[0]
    Ds = np.empty_like(D)
    Ds[:, targets] = D  # column j = the perturbation of gene j
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sla.LinAlgWarning)  # singularity is reported below
        lu = sla.lu_factor(Ds, check_finite=False)
    rcond = sla.lapack.dgecon(lu[0], np.abs(Ds).sum(0).max())[0]  # cheap LAPACK estimate, no SVD
    if not np.isfinite(rcond) or rcond < 1e-14:
        raise LCDError(
            f"The limit-response shifts are (numerically) singular (reciprocal condition {rcond:.2g}): the "
            "interventional inversion needs d linearly independent perturbation responses."
        )
    inv = sla.lu_solve(lu, np.eye(d))
    # A ΔL = −diag(δ) (on-target model) ⇒ A = −diag(δ) ΔL⁻¹; A_ii = −1 fixes δ_i = 1/(ΔL⁻¹)_ii
    A = -inv / np.diag(inv)[:, None]
    if Sigma is not None:
        g = np.einsum("ij,ji->i", A, Sigma)  # (A Σ)_ii
        A = A * (-0.5 * scale / g)[:, None]  # diag Lyapunov: 2 α_i (A Σ)_ii = −s
    return A


def interventional_inversion(
    delta_L: np.ndarray, targets: Sequence[int], *, Sigma: np.ndarray | None = None, scale: float = 1.0
) -> np.ndarray:
    """The K = d special case: every gene perturbed once fixes A up to row scales (METHOD §4).

    ``Â_i· = −(ΔL⁻¹)_i· / (ΔL⁻¹)_ii`` (modular response analysis, Kholodenko et al. 2002): self-decay
    A_ii = −1. With ``Sigma``, rows are instead rescaled so that diag(A Σ + Σ Aᵀ) = −s, the scale of
    :func:`clipr_directed`.

    Parameters
    ----------
    delta_L
        ``(d, d)`` limit-response shifts, one column per perturbed gene.
    targets
        ``(d,)`` target of each column: a permutation of ``0..d-1``.
    Sigma, scale
        Optional covariance and Lyapunov scale for the row scales.

    Returns
    -------
    A
        ``(d, d)`` SDE matrix (rows = targets).
    """
    D = np.asarray(delta_L, dtype=float)
    t = np.asarray(list(targets), dtype=int).ravel()
    d = D.shape[0]
    if D.shape != (d, d) or sorted(t.tolist()) != list(range(d)):
        raise ConfigError("interventional_inversion needs delta_L (d, d) with every gene perturbed exactly once.")
    return _inversion(D, t, None if Sigma is None else np.asarray(Sigma, dtype=float), scale)


def clipr_directed_from_data(
    cells: Sequence[np.ndarray] | None,
    target_index: Sequence[int | None],
    *,
    method: str = "lyapunov",
    Sigma: np.ndarray | None = None,
    means: np.ndarray | None = None,
    **kwargs,
) -> CliprResult:
    """Directed CLIPR from per-condition latent states (stage-1 samples, generated or measured cells).

    Σ is the pooled within-condition covariance (each condition centred on its own mean, divided by
    N − #conditions) and l_q the condition means.

    Parameters
    ----------
    cells
        One ``(n_q, d)`` array per condition; condition 0 the control.
    target_index
        ``None`` for the control, the target gene of each single-gene condition.
    method
        ``"lyapunov"`` (:func:`clipr_directed`) or ``"inversion"`` (:func:`interventional_inversion`,
        needs every gene perturbed once; rows scaled with Σ).
    Sigma
        ``(d, d)`` covariance to use instead of the pooled one (e.g. pooled over more conditions than
        those whose shifts enter the on-target equations).
    means
        ``(d, K+1)`` limit responses to use instead of the cell means (e.g. fixed points of the learned
        drift). With both ``Sigma`` and ``means`` given, ``cells`` may be ``None``.
    **kwargs
        Passed to :func:`clipr_directed` (``weight_on_target``, ``ridge``, ``scale``, ``solver``).

    Returns
    -------
    CliprResult
        ``effects`` = Âᵀ, ``A``, ``b``, ``c``, ``L`` (condition means), ``V = None``;
        ``info['Sigma']`` the pooled covariance.
    """
    tidx = list(target_index)
    if not tidx or tidx[0] is not None:
        raise ConfigError("Condition 0 must be the control (target None).")
    if cells is None:
        if Sigma is None or means is None:
            raise ConfigError("Without cells, pass both `Sigma` and `means`.")
    else:
        if len(cells) != len(tidx):
            raise ConfigError("Pass one cell array per condition, with the control (target None) first.")
        X = [np.asarray(c, dtype=float) for c in cells]
        d = X[0].shape[1]
        if any(x.ndim != 2 or x.shape[1] != d or x.shape[0] < 2 for x in X):
            raise ConfigError("Every condition needs an (n_q >= 2, d) array with the same d.")
        if means is None:
            means = np.stack([x.mean(0) for x in X], axis=1)
        if Sigma is None:
            n_tot = sum(x.shape[0] for x in X)
            Sigma = sum((x - x.mean(0)).T @ (x - x.mean(0)) for x in X) / (n_tot - len(X))
    means = np.asarray(means, dtype=float)
    Sigma = np.asarray(Sigma, dtype=float)
    d = Sigma.shape[0]
    if Sigma.shape != (d, d) or means.shape != (d, len(tidx)):
        raise ConfigError(f"`Sigma` must be (d, d) and `means` (d, {len(tidx)}); got {Sigma.shape} and {means.shape}.")
    single = [k for k in range(1, len(tidx)) if tidx[k] is not None]
    D = means[:, single] - means[:, :1]
    tg = [int(tidx[k]) for k in single]
    x0 = kwargs.pop("x0", None)  # a warm start only: not a parameter of the result
    if method == "lyapunov":
        A, info = clipr_directed(Sigma, D, tg, return_info=True, x0=x0, **kwargs)
    elif method == "inversion":
        A = interventional_inversion(D, tg, Sigma=Sigma, scale=kwargs.get("scale", 1.0))
        info = {"solver": "inversion"}
    else:
        raise ConfigError(f"method must be 'lyapunov' or 'inversion', got {method!r}.")
    b = -A @ means[:, 0]
    c = -A @ (means - means[:, :1])
    params = {"variant": "directed", "method": method, **kwargs}
    return CliprResult(
        effects=A.T.copy(), A=A, b=b, c=c, V=None, L=means, target_index=tidx, params=params,
        warnings=[], info={"Sigma": Sigma, **info},
    )
