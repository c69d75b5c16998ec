"""Limit responses: fixed points of the learned drift for many conditions at once (METHOD §4)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..errors import ConfigError, RunError
from ..sampling import annealed_flow

#: the paper's base step, h_k = 1e-6 · (σ_k / σ_min)² (METHOD §3)
_BASE_STEP = 1e-6
#: schedule name -> (steps per level, step multiplier). "reference" and "fast" multiply the paper's step
#: 1e-6·(σ_k/σ_min)²; "fast": METHOD §4 practical notes (50 steps per level with a 10x larger step reached
#: the reference fixed points in a tenth of the time). "denoiser" [ours] multiplies σ_k², the step at which
#: an Euler step is the denoiser x ← D(x, σ_k). "newton": (iterations, unused) of the chord-Newton root
#: finder at σ_min [ours].
_SCHEDULES = {"reference": (500, 1.0), "fast": (50, 10.0), "denoiser": (5, 1.0), "newton": (100, 1.0)}
#: finite-difference step (standardised units) of the chord Jacobian
_FD_STEP = 1e-2

ScoreFn = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]


def fixed_points(
    score_fn: ScoreFn,
    sigmas: Sequence[float] | np.ndarray,
    conds: Sequence[int] | np.ndarray | torch.Tensor,
    x_init: np.ndarray | torch.Tensor | None = None,
    *,
    schedule: str = "denoiser",
    tol: float | None = None,
    max_steps: int | None = None,
    step_scale: float | None = None,
    divergence_bound: float = 1e4,
    batch_size: int | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    names: Sequence[str] | None = None,
    sigma_min: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Fixed points of the drift, all conditions batched: the annealed flow of METHOD §4, or a root finder.

    ``schedule="newton"`` [ours] solves ``f_q(x) = s(x, σ_min, q) = 0`` directly with a chord-Newton
    iteration ``x ← x − α J⁻¹ f_q(x)``: one Jacobian ``J`` of the first condition's drift at its start
    (central differences, one batched evaluation of ``2d`` points) serves every condition, which is exact
    when the drifts differ by a shift (the linear model) and a good preconditioner when the perturbations
    mostly move the mean. Each condition keeps its own step ``α`` (halved when its residual ``‖f‖`` would
    grow, doubled back to 1 after progress). It stops when every relative step is below ``tol``, after
    ``max_steps`` iterations (default 100). Cost: one batched evaluation of ``2d`` points for ``J`` plus
    one evaluation per iteration (on exact affine drifts one iteration, tests/test_clipr.py). A condition
    on which the damping collapses (the shared Jacobian is no descent direction there) is solved by the
    fast annealed flow instead, and named in ``info["fallback"]``; on the demo's learned count drift that
    was every condition, so it is an option, not the default.

    The annealed flow (``"denoiser"``, ``"fast"``, ``"reference"``): for each noise level σ_k (largest
    first) it takes Euler steps ``x ← x + h_k · s(x, σ_k, q)`` with ``h_k = step_scale · 1e-6 · (σ_k/σ_min)²``
    (METHOD §3 with the noise switched off, METHOD §4), or for ``"denoiser"`` [ours] ``h_k = step_scale · σ_k²``.
    At ``step_scale = 1`` that step is the denoiser itself, ``x ← x + σ²s = D(x, σ_k)`` (Tweedie), whose
    Jacobian ``Cov[x₀ | x] / σ²`` has its eigenvalues in [0, 1) for a log-concave law: the largest step that
    still converges monotonically, 10× the fast schedule's (at σ_min = 0.01) and 100× the paper's. Five of
    them per level do at least the work of the fast schedule's 50 on every linear direction
    (``(1 − r)⁵ ≤ (1 − r/10)⁵⁰``) for a tenth of the evaluations; on the demo run's 49 conditions the fixed
    points differ from the reference schedule's by 0.16 % of their spread (fast: 0.03 %). A level ends after
    ``max_steps`` steps or as soon as every condition's step is below ``tol`` relative to its state
    (``max|Δx| / (1 + max|x|)``), so converged flows stop early instead of running a blind step count.

    Parameters
    ----------
    score_fn
        ``score_fn(x (n, d), sigma, cond (n,)) -> (n, d)`` in standardised latent space.
    sigmas
        Noise levels, descending (the trained levels; 30 from 10 to 0.01 by default).
    conds
        ``(K,)`` condition index of each flow.
    x_init
        ``(K, d)`` or ``(d,)`` start in standardised space; ``None`` needs ``d`` from a ``(K, d)``
        array, so pass zeros (the control mean) explicitly.
    schedule
        ``"denoiser"`` (5 denoiser steps per level), ``"fast"`` (50 steps per level, 10× the paper's step),
        ``"reference"`` (500 steps, the paper's step) or ``"newton"`` (chord-Newton at σ_min).
    tol
        Relative-step tolerance of the early stop; default ``1e-4`` for newton (float32 drifts), ``1e-6``
        for denoiser and fast, ``0`` (never stop early, the paper's blind count) for reference.
    max_steps, step_scale
        Override the schedule's steps per level and step multiplier.
    divergence_bound
        A state with ``max|x|`` above this (standardised units) counts as diverged.
    batch_size
        Conditions per batch (memory); ``None``: all at once.
    dtype, device
        Torch dtype/device of the flow; default: ``x_init``'s dtype (float32 for arrays of other kinds).
    names
        Condition names used in error messages.
    sigma_min
        σ_min of the step formula; default ``sigmas[-1]`` (set it when running a subset of levels).

    Returns
    -------
    x_fixed
        ``(K, d)`` fixed points in standardised space (NumPy, float64).
    info
        ``steps`` (per level, max over batches; newton: iterations), ``n_evals``, ``fallback`` (newton: names
        of the conditions its shared Jacobian could not solve, handed to the fast annealed flow),
        ``rel_step`` ``(K,)`` last relative step,
        ``drift_norm`` ``(K,)`` ‖s(x*, σ_min)‖∞ at the end, ``converged`` ``(K,)`` bool, ``schedule``,
        ``tol``, ``step_scale``.
    """
    if schedule not in _SCHEDULES:
        raise ConfigError(f"Unknown fixed-point schedule {schedule!r}; use one of {sorted(_SCHEDULES)}.")
    sig = np.asarray(sigmas, dtype=float).ravel()
    if sig.size == 0 or np.any(sig <= 0) or np.any(np.diff(sig) > 0):
        raise ConfigError("`sigmas` must be positive and descending (largest noise level first).")
    n_default, scale_default = _SCHEDULES[schedule]
    n_steps = int(max_steps if max_steps is not None else n_default)
    scale = float(step_scale if step_scale is not None else scale_default)
    if tol is None:
        tol = {"newton": 1e-4, "fast": 1e-6, "denoiser": 1e-6}.get(schedule, 0.0)
    if n_steps < 1 or scale <= 0:
        raise ConfigError("`max_steps` must be >= 1 and `step_scale` > 0.")
    cond_t = (conds if isinstance(conds, torch.Tensor) else torch.as_tensor(np.asarray(conds))).long().ravel()
    if x_init is None:
        raise ConfigError("Pass `x_init` (e.g. zeros of shape (K, d): the control mean in standardised space).")
    x0 = torch.as_tensor(x_init)
    if dtype is None:
        dtype = x0.dtype if x0.is_floating_point() else torch.float32
    x0 = x0.to(dtype=dtype, device=device)
    if x0.ndim == 1:
        x0 = x0.expand(len(cond_t), -1)
    if x0.shape[0] != len(cond_t):
        raise ConfigError(f"`x_init` has {x0.shape[0]} rows for {len(cond_t)} conditions.")
    cond_t = cond_t.to(x0.device)
    names = list(names) if names is not None else [str(int(c)) for c in cond_t]

    K = len(cond_t)
    bs = K if batch_size is None else max(1, int(batch_size))
    out, rel_all, drift_all = [], [], []
    steps_taken = np.zeros(1 if schedule == "newton" else len(sig), dtype=int)
    n_evals, fallback = 0, []
    sig_min = float(sigma_min if sigma_min is not None else sig[-1])
    with torch.no_grad():
        for lo in range(0, K, bs):
            sl = slice(lo, min(K, lo + bs))
            if schedule == "newton":
                x, rel, steps, ev = _chord_newton(score_fn, float(sig[-1]), cond_t[sl], x0[sl].clone(), n_steps,
                                                  tol, divergence_bound, names[sl])
                stuck = np.flatnonzero(~(rel < tol))
                if stuck.size:  # the shared Jacobian failed them: the annealed flow (METHOD §4) from the start
                    idx = torch.as_tensor(stuck, device=x.device)
                    x_f, rel_f, _, ev_f = _annealed_flow(
                        score_fn, sig, cond_t[sl][idx], x0[sl][idx].clone(), *_SCHEDULES["fast"], 1e-6,
                        divergence_bound, [names[sl][i] for i in stuck], sig_min,
                    )
                    x[idx] = x_f
                    rel[stuck] = np.where(rel_f < 1e-6, 0.0, rel_f)  # converged by the flow's own test
                    ev += ev_f
                    fallback.extend(names[sl][i] for i in stuck)
            else:
                x, rel, steps, ev = _annealed_flow(
                    score_fn, sig, cond_t[sl], x0[sl].clone(), n_steps, scale, tol, divergence_bound, names[sl],
                    sig_min, denoiser_step=schedule == "denoiser",
                )
            f_end = score_fn(x, float(sig[-1]), cond_t[sl])
            out.append(x.double().cpu().numpy())
            rel_all.append(rel)
            drift_all.append(f_end.abs().amax(dim=1).double().cpu().numpy())
            steps_taken = np.maximum(steps_taken, steps)
            n_evals += ev + 1
    rel = np.concatenate(rel_all)
    info = {
        "steps": steps_taken.tolist(),
        "n_evals": n_evals,
        "rel_step": rel,
        "drift_norm": np.concatenate(drift_all),
        "converged": rel <= max(tol, 0.0) if tol > 0 else np.zeros(K, dtype=bool),
        "schedule": schedule,
        "tol": tol,
        "step_scale": scale,
        "steps_per_level": n_steps,
        # the flows ran the schedule's whole step count (not cut short by a smaller max_steps)
        "full_schedule": n_steps >= n_default,
        "fallback": fallback,  # newton: conditions solved by the annealed flow instead
    }
    return np.concatenate(out), info


