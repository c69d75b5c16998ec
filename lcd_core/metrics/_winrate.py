"""Paired comparison of two methods over test conditions: win rate and one-sided Wilcoxon p-value."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..errors import ConfigError


class WinRate(NamedTuple):
    """Result of :func:`win_rate`.

    Attributes
    ----------
    win_rate
        Percentage (0–100) of paired conditions where method A is strictly better than B.
    tie_rate
        Percentage of conditions with equal scores (counted neither as win nor loss).
    p_value
        One-sided Wilcoxon signed-rank p-value of "A is better than B"; NaN if fewer than one
        non-tied pair.
    n
        Number of conditions with finite scores for both methods.
    """

    win_rate: float
    tie_rate: float
    p_value: float
    n: int


def _win_rate(a: np.ndarray, b: np.ndarray, lower_is_better: bool) -> WinRate:
    """Win rate of ``a`` over ``b`` on paired ``(n,)`` scores, ignoring pairs with a NaN."""
    from scipy.stats import wilcoxon

    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = int(a.shape[0])
    if n == 0:
        return WinRate(float("nan"), float("nan"), float("nan"), 0)
    diff = a - b
    wins = diff < 0 if lower_is_better else diff > 0
    ties = diff == 0
    if (~ties).sum() == 0:
        # scipy's default zero_method drops ties; with all pairs tied there is no evidence either way
        p = float("nan")
    else:
        # H1: the differences a − b are shifted below 0 (lower is better) or above 0
        alternative = "less" if lower_is_better else "greater"
        p = float(wilcoxon(a, b, alternative=alternative, zero_method="wilcox").pvalue)
    return WinRate(100.0 * wins.mean(), 100.0 * ties.mean(), p, n)


def win_rate(a: np.ndarray, b: np.ndarray, *, lower_is_better: bool) -> WinRate:
    """How often method A beats method B on one metric, paired over test conditions.

    Parameters
    ----------
    a, b
        ``(n_conditions,)`` scores of methods A and B on the same conditions, in the same order.
        Conditions where either score is NaN are left out.
    lower_is_better
        The metric's direction (True for distances and errors, False for correlations and AUROC).

    Returns
    -------
    :class:`WinRate` with the percentage of wins, ties, the one-sided Wilcoxon signed-rank p-value
    (``scipy.stats.wilcoxon``, Wilcoxon 1945) of A being better, and the number of pairs used.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ConfigError(f"Expected two paired 1-D score arrays of equal length; got {a.shape}, {b.shape}.")
    return _win_rate(a, b, lower_is_better)
