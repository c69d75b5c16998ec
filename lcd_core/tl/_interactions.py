"""Genetic-interaction scores of a double perturbation (METHOD §6; Norman et al. 2019, Science 365:786)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from .._constants import NORM_TARGET_SUM
from ..errors import ConfigError

#: absolute default thresholds (ours), usable for a single double. Additive has magnitude √2 ≈ 1.41
#: (c_a = c_b = 1); high/low sit a factor ≈ √2 above/below. The others are on dcor's [0, 1] scale.
DEFAULT_THRESHOLDS = {
    "magnitude_high": 2.0,  # synergy: magnitude ≥
    "magnitude_low": 0.9,  # suppression: magnitude ≤
    "fit_dcor_low": 0.8,  # neomorphism: dcor(ĉ_a δ_a + ĉ_b δ_b, δ_ab) ≤
    "dcor_ratio_low": 0.4,  # epistasis: min/max(dcor_a, dcor_b) ≤
    "dcor_high": 0.9,  # redundancy: dcor([δ_a, δ_b], δ_ab) ≥ ...
    "singles_dcor_high": 0.8,  # ... and dcor(δ_a, δ_b) ≥ (the singles look alike)
}
#: one line per column of :func:`interaction_scores` / :func:`classify_interactions`, the words the app and
#: the CLI show (δ: a condition's mean shift per gene against control, z-scored CP10k; METHOD §6)
INTERACTION_COLUMNS = {
    "c_a": "weight of gene a's single shift in the double's shift (δ_ab ≈ c_a·δ_a + c_b·δ_b, Theil–Sen fit); 1 = additive",
    "c_b": "weight of gene b's single shift in the double's shift; 1 = additive",
    "magnitude": "√(c_a² + c_b²): how strong the double is against its singles; additive ≈ 1.41, higher = synergy, lower = suppression",
    "dcor": "distance correlation of the double's shift with both singles' shifts together (0–1); near 1 = explained by the singles",
    "dcor_a": "distance correlation of the double's shift with gene a's single shift alone (0–1)",
    "dcor_b": "distance correlation of the double's shift with gene b's single shift alone (0–1)",
    "fit_dcor": "distance correlation of the double's shift with the fitted c_a·δ_a + c_b·δ_b (0–1); low = a new effect (neomorphism)",
    "dominance": "log10|c_a / c_b|: positive = gene a dominates the double, negative = gene b; 0 = balanced",
    "dcor_ratio": "min/max(dcor_a, dcor_b) (0–1): low = one single explains the double alone (epistasis)",
    "dcor_singles": "distance correlation of the two singles' shifts (0–1); high = the singles do the same thing [ours]",
    "n_genes": "genes scored: control mean CP10k > 0.5 and non-zero control spread",
    "class": "the first class that applies, in the order neomorphism, epistasis, redundancy, synergy, suppression, additive",
    "classes": "every class that applies (;-joined)",
}
#: one line per interaction class (Norman et al. 2019; thresholds in :data:`DEFAULT_THRESHOLDS`)
INTERACTION_CLASSES = {
    "synergy": "the double moves genes more than its singles add up to (magnitude high)",
    "suppression": "the double moves genes less than its singles add up to (magnitude low)",
    "additive": "the double is about the sum of its singles",
    "neomorphism": "the double does something neither single does (its shift is poorly fitted by the singles)",
    "epistasis": "one gene's effect masks the other's: the double looks like one of its singles",
    "redundancy": "the two singles do the same thing and the double is no different",
}
#: priority of the primary class when several apply
_PRIORITY = ("neomorphism", "epistasis", "redundancy", "synergy", "suppression", "additive")


def distance_correlation(x: np.ndarray, y: np.ndarray) -> float:
    """Distance correlation (Székely, Rizzo & Bakirov 2007), the biased V-statistic.

    Parameters
    ----------
    x, y
        ``(n,)`` or ``(n, p)`` samples (rows are paired; here: genes).
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    x = x[:, None] if x.ndim == 1 else x
    y = y[:, None] if y.ndim == 1 else y
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ConfigError("distance_correlation needs paired samples (same number of rows, >= 2).")

    def centred(z):
        D = np.sqrt(np.maximum(((z[:, None, :] - z[None, :, :]) ** 2).sum(-1), 0.0))
        return D - D.mean(0) - D.mean(1)[:, None] + D.mean()

    A, B = centred(x), centred(y)
    dcov2 = (A * B).mean()
    dvar = np.sqrt((A * A).mean() * (B * B).mean())
    return float(np.sqrt(max(dcov2, 0.0) / dvar)) if dvar > 0 else 0.0


