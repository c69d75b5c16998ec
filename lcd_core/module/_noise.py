"""The zero-inflated Poisson measurement model of LCD (METHOD.md §1, "Measurement model").

    rate_g(s) = u_g · softplus(s_g)          (· ρ_g, [ours] a calibration fitted after training, 1 until then)
    P(y_g = 0)     = π_g + (1 − π_g) · exp(−rate_g)
    P(y_g = k > 0) = (1 − π_g) · Poisson(k; rate_g),      π_g = sigmoid(ℓ_g)

Stage 1 needs log p(y_i | s_m) for every pair of B cells and M latent samples. Genes are independent
given s, so the log-likelihood is a sum over genes of terms that factor into a cell part and a sample
part, i.e. one matrix product (METHOD.md §2, "Practical notes on stage 1"):

    ℓ_im = [Y, −1(Y>0), 1(Y=0)]_i · [log r_m ; r_m ; log(π + (1−π) e^{−r_m})] + c_i
    c_i  = Σ_g 1(y_ig>0) (log(1−π_g) − log y_ig!)

which never builds the B × M × d array.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# Below this, log(softplus(s)) = s − e^s/2 + O(e^{2s}) to double precision; evaluating log1p(e^s)
# directly there would underflow to log(0) in float32 (e^s < 1e-38 at s < −87).
_LOG_SOFTPLUS_SMALL = -15.0


def unit_scale_from_counts(control_counts: np.ndarray) -> np.ndarray:
    """Per-gene unit scale u from control counts (moment estimate of a ZIP rate, METHOD.md §1).

    u_g = max((Var y_g + (E y_g)²) / E y_g − 1, 1); a gene whose mean is 0 gets 1.

    Parameters
    ----------
    control_counts
        ``(n_cells, d)`` raw counts of the control cells.

    Returns
    -------
    ``(d,)`` float64 array, every entry ≥ 1.
    """
    y = np.asarray(control_counts, dtype=np.float64)
    mean = y.mean(axis=0)
    var = y.var(axis=0)  # population variance (ddof = 0): a moment estimate
    u = np.ones_like(mean)
    pos = mean > 0
    u[pos] = np.maximum((var[pos] + mean[pos] ** 2) / mean[pos] - 1.0, 1.0)
    return u


def log_softplus(s: torch.Tensor) -> torch.Tensor:
    """``log(softplus(s))``, finite and with finite gradients for every real s (also s ≪ 0)."""
    small = s < _LOG_SOFTPLUS_SMALL
    # torch.where evaluates both branches: feed each branch only inputs it is safe for, so that the
    # unused branch cannot produce inf/NaN gradients.
    s_big = torch.where(small, torch.zeros_like(s), s)
    s_small = torch.where(small, s, torch.full_like(s, _LOG_SOFTPLUS_SMALL))
    return torch.where(small, s_small - 0.5 * torch.exp(s_small), torch.log(F.softplus(s_big)))


def naive_latent_inverse(counts: np.ndarray, unit_scale: np.ndarray, pseudocount: float = 0.5) -> np.ndarray:
    """Invert the measurement per cell: s = softplus⁻¹(max(y, ε) / u).

    Ignores Poisson noise and dropout; used as a warm start for stage 1 and as a naive baseline.

    Parameters
    ----------
    counts
        ``(n, d)`` raw counts.
    unit_scale
        ``(d,)`` u.
    pseudocount
        ε, the value a zero count is lifted to before inversion.

    Returns
    -------
    ``(n, d)`` float64 latent estimates.
    """
    r = np.maximum(np.asarray(counts, dtype=np.float64), pseudocount) / np.asarray(unit_scale, dtype=np.float64)
    # softplus⁻¹(x) = log(e^x − 1) = x + log(1 − e^{−x}), stable for large and small x
    return r + np.log(-np.expm1(-r))


def naive_latent_moments(
    counts: np.ndarray, unit_scale: np.ndarray, dropout: np.ndarray | float = 0.0, *, diagonal: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Moment estimate of one condition's latent mean and covariance, correcting for ZIP noise.

    Under the ZIP model with known u and π (METHOD.md §1), with r = u·softplus(s) and q = 1 − π:
    E y = q E r; E[y_g y_h] = q_g q_h E[r_g r_h] (g ≠ h); E y_g² = q_g (E r_g² + E r_g). Solving gives
    the mean and covariance of the rates, which the delta method maps to latent space:
    s̄ = softplus⁻¹(E r / u), Cov s ≈ J Cov r J with J = diag(1 / (u · sigmoid(s̄))).
    Used as the stage-1 warm start and as the strongest naive baseline (given the true π).

    Parameters
    ----------
    counts
        ``(n, d)`` raw counts of one condition.
    unit_scale
        ``(d,)`` u.
    dropout
        π, ``(d,)`` or a scalar.
    diagonal
        Return only the variances ``(d,)`` instead of the covariance (O(n d) instead of O(n d²)).

    Returns
    -------
    ``(mean (d,), cov (d, d))`` float64; cov is symmetric but not guaranteed PSD (variances may be < 0).
    """
    y = np.asarray(counts, dtype=np.float64)
    u = np.asarray(unit_scale, dtype=np.float64)
    q = np.broadcast_to(1.0 - np.asarray(dropout, dtype=np.float64), u.shape)
    m = y.mean(0)
    mean_r = m / q
    x = np.maximum(mean_r / u, 1e-3)  # a gene never seen gets a small positive softplus value
    mean_s = x + np.log(-np.expm1(-x))  # softplus⁻¹
    jac = 1.0 / (u * (1.0 / (1.0 + np.exp(-mean_s))))  # d softplus⁻¹(r/u) / dr at the mean
    var_r = ((y**2).mean(0) - m) / q - mean_r**2  # the Poisson variance E r removed
    if diagonal:
        return mean_s, jac**2 * var_r
    cov_r = (y.T @ y / len(y)) / np.outer(q, q) - np.outer(mean_r, mean_r)
    np.fill_diagonal(cov_r, var_r)
    return mean_s, jac[:, None] * cov_r * jac[None, :]