def limit_responses(
    score_fn: ScoreFn,
    sigmas: Sequence[float] | np.ndarray,
    mu: np.ndarray,
    sd: np.ndarray,
    n: int,
    *,
    x_init: np.ndarray | None = None,
    dtype: torch.dtype = torch.float32,
    names: Sequence[str] | None = None,
    **kwargs,
) -> tuple[np.ndarray, dict]:
    """Limit responses l_q: fixed points of the drift of conditions ``0 … n−1``, in state space (METHOD §4).

    Parameters
    ----------
    score_fn, sigmas
        As :func:`clipr_from_drift`.
    mu, sd
        ``(d,)`` standardisation x = (s − mu) / sd.
    n
        Number of conditions (``score_fn``'s condition indices 0 … n−1).
    x_init
        Start of the flows in standardised space; default the control mean (x = 0).
    **kwargs
        ``schedule``, ``tol``, ``max_steps``, ``batch_size``, ``device`` of :func:`fixed_points`.

    Returns
    -------
    ``L`` ``(d, n)`` in state space and the :func:`fixed_points` info.
    """
    mu = np.asarray(mu, dtype=float).ravel()
    sd = np.asarray(sd, dtype=float).ravel()
    d = mu.size
    if x_init is None:
        x_init = np.zeros((n, d))
    x0 = torch.as_tensor(np.broadcast_to(np.asarray(x_init, dtype=float), (n, d)).copy(), dtype=dtype)
    x_fix, fp_info = fixed_points(score_fn, np.asarray(sigmas, dtype=float), torch.arange(n), x0, dtype=dtype,
                                  names=names, **kwargs)
    if not np.isfinite(x_fix).all():
        raise RunError("The fixed points contain NaN/inf: the learned drift diverged.")
    return (mu[None, :] + sd[None, :] * x_fix).T, fp_info


