"""The paper's CLIPR: initial responses of the drift at a reference point, limit responses (its fixed
points), then one ridge solve (METHOD §4; Lorch et al. 2026)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import scipy.linalg as sla
import torch

from ..errors import ConfigError, LCDError, RunError
from ._fixed_points import ScoreFn, convergence_warning, limit_responses
from .._settings import CLIPR, REF_POINTS
from ._result import CliprResult

#: METHOD §4 notes: evaluating v_q at a moderate level (σ ≈ 0.17) beat σ_min, where the network
#: extrapolates badly far from the data
_MODERATE_SIGMA = 0.17


def clipr_paper(
    V: np.ndarray, L: np.ndarray, lam: float = CLIPR.lam, *, ref: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The paper's CLIPR ridge solve ``Â = −V Lᵀ (L Lᵀ + λI)⁻¹`` (METHOD §4).

    Parameters
    ----------
    V
        ``(d, K+1)`` initial responses v_q = f_q(s⁰) in state space, column 0 the control.
    L
        ``(d, K+1)`` limit responses l_q (fixed points) in state space, column 0 the control.
    lam
        Ridge λ (default :data:`~lcd_core.clipr.CLIPR`'s). ``0`` solves exactly and needs rank(L) = d.
    ref
        ``(d,)`` the reference point s⁰ at which V was evaluated; ``None`` = the state-space origin
        (the paper). For another s⁰ the affine model gives v_q = −A (l_q − s⁰), so L − s⁰ is regressed.

    Returns
    -------
    A_hat
        ``(d, d)`` SDE matrix (rows = targets).
    b_hat
        ``(d,)`` −Â l_ctrl.
    c_hat
        ``(d, K+1)`` −Â (l_q − l_ctrl).
    info
        ``rank`` of L − s⁰, ``rcond_LLt`` (LAPACK estimate), ``singular_values`` (only computed when
        L looked rank-deficient, else ``None``), ``warnings`` (list of str).

    Raises
    ------
    LCDError
        ``lam == 0`` and L is rank-deficient.
    """
    V = np.asarray(V, dtype=float)
    L = np.asarray(L, dtype=float)
    if V.shape != L.shape or V.ndim != 2:
        raise ConfigError(f"V and L must both be (d, K+1); got {V.shape} and {L.shape}.")
    if not (np.isfinite(V).all() and np.isfinite(L).all()):
        raise RunError("V or L contains NaN/inf: the drift or its fixed points are not finite.")
    if lam < 0:
        raise ConfigError(f"lam must be >= 0, got {lam}.")
    d = L.shape[0]
    Lc = L if ref is None else L - np.asarray(ref, dtype=float)[:, None]
    # Normal equations by Cholesky (d³/3, the cheapest exact route at d = 1000); the rank check uses
    # LAPACK's condition estimate and falls back to an SVD only when L looks rank-deficient.
    G = Lc @ Lc.T
    rank, s = d, None
    rcond = 0.0
    if Lc.shape[1] >= d:
        try:
            cf = sla.cho_factor(G, lower=False)
            rcond = sla.lapack.dpocon(cf[0], np.abs(G).sum(0).max(), uplo="U")[0]
        except np.linalg.LinAlgError:
            rcond = 0.0
    if rcond < 1e3 * np.finfo(float).eps * d:
        s = np.linalg.svd(Lc, compute_uv=False)
        rank = int((s > s.max(initial=0.0) * max(Lc.shape) * np.finfo(float).eps).sum())
        rank = min(rank, d - 1) if rank == d else rank  # numerically singular even if all s > tol
    msgs = []
    if rank < d:
        msg = (
            f"The limit responses L span only {rank} of {d} dimensions (perturb more genes): only the part "
            "of A in span(L) is identified; the ridge λ sets the rest to zero."
        )
        if lam == 0:
            raise LCDError(msg + f" With lam=0 the solve is singular; use lam > 0 (e.g. {CLIPR.lam:g}).")
        msgs.append(msg)
    # Âᵀ = −(L Lᵀ + λ I)⁻¹ L Vᵀ  (METHOD §4)
    At = -sla.cho_solve(sla.cho_factor(G + lam * np.eye(d)), Lc @ V.T)
    A_hat = At.T
    b_hat = -A_hat @ L[:, 0]
    c_hat = -A_hat @ (L - L[:, :1])
    return A_hat, b_hat, c_hat, {"singular_values": s, "rank": rank, "rcond_LLt": float(rcond), "warnings": msgs}


