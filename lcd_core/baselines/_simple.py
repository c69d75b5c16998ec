"""The three simple baselines of METHOD.md §7: no change, pooled perturbed cells, additive shifts."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np

from .._constants import KEYS
from ..errors import ConfigError
from ._base import _FittedBaseline, parse_condition, sample_rows

logger = logging.getLogger(__name__)


class ControlBaseline(_FittedBaseline):
    """"No change": every condition is predicted by a sample of the control cells."""

    name = "control"

    def fit(
        self,
        cells_by_condition: Mapping[str, np.ndarray],
        control_label: str = KEYS.CONTROL,
        *,
        var_names: Sequence[str] | None = None,
    ) -> ControlBaseline:
        """Store the control cells; see :class:`~lcd_core.baselines.Baseline`."""
        self._fit_common(cells_by_condition, control_label)
        return self

    def predict(self, condition: str, n_cells: int, *, seed: int | np.random.Generator = 0) -> np.ndarray:
        """``(n_cells, d)`` control cells, sampled without replacement when there are enough."""
        rng = self._start_predict(n_cells, seed)
        return sample_rows(self._control, n_cells, rng)


class PooledBaseline(_FittedBaseline):
    """Every perturbation is predicted by a sample of all training perturbed cells, pooled.

    It captures the effect shared by all perturbations and nothing specific to any one; a model that
    does not beat it has learned only the average response.
    """

    name = "pooled"

    def fit(
        self,
        cells_by_condition: Mapping[str, np.ndarray],
        control_label: str = KEYS.CONTROL,
        *,
        var_names: Sequence[str] | None = None,
    ) -> PooledBaseline:
        """Pool the cells of every non-control condition; see :class:`~lcd_core.baselines.Baseline`."""
        cells = self._fit_common(cells_by_condition, control_label)
        perturbed = [x for label, x in cells.items() if label != control_label]
        if not perturbed:
            raise ConfigError("The pooled baseline needs at least one perturbed training condition.")
        self._pooled = np.concatenate(perturbed, axis=0)
        return self

    def predict(self, condition: str, n_cells: int, *, seed: int | np.random.Generator = 0) -> np.ndarray:
        """``(n_cells, d)`` pooled perturbed cells (control cells for the control label)."""
        rng = self._start_predict(n_cells, seed)
        source = self._control if condition == self.control_label else self._pooled
        return sample_rows(source, n_cells, rng)


class AdditiveBaseline(_FittedBaseline):
    """Control cells shifted by the sum of the single-gene mean shifts of the condition's genes.

    For a condition with target genes T, every sampled control cell x becomes ``x + Σ_{g∈T} δ_g``, with
    δ_g = mean(cells of the single ``g``) − mean(control) (log1p CP10k). A gene with no single-gene
    training condition gets the average mean shift of the training conditions containing it; a gene
    in no training condition gets 0 (a warning is logged). Values are not clipped at 0, so the
    predicted mean shift is exactly the sum of the single shifts (Norman et al. 2019's additive
    model, in log space).
    """

    name = "additive"

    def fit(
        self,
        cells_by_condition: Mapping[str, np.ndarray],
        control_label: str = KEYS.CONTROL,
        *,
        var_names: Sequence[str] | None = None,
    ) -> AdditiveBaseline:
        """Compute per-gene shifts; see :class:`~lcd_core.baselines.Baseline`."""
        cells = self._fit_common(cells_by_condition, control_label)
        mu_ctrl = self._control.mean(0)
        shifts = {label: x.mean(0) - mu_ctrl for label, x in cells.items() if label != control_label}
        self._gene_shift: dict[str, np.ndarray] = {}
        containing: dict[str, list[np.ndarray]] = {}
        for label, shift in shifts.items():
            genes = parse_condition(label)
            if len(genes) == 1:
                self._gene_shift[genes[0]] = shift
            for g in genes:
                containing.setdefault(g, []).append(shift)
        for g, group in containing.items():
            # fallback: a gene seen only in combinations gets the average shift of those combinations
            self._gene_shift.setdefault(g, np.mean(group, axis=0))
        return self

    def predicted_shift(self, condition: str) -> np.ndarray:
        """``(d,)`` mean shift from control that this baseline predicts for ``condition``."""
        if self._control is None:
            raise ConfigError("The 'additive' baseline is not fitted; call `.fit(cells_by_condition)` first.")
        shift = np.zeros(self.n_genes)
        if condition == self.control_label:
            return shift
        for g in parse_condition(condition):
            if g not in self._gene_shift:
                logger.warning("Gene %r of %r is in no training condition; the additive baseline uses 0.", g, condition)
                continue
            shift = shift + self._gene_shift[g]
        return shift

    def predict(self, condition: str, n_cells: int, *, seed: int | np.random.Generator = 0) -> np.ndarray:
        """``(n_cells, d)`` control cells plus the summed single-gene shifts."""
        rng = self._start_predict(n_cells, seed)
        return sample_rows(self._control, n_cells, rng) + self.predicted_shift(condition)[None, :]
