"""Differential expression of a condition against control, and how well a prediction recovers it.

The test is the two-sided Wilcoxon rank-sum (Mann–Whitney U) test with the normal approximation,
tie correction and continuity correction, vectorised over genes. It gives the same p-values as
``scipy.stats.mannwhitneyu(..., method="asymptotic")``. Genes are ranked by p-value, ties (which are
common: many p-values underflow to 0 for strong perturbations) broken by the larger absolute
difference of mean log1p expression.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import ndtr

from ..errors import ConfigError


#: genes per block of the rank computation (bounds the (cells, genes) temporaries)
_GENE_BLOCK = 128


def _rank_sums_and_ties(pooled: torch.Tensor, n1: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank sum of the first ``n1`` rows and the tie term Σ(t³ − t), per column, from one sort.

    ``pooled`` is ``(n_cells, genes)``; returns two ``(genes,)`` tensors.

    Tied values get their average rank. Within a run of t equal sorted values at positions
    start..end (0-based) the average rank is (start + end)/2 + 1, and Σ over the run's t positions of
    (t² − 1) equals t³ − t, so neither needs a per-run loop or a scatter back to cell order.
    """
    # work on (genes, cells), contiguous along cells: sorts and scans along the last dim are fastest
    pooled = pooled.T.contiguous()
    n = pooled.shape[1]
    values, order = torch.sort(pooled, dim=1)
    pos = torch.arange(n, dtype=torch.float64).expand_as(values)
    new_run = torch.ones_like(values, dtype=torch.bool)
    new_run[:, 1:] = values[:, 1:] != values[:, :-1]
    run_end = torch.ones_like(new_run)
    run_end[:, :-1] = new_run[:, 1:]
    start = torch.cummax(torch.where(new_run, pos, 0.0), dim=1).values
    end = torch.flip(torch.cummin(torch.flip(torch.where(run_end, pos, float(n)), [1]), dim=1).values, [1])
    avg_rank = (start + end) / 2.0 + 1.0
    rank_sum = (avg_rank * (order < n1)).sum(1)
    length = end - start + 1.0
    ties = (length * length - 1.0).sum(1)
    return rank_sum, ties


def _rank_sum_test(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided Mann–Whitney U test of every gene (column), normal approximation.

    Parameters
    ----------
    a, b
        ``(n1, d)`` and ``(n2, d)`` cells, e.g. a condition and control.

    Returns
    -------
    ``(U, p)``: ``(d,)`` U statistics of ``a`` and two-sided p-values (1 for genes constant in
    both sets).
    """
    n1, n2 = a.shape[0], b.shape[0]
    n = n1 + n2
    r1 = np.empty(a.shape[1])
    ties = np.empty(a.shape[1])
    for g0 in range(0, a.shape[1], _GENE_BLOCK):
        sl = slice(g0, g0 + _GENE_BLOCK)
        pooled = torch.as_tensor(np.concatenate([a[:, sl], b[:, sl]], axis=0), dtype=torch.float64)
        rs, tt = _rank_sums_and_ties(pooled, n1)
        r1[sl], ties[sl] = rs.numpy(), tt.numpy()
    u1 = r1 - n1 * (n1 + 1) / 2.0
    mu = n1 * n2 / 2.0
    var = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1)))
    # continuity-corrected z of the larger of U1, U2 (two-sided), as in scipy's asymptotic method
    u = np.maximum(u1, n1 * n2 - u1)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (u - mu - 0.5) / np.sqrt(var)
    p = np.where(var > 0, np.clip(2.0 * ndtr(-z), 0.0, 1.0), 1.0)
    return u1, p


def _rank_de(obs: np.ndarray, control: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Genes ordered from most to least differentially expressed.

    Returns
    -------
    ``(order, p, effect)``: ``(d,)`` gene indices, p-values and mean differences (obs − control).
    """
    _, p = _rank_sum_test(obs, control)
    effect = obs.mean(0) - control.mean(0)
    # lexsort sorts by the last key first: p ascending, then |effect| descending
    order = np.lexsort((-np.abs(effect), p))
    return order, p, effect


def _check_cells(obs: np.ndarray, control: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    obs, control = np.asarray(obs, dtype=np.float64), np.asarray(control, dtype=np.float64)
    if obs.ndim != 2 or control.ndim != 2 or obs.shape[1] != control.shape[1]:
        raise ConfigError(f"Expected (n_cells, n_genes) arrays over the same genes; got {obs.shape}, {control.shape}.")
    if obs.shape[0] < 1 or control.shape[0] < 1:
        raise ConfigError("Need at least one cell in the condition and in control for a DE test.")
    return obs, control


def top_de_genes(obs: np.ndarray, control: np.ndarray, *, k: int = 20) -> np.ndarray:
    """Indices of a condition's ``k`` most differentially expressed genes against control.

    Parameters
    ----------
    obs
        ``(n, d)`` observed cells of the condition, log1p CP10k.
    control
        ``(n0, d)`` control cells, log1p CP10k.
    k
        Number of genes (capped at d).

    Returns
    -------
    ``(min(k, d),)`` int gene indices, most significant first (p-value, then |mean difference|).
    """
    obs, control = _check_cells(obs, control)
    if k < 1:
        raise ConfigError(f"k must be a positive number of genes; got {k}.")
    return _rank_de(obs, control)[0][:k]


def _de_recovery(true_top: np.ndarray, pred_shift: np.ndarray) -> tuple[float, float]:
    """AUROC and average precision of the true DE genes ranked by ``|pred_shift|``."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    labels = np.zeros(pred_shift.shape[0], dtype=bool)
    labels[true_top] = True
    if labels.all() or not labels.any():
        # with one class only there is nothing to rank
        return float("nan"), float("nan")
    score = np.abs(pred_shift)
    return float(roc_auc_score(labels, score)), float(average_precision_score(labels, score))


def de_recovery(
    obs: np.ndarray, control: np.ndarray, pred_mean: np.ndarray, *, top: int = 100
) -> tuple[float, float]:
    """How well predicted mean shifts single out the condition's true top DE genes.

    The true positives are the ``top`` genes of :func:`top_de_genes` (observed vs control); the score
    of a gene is ``|pred_mean − mean(control)|``.

    Parameters
    ----------
    obs, control
        ``(n, d)`` and ``(n0, d)`` observed and control cells, log1p CP10k.
    pred_mean
        ``(d,)`` predicted mean expression, log1p CP10k.
    top
        Number of true DE genes (positives).

    Returns
    -------
    ``(AUROC, average precision)``; both NaN when ``top ≥ d`` (no negatives).
    """
    obs, control = _check_cells(obs, control)
    pred_mean = np.asarray(pred_mean, dtype=np.float64)
    if pred_mean.shape != (obs.shape[1],):
        raise ConfigError(f"pred_mean must have shape ({obs.shape[1]},); got {pred_mean.shape}.")
    true_top = _rank_de(obs, control)[0][:top]
    return _de_recovery(true_top, pred_mean - control.mean(0))