def clipr_from_drift(
    score_fn: ScoreFn,
    sigmas: Sequence[float] | np.ndarray,
    mu: np.ndarray,
    sd: np.ndarray,
    target_index: Sequence[int | None],
    *,
    lam: float = CLIPR.lam,
    ref_point: str = CLIPR.ref_point,
    ref_sigma: float | None = CLIPR.ref_sigma,
    schedule: str = CLIPR.schedule,
    fixed_point_tol: float | None = CLIPR.fixed_point_tol,
    max_steps: int | None = CLIPR.max_steps,
    x_init: np.ndarray | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    names: Sequence[str] | None = None,
) -> CliprResult:
    """CLIPR of a learned drift: initial and limit responses, then the ridge solve (METHOD §4).

    Condition k of ``score_fn`` is column k: ``target_index[0]`` is ``None`` (the control), the others the
    target gene of each single-gene condition.

    Parameters
    ----------
    score_fn
        ``score_fn(x (n, d), sigma, cond (n,)) -> (n, d)``, standardised space x = (s − mu) / sd.
    sigmas
        Trained noise levels, descending.
    mu, sd
        ``(d,)`` standardisation (control mean, pooled std).
    target_index
        ``(K+1,)`` target gene index per condition, ``None`` for the control (index 0).
    lam
        Ridge λ.
    ref_point
        ``"control_mean"`` (default): s⁰ = mu (x = 0), where the network has seen data; ``"origin"``:
        s⁰ = 0 in state space (the paper).
    ref_sigma
        Noise level at which v_q is read. ``None``: the trained level nearest 0.17 (METHOD §4 notes;
        the paper uses σ_min = ``sigmas[-1]``).
    schedule, fixed_point_tol, max_steps, batch_size, dtype, device
        Passed to :func:`fixed_points` (``fixed_point_tol`` as its ``tol``); flows start from ``x_init``
        (default the control mean, x = 0).
    names
        ``(K+1,)`` condition names for messages (``ctrl`` and the target genes' symbols); default
        ``ctrl``, ``gene <index>``.

    Returns
    -------
    CliprResult
        ``effects`` = Âᵀ (rows = sources), ``A``, ``b``, ``c``, ``V``, ``L`` and diagnostics.
    """
    tidx = list(target_index)
    if len(tidx) == 0 or tidx[0] is not None:
        raise ConfigError("target_index[0] must be None: condition 0 is the control.")
    perturbed = [t for t in tidx[1:] if t is not None]
    if len(perturbed) < 2 or len(perturbed) != len(tidx) - 1:
        raise ConfigError(
            f"CLIPR needs the control plus at least 2 single-gene conditions with a target each; got "
            f"{len(perturbed)} perturbed gene(s). Train on more single-gene perturbations."
        )
    mu = np.asarray(mu, dtype=float).ravel()
    sd = np.asarray(sd, dtype=float).ravel()
    d = mu.size
    if sd.shape != (d,) or np.any(sd <= 0) or not np.all(np.isfinite(sd)):
        raise ConfigError("`sd` must be (d,), positive and finite.")
    if ref_point not in REF_POINTS:
        raise ConfigError(f"ref_point must be one of {', '.join(REF_POINTS)}, got {ref_point!r}.")
    sig = np.asarray(sigmas, dtype=float)
    if ref_sigma is None:
        ref_sigma = float(sig[np.argmin(np.abs(np.log(sig / _MODERATE_SIGMA)))])
    n = len(tidx)
    conds = torch.arange(n)
    names = list(names) if names is not None else ["ctrl"] + [f"gene {t}" for t in tidx[1:]]
    if len(names) != len(tidx):
        raise ConfigError(f"`names` has {len(names)} entries for {len(tidx)} conditions.")
    L, fp_info = limit_responses(score_fn, sig, mu, sd, n, schedule=schedule, tol=fixed_point_tol, max_steps=max_steps,
                                 x_init=x_init, dtype=dtype, device=device, batch_size=batch_size, names=names)

    # initial responses at the common reference point; chain rule f_state = f_std / sd (METHOD §4)
    s0 = np.zeros(d) if ref_point == "origin" else mu.copy()
    x_ref = torch.as_tensor(np.broadcast_to((s0 - mu) / sd, (n, d)).copy(), dtype=dtype, device=device)
    with torch.no_grad():
        f_std = score_fn(x_ref, float(ref_sigma), conds.to(x_ref.device)).double().cpu().numpy()
    if not np.isfinite(f_std).all():
        raise RunError("The learned drift is NaN/inf at the reference point; try ref_point='control_mean'.")
    V = (f_std / sd[None, :]).T

    A_hat, b_hat, c_hat, info = clipr_paper(V, L, lam, ref=None if ref_point == "origin" else s0)
    msgs = list(info.pop("warnings"))
    note = convergence_warning(fp_info, names)
    if note:
        msgs.append(note)
    for m in msgs:
        warnings.warn(m, stacklevel=2)
    params = {
        "variant": "paper", "lam": lam, "ref_point": ref_point, "ref_sigma": float(ref_sigma),
        "schedule": schedule, "fixed_point_tol": fp_info["tol"], "max_steps": max_steps,
    }
    return CliprResult(
        effects=A_hat.T.copy(), A=A_hat, b=b_hat, c=c_hat, V=V, L=L, target_index=tidx,
        params=params, warnings=msgs, info={"fixed_points": fp_info, "ref": s0, **info},
    )
