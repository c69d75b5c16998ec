"""Replicate-calibrated scores: every metric rescaled so that 0 is a baseline and 1 is the experiment itself.

As the Virtual Cell Challenge scales its metrics, a raw score ``u`` becomes

    s = (u − b) / (r − b)

with ``b`` a baseline's score and ``r`` the score of a *split-half replicate*: half of the observed cells
("A") used as the prediction of the other half ("B"). ``s = 0`` is as good as the baseline, ``s = 1`` as
good as repeating the experiment; ``s > 1`` is possible (a model averages away sampling noise a
replicate carries), ``s < 0`` is worse than the baseline. The formula needs no sign flip for
lower-is-better metrics: there ``r < b`` and ``u < b`` both make numerator and denominator negative.

Sample size. A replicate holds half the observed cells, and several metrics depend on the sizes of
the sets compared (Wasserstein and the mean metrics through sampling noise, MMD and energy through
their variance). So the calibration has its own protocol (:func:`split_half_protocol`): every
prediction is sub-sampled to the size of half A and scored against the same half B as the replicate,
with the top DE genes taken from B. A perfect prediction then meets the replicate's conditions
exactly and scores 1 in expectation; the raw numbers of the report (scored against all observed
cells) are not the ``u`` of this formula.
"""

from __future__ import annotations

import zlib

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ._evaluate import SCORING, Scoring, lower_is_better, score_predictions

#: the name of the split-half replicate in a half-protocol table's ``method`` column
REPLICATE = "replicate"
#: baselines the scores are calibrated against by default: additive, and the mean baseline (the average
#: perturbed training cell, our "pooled")
DEFAULT_BASELINES = ("additive", "pooled")
#: a condition needs at least this many observed cells to be split into two halves of 2
MIN_SPLIT_CELLS = 4