def _theil_sen_2d(a, b, y, max_pairs, rng, n_iter=300, tol=1e-10):
    """Theil–Sen without intercept for y ≈ c_a a + c_b b: exact solutions on pairs of genes, then their
    spatial median (Weiszfeld), as sklearn's TheilSenRegressor(fit_intercept=False) does."""
    n = a.size
    n_all = n * (n - 1) // 2
    if n_all <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:  # random subset of pairs keeps memory bounded for thousands of genes
        i = rng.integers(0, n, max_pairs)
        j = rng.integers(0, n, max_pairs)
        keep = i != j
        i, j = i[keep], j[keep]
    det = a[i] * b[j] - a[j] * b[i]
    ok = np.abs(det) > 1e-12 * (np.abs(a[i] * b[j]) + np.abs(a[j] * b[i]) + 1e-300)
    i, j, det = i[ok], j[ok], det[ok]
    if det.size == 0:
        raise ConfigError("δ_a and δ_b are collinear: the two-coefficient regression is not identified.")
    pts = np.stack([(y[i] * b[j] - y[j] * b[i]) / det, (a[i] * y[j] - a[j] * y[i]) / det], axis=1)
    m = np.median(pts, axis=0)
    for _ in range(n_iter):  # Weiszfeld iterations for the spatial median
        dist = np.linalg.norm(pts - m, axis=1)
        w = 1.0 / np.maximum(dist, 1e-12)
        new = (pts * w[:, None]).sum(0) / w.sum()
        if np.linalg.norm(new - m) < tol * (1 + np.linalg.norm(m)):
            m = new
            break
        m = new
    return m


def interaction_scores(
    delta_a: np.ndarray,
    delta_b: np.ndarray,
    delta_ab: np.ndarray,
    *,
    max_pairs: int = 200_000,
    rng: int | np.random.Generator | None = 0,
) -> dict:
    """Norman et al. (2019) interaction scores of a double (a, b) from mean shifts (METHOD §6).

    Parameters
    ----------
    delta_a, delta_b, delta_ab
        ``(G,)`` mean shifts of the singles and the double against control (z-scored CP10k, genes
        with mean CP10k > 0.5; see :func:`interaction_from_cells`).
    max_pairs
        Gene pairs used by Theil–Sen (all pairs when fewer).
    rng
        Seed or Generator for the pair subsample.

    Returns
    -------
    dict
        ``c_a, c_b`` (Theil–Sen, no intercept), ``magnitude`` √(c_a² + c_b²), ``dcor`` ([δ_a, δ_b] vs
        δ_ab), ``dcor_a``, ``dcor_b``, ``fit_dcor`` (ĉ_a δ_a + ĉ_b δ_b vs δ_ab), ``dominance``
        log10|c_a / c_b|, ``dcor_ratio`` min/max(dcor_a, dcor_b), ``dcor_singles`` dcor(δ_a, δ_b) [ours],
        ``n_genes``.
    """
    a, b, y = (np.asarray(v, dtype=float).ravel() for v in (delta_a, delta_b, delta_ab))
    if not (a.size == b.size == y.size) or a.size < 3:
        raise ConfigError("delta_a, delta_b and delta_ab must have the same length (>= 3 genes).")
    if not (np.isfinite(a).all() and np.isfinite(b).all() and np.isfinite(y).all()):
        raise ConfigError("Mean shifts contain NaN/inf (genes with zero control variance?).")
    rng = np.random.default_rng(rng)
    c_a, c_b = _theil_sen_2d(a, b, y, max_pairs, rng)
    dcor_a = distance_correlation(a, y)
    dcor_b = distance_correlation(b, y)
    with np.errstate(divide="ignore"):
        dominance = float(np.log10(np.abs(c_a) / np.abs(c_b))) if c_b != 0 else float("inf")
    hi = max(dcor_a, dcor_b)
    return {
        "c_a": float(c_a),
        "c_b": float(c_b),
        "magnitude": float(np.hypot(c_a, c_b)),
        "dcor": distance_correlation(np.stack([a, b], 1), y),
        "dcor_a": dcor_a,
        "dcor_b": dcor_b,
        "fit_dcor": distance_correlation(c_a * a + c_b * b, y),
        "dominance": dominance,
        "dcor_ratio": float(min(dcor_a, dcor_b) / hi) if hi > 0 else 0.0,
        "dcor_singles": distance_correlation(a, b),
        "n_genes": int(a.size),
    }


