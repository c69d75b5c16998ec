"""The loss container returned by every module's loss, so modules never log."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossOutput:
    """A scalar training loss plus named scalar components for logging.

    Attributes
    ----------
    loss
        The scalar that the trainer back-propagates (0-dim tensor).
    components
        Named plain-float diagnostics (e.g. one entry per temperature); the trainer logs them.
    """

    loss: torch.Tensor
    components: dict[str, float] = field(default_factory=dict)
