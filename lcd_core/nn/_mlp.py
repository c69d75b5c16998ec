"""Plain MLP backbone whose hidden pre-activations can be shifted by a conditioning signal."""

from __future__ import annotations

from collections.abc import Sequence

import torch

_ACTIVATIONS = {"tanh": torch.nn.Tanh, "silu": torch.nn.SiLU, "relu": torch.nn.ReLU}


class MLP(torch.nn.Module):
    """``n_layers`` hidden Dense layers and a linear output; nothing about noise levels or perturbations.

    Conditioning enters as additive shifts of the hidden pre-activations,
    ``h_l = act(W_l h_{l-1} + b_l + shift_l)``, which is how METHOD.md §1–2 injects the level and the
    perturbation embedding. The wrapper (:class:`lcd_core.module.ScoreNet`) computes the shifts.

    Parameters
    ----------
    n_in, n_out
        Input and output widths.
    hidden
        Width of every hidden layer.
    n_layers
        Number of hidden layers (≥ 1).
    activation
        ``"tanh"`` (METHOD.md default), ``"silu"`` or ``"relu"``.
    """

    def __init__(self, n_in: int, n_out: int, *, hidden: int = 1024, n_layers: int = 2, activation: str = "tanh"):
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"`n_layers` must be ≥ 1, got {n_layers}.")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"`activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}.")
        widths = [n_in] + [hidden] * n_layers
        self.hidden = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.act = _ACTIVATIONS[activation]()
        self.out = torch.nn.Linear(hidden, n_out)
        self.n_layers = n_layers
        self.width = hidden

    def forward(self, x: torch.Tensor, shifts: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Evaluate the network.

        Parameters
        ----------
        x
            Inputs, shape ``(n, n_in)``.
        shifts
            One entry per hidden layer, each broadcastable to ``(n, hidden)`` or ``None``; added to
            that layer's pre-activation.

        Returns
        -------
        Outputs of shape ``(n, n_out)``.
        """
        h = x
        for i, layer in enumerate(self.hidden):
            pre = layer(h)
            if shifts is not None and shifts[i] is not None:
                pre = pre + shifts[i]
            h = self.act(pre)
        return self.out(h)
