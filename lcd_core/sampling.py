"""Samplers of the learned diffusion: the reference annealed Langevin dynamics (METHOD.md §3) and fast
samplers for interactive prediction.

Every sampler is a plain function ``(score_fn, sde, x_init, pert, *, ..., generator) -> x`` where

- ``score_fn(x, sigma, pert) -> (n, d)``: the score at noise level ``sigma``, a positive float in
  standardised units (not a level index; :meth:`lcd_core.module.ScoreNet.score` reads a float as σ and
  interpolates its level embedding between trained levels); ``x`` is ``(n, d)``, ``pert`` the
  ``(n, P)`` or ``(1, P)`` multi-hot passed through unchanged;
- ``sde`` is a :class:`~lcd_core.sde.VESchedule`;
- ``x_init`` is ``(n, d)``; chains are integrated in float64 (cheap next to the network);
- ``generator`` is an explicit :class:`torch.Generator`, so a sample depends only on its seed.

:data:`SAMPLERS` maps names to samplers for the CLI; :func:`sample` is the entry point. (Just over 400 lines on
purpose: every sampler beside the others, so their shared conventions are read and changed in one place.)
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from .errors import ConfigError
from .sde import VESchedule

ScoreFn = Callable[[torch.Tensor, float, torch.Tensor], torch.Tensor]


def _denoise(score_fn: ScoreFn, x: torch.Tensor, sigma: float, pert: torch.Tensor) -> torch.Tensor:
    """Tweedie's denoiser ``D(x; σ) = x + σ² ∇log p_σ(x)``."""
    return x + sigma**2 * score_fn(x, sigma, pert).to(x.dtype)


def _randn(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)


