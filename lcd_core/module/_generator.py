"""Per-condition generators of stage 1 (METHOD.md §2, stage 1), stacked so that one step trains all K.

Each condition q has its own implicit prior G_q: z ~ N(0, I_latent) ↦ s ∈ ℝ^d. The K generators share
an architecture and live in stacked ``(K, in, out)`` weight tensors (see :mod:`lcd_core.nn._blocks`).

- ``kind="mlp"`` (the paper's): Dense latent → width, ``n_blocks`` residual blocks (SiLU), Dense → d,
  ``n_gene_blocks`` residual blocks in gene space (hidden ``gene_hidden``).
- ``kind="gaussian"``: s = m_q + W_qᵀ z, a Gaussian of rank ≤ latent_dim; 2–4× cheaper per step.

Both start as a *linear* map of z (every residual branch ends in a zero-initialised layer), which is
what makes :meth:`StackedGenerators.init_from_moments` an exact Gaussian warm start for either kind.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import nn

from lcd_core.errors import ConfigError
from lcd_core.module._output import LossOutput
from lcd_core.nn._blocks import StackedLinear, StackedResidualBlock


class StackedGenerators(nn.Module):
    """K per-condition generators G_q: ℝ^latent_dim → ℝ^d, evaluated together.

    Parameters
    ----------
    n_conditions
        K.
    n_genes
        d.
    kind
        ``"mlp"`` (METHOD.md architecture) or ``"gaussian"`` (affine map of z).
    latent_dim
        Dimension of z.
    width
        Width of the residual stream in z-space (mlp only).
    n_blocks
        Residual blocks in z-space (mlp only).
    gene_hidden
        Hidden width of the gene-space residual blocks (mlp only).
    n_gene_blocks
        Residual blocks in gene space (mlp only).
    """

    def __init__(
        self,
        n_conditions: int,
        n_genes: int,
        *,
        kind: Literal["mlp", "gaussian"] = "mlp",
        latent_dim: int = 64,
        width: int = 64,
        n_blocks: int = 4,
        gene_hidden: int = 256,
        n_gene_blocks: int = 2,
    ):
        super().__init__()
        if kind not in ("mlp", "gaussian"):
            raise ConfigError(f"Unknown generator kind {kind!r}; use 'mlp' or 'gaussian'.")
        self.n_conditions, self.n_genes, self.kind, self.latent_dim = n_conditions, n_genes, kind, latent_dim
        K = n_conditions
        if kind == "gaussian":
            self.out = StackedLinear(K, latent_dim, n_genes)
            self.inp, self.blocks, self.gene_blocks = None, nn.ModuleList(), nn.ModuleList()
        else:
            self.inp = StackedLinear(K, latent_dim, width)
            self.blocks = nn.ModuleList(StackedResidualBlock(K, width, width) for _ in range(n_blocks))
            self.out = StackedLinear(K, width, n_genes)
            self.gene_blocks = nn.ModuleList(StackedResidualBlock(K, n_genes, gene_hidden) for _ in range(n_gene_blocks))

    def forward(self, z: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Map noise to latent states.

        Parameters
        ----------
        z
            ``(K', M, latent_dim)`` standard normal draws; K' = K or ``len(index)``.
        index
            Optional ``(K',)`` long tensor of the conditions to evaluate.

        Returns
        -------
        ``(K', M, d)`` latent states s.
        """
        h = z if self.inp is None else self.inp(z, index)
        for block in self.blocks:
            h = block(h, index)
        s = self.out(h, index)
        for block in self.gene_blocks:
            s = block(s, index)
        return s

    def sample(
        self, n: int, generator: torch.Generator | None = None, index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Draw ``n`` latent states per condition: ``(K', n, d)``."""
        k = self.n_conditions if index is None else len(index)
        p = self.out.weight
        z = torch.randn(k, n, self.latent_dim, generator=generator, dtype=p.dtype, device=p.device)
        return self(z, index)

    @torch.no_grad()
    def init_from_moments(self, means: np.ndarray, covs: np.ndarray) -> None:
        """Warm start: make every G_q push N(0, I) to (a rank-limited) N(means[q], covs[q]).

        Exact for both kinds because every residual branch still outputs 0 (call this right after
        construction). The covariance is truncated to its top ``min(latent_dim, width, d)``
        eigen-directions.

        Parameters
        ----------
        means
            ``(K, d)`` per-condition latent means.
        covs
            ``(K, d, d)`` per-condition latent covariances (symmetric PSD).
        """
        p = self.out.weight
        evals, evecs = np.linalg.eigh(np.asarray(covs, dtype=np.float64))  # ascending
        rank = min(self.latent_dim, self.n_genes, self.out.weight.shape[1])
        # (K, d, rank) factor F with F Fᵀ ≈ cov, largest eigen-directions first
        factor = evecs[..., ::-1][..., :rank] * np.sqrt(np.clip(evals[..., ::-1][..., :rank], 0.0, None))[:, None, :]
        w_out = torch.zeros_like(self.out.weight)
        w_out[:, :rank, :] = torch.as_tensor(np.swapaxes(factor, 1, 2).copy(), dtype=p.dtype)
        self.out.weight.copy_(w_out)
        self.out.bias.copy_(torch.as_tensor(np.asarray(means)[:, None, :], dtype=p.dtype))
        if self.inp is not None:
            # identity on the first `rank` coordinates of z, so that s = mean + Fᵀ z[:rank]
            w_in = torch.zeros_like(self.inp.weight)
            w_in[:, torch.arange(rank), torch.arange(rank)] = 1.0
            self.inp.weight.copy_(w_in)
            self.inp.bias.zero_()


def tempered_evidence_loss(loglik: torch.Tensor, temps: tuple[float, ...] = (1.0, 20.0)) -> LossOutput:
    """Tempered Monte-Carlo estimate of the negative log marginal likelihood (METHOD.md §2, stage 1).

        L_T = − mean_i T · [logsumexp_m(ℓ_im / T) − log M],      loss = mean over T of L_T

    T = 1 is the plain importance estimate of −log p(y_i); large T tends to −mean_m ℓ_im, whose
    gradient reaches every sample and stabilises early training.

    Parameters
    ----------
    loglik
        ``(..., B, M)`` ℓ_im = log p(y_i | s_m); leading dims (e.g. conditions) are averaged like cells.
    temps
        Temperatures T.

    Returns
    -------
    :class:`LossOutput` with ``loss`` (0-dim, nats per cell) and components ``nll_T{T:g}``.
    """
    log_m = float(np.log(loglik.shape[-1]))
    per_t = [-(t * (torch.logsumexp(loglik / t, dim=-1) - log_m)).mean() for t in temps]
    loss = torch.stack(per_t).mean()
    return LossOutput(loss=loss, components={f"nll_T{t:g}": v.item() for t, v in zip(temps, per_t)})
