"""The interface every baseline implements, and the helpers they share.

A baseline is fitted on observed cells of the training conditions and predicts *cells* (not just a
mean) for any condition, in the same normalised log1p space as LCD's predictions, so that every
metric in :mod:`lcd_core.metrics` applies to it unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from .._constants import KEYS
from ..data._conventions import parse_label, targets_of
from ..errors import ConfigError


@runtime_checkable
class Baseline(Protocol):
    """A perturbation-response baseline that generates cells.

    Attributes
    ----------
    name
        Short identifier used in result tables (``"control"``, ``"additive"``, ...).
    """

    name: str

    def fit(
        self,
        cells_by_condition: Mapping[str, np.ndarray],
        control_label: str = KEYS.CONTROL,
        *,
        var_names: Sequence[str] | None = None,
    ) -> Baseline:
        """Fit on training cells.

        Parameters
        ----------
        cells_by_condition
            Condition label (``"ctrl"``, ``"A"``, ``"A+B"``) → ``(n_cells, d)`` cells, log1p CP10k.
            Must contain ``control_label``.
        control_label
            Label of the control condition.
        var_names
            ``(d,)`` gene names of the columns; needed by baselines that embed perturbations by
            their target gene (the linear baseline), ignored by the others.

        Returns
        -------
        ``self``.
        """
        ...

    def predict(self, condition: str, n_cells: int, *, seed: int | np.random.Generator = 0) -> np.ndarray:
        """Generate cells for a condition.

        Parameters
        ----------
        condition
            Condition label; combinations are joined by ``KEYS.COMBO_SEP``.
        n_cells
            Number of cells to generate.
        seed
            Seed or Generator; equal seeds give equal cells.

        Returns
        -------
        ``(n_cells, d)`` float64 cells, log1p CP10k.
        """
        ...


def parse_condition(condition: str) -> list[str]:
    """Target genes of a condition label (``"A+B"`` → ``["A", "B"]``; separator ``KEYS.COMBO_SEP``)."""
    return list(targets_of(parse_label(condition)))


def validate_cells(
    cells_by_condition: Mapping[str, np.ndarray], control_label: str
) -> dict[str, np.ndarray]:
    """Check a training dict (2-D, finite, one gene count, control present, ≥ 1 cell each); float64 copy."""
    if control_label not in cells_by_condition:
        raise ConfigError(
            f"No control cells: the label {control_label!r} is not among the training conditions "
            f"({sorted(cells_by_condition)[:5]}...). Pass `control_label=`."
        )
    out: dict[str, np.ndarray] = {}
    d = None
    for label, x in cells_by_condition.items():
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 1:
            raise ConfigError(f"Cells of {label!r} must be a non-empty (n_cells, n_genes) array; got {x.shape}.")
        if d is not None and x.shape[1] != d:
            raise ConfigError(f"Cells of {label!r} have {x.shape[1]} genes; other conditions have {d}.")
        if not np.isfinite(x).all():
            raise ConfigError(f"Cells of {label!r} contain NaN or infinite values.")
        d = x.shape[1]
        out[str(label)] = x
    return out


def sample_rows(x: np.ndarray, n_cells: int, rng: np.random.Generator) -> np.ndarray:
    """``n_cells`` rows of ``x``: without replacement when there are enough, else with replacement."""
    if n_cells < 0:
        raise ConfigError(f"n_cells must be non-negative; got {n_cells}.")
    replace = n_cells > x.shape[0]
    return x[rng.choice(x.shape[0], size=n_cells, replace=replace)].copy()


class _FittedBaseline:
    """Shared state and checks: the control cells, the gene count and the fitted flag."""

    name = "baseline"

    def __init__(self) -> None:
        self._control: np.ndarray | None = None

    def _fit_common(self, cells_by_condition: Mapping[str, np.ndarray], control_label: str) -> dict[str, np.ndarray]:
        cells = validate_cells(cells_by_condition, control_label)
        self._control = cells[control_label]
        self.control_label = control_label
        self.n_genes = self._control.shape[1]
        return cells

    def _start_predict(self, n_cells: int, seed: int | np.random.Generator) -> np.random.Generator:
        if self._control is None:
            raise ConfigError(f"The {self.name!r} baseline is not fitted; call `.fit(cells_by_condition)` first.")
        if int(n_cells) != n_cells or n_cells < 0:
            raise ConfigError(f"n_cells must be a non-negative integer; got {n_cells}.")
        return np.random.default_rng(seed)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
