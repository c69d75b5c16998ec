"""[ours] The zero-aware decoder of the no-measurement-model mode (stage 2 on normalised values).

Without counts there is no ZIP model to turn a latent state into a cell, and a diffusion model of
log1p values alone generates a continuum: on a screen with 97 % zeros its cells had 56 % near-zero
values and negative log-expression for genes that are zero in every cell. :class:`QuantileDecoder`
maps each gene's generated values onto the data's own distribution of that gene with one monotone
function per gene, fitted on the training conditions: generated values below the generated quantile
at the data's zero fraction become exactly 0, the rest follow the data's quantiles. So decoded cells
are in the data's domain (≥ 0, exact zeros, a gene zero in every training cell is always 0), the
pooled zero fraction of each gene is the data's, and the map is monotone, so a condition that shifts
a gene up in the generated values still shifts it up after decoding.
"""

from __future__ import annotations

import numpy as np
import torch

#: probability levels of the stored quantiles: uniform, plus a tail near 1 so that a gene with a zero
#: fraction of 99.9 % keeps its exact zeros (a uniform grid of 201 levels would smear its top 0.5 %)
DEFAULT_LEVELS = np.unique(np.concatenate([np.linspace(0.0, 1.0, 201), 1.0 - np.geomspace(1e-4, 5e-3, 24)]))


class QuantileDecoder:
    """One monotone map per gene, generated values → the data's scale (quantile matching).

    A generated value v of gene g is first given its level ℓ = F̂_gen,g(v) among the generated values of
    the training conditions (linear between stored quantiles), then mapped to the data: 0 when
    ℓ ≤ z_g (the gene's zero fraction in the training cells), else the data's quantile at ℓ, never
    below the gene's smallest positive value (the data has no values between 0 and it: a CP10k count of
    one).

    Parameters
    ----------
    levels
        ``(m,)`` increasing probability levels in [0, 1] of the stored quantiles.
    generated_q
        ``(m, d)`` quantiles of the generated values of each gene (training conditions pooled).
    observed_q
        ``(m, d)`` quantiles of the observed values (log1p units, training cells pooled).
    zero_fraction
        ``(d,)`` fraction of exact zeros of each gene in the training cells.
    min_positive
        ``(d,)`` smallest positive observed value of each gene (0 for a gene zero in every cell).
    """

    def __init__(self, levels, generated_q, observed_q, zero_fraction, min_positive):
        self.levels = np.asarray(levels, dtype=np.float64)
        self.generated_q = np.asarray(generated_q, dtype=np.float64)
        self.observed_q = np.asarray(observed_q, dtype=np.float64)
        self.zero_fraction = np.asarray(zero_fraction, dtype=np.float64)
        self.min_positive = np.asarray(min_positive, dtype=np.float64)
        m, d = self.generated_q.shape
        if (self.observed_q.shape != (m, d) or self.levels.shape != (m,) or self.zero_fraction.shape != (d,)
                or self.min_positive.shape != (d,)):
            raise ValueError("quantile decoder tables do not fit together: levels "
                             f"{self.levels.shape}, generated {self.generated_q.shape}, observed "
                             f"{self.observed_q.shape}, zero fraction {self.zero_fraction.shape}")

    @property
    def n_genes(self) -> int:
        return self.generated_q.shape[1]

    @classmethod
    def fit(cls, generated: np.ndarray, observed: np.ndarray, levels: np.ndarray = DEFAULT_LEVELS) -> "QuantileDecoder":
        """Fit from ``(n, d)`` generated values and ``(n', d)`` observed values (log1p units, ≥ 0) of
        the same training conditions, mixed in the same proportions."""
        levels = np.asarray(levels, dtype=np.float64)
        observed = np.asarray(observed, dtype=np.float64)
        gen_q = np.maximum.accumulate(np.quantile(np.asarray(generated, dtype=np.float64), levels, axis=0), axis=0)
        obs_q = np.maximum.accumulate(np.quantile(observed, levels, axis=0), axis=0)
        positive = np.where(observed > 0, observed, np.inf).min(0)
        return cls(levels, gen_q, obs_q, (observed <= 0).mean(0), np.where(np.isfinite(positive), positive, 0.0))

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """``(n, d)`` generated values → ``(n, d)`` float32 values in the data's domain (≥ 0, exact
        zeros, at most the largest observed value: no extrapolation)."""
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.n_genes:
            raise ValueError(f"expected (n, {self.n_genes}) values, got {values.shape}")
        out = np.zeros(values.shape, dtype=np.float32)
        # a tiny ramp makes the stored generated quantiles strictly increasing, as np.interp needs
        ramp = np.arange(len(self.levels)) * 1e-12
        for g in np.flatnonzero(self.zero_fraction < 1.0):  # a gene zero in every training cell stays 0
            level = np.interp(values[:, g], self.generated_q[:, g] + ramp, self.levels)
            mapped = np.maximum(np.interp(level, self.levels, self.observed_q[:, g]), self.min_positive[g])
            out[:, g] = mapped if self.zero_fraction[g] <= 0 else np.where(level > self.zero_fraction[g], mapped, 0.0)
        return out

    # -- persistence (safetensors tensors, no pickle) -------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: torch.as_tensor(getattr(self, name)) for name in
                ("levels", "generated_q", "observed_q", "zero_fraction", "min_positive")}

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> "QuantileDecoder":
        return cls(*(state[name].double().numpy() for name in
                     ("levels", "generated_q", "observed_q", "zero_fraction", "min_positive")))
