"""Questions the app (and scripts) ask of a trained model about one perturbation: mean-shift tables,
the interaction class of a double, and LCD beside the baselines on observed cells.

Thin glue over :mod:`lcd_core.tl` (interactions), :mod:`lcd_core.metrics` and :mod:`lcd_core.baselines`;
arrays in, arrays or DataFrames out; no UI. The linear what-if lives with CLIPR (:mod:`lcd_core.clipr`),
the held-out benchmark in :mod:`lcd_core.model` (``evaluate_run``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .._constants import KEYS
from ..errors import ConfigError, LCDError
from ._interactions import classify_interactions, interaction_from_cells


# ---------------------------------------------------------------------------------------- shifts
def gene_shift_table(pred: np.ndarray, control: np.ndarray, genes: Sequence[str], *,
                     observed: np.ndarray | None = None) -> pd.DataFrame:
    """Mean shift per gene against control, ranked by |predicted shift|.

    Columns ``gene, control_mean, predicted_mean, predicted_shift`` and, with ``observed``,
    ``observed_mean, observed_shift``; all in log1p CP10k.
    """
    genes = list(genes)
    c = np.asarray(control, dtype=float).mean(0)
    p = np.asarray(pred, dtype=float).mean(0)
    if c.size != len(genes) or p.size != len(genes):
        raise ConfigError(f"cells must have {len(genes)} genes")
    df = pd.DataFrame({"gene": genes, "control_mean": c, "predicted_mean": p, "predicted_shift": p - c})
    if observed is not None:
        o = np.asarray(observed, dtype=float).mean(0)
        df["observed_mean"] = o
        df["observed_shift"] = o - c
    order = np.argsort(-np.abs(df["predicted_shift"].to_numpy()), kind="stable")
    return df.iloc[order].reset_index(drop=True)


# ---------------------------------------------------------------------------------------- interactions
def double_interaction(control: np.ndarray, cells_a: np.ndarray, cells_b: np.ndarray, cells_ab: np.ndarray,
                       **kwargs) -> dict:
    """Interaction scores and class of a double from log1p CP10k cells (METHOD §6, absolute thresholds).

    Returns
    -------
    dict
        The scores of :func:`interaction_scores` plus ``class`` (primary) and ``classes`` (all that apply).
    """
    cp10k = [np.expm1(np.asarray(m, dtype=float)) for m in (control, cells_a, cells_b, cells_ab)]
    out = interaction_from_cells(*cp10k, counts=False, **kwargs)
    scores = {k: v for k, v in out.items() if np.isscalar(v)}
    row = classify_interactions(pd.DataFrame([scores])).iloc[0]
    scores.update({"class": str(row["class"]), "classes": str(row["classes"])})
    return scores


# ---------------------------------------------------------------------------------------- evaluation
def fit_baselines(cells_by_condition: Mapping[str, np.ndarray], genes: Sequence[str]) -> dict:
    """Every baseline of :mod:`lcd_core.baselines`, fitted on training cells (log1p CP10k)."""
    from ..baselines import make_baselines

    fitted = {}
    for name, b in make_baselines().items():
        try:
            fitted[name] = b.fit(cells_by_condition, KEYS.CONTROL, var_names=list(genes))
        except LCDError:
            continue  # e.g. no perturbed training condition: this baseline is simply absent
    return fitted


def compare_methods(
    condition: str,
    predictions: Mapping[str, np.ndarray],
    observed: np.ndarray,
    control: np.ndarray,
    train_perturbed_mean: np.ndarray,
    *,
    seed: int = 0,
) -> pd.DataFrame:
    """Every metric of METHOD §7 for one condition, one row per method (``predictions``: name → cells),
    scored as :func:`lcd_core.model.evaluate_run` scores it (:func:`lcd_core.metrics.score_predictions`)."""
    from ..metrics import score_predictions

    scores = score_predictions(predictions, observed, control, train_perturbed_mean=train_perturbed_mean, seed=seed)
    return pd.DataFrame([{"method": name, "condition": condition, **m} for name, m in scores.items()])


def baseline_predictions(baselines: Mapping, condition: str, n_cells: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Cells of ``condition`` from every baseline that can predict it (others are skipped)."""
    out = {}
    for name, b in baselines.items():
        try:
            out[name] = np.asarray(b.predict(condition, n_cells, seed=seed), dtype=float)
        except LCDError:
            continue
    return out
