"""Metrics on mean expression: RMSE of means, Pearson of mean shifts (Pearson-delta, Systema-style).

Pearson-delta correlates the predicted and observed shifts from the control mean. Because most
perturbations move cells in a shared direction (stress, cell-cycle arrest), a prediction of "the
average perturbation" already scores high on it. The Systema-style variant subtracts the mean of the
training perturbations instead, so only the condition-specific part of the effect is scored
(Viñas Torné et al., "Systema: a framework for evaluating genetic perturbation response prediction
beyond systematic variation", Nature Biotechnology 2025).
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def _rmse(a: np.ndarray, b: np.ndarray) -> float:
    """Root mean squared difference of two ``(d,)`` vectors."""
    return float(np.sqrt(np.mean((a - b) ** 2)))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two ``(d,)`` vectors; NaN if either is constant (correlation undefined)."""
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a @ a) * (b @ b))
    # a constant vector (e.g. a prediction of exactly "no change") has no correlation with anything
    if denom <= 1e-300 * max(len(a), 1):
        return float("nan")
    return float(np.clip((a @ b) / denom, -1.0, 1.0))


def _check_vectors(*vs: np.ndarray) -> list[np.ndarray]:
    out = [np.asarray(v, dtype=np.float64) for v in vs]
    shapes = {v.shape for v in out}
    if len(shapes) != 1 or out[0].ndim != 1:
        raise ConfigError(f"Expected 1-D mean vectors of one length (n_genes,); got shapes {sorted(shapes)}.")
    return out


def rmse(pred_mean: np.ndarray, obs_mean: np.ndarray) -> float:
    """RMSE between predicted and observed mean expression.

    Parameters
    ----------
    pred_mean, obs_mean
        ``(d,)`` mean log1p CP10k per gene.

    Returns
    -------
    ``sqrt(mean_g (pred_g − obs_g)²)``, log1p-CP10k units.
    """
    p, o = _check_vectors(pred_mean, obs_mean)
    return _rmse(p, o)


def pearson_delta(pred_mean: np.ndarray, obs_mean: np.ndarray, reference_mean: np.ndarray) -> float:
    """Pearson correlation of predicted and observed mean shifts from a reference.

    With ``reference_mean`` = the control mean this is Pearson-delta; with the mean of the training
    perturbations it is the Systema-style score.

    Parameters
    ----------
    pred_mean, obs_mean, reference_mean
        ``(d,)`` mean log1p CP10k per gene.

    Returns
    -------
    Correlation in [−1, 1]; NaN when either shift is constant across genes.
    """
    p, o, r = _check_vectors(pred_mean, obs_mean, reference_mean)
    return _pearson(p - r, o - r)
