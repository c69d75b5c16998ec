"""Prediction intervals on each gene's mean shift: the cells drawn, the spread between networks, and how
far the run's own predictions of its training conditions fall from their measured shifts.

For a perturbation, each of the ``M`` networks (the run's own and its ensemble's, :mod:`._ensemble`)
generates ``n`` cells. For gene j, with μ_m and s²_m the mean and variance of member m's cells:

- finite cells: the run's own mean μ_0 has sampling variance s²_0 / n;
- the model: the members' means vary by B = var_m(μ_m) (ddof 1), of which mean_m(s²_m) / n is their own
  finite-cell noise, so the between-network variance is τ² = max(B − mean_m(s²_m) / n, 0);
- the interval is μ_0 − c ± t · √(s²_0 / n + τ²), with c the reference control mean (held fixed: the
  observed shift it is compared with uses the same one) and t Student's quantile with the
  Welch–Satterthwaite degrees of freedom of that sum: τ² is estimated from only M networks (M − 1
  degrees of freedom; a normal quantile would be too narrow for M = 4), s²_0 from n cells (n − 1), so a
  gene whose uncertainty is the cells' gets a normal-like quantile and one dominated by τ² gets t_{M−1}.

That part covers the spread between networks trained with other seeds and the cells drawn, not a bias
every network shares (the same wrong direction learned from the same data): on the held-out doubles of the
demo it covers 19 % of the observed top-20 shifts at nominal 90 % (docs/benchmarks.md). The bias is
measured where it can be (split-conformal prediction, Vovk et al. 2005; Lei et al. 2018), from pairs of
predicted and observed shifts of the top-20 DE genes of conditions, a :class:`Calibration`:

- *held out* (``ensemble.json``'s ``crossfit``): each ensemble member's predictions of the training
  combinations it was trained without (:mod:`._ensemble`), errors of the kind an unseen combination makes.
  They calibrate every condition the run was not trained on;
- *training* (``fit.json``): the run's own predictions of its training conditions. They calibrate the
  training conditions, and unseen ones when the run has no cross-fitted ensemble (optimistic there: a
  condition trained on is reproduced more closely than a new one; :func:`interval_coverage` measures it).

The pairs are scored by

    score = |predicted shift − observed shift| / scale,  scale = √(f² + predicted shift²),

an error relative to the shift that stays finite for genes predicted not to move (f = ∞: an absolute
error). f is chosen per calibration from :data:`SCALE_FLOORS`: the one whose intervals are narrowest on
one half of the conditions when calibrated on the other (two folds). The level-quantile q of the scores
(the ⌈(n + 1)·level⌉-th smallest) gives the calibrated half-width q · scale; the interval shown adds it
to the ensemble's in quadrature, √((t·se)² + (q·scale)²).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._settings import INTERVAL_LEVEL
from ..errors import ConfigError
from ._lcd import LCD

LEVEL = INTERVAL_LEVEL
#: the candidate f of the calibration's scale √(f² + shift²), log1p CP10k (∞: a constant width)
SCALE_FLOORS = (0.1, 0.3, 1.0, 3.0, float("inf"))


def conformal_quantile(scores: Sequence[float], level: float) -> float:
    """The split-conformal quantile: the ⌈(n + 1)·level⌉-th smallest score (∞ when n is too small)."""
    v = np.asarray(scores, dtype=np.float64)
    v = np.sort(v[np.isfinite(v)])
    k = int(np.ceil((len(v) + 1) * level))
    return float(v[k - 1]) if 1 <= k <= len(v) else float("inf")


def _t_quantile(level: float, dof: np.ndarray) -> np.ndarray:
    from scipy.stats import t

    return t.ppf(0.5 + level / 2.0, dof)


def _scale(shift: np.ndarray, floor: float) -> np.ndarray:
    shift = np.asarray(shift, dtype=np.float64)
    return np.ones_like(shift) if not np.isfinite(floor) else np.sqrt(floor ** 2 + shift ** 2)


@dataclass(frozen=True)
class Calibration:
    """The run's predicted and observed mean shifts of its training conditions' top DE genes (``fit.json``).

    Attributes
    ----------
    predicted, observed
        ``(n,)`` shifts, log1p CP10k against the observed control.
    groups
        ``(n,)`` the condition each pair belongs to (the folds of :meth:`floor` split conditions, not genes).
    held_out
        Whether the predicting networks never saw those conditions (the ensemble's cross-fit) rather than
        trained on them (the fit check).
    """

    predicted: np.ndarray
    observed: np.ndarray
    groups: np.ndarray
    held_out: bool = False

    def __len__(self) -> int:
        return len(self.predicted)

    def describe(self) -> str:
        """Where the errors come from, in words (the CLI's, the page's and ``attrs["calibrated_on"]``)."""
        n = len(np.unique(self.groups))
        if self.held_out:
            return (f"the errors of networks trained without them on {n} of the run's training combinations "
                    f"(cross-fitted; split-conformal over {len(self)} gene shifts)")
        return f"the run's errors on its {n} training conditions (split-conformal over {len(self)} gene shifts)"

    def scores(self, floor: float) -> np.ndarray:
        return np.abs(self.predicted - self.observed) / _scale(self.predicted, floor)

    def floor(self, level: float) -> float:
        """The f of :data:`SCALE_FLOORS` whose intervals are narrowest (median width) on one half of the
        conditions when calibrated on the other, averaged over both halves (a fixed random split)."""
        conds = np.unique(self.groups)
        if len(conds) < 4:
            return SCALE_FLOORS[0]
        half = np.isin(self.groups, np.random.default_rng(0).permutation(conds)[: len(conds) // 2])
        widths = []
        for f in SCALE_FLOORS:
            w = [np.median(conformal_quantile(self.scores(f)[a], level) * _scale(self.predicted[~a], f))
                 for a in (half, ~half)]
            widths.append(np.mean(w))
        return SCALE_FLOORS[int(np.argmin(widths))]

    def half_width(self, shift: np.ndarray, level: float) -> tuple[np.ndarray, float, float]:
        """``(q · scale of each shift, q, f)``: the calibrated half-widths of ``shift`` at ``level``."""
        f = self.floor(level)
        q = conformal_quantile(self.scores(f), level)
        return q * _scale(shift, f), q, f


def calibration_from_fit(fit: dict | None, *, held_out: bool = False) -> Calibration | None:
    """The :class:`Calibration` of a fit report's ``conditions`` (``fit.json``; with ``held_out``, the
    ensemble's ``crossfit``), or ``None`` when it has none (``fit.json`` written before the intervals
    existed: ``lcd fit RUN --data SCREEN`` adds it)."""
    pred, obs, groups = [], [], []
    for i, entry in enumerate(((fit or {}).get("conditions") or {}).values()):
        pairs = entry.get("interval_pairs") or {}
        p, o = pairs.get("predicted") or [], pairs.get("observed") or []
        if len(p) == len(o) and p:
            pred += p
            obs += o
            groups += [i] * len(p)
    if not pred:
        return None
    return Calibration(np.asarray(pred, dtype=np.float64), np.asarray(obs, dtype=np.float64), np.asarray(groups),
                       held_out=held_out)


@dataclass(frozen=True)
class IntervalSources:
    """What a run's prediction intervals draw on: its networks (the run's own first, then its ensemble's),
    the calibration of its fit check (training conditions) and its ensemble's cross-fit (unseen
    combinations). ``IntervalSources.of(model, ensemble, fit)``; :meth:`calibration_for` picks per condition."""

    models: tuple[LCD, ...]
    calibration: Calibration | None
    heldout: Calibration | None = None

    @classmethod
    def of(cls, model: LCD, ensemble=None, fit: dict | None = None) -> "IntervalSources":
        """From the run's model, its :class:`~lcd_core.model.Ensemble` (or ``None``) and its ``fit.json`` dict."""
        models = tuple(ensemble.models(model)) if ensemble is not None else (model,)
        heldout = ensemble.heldout_calibration() if ensemble is not None else None
        return cls(models, calibration_from_fit(fit), heldout)

    @property
    def available(self) -> bool:
        """Whether intervals can be computed: one network alone cannot tell its own uncertainty."""
        return len(self.models) > 1 or self.calibration is not None or self.heldout is not None

    def calibration_for(self, label: str) -> Calibration | None:
        """The calibration of ``label``'s intervals: the training one for a condition the run was trained on,
        the cross-fitted one for any other (the training one where the run has none)."""
        trained = label in set(self.models[0].conditions)
        first, second = (self.calibration, self.heldout) if trained else (self.heldout, self.calibration)
        return first if first is not None else second

    def covers(self) -> str:
        """What the intervals cover, in words (the CLI's message, ``uns["lcd_intervals"]["covers"]``)."""
        parts = ([f"the spread between the {len(self.models)} networks of the run's ensemble"]
                 if len(self.models) > 1 else [])
        if self.heldout is not None:
            parts.append(f"for conditions the run was not trained on, {self.heldout.describe()}")
        if self.calibration is not None:
            parts.append(("for its training conditions, " if self.heldout is not None else "") + self.calibration.describe())
        return "the cells drawn, " + " and ".join(parts)


