"""Dense building blocks: plain and *stacked* (K independent copies evaluated in one batched matmul).

Stacking is how stage 1 trains one generator per condition (METHOD.md §2, stage 1) in a single
optimiser step: the weights of all K conditions live in one ``(K, in, out)`` tensor and every layer is
one ``torch.baddbmm``, instead of K small matmuls that would leave a CPU's vector units idle.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class StackedLinear(nn.Module):
    """K independent affine maps ``x_k W_k + b_k``.

    Parameters
    ----------
    n_stack
        K, the number of independent copies.
    n_in, n_out
        Input and output width.
    zero_init
        Start with all weights and biases at 0 (the last layer of a residual branch, so that each
        block is the identity at initialisation and the whole generator starts as a linear map).
    """

    def __init__(self, n_stack: int, n_in: int, n_out: int, *, zero_init: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_stack, n_in, n_out))  # (K, in, out): x @ W, no transpose
        self.bias = nn.Parameter(torch.zeros(n_stack, 1, n_out))  # broadcast over the sample axis
        if zero_init:
            nn.init.zeros_(self.weight)
        else:
            # PyTorch's nn.Linear default, i.e. U(±1/sqrt(n_in)), per copy
            bound = 1.0 / math.sqrt(n_in)
            nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the maps.

        Parameters
        ----------
        x
            ``(K', N, n_in)``; K' = K, or ``len(index)``.
        index
            Optional ``(K',)`` long tensor selecting which copies to use (a subset of conditions).

        Returns
        -------
        ``(K', N, n_out)``.
        """
        w, b = (self.weight, self.bias) if index is None else (self.weight[index], self.bias[index])
        return torch.baddbmm(b, x, w)


class StackedResidualBlock(nn.Module):
    """K independent residual blocks ``h + W2 SiLU(W1 h + b1) + b2`` (second layer zero-initialised).

    Parameters
    ----------
    n_stack
        K.
    n_features
        Width of the residual stream.
    n_hidden
        Width of the branch's hidden layer.
    """

    def __init__(self, n_stack: int, n_features: int, n_hidden: int):
        super().__init__()
        self.fc1 = StackedLinear(n_stack, n_features, n_hidden)
        self.fc2 = StackedLinear(n_stack, n_hidden, n_features, zero_init=True)

    def forward(self, h: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
        """``(K', N, n_features) -> (K', N, n_features)``."""
        return h + self.fc2(F.silu(self.fc1(h, index)), index)


class ResidualBlock(nn.Module):
    """A single (unstacked) residual block ``h + W2 act(W1 h + b1) + b2``, second layer zero-initialised.

    Parameters
    ----------
    n_features
        Width of the residual stream.
    n_hidden
        Width of the branch's hidden layer.
    activation
        Elementwise non-linearity of the branch.
    """

    def __init__(self, n_features: int, n_hidden: int, activation: nn.Module | None = None):
        super().__init__()
        self.fc1 = nn.Linear(n_features, n_hidden)
        self.act = activation if activation is not None else nn.SiLU()
        self.fc2 = nn.Linear(n_hidden, n_features)
        nn.init.zeros_(self.fc2.weight)
        nn.init.zeros_(self.fc2.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``(..., n_features) -> (..., n_features)``."""
        return h + self.fc2(self.act(self.fc1(h)))
