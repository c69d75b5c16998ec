"""Choosing the modelled genes by priority (METHOD.md §9)."""

from __future__ import annotations

from collections import defaultdict
import logging
from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._constants import KEYS
from ..data._conventions import targets_of
from ..errors import ConfigError, ScreenContentError
from ._normalize import normalize_log1p

logger = logging.getLogger(__name__)



def _expression_for_selection(adata: Any, rows: np.ndarray, is_control: np.ndarray, is_counts: bool | None) -> Any:
    """log1p layer for gene selection: counts scaled to the median control library size (METHOD.md §9).

    Files without raw counts (non-integer ``.X``, no counts layer) are used as stored. ``is_counts``
    comes from a Screen when one was given; otherwise it is checked here.
    """
    m = adata.layers[KEYS.COUNTS] if KEYS.COUNTS in adata.layers else adata.X
    m = m[rows]
    m = sp.csr_matrix(m) if sp.issparse(m) else np.asarray(m)
    if is_counts is None:
        values = m.data if sp.issparse(m) else m
        is_counts = KEYS.COUNTS in adata.layers or bool(np.all(values == np.rint(values)))
    if not is_counts:
        return m  # already normalised: never treat as counts
    lib = np.asarray(m.sum(axis=1)).ravel()
    target = float(np.median(lib[is_control]))
    if target <= 0:
        raise ScreenContentError("control cells have no counts; cannot normalise for gene selection")
    return normalize_log1p(m, target_sum=target)


def select_genes(
    adata: Any,
    *,
    n_genes: int = 1000,
    train_conditions: Sequence[str] | None = None,
    n_markers: int = 20,
    keep_targets: bool = True,
) -> list[str]:
    """Choose ``n_genes`` genes by priority: targeted genes, then marker frequency, then dispersion.

    Following METHOD.md §9 (the LCD paper's protocol):

    1. every measured gene targeted by a perturbation of the screen (``keep_targets``);
    2. genes by how many training singles have them among their top-``n_markers`` DE genes
       (Wilcoxon vs control; ties broken by the mean rank within those lists);
    3. highly variable genes by normalised dispersion (Seurat flavour).

    Steps 2 and 3 use only control cells and the training singles, on a log1p layer normalised to the
    median control library size, so held-out combinations never influence the choice.

    Parameters
    ----------
    adata
        AnnData (or :class:`~lcd_core.data.Screen`) with canonical labels in ``obs["perturbation"]`` and
        raw counts in ``layers["counts"]`` or ``.X``.
    n_genes
        Number of genes to return (all genes if the screen has fewer).
    train_conditions
        Conditions in training; only its singles are used (default: every single of the screen).
    n_markers
        Length of each single's DE list counted in step 2.
    keep_targets
        Step 1: put every measured target first. CLIPR (causal graph, modules, what-if) can use a
        single-gene perturbation only when its target is modelled, so turn it off only on purpose.

    Returns
    -------
    Gene symbols in priority order (targeted genes first), ``min(n_genes, n_vars)`` of them.
    """
    import scanpy as sc

    is_counts = getattr(adata, "is_counts", None)  # known when a Screen was given
    adata = getattr(adata, "adata", adata)
    if n_genes < 1:
        raise ConfigError(f"n_genes must be >= 1, got {n_genes}")
    labels = adata.obs[KEYS.PERT].astype(str).to_numpy()
    present = set(labels)
    if KEYS.CONTROL not in present:
        raise ScreenContentError("no control cells; gene selection compares singles with control")
    if train_conditions is None:
        singles = sorted(c for c in present if len(targets_of(c)) == 1)
    else:
        unknown = [c for c in train_conditions if c not in present]
        if unknown:
            raise ConfigError(f"train_conditions not in the screen: {unknown[:10]}")
        singles = sorted({c for c in train_conditions if len(targets_of(c)) == 1})
    del train_conditions
    genes = adata.var_names.astype(str)
    n_genes = min(n_genes, len(genes))
    measured = set(genes)

    # 1. targeted genes (all perturbations of the screen: known by design, not learned from held-out cells)
    targeted = sorted({t for c in present for t in targets_of(c) if t in measured}) if keep_targets else []
    chosen: list[str] = targeted[:n_genes]
    if len(targeted) > n_genes:
        logger.warning("select_genes: %d targeted genes exceed n_genes=%d; truncated", len(targeted), n_genes)

    rows = np.flatnonzero(np.isin(labels, [KEYS.CONTROL, *singles]))
    sub_labels = labels[rows]
    x = _expression_for_selection(adata, rows, sub_labels == KEYS.CONTROL, is_counts)
    work = sc.AnnData(X=x, obs=pd.DataFrame({"group": pd.Categorical(sub_labels)}, index=np.arange(len(rows)).astype(str)),
                      var=pd.DataFrame(index=genes))

    # 2. marker frequency: top-n_markers Wilcoxon DE genes of each training single vs control
    testable = [s for s in singles if (sub_labels == s).sum() >= 2]
    freq: dict[str, int] = defaultdict(int)
    ranks: dict[str, list[int]] = defaultdict(list)
    if testable and len(chosen) < n_genes:
        sc.tl.rank_genes_groups(work, "group", groups=testable, reference=KEYS.CONTROL, method="wilcoxon",
                                n_genes=n_markers, key_added="_lcd_de")
        names = work.uns["_lcd_de"]["names"]
        for group in testable:
            for r, g in enumerate(names[group]):
                freq[str(g)] += 1
                ranks[str(g)].append(r)
        markers = sorted(freq, key=lambda g: (-freq[g], np.mean(ranks[g]), g))
        taken = set(chosen)
        chosen += [g for g in markers if g not in taken][: n_genes - len(chosen)]

    # 3. fill with highly variable genes by normalised dispersion
    if len(chosen) < n_genes:
        hvg = sc.pp.highly_variable_genes(work, flavor="seurat", inplace=False)
        disp = pd.Series(np.asarray(hvg["dispersions_norm"], dtype=float), index=genes).fillna(-np.inf)
        taken = set(chosen)
        order = disp.sort_values(ascending=False, kind="stable").index
        chosen += [g for g in order if g not in taken][: n_genes - len(chosen)]
    return chosen


def add_measured_targets(adata: Any, *, genes: Sequence[str]) -> list[str]:
    """A gene selection with every perturbed gene that the file measures added (those it lacks first).

    For a selection made elsewhere (a file's own highly variable genes, a user's list): CLIPR can use a
    single-gene perturbation only when its target is modelled (:func:`lcd_core.data.supported_pages`).

    Parameters
    ----------
    adata
        AnnData or :class:`~lcd_core.data.Screen` with canonical labels in ``obs["perturbation"]``.
    genes
        The selection.

    Returns
    -------
    The measured targets missing from ``genes`` (sorted), then ``genes`` in their order.
    """
    measured = set(getattr(adata, "genes", None) or getattr(adata, "adata", adata).var_names.astype(str))
    conditions = getattr(adata, "conditions", None)
    if conditions is None:
        conditions = set(adata.obs[KEYS.PERT].astype(str))
    genes = [str(g) for g in genes]
    unknown = [g for g in genes if g not in measured]
    if unknown:
        raise ConfigError(f"{len(unknown)} selected gene(s) are not in the screen: {unknown[:10]}")
    have = set(genes)
    missing = sorted({t for c in conditions for t in targets_of(str(c)) if t in measured and t not in have})
    return missing + genes
