"""Causal recovery metrics against a known truth (METHOD §7, last item)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

from ..errors import ConfigError


def _offdiag(M: np.ndarray) -> np.ndarray:
    M = np.asarray(M, dtype=float)
    return M[~np.eye(M.shape[0], dtype=bool)]


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Mann–Whitney AUROC P(score_pos > score_neg), ties counted 1/2."""
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    r = rankdata(np.concatenate([pos, neg]))
    return float((r[: pos.size].sum() - pos.size * (pos.size + 1) / 2) / (pos.size * neg.size))


def sign_auroc(estimate: np.ndarray, truth: np.ndarray, *, threshold: float = 0.5) -> float:
    """3-class sign AUROC, one-vs-one averaged, on off-diagonal entries.

    Truth classes −1 / 0 / +1 by ``|a| >= threshold``; for each pair of classes (lower, higher) the
    estimate itself is the score that should rank the higher class above the lower; the three pairwise
    AUROCs are averaged (pairs with an empty class are skipped). A transposed or sign-flipped estimate
    scores low, a perfect one 1.
    """
    e, tr = _offdiag(estimate), _offdiag(truth)
    cls = np.where(tr >= threshold, 1, np.where(tr <= -threshold, -1, 0))
    aucs = [_auc(e[cls == hi], e[cls == lo]) for lo, hi in ((-1, 0), (0, 1), (-1, 1))]
    aucs = [a for a in aucs if np.isfinite(a)]
    return float(np.mean(aucs)) if aucs else float("nan")


def sign_macro_f1(estimate: np.ndarray, truth: np.ndarray, *, threshold: float = 0.5, est_threshold: float | None = None) -> float:
    """Macro-F1 of the signs (−1/0/+1) of off-diagonal entries; the estimate is thresholded at
    ``est_threshold`` (default: the truth's threshold, so only meaningful on the truth's scale)."""
    from sklearn.metrics import f1_score

    et = threshold if est_threshold is None else est_threshold
    e, tr = _offdiag(estimate), _offdiag(truth)
    ce = np.where(e >= et, 1, np.where(e <= -et, -1, 0))
    ct = np.where(tr >= threshold, 1, np.where(tr <= -threshold, -1, 0))
    return float(f1_score(ct, ce, labels=[-1, 0, 1], average="macro", zero_division=0))


def causal_recovery(estimate: np.ndarray, truth: np.ndarray, *, threshold: float = 0.5) -> dict:
    """Recovery of a causal-effect matrix (both rows = sources, or both rows = targets).

    Returns
    -------
    dict
        ``sign_auroc`` (3-class, one-vs-one), ``sign_f1`` (macro), ``pearson`` of off-diagonal entries.
    """
    e, tr = _offdiag(estimate), _offdiag(truth)
    pear = float(np.corrcoef(e, tr)[0, 1]) if e.std() > 0 and tr.std() > 0 else float("nan")
    return {
        "sign_auroc": sign_auroc(estimate, truth, threshold=threshold),
        "sign_f1": sign_macro_f1(estimate, truth, threshold=threshold),
        "pearson": pear,
    }


def edge_precision_recall(estimate: np.ndarray, truth: np.ndarray, *, threshold: float) -> dict:
    """Precision and recall of the estimated edges ``|estimate| > threshold`` against the true edges
    ``truth != 0``, off-diagonal entries only (both matrices rows = sources, same gene order).

    Returns
    -------
    dict
        ``precision`` (true edges among the estimated ones; 0 when none is estimated), ``recall`` (true
        edges found; 0 when the truth has none), ``tp``, ``n_estimated``, ``n_true``.
    """
    E, T = np.asarray(estimate, dtype=float), np.asarray(truth, dtype=float)
    if E.shape != T.shape or E.ndim != 2 or E.shape[0] != E.shape[1]:
        raise ConfigError(f"estimate and truth must be the same (d, d) shape; got {E.shape} and {T.shape}")
    est, true = np.abs(_offdiag(E)) > threshold, _offdiag(T) != 0
    tp = int((est & true).sum())
    return {"precision": tp / max(int(est.sum()), 1), "recall": tp / max(int(true.sum()), 1), "tp": tp,
            "n_estimated": int(est.sum()), "n_true": int(true.sum())}
