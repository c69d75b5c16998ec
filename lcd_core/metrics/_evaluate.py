"""Every metric of METHOD.md §7 for one test condition, and their summary over conditions and methods."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ._de import _de_recovery, _rank_de
from ._distribution import _mmd_energy, _self_sums, _subsample_rows, _wasserstein_per_gene
from ._means import _pearson, _rmse
from ._winrate import _win_rate

logger = logging.getLogger(__name__)

#: base metric names (a ``_top<k>`` suffix restricts one to the condition's top-k DE genes) → True if
#: lower is better
METRIC_LOWER_IS_BETTER: dict[str, bool] = {
    "mmd": True,
    "energy": True,
    "wasserstein": True,
    "rmse": True,
    "pearson_delta": False,
    "pearson_systema": False,
    "de_auroc": False,
    "de_ap": False,
}

_TOP_SUFFIX = re.compile(r"_top\d+$")

#: what each metric measures, in one sentence for a reader of the Benchmark page (same keys as
#: :data:`METRIC_LOWER_IS_BETTER`; the direction is that dict's)
METRIC_MEANINGS: dict[str, str] = {
    "mmd": "distance between the predicted and observed cell populations (MMD², RBF kernels at 10 scales)",
    "energy": "distance between the predicted and observed cell populations (energy distance)",
    "wasserstein": "per-gene distance between predicted and observed expression distributions, averaged",
    "rmse": "error of the predicted mean expression against the observed mean",
    "pearson_delta": "correlation of predicted and observed mean shifts from control",
    "pearson_systema": "correlation of the shifts from the mean of training perturbations (less inflated "
                       "than pearson_delta by the shift all perturbations share)",
    "de_auroc": "how well the predicted |shift| ranks the observed top-100 DE genes first (AUROC; 0.5: chance)",
    "de_ap": "the same ranking as de_auroc, as average precision",
}
#: the summary table's other columns (lcd_core.metrics.summarize, the app's calibrated columns)
SUMMARY_COLUMNS: dict[str, str] = {
    "mean": "mean of the metric over held-out conditions",
    "sem": "standard error of that mean",
    "n": "conditions scored",
    "win_rate": "% of held-out conditions where LCD beats this method (– on LCD's own row)",
    "tie_rate": "% of conditions where LCD and this method score the same",
    "p_value": "one-sided Wilcoxon signed-rank p-value that LCD beats this method",
    "n_pairs": "conditions compared for the win rate",
    "calibrated_vs_additive": "(u − b) / (r − b) against the additive baseline b and the replicate r: "
                              "0 = as good as additive, 1 = as good as repeating the experiment",
    "calibrated_vs_pooled": "the same against the pooled-cells baseline",
}


def metric_legend(metrics: list[str] | None = None) -> pd.DataFrame:
    """One row per metric: what it measures and which direction is better (``_top<k>`` names: the same
    metric on the condition's top-k DE genes).

    Returns
    -------
    DataFrame with columns ``metric``, ``measures``, ``better`` (``"lower"`` / ``"higher"``).
    """
    rows = []
    for m in metrics if metrics is not None else list(METRIC_MEANINGS):
        base = _TOP_SUFFIX.sub("", m)
        if base not in METRIC_MEANINGS:
            continue
        top = _TOP_SUFFIX.search(m)
        what = METRIC_MEANINGS[base] + (f", on the condition's top-{top.group()[4:]} DE genes" if top else "")
        rows.append({"metric": m, "measures": what, "better": "lower" if METRIC_LOWER_IS_BETTER[base] else "higher"})
    return pd.DataFrame(rows, columns=["metric", "measures", "better"])


def lower_is_better(metric: str) -> bool | None:
    """Direction of a metric name from :func:`evaluate_condition` (``"mmd_top20"`` → True).

    Returns
    -------
    True for distances and errors, False for correlations and DE recovery, None for a column that is
    not a metric (``"n_obs"``, ``"subsampled"``, ...).
    """
    return METRIC_LOWER_IS_BETTER.get(_TOP_SUFFIX.sub("", metric))


def _check_cells(name: str, x: np.ndarray, d: int | None, min_cells: int) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ConfigError(f"`{name}` must be a 2-D (n_cells, n_genes) array; got shape {x.shape}.")
    if d is not None and x.shape[1] != d:
        raise ConfigError(f"`{name}` has {x.shape[1]} genes, expected {d} (the genes of `obs`).")
    if x.shape[0] < min_cells:
        raise ConfigError(f"`{name}` needs at least {min_cells} cells; got {x.shape[0]}.")
    if not np.isfinite(x).all():
        raise ConfigError(f"`{name}` contains NaN or infinite values; normalise and log1p it first.")
    return x


def _set_metrics(
    pred: np.ndarray,
    obs: np.ndarray,
    pred_pair: np.ndarray,
    obs_pair: np.ndarray,
    ctrl_mean: np.ndarray,
    train_mean: np.ndarray,
    obs_self: tuple,
) -> dict[str, float]:
    """The six set/mean metrics on one gene subset (all arrays already restricted to it; ``obs_self``:
    ``obs_pair``'s own pairwise sums)."""
    mmd2, energy = _mmd_energy(pred_pair, obs_pair, y_self=obs_self)
    mp, mo = pred.mean(0), obs.mean(0)
    return {
        "mmd": mmd2,
        "energy": energy,
        "wasserstein": float(_wasserstein_per_gene(pred, obs).mean()),
        "rmse": _rmse(mp, mo),
        "pearson_delta": _pearson(mp - ctrl_mean, mo - ctrl_mean),
        "pearson_systema": _pearson(mp - train_mean, mo - train_mean),
    }


@dataclass(frozen=True)
class _Observed:
    """The observed side of one condition's scores, computed once however many predictions are scored
    against it: the cells, the sub-sample MMD and energy use and its own pairwise sums (on all genes and on
    the top DE genes), and the DE ranking against control (the one Wilcoxon test per gene)."""

    obs: np.ndarray  # (n', d) float64
    pair: np.ndarray  # the cells of obs that MMD/energy use
    subsampled: bool
    ctrl_mean: np.ndarray  # (d,)
    train_mean: np.ndarray  # (d,)
    top: np.ndarray  # the de_top most DE genes, sorted indices
    de_true: np.ndarray  # the de_recovery_top most DE genes
    self_sums: tuple  # pair's pairwise sums on all genes, and on `top`
    n_control: int
    de_top: int
    max_cells: int | None
    seed: int


def _observed(obs: np.ndarray, control: np.ndarray, train_perturbed_mean: np.ndarray, *, de_top: int,
              de_recovery_top: int, max_cells: int | None, seed: int) -> _Observed:
    obs = _check_cells("obs", obs, None, 2)
    d = obs.shape[1]
    control = _check_cells("control", control, d, 1)
    train_mean = np.asarray(train_perturbed_mean, dtype=np.float64)
    if train_mean.shape != (d,):
        raise ConfigError(f"`train_perturbed_mean` must have shape ({d},); got {train_mean.shape}.")
    if de_top < 1 or de_recovery_top < 1:
        raise ConfigError(f"de_top and de_recovery_top must be positive; got {de_top}, {de_recovery_top}.")
    if max_cells is not None and max_cells < 2:
        raise ConfigError(f"max_cells must be at least 2 or None; got {max_cells}.")
    # each side is sub-sampled with its own generator seeded by `seed`, so one sub-sample of the observed
    # cells serves every prediction
    pair, subsampled = _subsample_rows(obs, max_cells, np.random.default_rng(seed))
    order, _, _ = _rank_de(obs, control)
    top = np.sort(order[:de_top])
    return _Observed(obs, pair, subsampled, control.mean(0), train_mean, top, order[:de_recovery_top],
                     (_self_sums(pair), _self_sums(pair[:, top])), control.shape[0], de_top, max_cells, seed)


def _score(pred: np.ndarray, ref: _Observed) -> dict[str, float]:
    """:func:`evaluate_condition`'s metrics of ``pred`` against the observed side ``ref``."""
    pred = _check_cells("pred", pred, ref.obs.shape[1], 2)
    pred_pair, sub_p = _subsample_rows(pred, ref.max_cells, np.random.default_rng(ref.seed))
    if sub_p or ref.subsampled:
        logger.info("MMD/energy on %d predicted and %d observed cells (max_cells=%d, seed=%d).",
                    pred_pair.shape[0], ref.pair.shape[0], ref.max_cells, ref.seed)
    top = ref.top
    out = _set_metrics(pred, ref.obs, pred_pair, ref.pair, ref.ctrl_mean, ref.train_mean, ref.self_sums[0])
    top_metrics = _set_metrics(pred[:, top], ref.obs[:, top], pred_pair[:, top], ref.pair[:, top],
                               ref.ctrl_mean[top], ref.train_mean[top], ref.self_sums[1])
    out.update({f"{k}_top{ref.de_top}": v for k, v in top_metrics.items()})
    out["de_auroc"], out["de_ap"] = _de_recovery(ref.de_true, pred.mean(0) - ref.ctrl_mean)
    out.update(
        n_pred=float(pred.shape[0]),
        n_obs=float(ref.obs.shape[0]),
        n_control=float(ref.n_control),
        n_pairwise_pred=float(pred_pair.shape[0]),
        n_pairwise_obs=float(ref.pair.shape[0]),
        subsampled=float(sub_p or ref.subsampled),
    )
    return out


def evaluate_condition(
    pred: np.ndarray,
    obs: np.ndarray,
    control: np.ndarray,
    *,
    train_perturbed_mean: np.ndarray,
    de_top: int = 20,
    de_recovery_top: int = 100,
    max_cells: int | None = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """Compute every metric of METHOD.md §7 for one test condition.

    Parameters
    ----------
    pred
        ``(n, d)`` predicted cells, log1p CP10k.
    obs
        ``(n', d)`` observed cells of the condition, log1p CP10k.
    control
        ``(n0, d)`` observed control cells, log1p CP10k.
    train_perturbed_mean
        ``(d,)`` mean log1p CP10k over the training perturbations (the Systema reference).
    de_top
        Size of the DE gene subset on which each metric is repeated (keys ending ``_top{de_top}``).
    de_recovery_top
        Number of true DE genes that DE recovery (AUROC/AP) must single out.
    max_cells
        MMD and energy cost O(n²): ``pred`` and ``obs`` are sub-sampled to at most this many cells for
        them (None: never). Means, Wasserstein and DE use all cells.
    seed
        Seed of that sub-sampling (each side its own generator seeded by it).

    Returns
    -------
    dict with float values:

    - ``mmd``, ``energy``, ``wasserstein``, ``rmse``, ``pearson_delta``, ``pearson_systema`` on all
      genes, and the same with suffix ``_top{de_top}`` on the condition's top DE genes (observed vs
      control, Wilcoxon rank-sum);
    - ``de_auroc``, ``de_ap``: recovery of the top ``de_recovery_top`` DE genes by predicted
      ``|mean shift|`` (NaN if ``de_recovery_top ≥ d``);
    - bookkeeping: ``n_pred``, ``n_obs``, ``n_control``, ``n_pairwise_pred``, ``n_pairwise_obs``
      (cells used by MMD/energy) and ``subsampled`` (1.0 if sub-sampling happened, else 0.0).

    Pearson values are NaN when a mean shift is constant across genes (e.g. a prediction identical
    to the control mean).
    """
    ref = _observed(obs, control, train_perturbed_mean, de_top=de_top, de_recovery_top=de_recovery_top,
                    max_cells=max_cells, seed=seed)
    return _score(pred, ref)


@dataclass(frozen=True)
class Scoring:
    """How a prediction is scored against observed cells, one definition for every caller: ``lcd
    evaluate`` and the Benchmark page (:func:`lcd_core.model.evaluate_run`), the Perturb page
    (:func:`lcd_core.tl.compare_methods`) and the calibration protocol (:func:`split_half_protocol`)."""

    de_top: int = 20  # genes of the ``_top20`` metrics (METHOD.md §7); all genes when d is smaller
    de_recovery_top: int = 100  # true DE genes DE recovery must single out (METHOD.md §7), capped at d // 2
    max_cells: int | None = 2000  # MMD/energy sub-sample each side to this many cells (O(n²)); None: never

    def kwargs_for(self, n_genes: int) -> dict:
        """Keywords of :func:`evaluate_condition` for ``n_genes`` genes: DE recovery looks for at most
        half of them (with all genes "true", AUROC is undefined)."""
        return {"de_top": self.de_top, "de_recovery_top": min(self.de_recovery_top, max(1, n_genes // 2)),
                "max_cells": self.max_cells}


#: the one scoring of the project (see :class:`Scoring`)
SCORING = Scoring()


def score_predictions(predictions: Mapping[str, np.ndarray], obs: np.ndarray, control: np.ndarray, *,
                      train_perturbed_mean: np.ndarray, seed: int = 0,
                      scoring: Scoring = SCORING) -> dict[str, dict[str, float]]:
    """:func:`score_prediction` of several predictions of one condition (name → ``(n, d)`` cells), each
    scored exactly as alone; the observed side (its DE test against control, its own MMD/energy sums) is
    computed once for all of them."""
    ref = _observed(obs, control, train_perturbed_mean, seed=seed, **scoring.kwargs_for(np.shape(obs)[1]))
    return {name: _score(pred, ref) for name, pred in predictions.items()}


def score_prediction(pred: np.ndarray, obs: np.ndarray, control: np.ndarray, *, train_perturbed_mean: np.ndarray,
                     seed: int = 0, scoring: Scoring = SCORING) -> dict[str, float]:
    """:func:`evaluate_condition` with the project's one set of settings (:data:`SCORING`).

    Arrays as :func:`evaluate_condition` (log1p CP10k, ``(n, d)``; ``train_perturbed_mean`` ``(d,)``).
    """
    return score_predictions({"pred": pred}, obs, control, train_perturbed_mean=train_perturbed_mean, seed=seed,
                             scoring=scoring)["pred"]


def summarize(
    per_condition_df: pd.DataFrame,
    reference_method: str = "lcd",
    *,
    method_col: str = "method",
    condition_col: str = "condition",
) -> pd.DataFrame:
    """Mean ± s.e.m. of every metric per method, and win rates of a reference method over the others.

    Parameters
    ----------
    per_condition_df
        Long table, one row per (method, condition): columns ``method_col``, ``condition_col`` and
        metric columns named as in :func:`evaluate_condition` (other columns are ignored).
    reference_method
        The method whose win rate against each other method is reported.
    method_col, condition_col
        Column names of the method and the condition.

    Returns
    -------
    DataFrame with one row per (metric, method) and columns ``metric``, ``method``, ``mean``, ``sem``
    (standard error over conditions with a finite value), ``n``, ``lower_is_better``, and for the other
    methods ``win_rate`` (% of paired conditions where the reference is strictly better), ``tie_rate``,
    ``p_value`` (one-sided Wilcoxon signed-rank test that the reference is better) and ``n_pairs``;
    these are NaN on the reference's own rows.
    """
    for col in (method_col, condition_col):
        if col not in per_condition_df.columns:
            raise ConfigError(f"The per-condition table has no `{col}` column; columns: {list(per_condition_df.columns)}.")
    methods = list(dict.fromkeys(per_condition_df[method_col]))
    if reference_method not in methods:
        raise ConfigError(f"Reference method {reference_method!r} is not in the table; methods: {methods}.")
    if per_condition_df.duplicated([method_col, condition_col]).any():
        raise ConfigError("The per-condition table has several rows for one (method, condition) pair.")
    metrics = [c for c in per_condition_df.columns if lower_is_better(str(c)) is not None]
    if not metrics:
        raise ConfigError(f"No metric columns found; expected names such as {list(METRIC_LOWER_IS_BETTER)}.")

    rows = []
    for metric in metrics:
        lib = bool(lower_is_better(metric))
        wide = per_condition_df.pivot(index=condition_col, columns=method_col, values=metric).astype(float)
        ref = wide[reference_method].to_numpy()
        for method in methods:
            v = wide[method].to_numpy()
            finite = v[np.isfinite(v)]
            n = int(finite.size)
            row = {
                "metric": metric,
                "method": method,
                "mean": float(finite.mean()) if n else float("nan"),
                "sem": float(finite.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
                "n": n,
                "lower_is_better": lib,
                "win_rate": float("nan"),
                "tie_rate": float("nan"),
                "p_value": float("nan"),
                "n_pairs": 0,
            }
            if method != reference_method:
                wr = _win_rate(ref, v, lib)
                row.update(win_rate=wr.win_rate, tie_rate=wr.tie_rate, p_value=wr.p_value, n_pairs=wr.n)
            rows.append(row)
    return pd.DataFrame(rows)