def classify_interactions(
    scores_df: pd.DataFrame,
    thresholds: Mapping[str, float] | None = None,
    *,
    method: str = "absolute",
    quantiles: tuple[float, float] = (0.1, 0.9),
) -> pd.DataFrame:
    """Interaction classes of doubles from their scores (METHOD §6).

    synergy: magnitude ≥ high; suppression: magnitude ≤ low; additive: in between; neomorphism:
    fit_dcor ≤ fit_dcor_low; epistasis: dcor_ratio ≤ dcor_ratio_low; redundancy: dcor ≥ dcor_high and
    (ours) dcor_singles ≥ singles_dcor_high, without which every clean additive double would count.

    Parameters
    ----------
    scores_df
        One row per double with the columns of :func:`interaction_scores`.
    thresholds
        Overrides of :data:`DEFAULT_THRESHOLDS` (unknown keys raise).
    method
        ``"absolute"``: the defaults (classify even one double); ``"quantile"``: data-set quantiles
        as in Norman et al. (low = ``quantiles[0]``, high = ``quantiles[1]``) for the magnitude,
        fit_dcor, dcor_ratio and dcor thresholds; explicit ``thresholds`` still win.

    Returns
    -------
    pandas.DataFrame
        ``scores_df`` plus one bool column per class, ``classes`` (``;``-joined) and ``class`` (the
        first of neomorphism, epistasis, redundancy, synergy, suppression, additive that applies);
        ``attrs['thresholds']`` holds the thresholds used.
    """
    thr = dict(DEFAULT_THRESHOLDS)
    need = ["magnitude", "fit_dcor", "dcor_ratio", "dcor", "dcor_singles"]
    missing = [c for c in need if c not in scores_df]
    if missing:
        raise ConfigError(f"scores_df lacks column(s) {missing}; compute them with interaction_scores.")
    if method == "quantile":
        lo, hi = quantiles
        thr.update(
            magnitude_high=float(scores_df["magnitude"].quantile(hi)),
            magnitude_low=float(scores_df["magnitude"].quantile(lo)),
            fit_dcor_low=float(scores_df["fit_dcor"].quantile(lo)),
            dcor_ratio_low=float(scores_df["dcor_ratio"].quantile(lo)),
            dcor_high=float(scores_df["dcor"].quantile(hi)),
        )
    elif method != "absolute":
        raise ConfigError(f"method must be 'absolute' or 'quantile', got {method!r}.")
    if thresholds:
        unknown = set(thresholds) - set(DEFAULT_THRESHOLDS)
        if unknown:
            raise ConfigError(f"Unknown threshold(s) {sorted(unknown)}; known: {sorted(DEFAULT_THRESHOLDS)}.")
        thr.update({k: float(v) for k, v in thresholds.items()})
    df = scores_df.copy()
    df["synergy"] = df["magnitude"] >= thr["magnitude_high"]
    df["suppression"] = df["magnitude"] <= thr["magnitude_low"]
    df["additive"] = ~df["synergy"] & ~df["suppression"]
    df["neomorphism"] = df["fit_dcor"] <= thr["fit_dcor_low"]
    df["epistasis"] = df["dcor_ratio"] <= thr["dcor_ratio_low"]
    df["redundancy"] = (df["dcor"] >= thr["dcor_high"]) & (df["dcor_singles"] >= thr["singles_dcor_high"])
    flags = df[list(_PRIORITY)].to_numpy()
    df["classes"] = [";".join(c for c, f in zip(_PRIORITY, row) if f) for row in flags]
    df["class"] = [next(c for c, f in zip(_PRIORITY, row) if f) for row in flags]
    df.attrs["thresholds"] = thr
    df.attrs["method"] = method
    return df


def interaction_from_cells(
    control: np.ndarray,
    cells_a: np.ndarray,
    cells_b: np.ndarray,
    cells_ab: np.ndarray,
    *,
    min_mean: float = 0.5,
    counts: bool = True,
    **kwargs,
) -> dict:
    """Interaction scores of a double from cells (METHOD §6).

    Cells are normalised to CP10k (``counts=True``; otherwise taken as CP10k already), z-scored
    against control (control mean and std per gene), restricted to genes with control mean CP10k >
    ``min_mean`` and non-zero control std; δ_p = mean z of p's cells (the control's mean z is 0).

    Parameters
    ----------
    control, cells_a, cells_b, cells_ab
        ``(n_p, G)`` raw counts (or CP10k) of the same genes.
    min_mean
        Expression filter on the control mean CP10k.
    counts
        Whether inputs are raw counts.
    **kwargs
        Passed to :func:`interaction_scores`.

    Returns
    -------
    dict
        :func:`interaction_scores`'s dict plus ``genes_used`` (bool mask, ``(G,)``) and ``delta_a``,
        ``delta_b``, ``delta_ab``.
    """
    mats = [np.asarray(m, dtype=float) for m in (control, cells_a, cells_b, cells_ab)]
    G = mats[0].shape[1]
    if any(m.ndim != 2 or m.shape[1] != G or m.shape[0] < 2 for m in mats):
        raise ConfigError("All four cell arrays must be (n >= 2, G) over the same genes.")
    if counts:
        mats = [m / np.maximum(m.sum(1, keepdims=True), 1e-12) * NORM_TARGET_SUM for m in mats]
    mu, sd = mats[0].mean(0), mats[0].std(0, ddof=1)
    use = (mu > min_mean) & (sd > 0)
    if use.sum() < 3:
        raise ConfigError(f"Only {int(use.sum())} genes have control mean CP10k > {min_mean}; lower min_mean.")
    z = [(m[:, use] - mu[use]) / sd[use] for m in mats]
    da, db, dab = (zz.mean(0) - z[0].mean(0) for zz in z[1:])
    out = interaction_scores(da, db, dab, **kwargs)
    out.update(genes_used=use, delta_a=da, delta_b=db, delta_ab=dab)
    return out