def estimate_dropout(
    counts: list[np.ndarray], unit_scale: np.ndarray, *, n_iter: int = 4, init: float = 0.05, n_quad: int = 40
) -> np.ndarray:
    """Moment estimate of the per-gene dropout π from zero fractions, shared by all conditions.

    Fixed point of two moment equations (METHOD.md §1): given π, :func:`naive_latent_moments` gives
    each condition's latent mean and variance per gene; with s_g ~ N(mean, var) (Gauss–Hermite
    quadrature) the model's zero probability is p0 = π + (1 − π) E e^{−r}, so the observed zero
    fraction p̂0 gives π = Σ_q n_q (p̂0 − E e^{−r}) / Σ_q n_q (1 − E e^{−r}). Used to initialise stage 1.

    Parameters
    ----------
    counts
        One ``(n_q, d)`` raw-count array per condition.
    unit_scale
        ``(d,)`` u.
    n_iter
        Fixed-point iterations (2–4 suffice: the map contracts fast).
    init
        Starting π.
    n_quad
        Quadrature nodes.

    Returns
    -------
    ``(d,)`` π in [1e-3, 0.95].
    """
    u = np.asarray(unit_scale, dtype=np.float64)
    nodes, weights = np.polynomial.hermite_e.hermegauss(n_quad)  # ∫ f(x) N(x; 0, 1) dx up to 1/sqrt(2π)
    weights = weights / weights.sum()
    pi = np.full(u.shape, init)
    for _ in range(n_iter):
        num, den = np.zeros_like(u), np.zeros_like(u)
        for y in counts:
            mean, var = naive_latent_moments(y, u, pi, diagonal=True)
            s = mean[:, None] + np.sqrt(np.clip(var, 0.0, None))[:, None] * nodes[None, :]
            p_poisson_zero = (np.exp(-u[:, None] * np.logaddexp(0.0, s)) * weights).sum(1)  # E e^{−r}
            num += len(y) * ((np.asarray(y) == 0).mean(0) - p_poisson_zero)
            den += len(y) * (1.0 - p_poisson_zero)
        pi = np.clip(num / np.maximum(den, 1e-12), 1e-3, 0.95)
    return pi