def mean_se(cells: np.ndarray) -> np.ndarray:
    """``(d,)`` standard error s / √n of the mean of ``(n, d)`` cells (a generated control's, for ``control_se``)."""
    x = np.asarray(cells, dtype=np.float64)
    return x.std(0, ddof=1) / np.sqrt(len(x))


def shift_intervals(models: Sequence[LCD], label: str, control_mean: np.ndarray, *, n_cells: int = 500,
                    seed: int = 0, n_evals: int | None = None, anchored: bool = False,
                    guidance: float | None = None, level: float = LEVEL,
                    cells: np.ndarray | None = None, control_se: np.ndarray | None = None,
                    calibration: Calibration | None = None) -> pd.DataFrame:
    """Interval on each gene's predicted mean shift against control (module docstring).

    Parameters
    ----------
    models
        The run's model first, then the ensemble's (:meth:`Ensemble.models`); the run's alone is enough
        with ``calibration``.
    label
        One perturbation (``A``, ``A+B``).
    control_mean
        ``(d,)`` the reference control mean, log1p CP10k (observed control cells where the screen has
        them; else the model's generated control).
    n_cells, seed, n_evals, anchored, guidance
        As :meth:`LCD.predict`, for every network.
    level
        Nominal coverage (0 < level < 1).
    cells
        The run's own ``(n, d)`` cells of ``label`` when already generated (with the same settings).
    control_se
        ``(d,)`` standard error of ``control_mean`` when it is itself an estimate to be included (generated
        control cells: s / √n0); ``None`` holds the reference fixed.
    calibration
        The :class:`Calibration` of ``label`` (:meth:`IntervalSources.calibration_for`); ``None``: the
        networks' spread and the cells only.

    Returns
    -------
    :func:`interval_table`'s DataFrame, in the model's gene order.
    """
    if len(models) < 2 and calibration is None:
        raise ConfigError("prediction intervals need the run's ensemble (`lcd ensemble RUN --data SCREEN`) or its "
                          "calibration (`lcd fit RUN --data SCREEN`): one network cannot tell its own uncertainty")
    if not 0.0 < level < 1.0:
        raise ConfigError(f"the interval level must lie in (0, 1), got {level}")
    c = np.asarray(control_mean, dtype=np.float64)
    d = models[0].n_genes
    if c.shape != (d,):
        raise ConfigError(f"the control mean must have {d} values (one per gene), got shape {c.shape}")
    means, variances = [], []
    for i, m in enumerate(models):
        x = cells if (i == 0 and cells is not None) else \
            m.predict([label], n_cells=n_cells, seed=seed, n_evals=n_evals, anchored=anchored,
                      guidance=guidance).cells[label]
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != d or len(x) < 2:
            raise ConfigError(f"cells of {label!r} must be (n ≥ 2, {d}), got {x.shape}")
        means.append(x.mean(0))
        variances.append(x.var(0, ddof=1) / len(x))
    return interval_table(np.array(means), np.array(variances), c, models[0].genes, n_cells=len(x), level=level,
                          control_se=control_se, calibration=calibration)


