"""Baselines that predict cells for any condition, in the same log1p space as LCD (METHOD.md §7).

Every baseline follows :class:`Baseline`: ``fit(cells_by_condition, control_label, *, var_names)`` then
``predict(condition, n_cells, *, seed)``, so any metric of :mod:`lcd_core.metrics` applies.
"""

from __future__ import annotations

from ._base import Baseline, parse_condition
from ._linear import LinearBaseline
from ._simple import AdditiveBaseline, ControlBaseline, PooledBaseline


def make_baselines() -> dict[str, Baseline]:
    """Fresh, unfitted instances of every baseline with default settings.

    Returns
    -------
    ``{"control": ControlBaseline, "pooled": PooledBaseline, "additive": AdditiveBaseline,
    "linear": LinearBaseline}``. Fit each with the same training cells (``var_names`` is needed by
    ``"linear"``).

    Examples
    --------
    >>> import numpy as np
    >>> from lcd_core.baselines import make_baselines
    >>> rng = np.random.default_rng(0)
    >>> cells = {"ctrl": rng.random((50, 4)), "A": rng.random((40, 4)) + 1, "B": rng.random((40, 4))}
    >>> models = {k: m.fit(cells, var_names=["A", "B", "C", "D"]) for k, m in make_baselines().items()}
    >>> models["additive"].predict("A+B", 10, seed=0).shape
    (10, 4)
    """
    return {
        "control": ControlBaseline(),
        "pooled": PooledBaseline(),
        "additive": AdditiveBaseline(),
        "linear": LinearBaseline(),
    }


__all__ = [
    "Baseline",
    "ControlBaseline",
    "PooledBaseline",
    "AdditiveBaseline",
    "LinearBaseline",
    "make_baselines",
    "parse_condition",
]
