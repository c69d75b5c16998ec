"""Sinusoidal embedding of a (possibly fractional) noise-level index."""

from __future__ import annotations

import math

import torch


class SinusoidalEmbedding(torch.nn.Module):
    """Fixed sinusoidal features of a scalar (Transformer positional encoding, used by DDPM/EDM for noise levels).

    Parameters
    ----------
    dim
        Number of output features (even).
    max_period
        Longest period of the sinusoids, in units of the input; a few times the number of levels keeps
        neighbouring level indices distinguishable and the map smooth in between.
    """

    def __init__(self, dim: int = 128, max_period: float = 1000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"`dim` must be even, got {dim}.")
        half = dim // 2
        # frequencies geometric from 1 to 1/max_period, as in "Attention is all you need"
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Embed level indices.

        Parameters
        ----------
        t
            Level indices, shape ``(n,)``; any real value (fractional indices are allowed).

        Returns
        -------
        Features of shape ``(n, dim)``: ``[cos(t·f), sin(t·f)]``.
        """
        arg = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return torch.cat([torch.cos(arg), torch.sin(arg)], dim=-1)