def interval_table(means: np.ndarray, variances: np.ndarray, control_mean: np.ndarray, genes: Sequence[str], *,
                   n_cells: int, level: float = LEVEL, control_se: np.ndarray | None = None,
                   calibration: Calibration | None = None) -> pd.DataFrame:
    """The intervals of :func:`shift_intervals` from the networks' summaries (the arithmetic alone).

    Parameters
    ----------
    means
        ``(M, d)`` each network's mean of its generated cells (the run's own network first; M = 1 needs
        ``calibration``).
    variances
        ``(M, d)`` the sampling variance of those means (cell variance / n).
    n_cells
        ``n``, the cells behind each mean.
    control_mean, control_se, level, calibration
        As :func:`shift_intervals`.

    Returns
    -------
    DataFrame: ``gene, predicted_shift`` (the run's own network), ``shift_low, shift_high``, ``shift_se``
    (√(s²_0 / n + τ²)), ``se_cells``, ``sd_model`` (τ), ``t`` (its quantile), ``calibrated`` (the conformal
    half-width q · scale, 0 without calibration), ``half_width``, ``ensemble_shift`` (mean over networks);
    ``attrs``: ``level``, ``networks``, ``n_cells``, ``conformal_q``, ``scale_floor`` (f), ``n_calibration``,
    ``calibrated_on`` (:meth:`Calibration.describe`, ``""`` without), ``calibration_held_out``.
    """
    M = means.shape[0]
    if M < 1 or variances.shape != means.shape or (M < 2 and calibration is None):
        raise ConfigError(f"need (M, d) means and variances of the same shape, M ≥ 2 without calibration; got "
                          f"{means.shape}, {variances.shape}")
    tau2 = np.maximum(means.var(0, ddof=1) - variances.mean(0), 0.0) if M > 1 else np.zeros(means.shape[1])
    cells2 = variances[0] + (0.0 if control_se is None else np.asarray(control_se, dtype=np.float64) ** 2)
    var = cells2 + tau2
    # Welch–Satterthwaite: the degrees of freedom of a sum of variance estimates
    with np.errstate(divide="ignore", invalid="ignore"):
        dof = var ** 2 / (cells2 ** 2 / max(n_cells - 1, 1) + (tau2 ** 2 / (M - 1) if M > 1 else 0.0))
    floor = max(M - 1, 1)
    dof = np.where(np.isfinite(dof), np.clip(dof, floor, None), floor)
    t = _t_quantile(level, dof)
    se = np.sqrt(var)
    shift = means[0] - control_mean
    calibrated, q, f = np.zeros_like(shift), 0.0, None
    if calibration is not None:
        calibrated, q, f = calibration.half_width(shift, level)
    half = np.sqrt((t * se) ** 2 + calibrated ** 2)
    out = pd.DataFrame({"gene": list(genes), "predicted_shift": shift, "shift_low": shift - half,
                        "shift_high": shift + half, "shift_se": se, "se_cells": np.sqrt(variances[0]),
                        "sd_model": np.sqrt(tau2), "t": t, "calibrated": calibrated, "half_width": half,
                        "ensemble_shift": means.mean(0) - control_mean})
    out.attrs.update(level=level, networks=M, n_cells=int(n_cells), conformal_q=q, scale_floor=f,
                     n_calibration=0 if calibration is None else len(calibration),
                     calibrated_on="" if calibration is None else calibration.describe(),
                     calibration_held_out=calibration is not None and calibration.held_out)
    return out