def split_half(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A random split of ``n`` cells into half A (``n // 2`` cells) and half B (the rest).

    Returns
    -------
    ``(a, b)``: sorted int index arrays, disjoint, covering ``range(n)``.
    """
    perm = rng.permutation(n)
    return np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])


def condition_rng(seed: int, condition: str) -> np.random.Generator:
    """A generator seeded by ``(seed, condition)``: a condition's split does not depend on the others."""
    return np.random.default_rng([int(seed), zlib.crc32(condition.encode())])


def calibrated_score(u: float, b: float, r: float) -> tuple[float, str]:
    """``(u − b) / (r − b)`` with the reason when it is undefined.

    Parameters
    ----------
    u, b, r
        Raw scores of the method, the baseline and the replicate (one metric, same protocol).

    Returns
    -------
    ``(score, note)``: ``note`` is ``""`` for a finite score, else why the score is NaN (never inf).
    """
    if not (np.isfinite(u) and np.isfinite(b) and np.isfinite(r)):
        which = [name for name, v in (("method", u), ("baseline", b), ("replicate", r)) if not np.isfinite(v)]
        return float("nan"), f"undefined: the {', '.join(which)} score is NaN"
    span = r - b
    if abs(span) <= 1e-12 * max(abs(r), abs(b), 1e-300):
        return float("nan"), "undefined: the replicate scores the same as the baseline (r = b)"
    return float((u - b) / span), ""


def split_half_protocol(
    predictions: dict[str, np.ndarray],
    obs: np.ndarray,
    control: np.ndarray,
    *,
    train_perturbed_mean: np.ndarray,
    condition: str,
    seed: int = 0,
    scoring: Scoring = SCORING,
) -> list[dict]:
    """Score each method and the split-half replicate of one condition on the calibration protocol.

    The observed cells are split into halves A and B (:func:`split_half`, seeded by ``(seed,
    condition)``); the replicate is A, each method's prediction is sub-sampled (without replacement)
    to ``len(A)`` cells, and everything is scored against B with :func:`score_predictions`.

    Parameters
    ----------
    predictions
        method → ``(n, d)`` predicted cells, log1p CP10k.
    obs, control
        ``(n', d)`` observed cells of the condition and ``(n0, d)`` control cells.
    train_perturbed_mean
        ``(d,)`` the Systema reference (:func:`evaluate_condition`).
    condition
        The condition's label (seeds its split).
    scoring
        The settings of :func:`score_predictions` (the project's one :data:`SCORING` by default).

    Returns
    -------
    One dict per method plus one for :data:`REPLICATE`: ``method``, ``condition``, ``n_half`` and the
    metrics. Empty when the condition has fewer than :data:`MIN_SPLIT_CELLS` cells.
    """
    obs = np.asarray(obs)
    if len(obs) < MIN_SPLIT_CELLS:
        return []
    rng = condition_rng(seed, condition)
    a, b = split_half(len(obs), rng)
    half_b = obs[b]
    preds = {}
    for method, pred in {**predictions, REPLICATE: obs[a]}.items():
        pred = np.asarray(pred)
        if method != REPLICATE and len(pred) > len(a):
            pred = pred[np.sort(rng.choice(len(pred), len(a), replace=False))]
        preds[method] = pred
    scores = score_predictions(preds, half_b, control, train_perturbed_mean=train_perturbed_mean, seed=seed,
                               scoring=scoring)
    return [{"method": method, "condition": condition, "n_half": len(a), **s} for method, s in scores.items()]


def _metric_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if lower_is_better(str(c)) is not None]


def calibrate(half: pd.DataFrame, *, baselines: tuple[str, ...] = DEFAULT_BASELINES) -> pd.DataFrame:
    """Per-condition calibrated scores from a half-protocol table (:func:`split_half_protocol` rows).

    Parameters
    ----------
    half
        Long table: ``method`` (including :data:`REPLICATE` and the ``baselines``), ``condition`` and
        metric columns.
    baselines
        Methods to calibrate against (each gives its own score).

    Returns
    -------
    Long table, one row per (condition, method, metric, baseline) for every method but the replicate:
    ``u``, ``b``, ``r``, ``score`` (NaN when undefined) and ``note`` (the reason, else empty).
    """
    _check_half(half, baselines)
    rows = []
    for cond, sub in half.groupby("condition", sort=False):
        by = sub.set_index("method")
        if REPLICATE not in by.index or any(bl not in by.index for bl in baselines):
            continue
        for metric in _metric_columns(half):
            r = float(by.loc[REPLICATE, metric])
            for method in by.index:
                if method == REPLICATE:
                    continue
                u = float(by.loc[method, metric])
                for bl in baselines:
                    b = float(by.loc[bl, metric])
                    score, note = calibrated_score(u, b, r)
                    rows.append({"condition": cond, "method": method, "metric": metric, "baseline": bl,
                                 "u": u, "b": b, "r": r, "score": score, "note": note})
    return pd.DataFrame(rows, columns=["condition", "method", "metric", "baseline", "u", "b", "r", "score", "note"])


def calibrated_summary(half: pd.DataFrame, *, baselines: tuple[str, ...] = DEFAULT_BASELINES) -> pd.DataFrame:
    """Calibrated scores of the means over conditions: ``(ū − b̄) / (r̄ − b̄)`` per metric, method, baseline.

    Calibrating the means rather than averaging per-condition scores keeps one condition whose
    replicate happens to score like the baseline (a huge or undefined ratio) from dominating. Means
    run over the conditions where the method, the baseline and the replicate are all finite.

    Returns
    -------
    One row per (metric, method, baseline): ``u``, ``b``, ``r`` (means), ``n`` (conditions),
    ``score``, ``note``, ``lower_is_better``.
    """
    _check_half(half, baselines)
    rows = []
    methods = [m for m in dict.fromkeys(half["method"]) if m != REPLICATE]
    for metric in _metric_columns(half):
        wide = half.pivot(index="condition", columns="method", values=metric).astype(float)
        if REPLICATE not in wide:
            continue
        for method in methods:
            for bl in baselines:
                if method not in wide or bl not in wide:
                    continue
                trio = wide[[method, bl, REPLICATE]].to_numpy()
                keep = np.isfinite(trio).all(1)
                n = int(keep.sum())
                if n:
                    u, b, r = trio[keep].mean(0)
                    score, note = calibrated_score(u, b, r)
                else:
                    u = b = r = score = float("nan")
                    note = "undefined: no condition where the method, baseline and replicate scores are all finite"
                rows.append({"metric": metric, "method": method, "baseline": bl, "u": float(u), "b": float(b),
                             "r": float(r), "n": n, "score": score, "note": note,
                             "lower_is_better": bool(lower_is_better(metric))})
    return pd.DataFrame(rows, columns=["metric", "method", "baseline", "u", "b", "r", "n", "score", "note",
                                       "lower_is_better"])


def _check_half(half: pd.DataFrame, baselines: tuple[str, ...]) -> None:
    for col in ("method", "condition"):
        if col not in half.columns:
            raise ConfigError(f"The half-protocol table has no `{col}` column; columns: {list(half.columns)}.")
    methods = set(half["method"])
    missing = [m for m in (REPLICATE, *baselines) if m not in methods]
    if missing:
        raise ConfigError(f"The half-protocol table lacks the method(s) {', '.join(missing)} needed for calibration.")