class ZIPNoise(nn.Module):
    """Zero-inflated Poisson measurement model with a fixed unit scale and learned dropout logits (and, [ours], a
    per-gene rate factor ρ fitted after training: ``log_calibration``, :mod:`lcd_core.model._calibration`).

    Parameters
    ----------
    unit_scale
        ``(d,)`` fixed u (see :func:`unit_scale_from_counts`); stored as a buffer.
    dropout_init
        Initial dropout probability π: one value for every gene, or ``(d,)``.
    """

    def __init__(self, unit_scale: np.ndarray | torch.Tensor, dropout_init: float | np.ndarray = 0.05):
        super().__init__()
        u = torch.as_tensor(np.asarray(unit_scale), dtype=torch.get_default_dtype())
        self.register_buffer("unit_scale", u)  # (d,)
        # (d,) log ρ_g, [ours]: zero while stage 1 learns; set by lcd_core.model._calibration after stage 2
        self.register_buffer("log_calibration", torch.zeros_like(u))
        pi = np.broadcast_to(np.asarray(dropout_init, dtype=np.float64), u.shape)
        logit = torch.as_tensor(np.log(pi) - np.log1p(-pi), dtype=u.dtype)
        self.dropout_logit = nn.Parameter(logit.clone())  # (d,) ℓ_g, π_g = sigmoid(ℓ_g)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # runs and stage-1 checkpoints from before the calibration existed were uncalibrated (ρ = 1), as
        # torch's BatchNorm fills in its num_batches_tracked for older state
        state_dict.setdefault(prefix + "log_calibration", torch.zeros_like(self.log_calibration))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def n_genes(self) -> int:
        return self.unit_scale.shape[0]

    @property
    def dropout(self) -> torch.Tensor:
        """``(d,)`` π_g = sigmoid(ℓ_g)."""
        return torch.sigmoid(self.dropout_logit)

    def rate(self, s: torch.Tensor) -> torch.Tensor:
        """Poisson rate ``u · ρ · softplus(s)``, shape of ``s`` (``(..., d)``), in counts."""
        return self.unit_scale * torch.exp(self.log_calibration) * F.softplus(s)

    def log_rate(self, s: torch.Tensor) -> torch.Tensor:
        """``log(u · ρ · softplus(s))``, stable for very negative s."""
        return torch.log(self.unit_scale) + self.log_calibration + log_softplus(s)

    def log_likelihood_matrix(self, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """log p(y_i | s_m) for every cell × latent pair, as one matrix product.

        Parameters
        ----------
        y
            ``(..., B, d)`` counts (any float or int dtype; cast to ``s.dtype``).
        s
            ``(..., M, d)`` latent states; leading dims broadcast against ``y``'s.

        Returns
        -------
        ``(..., B, M)`` log-likelihoods in nats.
        """
        y = y.to(s.dtype)
        log_pi = F.logsigmoid(self.dropout_logit)  # log π
        log_1mpi = F.logsigmoid(-self.dropout_logit)  # log(1 − π)
        r = self.rate(s)
        # log P(y = 0 | s) = log(π + (1 − π) e^{−r}) as a logaddexp: no cancellation for r → 0 or π → 1
        log_p0 = torch.logaddexp(log_pi.expand_as(r), log_1mpi - r)
        sample_part = torch.cat([self.log_rate(s), r, log_p0], dim=-1)  # (..., M, 3d)
        pos = (y > 0).to(s.dtype)
        cell_part = torch.cat([y, -pos, 1.0 - pos], dim=-1)  # (..., B, 3d)
        const = (pos * (log_1mpi - torch.lgamma(y + 1.0))).sum(-1, keepdim=True)  # (..., B, 1)
        return cell_part @ sample_part.transpose(-1, -2) + const

    def log_likelihood(self, y: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Elementwise reference: log p(y_b | s_b) for matching rows (the plain formula of METHOD.md §1).

        Parameters
        ----------
        y
            ``(..., d)`` counts.
        s
            ``(..., d)`` latent states, same leading shape as ``y`` (or broadcastable).

        Returns
        -------
        ``(...)`` log-likelihoods summed over genes, in nats.
        """
        y = y.to(s.dtype)
        pi = torch.sigmoid(self.dropout_logit)
        r = self.rate(s)
        log_pos = torch.log1p(-pi) + y * torch.log(r) - r - torch.lgamma(y + 1.0)
        log_zero = torch.log(pi + (1.0 - pi) * torch.exp(-r))
        return torch.where(y > 0, log_pos, log_zero).sum(-1)

    @torch.no_grad()
    def sample_counts(self, s: torch.Tensor, generator: torch.Generator | None = None,
                      rate_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Draw counts y | s: Poisson(rate) then Bernoulli(π) zeroing.

        Parameters
        ----------
        s
            ``(..., d)`` latent states.
        generator
            Source of randomness (on ``s``'s device).
        rate_scale
            ``(d,)`` factors multiplying the rate (anchored prediction, :mod:`lcd_core.model._anchor`).

        Returns
        -------
        ``(..., d)`` counts, float dtype of ``s``.
        """
        rate = self.rate(s) if rate_scale is None else self.rate(s) * rate_scale
        counts = torch.poisson(rate, generator=generator)
        keep = torch.rand(s.shape, generator=generator, dtype=s.dtype, device=s.device) >= self.dropout
        return counts * keep