@torch.no_grad()
def annealed_langevin(
    score_fn: ScoreFn,
    sde: VESchedule,
    x_init: torch.Tensor,
    pert: torch.Tensor,
    *,
    n_steps_per_level: int = 500,
    eps: float = 1e-6,
    step_scale: float = 1.0,
    noise: bool = True,
    sigmas: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Annealed Langevin dynamics, the reference sampler (METHOD.md §3; Song & Ermon 2019, Alg. 1).

    For each level ``σ_k`` from largest to smallest, ``n_steps_per_level`` steps of
    ``x ← x + h_k s(x, σ_k) + sqrt(2 h_k) ξ`` with ``h_k = step_scale · eps · (σ_k / σ_min)²``.
    The defaults (500 steps, ``eps = 1e-6``, start ``x_init ~ N(0, I)``) are the paper's: 15,000
    evaluations with 30 levels.

    Parameters
    ----------
    score_fn, sde, x_init, pert, generator
        See the module docstring.
    n_steps_per_level
        Langevin steps at each level.
    eps
        Base step size at ``sigma_min``.
    step_scale
        Multiplies every ``h_k`` (CLIPR's fixed-point search uses 10 with 50 steps per level).
    noise
        ``False`` drops ``sqrt(2h) ξ``: a deterministic annealed gradient flow that converges to a mode
        (the fixed point of the drift, METHOD.md §4).
    sigmas
        Levels to anneal through (descending); default ``sde.sigmas``.

    Returns
    -------
    ``(n, d)`` float64 samples (standardised space).
    """
    sigmas = (sde.sigmas if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64)).tolist()
    steps = [step_scale * eps * (sigma / sde.sigma_min) ** 2 for sigma in sigmas]
    x, _ = annealed_flow(score_fn, sigmas, steps, x_init.to(torch.float64).clone(), pert,
                         n_steps_per_level=n_steps_per_level, noise=noise, generator=generator)
    return x


@torch.no_grad()
def annealed_flow(
    score_fn: ScoreFn,
    sigmas: Sequence[float],
    steps: Sequence[float],
    x: torch.Tensor,
    pert: torch.Tensor,
    *,
    n_steps_per_level: int,
    noise: bool = False,
    generator: torch.Generator | None = None,
    tol: float = 0.0,
    check: Callable[[torch.Tensor, float], None] | None = None,
) -> tuple[torch.Tensor, dict]:
    """The loop of annealed Langevin dynamics with step sizes given per level, in ``x``'s dtype: the
    reference sampler (:func:`annealed_langevin`) and, with the noise off, CLIPR's fixed points
    (:func:`lcd_core.clipr.fixed_points`, METHOD.md §4).

    For each level ``σ_k`` (largest first), up to ``n_steps_per_level`` steps of
    ``x ← x + h_k s(x, σ_k) [+ sqrt(2 h_k) ξ]`` with ``h_k = steps[k]``.

    Parameters
    ----------
    score_fn, pert, generator
        See the module docstring.
    sigmas, steps
        Levels (descending) and the step size ``h_k`` of each.
    x
        ``(n, d)`` start; not modified.
    n_steps_per_level
        Steps at each level (at most, with ``tol``).
    noise
        ``False``: the deterministic annealed gradient flow, which converges to a mode of each level.
    tol
        Noise-free only: a level ends as soon as every chain's relative step ``max|Δx| / (1 + max|x|)``
        is below ``tol``; ``0`` runs the blind step count.
    check
        Noise-free only: ``check(max|x| per chain (n,), σ_k)`` after every step, e.g. to stop a diverging flow
        by raising.

    Returns
    -------
    ``x`` after the last step, and ``{"steps": (n_levels,) steps taken per level, "n_evals": network
    evaluations, "rel_step": (n,) float64 last relative step (noise-free; else inf)}``.
    """
    taken = np.zeros(len(sigmas), dtype=int)
    rel = torch.full((x.shape[0],), float("inf"), dtype=torch.float64)
    for k, (sigma, h) in enumerate(zip(sigmas, steps)):
        sigma = float(sigma)
        for _ in range(n_steps_per_level):
            # Langevin step at fixed σ_k (its Euler part, dx/dt = s(x, σ_k), when the noise is off)
            dx = h * score_fn(x, sigma, pert).to(x.dtype)
            x = x + dx
            taken[k] += 1
            if noise:
                x = x + math.sqrt(2 * h) * _randn(x, generator)
                continue
            xmax = x.abs().amax(dim=1)
            if check is not None:
                check(xmax, sigma)
            rel = (dx.abs().amax(dim=1) / (1.0 + xmax)).double().cpu()
            if tol > 0 and bool((rel < tol).all()):
                break
    return x, {"steps": taken, "n_evals": int(taken.sum()), "rel_step": rel.numpy()}


@torch.no_grad()
def edm_sampler(
    score_fn: ScoreFn,
    sde: VESchedule,
    x_init: torch.Tensor,
    pert: torch.Tensor,
    *,
    n_evals: int = 32,
    rho: float = 7.0,
    churn: float = 10.0,
    s_tmin: float = 0.0,
    s_tmax: float = 0.5,
    s_noise: float = 1.0,
    n_recentre: int = 1,
    generator: torch.Generator | None = None,
    on_step: Callable[[float, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Heun integration of the probability-flow ODE on an EDM grid, optionally stochastic (Karras et al.
    2022, Alg. 2), after recentring the chains at ``sigma_max``.

    Evaluation budget: ``n_recentre`` + ``2N − 1`` for an ``N``-point grid (Heun on every step, Euler on
    the last step to σ = 0, which is the denoiser at ``sigma_min``); ``N`` is the largest grid that fits
    ``n_evals``.

    Parameters
    ----------
    score_fn, sde, x_init, pert, generator
        See the module docstring. ``x_init`` may be ``N(0, I)`` or the VE prior.
    n_evals
        Network evaluations per chain (the speed/quality knob).
    rho
        Grid exponent (σ^{1/ρ} uniform).
    churn, s_tmin, s_tmax, s_noise
        EDM stochasticity: at grid levels in ``[s_tmin, s_tmax]`` noise is added to raise σ by a factor
        ``1 + min(churn / N, √2 − 1)`` before each step. ``churn = 0`` is the deterministic
        probability-flow ODE; the default 10 saturates at ``γ = √2 − 1`` for ``N ≤ 24`` grid points.
        Why only at ``σ ≤ s_tmax = 0.5``: on a trained d = 100 model churn at all levels cut the ODE's
        MMD² by ~25 % (1500 steps of 1024; fresh noise lets chains re-equilibrate where network error inflates the ODE's
        variance), but with the exact score of a Gaussian the coarse grid's Heun steps from the churned
        σ̂ = 1.41 σ are biased at large σ (covariance error 0.16 vs 0.07 at 1000 cells); churn at
        σ ≤ 0.5 kept part of the gain (MMD² 4.0e-4 vs 3.4e-4 for churn everywhere and 4.5e-4 for the
        ODE, 32 evaluations) and none of the bias (tests/test_sampling.py). On a well-trained
        d = 100 model (H200, benchmarks/results/sampling_h200.json) churn at all σ was worse (MMD² 1.8e-4)
        than churn at σ ≤ 0.5 (7e-5) and the ODE (6e-5), all three at the noise level of the reference.
    n_recentre
        Recentring steps ``x ← D(x; σ_max) + σ_max ξ`` before integrating: a Langevin step of size
        ``σ_max²`` with its noise scaled to keep the marginal variance ``σ_max²``. The ODE alone can
        not move chains started at the origin onto conditions ~20 units away (METHOD.md §3 notes).
    on_step
        Called with ``(σ, x)`` after the recentring (σ = ``sigma_max``) and after each step (σ of the level
        reached, 0 at the end): to follow the chains (benchmarks/bench_shrinkage.py).

    Returns
    -------
    ``(n, d)`` float64 samples.
    """
    n_grid = max(1, (n_evals - n_recentre + 1) // 2)
    sig = sde.edm_grid(n_grid, rho).tolist() + [0.0]
    x = x_init.to(torch.float64).clone()
    # Step 0: recentre on the condition at σ_max
    for _ in range(n_recentre):
        x = _denoise(score_fn, x, sig[0], pert) + sig[0] * _randn(x, generator)
    if on_step is not None:
        on_step(sig[0], x)
    gamma_max = min(churn / n_grid, math.sqrt(2) - 1)
    for i in range(n_grid):
        s_cur, s_next = sig[i], sig[i + 1]
        # Step 1: churn — raise the noise level to s_hat by adding fresh noise
        gamma = gamma_max if s_tmin <= s_cur <= s_tmax else 0.0
        s_hat = s_cur * (1 + gamma)
        if gamma > 0:
            x = x + math.sqrt(s_hat**2 - s_cur**2) * s_noise * _randn(x, generator)
        # Step 2: Euler step of dx/dσ = (x − D) / σ from s_hat to s_next
        d_cur = (x - _denoise(score_fn, x, s_hat, pert)) / s_hat
        x_next = x + (s_next - s_hat) * d_cur
        # Step 3: Heun (2nd-order) correction, except on the final step to σ = 0
        if s_next > 0:
            d_next = (x_next - _denoise(score_fn, x_next, s_next, pert)) / s_next
            x_next = x + (s_next - s_hat) * 0.5 * (d_cur + d_next)
        x = x_next
        if on_step is not None:
            on_step(s_next, x)
    return x


@torch.no_grad()
def pc_sampler(
    score_fn: ScoreFn,
    sde: VESchedule,
    x_init: torch.Tensor,
    pert: torch.Tensor,
    *,
    n_evals: int = 32,
    n_corrector: int = 1,
    snr: float = 0.16,
    rho: float = 7.0,
    n_recentre: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Predictor–corrector sampling (Song et al. 2021, Alg. 2 for VE) on an EDM grid.

    At each grid level: ``n_corrector`` Langevin corrector steps at σ_i with the step size set by the
    signal-to-noise ratio ``snr`` (``h = 2 (snr ‖ξ‖ / ‖s‖)²``, norms averaged over the chains), which re-equilibrate the chains
    at σ_i and so damp the variance inflation that network error causes in a pure ODE (METHOD.md §3
    notes), then one ancestral predictor step to σ_{i+1} (the exact Gaussian posterior step
    ``x ← D + (σ_{i+1}²/σ_i²)(x − D) + noise`` given the denoiser ``D``). The last level is denoised.

    Evaluation budget: ``n_recentre + N (1 + n_corrector)`` for an ``N``-point grid.

    Parameters
    ----------
    score_fn, sde, x_init, pert, generator
        See the module docstring.
    n_evals
        Network evaluations per chain.
    n_corrector
        Langevin corrector steps per grid level.
    snr
        Corrector signal-to-noise ratio.
    rho
        Grid exponent.
    n_recentre
        Recentring steps at ``sigma_max`` (as in :func:`edm_sampler`).

    Returns
    -------
    ``(n, d)`` float64 samples.
    """
    n_grid = max(2, (n_evals - n_recentre) // (1 + n_corrector))
    sig = sde.edm_grid(n_grid, rho).tolist()
    x = x_init.to(torch.float64).clone()
    for _ in range(n_recentre):
        x = _denoise(score_fn, x, sig[0], pert) + sig[0] * _randn(x, generator)
    for i, s_cur in enumerate(sig):
        # Corrector: Langevin steps at σ_i (the first level was just recentred)
        for _ in range(n_corrector if i > 0 else 0):
            grad = score_fn(x, s_cur, pert).to(x.dtype)
            z = _randn(x, generator)
            # step from batch-mean norms, as score_sde does: per-chain norms blow h up for chains near a mode
            h = 2 * (snr * z.norm(dim=1).mean() / grad.norm(dim=1).mean().clamp_min(1e-12)) ** 2
            x = x + h * grad + torch.sqrt(2 * h) * z
        # Predictor: ancestral step σ_i → σ_{i+1} (to 0 on the last level)
        den = _denoise(score_fn, x, s_cur, pert)
        s_next = sig[i + 1] if i + 1 < len(sig) else 0.0
        r = (s_next / s_cur) ** 2
        x = den + r * (x - den) + math.sqrt(s_next**2 * (1 - r)) * _randn(x, generator)
    return x


#: Samplers by name, for the CLI and :func:`sample`. ``"fast"`` is the interactive default.
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "reference": annealed_langevin,
    "fast": edm_sampler,
    "edm": edm_sampler,
    "pc": pc_sampler,
}


def check_guidance(weight: float) -> float:
    """``weight`` as a float, or :class:`ConfigError` unless it is a positive number (1: no guidance)."""
    if not (math.isfinite(weight) and weight > 0):
        raise ConfigError(f"guidance must be a positive number (1: the learned score as it is), got {weight!r}")
    return float(weight)


def guided(score_fn: ScoreFn, weight: float) -> ScoreFn:
    """[ours] The score of a perturbation pushed away from the control's: ``s₀ + w (s_T − s₀)``.

    ``s₀`` is the same network read with the control's multi-hot (all zeros). Where the condition and the
    control are Gaussians of one covariance, ``w`` scales the generated mean shift by exactly ``w`` and keeps the
    covariance (tests/test_sampling.py); ``w = 1`` is the plain score. Why: the learned score under-expresses a
    perturbation (on Papalexi the generated latent shift is ~0.78 of the training latents', docs/benchmarks.md,
    "Guidance"), the way conditional diffusion models under-express their condition, which classifier-free
    guidance counters. Each evaluation reads the network twice; :func:`sample` gives a guided sampler half the
    evaluations, so a budget costs the same with or without guidance.
    """
    if check_guidance(weight) == 1.0:
        return score_fn

    def fn(x: torch.Tensor, sigma, pert: torch.Tensor, **kw) -> torch.Tensor:
        own = score_fn(x, sigma, pert, **kw)
        control = score_fn(x, sigma, torch.zeros_like(pert), **kw)
        return control + weight * (own - control)

    return fn


def sample(
    name: str,
    score_fn: ScoreFn,
    sde: VESchedule,
    pert: torch.Tensor,
    n_cells: int,
    *,
    generator: torch.Generator,
    dim: int,
    guidance: float = 1.0,
    **kw,
) -> torch.Tensor:
    """Draw ``n_cells`` standardised latent states of one condition (or one per row of ``pert``).

    Parameters
    ----------
    name
        A key of :data:`SAMPLERS`.
    score_fn, sde, generator
        See the module docstring.
    pert
        ``(P,)`` or ``(1, P)`` multi-hot of the condition (broadcast to all chains), or ``(n_cells, P)``.
    n_cells
        Number of chains.
    dim
        Latent dimension ``d``.
    guidance
        [ours] :func:`guided`'s weight ``w``; 1 (the default): the learned score as it is. Any other weight
        halves the sampler's own evaluations (or the reference sampler's steps per level), each of which then
        reads the network twice: ``n_evals`` stays the number of network evaluations per cell.
    **kw
        Sampler options. ``n_evals``, the budget, means network evaluations per cell for every sampler:
        the reference sampler spreads them evenly over its noise levels (``n_steps_per_level =
        max(1, n_evals // n_levels)``, so ``n_evals = 15000`` is the paper's 500 steps on 30 levels).

    Returns
    -------
    ``(n_cells, dim)`` float64 samples; chains start from ``N(0, I)`` (METHOD.md §3).
    """
    if name not in SAMPLERS:
        raise ConfigError(f"Unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}.")
    pert = torch.as_tensor(pert)
    guidance = check_guidance(guidance)
    if not bool(pert.any()):  # the control's own score: guidance is the identity there, so the steps stay
        guidance = 1.0
    score_fn = guided(score_fn, guidance)
    if guidance != 1.0:
        # the budget counts network evaluations, and a guided one makes two: half as many sampler evaluations
        # cost what the unguided sampler costs (and sample as well: docs/benchmarks.md, "Guidance")
        if SAMPLERS[name] is annealed_langevin and kw.get("n_evals") is None:
            steps = kw.get("n_steps_per_level", inspect.signature(annealed_langevin).parameters["n_steps_per_level"].default)
            kw["n_steps_per_level"] = max(1, int(steps) // 2)
        else:
            budget = kw.get("n_evals") or inspect.signature(SAMPLERS[name]).parameters["n_evals"].default
            kw["n_evals"] = max(2, int(budget) // 2)
    if SAMPLERS[name] is annealed_langevin and kw.get("n_evals") is not None:
        n_levels = len(kw.get("sigmas", sde.sigmas))
        kw["n_steps_per_level"] = max(1, int(kw.pop("n_evals")) // n_levels)
    kw = {k: v for k, v in kw.items() if not (k == "n_evals" and v is None)}  # None: the sampler's default
    pert = pert[None, :] if pert.ndim == 1 else pert
    x_init = sde.prior_sampling((n_cells, dim), generator, scale=1.0).to(pert.device)  # chains live with the net
    return SAMPLERS[name](score_fn, sde, x_init, pert, generator=generator, **kw)