def convergence_warning(info: dict, names: Sequence[str]) -> str | None:
    """The warning for flows whose result depends on where they stopped, or ``None``.

    The annealed flows' limit is defined by their schedule: the paper's reference schedule runs a blind
    step count (``tol = 0``) and its end point *is* the limit response. On a learned drift the relative
    step rarely falls below ``tol`` (1e-6) in float32: on the shipped demo run every flow of the default
    denoiser schedule ends at a relative step of 4e-6 – 3e-5 and a drift residual that no schedule
    reduces further (the learned score at σ_min has no exact zero), yet its CLIPR effects equal the
    reference schedule's (100× the evaluations) to 0.2 % and the fast schedule's to 0.1 % (measured). So
    an early stop that did not happen is no reason to warn when the whole schedule ran. The result does
    depend on it when the flows were cut short (``max_steps`` below the schedule's count: on the demo one
    denoiser step per level moves the effects by 8 %) or when the chord-Newton root finder (whose end
    point is defined by its tolerance) did not converge: those are warned about, naming the conditions.

    Parameters
    ----------
    info
        The :func:`fixed_points` info.
    names
        ``(K,)`` condition names (gene symbols, ``ctrl``), in the order of the flows.
    """
    converged = np.asarray(info["converged"], dtype=bool)
    if info["tol"] <= 0 or converged.all():
        return None
    if info["schedule"] != "newton" and info.get("full_schedule", True):
        return None
    bad = [str(names[i]) for i in np.flatnonzero(~converged)]
    shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
    if info["schedule"] == "newton":
        how = (f"the chord-Newton root finder stopped after {info['steps'][0]} iteration(s) without reaching "
               f"tol {info['tol']:g}")
        fix = "use the default schedule (schedule='denoiser')"
    else:
        how = (f"the {info['schedule']} flow was cut to {info['steps_per_level']} step(s) per noise level and "
               f"stopped before converging (tol {info['tol']:g})")
        fix = "drop max_steps to run the whole schedule (or use schedule='reference' to compare)"
    return (f"Limit responses of {len(bad)} condition(s) ({shown}) are not converged: {how}, so the effects "
            f"depend on where the flows stopped; {fix}.")