def interval_coverage(intervals: pd.DataFrame, observed: np.ndarray, control: np.ndarray,
                      genes: np.ndarray | None = None) -> np.ndarray:
    """Whether each observed mean shift falls inside its interval, its own sampling error included.

    The observed shift ō − c̄ (``observed`` ``(n, d)`` and ``control`` ``(n0, d)`` cells, log1p CP10k) is
    covered when |ō − c̄ − predicted| ≤ √(half_width² + (t · s_o / √n)²), i.e. the interval widened by the
    observation's own sampling noise at the same level. The interval must have been made with the same
    control mean (``control.mean(0)``): c̄ then cancels, and its noise with it.

    Returns
    -------
    ``(len(genes),)`` booleans, for the gene indices ``genes`` (default: all).
    """
    obs, ctrl = np.asarray(observed, dtype=np.float64), np.asarray(control, dtype=np.float64)
    d = len(intervals)
    if obs.ndim != 2 or ctrl.ndim != 2 or obs.shape[1] != d or ctrl.shape[1] != d or len(obs) < 2 or len(ctrl) < 1:
        raise ConfigError(f"observed and control cells must be (n, {d}) with n ≥ 2 observed cells; got {obs.shape}, {ctrl.shape}")
    genes = np.arange(d) if genes is None else np.asarray(genes)
    obs_shift = obs.mean(0) - ctrl.mean(0)
    obs_var = obs.var(0, ddof=1) / len(obs)
    pred = intervals["predicted_shift"].to_numpy()
    half, t = intervals["half_width"].to_numpy(), intervals["t"].to_numpy()
    return (np.abs(obs_shift - pred) <= np.sqrt(half ** 2 + t ** 2 * obs_var))[genes]
