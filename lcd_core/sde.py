"""Variance-exploding noise schedule of stage 2 (METHOD.md §2): the discrete levels, their continuous
interpolation for ODE/SDE solvers, and the prior.

Convention used everywhere in :mod:`lcd_core.sampling` and :mod:`lcd_core.module`: a *level index*
``t`` runs from ``0`` (``sigma_max``) to ``n_levels - 1`` (``sigma_min``); fractional ``t`` lies
between trained levels, geometrically (``log sigma`` is linear in ``t``).
"""

from __future__ import annotations

import math

import torch


class VESchedule:
    """Geometric noise levels ``sigma_max = σ_0 > σ_1 > … > σ_{n-1} = sigma_min`` of a VE diffusion.

    The forward process adds ``N(0, σ² I)`` to a standardised latent ``x``: ``x̃ = x + σ ε``
    (score_sde's VESDE with ``dx = sqrt(dσ²/dt) dW``).

    Parameters
    ----------
    n_levels
        Number of trained levels (METHOD.md: ``30``).
    sigma_max, sigma_min
        Largest and smallest σ, in standardised units (``10`` and ``0.01``).
    """

    def __init__(self, n_levels: int = 30, sigma_max: float = 10.0, sigma_min: float = 0.01):
        if n_levels < 2:
            raise ValueError(f"`n_levels` must be ≥ 2, got {n_levels}.")
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"Need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}.")
        self.n_levels = int(n_levels)
        self.sigma_max = float(sigma_max)
        self.sigma_min = float(sigma_min)
        self.sigmas = torch.logspace(
            math.log10(sigma_max), math.log10(sigma_min), n_levels, dtype=torch.float64
        )  # (n_levels,), descending

    # -- levels <-> sigma ---------------------------------------------------------------------------
    def sigma_of(self, t: torch.Tensor | float) -> torch.Tensor:
        """σ at (fractional) level index ``t``; geometric interpolation between trained levels."""
        t = torch.as_tensor(t, dtype=torch.float64)
        frac = t / (self.n_levels - 1)
        return torch.exp(math.log(self.sigma_max) + frac * (math.log(self.sigma_min) - math.log(self.sigma_max)))

    def level_of(self, sigma: torch.Tensor | float) -> torch.Tensor:
        """Fractional level index of ``sigma`` (inverse of :meth:`sigma_of`), clamped to ``[0, n_levels-1]``.

        σ above ``sigma_max`` maps to level 0 and below ``sigma_min`` to the last level: the network
        has no embedding for them, and the nearest trained one is the safest read.
        """
        sigma = torch.as_tensor(sigma, dtype=torch.float64)
        span = math.log(self.sigma_min) - math.log(self.sigma_max)
        t = (torch.log(sigma) - math.log(self.sigma_max)) / span * (self.n_levels - 1)
        return t.clamp(0.0, self.n_levels - 1)

    def interp_weights(self, t: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Neighbouring trained levels and the linear weight of the upper one.

        Returns
        -------
        ``(lo, hi, w)``: integer levels (long) and ``w ∈ [0, 1]`` (float64) such that the embedding
        at ``t`` is ``(1 - w)·emb(lo) + w·emb(hi)``.
        """
        t = torch.as_tensor(t, dtype=torch.float64).clamp(0.0, self.n_levels - 1)
        lo = torch.floor(t).long().clamp(max=self.n_levels - 2)
        return lo, lo + 1, t - lo.to(t.dtype)

    # -- forward process and prior ------------------------------------------------------------------
    def marginal_prob(self, x: torch.Tensor, sigma: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std of ``x̃ | x`` at noise level σ: ``(x, σ)`` (VE: the mean is not shrunk)."""
        return x, torch.as_tensor(sigma, dtype=x.dtype)

    def prior_sampling(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None, *, scale: float | None = None,
        dtype: torch.dtype = torch.float64,
    ) -> torch.Tensor:
        """Draw chain starting points ``N(0, scale² I)``.

        Parameters
        ----------
        shape
            ``(n_cells, d)``.
        generator
            Source of randomness (CPU generator).
        scale
            Standard deviation; ``None`` means ``sigma_max`` (the VE prior). The reference sampler of
            METHOD.md §3 starts from ``N(0, I)``, i.e. ``scale=1``.
        """
        scale = self.sigma_max if scale is None else float(scale)
        return scale * torch.randn(shape, generator=generator, dtype=dtype)

    def edm_grid(self, n_points: int, rho: float = 7.0) -> torch.Tensor:
        """``n_points`` σ's from ``sigma_max`` to ``sigma_min`` spaced uniformly in ``σ^{1/ρ}`` (Karras et al. 2022, eq. 5).

        Returns
        -------
        Descending float64 tensor of shape ``(n_points,)``.
        """
        if n_points < 2:
            return torch.tensor([self.sigma_max], dtype=torch.float64)[:n_points]
        i = torch.arange(n_points, dtype=torch.float64) / (n_points - 1)
        a, b = self.sigma_max ** (1 / rho), self.sigma_min ** (1 / rho)
        return (a + i * (b - a)) ** rho

    def __repr__(self) -> str:
        return f"VESchedule(n_levels={self.n_levels}, sigma_max={self.sigma_max}, sigma_min={self.sigma_min})"