def _check_bounded(xmax: torch.Tensor, bound: float, names, sigma: float) -> None:
    """Raises a RunError naming the conditions whose state (``max|x|`` per row) left the bound."""
    bad = ~torch.isfinite(xmax) | (xmax > bound)
    if bool(bad.any()):
        idx = torch.nonzero(bad).ravel().tolist()
        shown = ", ".join(names[i] for i in idx[:10]) + (" ..." if len(idx) > 10 else "")
        raise RunError(
            f"The learned drift diverged for conditions {shown} (non-finite or |x| > {bound:g} "
            f"standardised units at noise level σ = {sigma:.3g}). Try schedule='reference' or a "
            "smaller step_scale; if it persists the score network is not trained well enough."
        )


def _chord_newton(score_fn, sigma, cond, x, max_iter, tol, bound, names):
    """Roots of ``score_fn(·, σ, q)`` by damped chord-Newton with one shared finite-difference Jacobian.

    Returns ``(x, rel, [iterations], n_evals)``; ``rel`` is each condition's last *undamped* relative
    chord step (small only near a root), ``inf`` for a condition whose damping collapsed (the shared
    Jacobian is no descent direction there), so the caller can treat it as not converged."""
    K, d = x.shape
    # J[:, i] = ∂f/∂x_i of the first condition at its start, by central differences in one batch
    eye = torch.eye(d, dtype=x.dtype, device=x.device) * _FD_STEP
    probe = torch.cat([x[:1] + eye, x[:1] - eye])
    f_probe = score_fn(probe, sigma, cond[:1].expand(2 * d)).to(torch.float64)
    J = ((f_probe[:d] - f_probe[d:]) / (2 * _FD_STEP)).T  # (d, d): rows = outputs
    try:
        step_matrix = -torch.linalg.inv(J)  # chord step = f @ step_matrixᵀ
    except torch.linalg.LinAlgError:  # a flat direction: least-squares steps
        step_matrix = -torch.linalg.pinv(J)
    step_matrix = step_matrix.to(x.dtype)

    def full_step(f, x):
        dx = f @ step_matrix.T
        return dx, (dx.abs().amax(dim=1) / (1.0 + x.abs().amax(dim=1))).double().cpu()

    f = score_fn(x, sigma, cond).to(x.dtype)
    res = f.double().norm(dim=1).cpu()
    dx, rel = full_step(f, x)
    alpha = torch.ones(K, dtype=x.dtype, device=x.device)
    n_evals, it = 3, 0
    for it in range(1, max_iter + 1):
        active = (rel >= tol) & (alpha.cpu() >= 1 / 64)
        if tol > 0 and not bool(active.any()):
            break
        x_new = x + alpha[:, None] * dx
        _check_bounded(x_new.abs().amax(dim=1), bound, names, sigma)
        f_new = score_fn(x_new, sigma, cond).to(x.dtype)
        n_evals += 1
        res_new = f_new.double().norm(dim=1).cpu()
        ok = active & (res_new <= res)  # a step that does not reduce ‖f‖ is retried at half the length
        ok_dev = ok.to(x.device)
        x = torch.where(ok_dev[:, None], x_new, x)
        f = torch.where(ok_dev[:, None], f_new, f)
        res = torch.where(ok, res_new, res)
        alpha = torch.where(ok_dev, torch.clamp(alpha * 2, max=1.0), torch.where(active.to(x.device), alpha / 2, alpha))
        dx, rel = full_step(f, x)
    rel = torch.where(alpha.cpu() >= 1 / 64, rel, torch.full_like(rel, float("inf")))
    return x, rel.numpy(), np.array([it]), n_evals


def _annealed_flow(score_fn, sig, cond, x, n_steps, scale, tol, bound, names, sig_min, denoiser_step=False):
    """The sampler's noise-free annealed flow (:func:`lcd_core.sampling.annealed_flow`) with this module's step
    rule and divergence check; returns ``(x, rel, steps per level, n_evals)``."""
    steps = [scale * float(s) ** 2 if denoiser_step else scale * _BASE_STEP * (float(s) / sig_min) ** 2 for s in sig]
    x, info = annealed_flow(score_fn, [float(s) for s in sig], steps, x, cond, n_steps_per_level=n_steps, tol=tol,
                            check=lambda xmax, sigma: _check_bounded(xmax, bound, names, sigma))
    return x, info["rel_step"], info["steps"], info["n_evals"]
