"""Genetic interactions as the field draws them (Norman et al. 2019, Science 365:786, Fig. 5; METHOD §6).

- :func:`interaction_shifts`: per gene, the double's observed and predicted shift beside the additive
  expectation of its two singles (the data of Norman et al.'s scatter);
- :func:`interaction_map`: scores and class of every double of a screen (the GI map).

Both work on the quantities the scores are defined on: CP10k z-scored against control, over genes with
control mean CP10k > ``min_mean`` (:func:`~lcd_core.tl.interaction_from_cells`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .._constants import KEYS
from ..data._conventions import targets_of
from ..errors import ConfigError, LCDError
from ._interactions import classify_interactions, interaction_from_cells


def _scores(control, cells_a, cells_b, cells_ab, min_mean: float) -> dict:
    """interaction_from_cells on log1p CP10k cells (the app's unit)."""
    cp10k = [np.expm1(np.asarray(m, dtype=np.float64)) for m in (control, cells_a, cells_b, cells_ab)]
    return interaction_from_cells(*cp10k, counts=False, min_mean=min_mean)


def interaction_shifts(
    control: np.ndarray,
    cells_a: np.ndarray,
    cells_b: np.ndarray,
    *,
    genes: Sequence[str],
    observed: np.ndarray | None = None,
    predicted: np.ndarray | None = None,
    min_mean: float = 0.5,
) -> pd.DataFrame:
    """Per gene, a double's shift against the additive expectation of its singles (Norman et al.'s scatter).

    Parameters
    ----------
    control, cells_a, cells_b
        ``(n, G)`` log1p CP10k cells of control and the two singles (observed).
    genes
        The ``G`` gene names.
    observed, predicted
        ``(n, G)`` log1p CP10k cells of the double, measured and / or generated (at least one).
    min_mean
        Genes scored: control mean CP10k above this.

    Returns
    -------
    One row per scored gene: ``gene``, ``delta_a``, ``delta_b``, ``additive`` (δ_a + δ_b) and, for each
    double given, ``observed`` / ``predicted`` (δ_ab) and ``observed_fit`` / ``predicted_fit``
    (ĉ_a δ_a + ĉ_b δ_b of that double's fit); all in control standard deviations (z-scored CP10k).
    ``attrs["scores"]``: ``{"observed": {...}, "predicted": {...}}``, the scores and class of each
    (:func:`~lcd_core.tl.interaction_scores`, :func:`~lcd_core.tl.classify_interactions`, absolute thresholds).
    """
    genes = [str(g) for g in genes]
    doubles = {k: v for k, v in (("observed", observed), ("predicted", predicted)) if v is not None}
    if not doubles:
        raise ConfigError("interaction_shifts needs the double's observed or predicted cells (or both)")
    if np.asarray(control).shape[1] != len(genes):
        raise ConfigError(f"cells have {np.asarray(control).shape[1]} genes, genes names {len(genes)}")
    df, scores = None, {}
    for source, cells_ab in doubles.items():
        out = _scores(control, cells_a, cells_b, cells_ab, min_mean)
        if df is None:
            used = np.asarray(out["genes_used"])
            df = pd.DataFrame({"gene": np.asarray(genes)[used], "delta_a": out["delta_a"], "delta_b": out["delta_b"]})
            df["additive"] = df["delta_a"] + df["delta_b"]
        s = {k: v for k, v in out.items() if np.isscalar(v)}
        row = classify_interactions(pd.DataFrame([s])).iloc[0]
        scores[source] = {**s, "class": str(row["class"]), "classes": str(row["classes"])}
        df[source] = out["delta_ab"]
        df[f"{source}_fit"] = s["c_a"] * df["delta_a"] + s["c_b"] * df["delta_b"]
    df.attrs["scores"] = scores
    return df.reset_index(drop=True)


def interaction_map(
    cells: Mapping[str, np.ndarray],
    *,
    doubles: Sequence[str] | None = None,
    predicted: Mapping[str, np.ndarray] | None = None,
    control: str = KEYS.CONTROL,
    method: str = "absolute",
    thresholds: Mapping[str, float] | None = None,
    min_mean: float = 0.5,
) -> pd.DataFrame:
    """Scores and class of every double of a screen: the data of a GI map.

    Parameters
    ----------
    cells
        condition → ``(n, G)`` observed log1p CP10k cells; control and the singles of each double needed.
    doubles
        Doubles to score (default: every two-gene condition in ``cells``, and in ``predicted``).
    predicted
        double → ``(n, G)`` generated cells; each is scored too, against the observed singles.
    control
        The control label.
    method, thresholds
        Class thresholds (:func:`~lcd_core.tl.classify_interactions`; ``"quantile"`` is computed per source).
    min_mean
        Genes scored: control mean CP10k above this.

    Returns
    -------
    One row per (double, source): ``double``, ``gene_a``, ``gene_b``, ``source`` (``observed`` /
    ``predicted``), the scores of :func:`~lcd_core.tl.interaction_scores`, the class columns.
    ``attrs["skipped"]``: double → why it was not scored; ``attrs["thresholds"]``: source → thresholds.
    """
    predicted = dict(predicted or {})
    if control not in cells:
        raise ConfigError(f"cells lack the control condition {control!r}")
    if doubles is None:
        doubles = sorted({c for c in [*cells, *predicted] if len(targets_of(c)) == 2})
    rows, skipped = [], {}
    for double in doubles:
        t = targets_of(double)
        if len(t) != 2:
            skipped[double] = "not a two-gene combination"
            continue
        missing = [g for g in t if g not in cells]
        if missing:
            skipped[double] = f"single(s) {', '.join(missing)} not measured"
            continue
        for source, pool in (("observed", cells), ("predicted", predicted)):
            if double not in pool:
                continue
            try:
                s = _scores(cells[control], cells[t[0]], cells[t[1]], pool[double], min_mean)
            except LCDError as e:  # e.g. collinear singles: that double has no fit, the others still do
                skipped[f"{double} ({source})"] = str(e)
                continue
            rows.append({"double": double, "gene_a": t[0], "gene_b": t[1], "source": source,
                         **{k: v for k, v in s.items() if np.isscalar(v)}})
    cols = ["double", "gene_a", "gene_b", "source"]
    if not rows:
        out = pd.DataFrame(columns=cols)
        out.attrs.update(skipped=skipped, thresholds={})
        return out
    parts, thr = [], {}
    for source, df in pd.DataFrame(rows).groupby("source", sort=False):
        classified = classify_interactions(df, thresholds, method=method)
        thr[source] = classified.attrs["thresholds"]
        parts.append(classified)
    out = pd.concat(parts, ignore_index=True)
    out.attrs.update(skipped=skipped, thresholds=thr)
    return out
