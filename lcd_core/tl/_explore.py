"""Questions the app (and scripts) ask of a trained model about one perturbation: linear what-ifs
through CLIPR's drift matrix, mean-shift tables, the interaction class of a double, and LCD beside the
baselines on observed cells.

Thin glue over :mod:`lcd_core.tl` (what-if, interactions), :mod:`lcd_core.metrics` and
:mod:`lcd_core.baselines`; arrays in, arrays or DataFrames out; no UI. CLIPR of a run and the held-out
benchmark live in :mod:`lcd_core.model` (``get_clipr``, ``evaluate_run``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .._constants import KEYS
from ..errors import ConfigError, LCDError
from ._interactions import classify_interactions, interaction_from_cells
from ._whatif import whatif_shift


# ---------------------------------------------------------------------------------------- what-if
def whatif_drift_shift(A: np.ndarray, genes: Sequence[str], interventions: Mapping[str, float],
                       sd: np.ndarray) -> np.ndarray:
    """Drift shift ``c`` of soft interventions, in state units.

    ``interventions`` maps a gene to a signed strength (negative = knock-down, positive = activation)
    in units of that gene's latent standard deviation: ``c_j = strength · sd_j · |A_jj|``, so that a gene
    without regulators would move its own mean by ``strength`` standard deviations.
    """
    index = {g: i for i, g in enumerate(genes)}
    c = np.zeros(len(genes))
    for g, s in interventions.items():
        if g not in index:
            raise ConfigError(f"gene {g!r} is not modelled by this run; the linear what-if covers modelled genes only")
        j = index[g]
        c[j] = float(s) * float(sd[j]) * max(abs(float(A[j, j])), 1e-8)
    return c


def whatif_cells(model, A: np.ndarray, interventions: Mapping[str, float], *, n_cells: int = 300,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cells of a linear what-if: the model's control latent states moved by ``−A⁻¹ c`` (METHOD §4,
    :func:`whatif_shift`), then through the model's measurement model.

    Returns
    -------
    shift
        ``(d,)`` predicted mean shift of the latent state.
    cells
        ``(n_cells, d)`` log1p CP10k.
    """
    if not interventions:
        raise ConfigError("choose at least one gene to knock down or activate")
    c = whatif_drift_shift(A, model.genes, interventions, model.sd)
    shift = whatif_shift(A, c)
    pred = model.predict([KEYS.CONTROL], n_cells=n_cells, seed=seed)
    latent = pred.latent[KEYS.CONTROL].astype(np.float64) + shift[None, :]
    return shift, model.decode(latent, seed=seed + 1)


#: a linear response beyond this many latent standard deviations is no state a cell could reach: it
#: comes from a nearly singular drift matrix (the paper variant when few genes were perturbed)
MAX_RESPONSE_SD = 100.0


def singular_response(shift: np.ndarray, sd: np.ndarray, *, max_sd: float = MAX_RESPONSE_SD) -> float | None:
    """The largest response of a what-if in latent standard deviations, ``max_j |shift_j| / sd_j``, when
    it is not finite or exceeds ``max_sd`` (the linearised dynamics are nearly singular and the what-if
    means nothing); ``None`` for a plausible response. ``shift``, ``sd``: ``(d,)`` latent units."""
    z = np.abs(np.asarray(shift, dtype=float)) / np.asarray(sd, dtype=float)
    if not np.all(np.isfinite(z)):
        return float("inf")
    return float(z.max()) if z.size and z.max() > max_sd else None


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
    """Every metric of METHOD §7 for one condition, one row per method (``predictions``: name → cells)."""
    from ..metrics import evaluate_condition

    rows = []
    for name, cells in predictions.items():
        m = evaluate_condition(cells, observed, control, train_perturbed_mean=train_perturbed_mean,
                               de_top=min(20, observed.shape[1]), de_recovery_top=min(100, max(1, observed.shape[1] // 2)),
                               max_cells=500, seed=seed)
        rows.append({"method": name, "condition": condition, **m})
    return pd.DataFrame(rows)


def baseline_predictions(baselines: Mapping, condition: str, n_cells: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Cells of ``condition`` from every baseline that can predict it (others are skipped)."""
    out = {}
    for name, b in baselines.items():
        try:
            out[name] = np.asarray(b.predict(condition, n_cells, seed=seed), dtype=float)
        except LCDError:
            continue
    return out
