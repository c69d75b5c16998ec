"""The learning-rate schedule both stages use (METHOD.md §2): linear warm-up, then cosine decay to 0."""

from __future__ import annotations

import math


def warmup_cosine(step: int, *, peak: float, warmup: int, total: int) -> float:
    """Learning rate at ``step``: ``peak·(step+1)/warmup`` during warm-up, then a cosine from ``peak`` to 0
    at ``total`` steps (held at 0 beyond)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1.0 + math.cos(math.pi * min(frac, 1.0)))
