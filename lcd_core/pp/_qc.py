"""Quality control of cells, genes and conditions (METHOD.md §9), with the papers' presets."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
import logging
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._constants import KEYS
from ..errors import ConfigError, ScreenContentError

logger = logging.getLogger(__name__)

#: uns key where :func:`qc` records its parameters and what it removed
QC_KEY = KEYS.QC
#: uns key where :func:`filter_conditions` records what it removed
CONDITION_FILTER_KEY = KEYS.CONDITION_FILTER


@dataclass(frozen=True)
class QCParams:
    """Thresholds of :func:`qc`. ``None`` switches a filter off. Inequalities as in the papers."""

    min_genes: int = 20  #: a cell needs >= this many detected genes
    max_genes: int | None = None  #: a cell needs < this many detected genes
    min_counts: float | None = None  #: a cell needs total counts > this
    max_counts: float | None = None  #: a cell needs total counts < this
    max_pct_mt: float | None = None  #: a cell needs mitochondrial counts < this percentage of its total
    min_cells: int = 200  #: a gene needs to be detected in >= this many cells (after the cell filters)
    mt_prefix: str = "MT-"  #: mitochondrial genes are those whose symbol starts with this (case-insensitive)
    keep_targets: bool = True  #: never drop perturbed genes in the gene filter (they come first in gene selection)


#: thresholds the LCD authors used per data set (METHOD.md §9)
QC_PRESETS: dict[str, QCParams] = {
    "norman2019": QCParams(max_pct_mt=15.0, min_counts=7500, max_genes=6000),
    "replogle2022_k562_essential": QCParams(max_pct_mt=22.0, min_counts=3000, max_genes=6500),
    # "1500 < detected genes": min_genes is inclusive, hence 1501
    "wessels2023": QCParams(max_pct_mt=20.0, min_counts=3000, max_counts=40000, min_genes=1501, max_genes=6500),
}


def _raw_counts(adata: Any) -> Any:
    """Raw counts of an AnnData: ``layers[KEYS.COUNTS]`` if present, else ``.X``."""
    m = adata.layers[KEYS.COUNTS] if KEYS.COUNTS in adata.layers else adata.X
    if m is None:
        raise ScreenContentError("no counts: store raw UMI counts in .X or layers['counts']")
    return m


def _resolve(preset: str | None, overrides: dict[str, Any]) -> QCParams:
    if preset is None:
        params = QCParams()
    elif preset in QC_PRESETS:
        params = QC_PRESETS[preset]
    else:
        raise ConfigError(f"unknown QC preset {preset!r}; choose one of {sorted(QC_PRESETS)} or preset=None")
    names = {f.name for f in fields(QCParams)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise ConfigError(f"unknown QC parameter(s) {unknown}; valid ones are {sorted(names)}")
    return replace(params, **overrides)


def cell_qc_metrics(counts: Any, genes: Any, *, mt_prefix: str = "MT-") -> dict[str, np.ndarray]:
    """Per-cell totals, detected genes and mitochondrial percentage (array in, arrays out).

    Parameters
    ----------
    counts
        (n_cells, n_genes) raw counts, dense or sparse.
    genes
        (n_genes,) gene symbols.

    Returns
    -------
    ``total_counts`` (n_cells,) float64, ``n_genes`` (n_cells,) int64, ``pct_mt`` (n_cells,) float64 in %.
    """
    m = sp.csr_matrix(counts) if sp.issparse(counts) else np.asarray(counts)
    total = np.asarray(m.sum(axis=1), dtype=np.float64).ravel()
    detected = np.asarray((m > 0).sum(axis=1), dtype=np.int64).ravel()
    is_mt = np.char.startswith(np.char.upper(np.asarray(genes, dtype=str)), mt_prefix.upper())
    mt = np.asarray(m[:, is_mt].sum(axis=1), dtype=np.float64).ravel() if is_mt.any() else np.zeros_like(total)
    pct = np.divide(100.0 * mt, total, out=np.zeros_like(total), where=total > 0)
    return {"total_counts": total, "n_genes": detected, "pct_mt": pct}


def qc(adata: Any, *, preset: str | None = None, **overrides: Any) -> Any:
    """Filter cells, then genes, by the thresholds of METHOD.md §9.

    Cell filters (on all genes): detected genes in [``min_genes``, ``max_genes``), total counts in
    (``min_counts``, ``max_counts``), mitochondrial percentage < ``max_pct_mt``. Then the gene filter:
    detected in >= ``min_cells`` of the remaining cells (targets of perturbations kept with
    ``keep_targets``).

    Parameters
    ----------
    adata
        AnnData (or a :class:`~lcd_core.data.Screen`) with raw counts in ``layers["counts"]`` or ``.X``.
    preset
        ``"norman2019"``, ``"replogle2022_k562_essential"``, ``"wessels2023"`` or ``None`` (defaults only:
        >= 20 genes per cell, >= 200 cells per gene).
    **overrides
        Any field of :class:`QCParams`, overriding the preset.

    Returns
    -------
    A filtered copy. ``uns["lcd_qc"]`` (dict) records ``preset``, ``params``, ``n_cells_before/after``,
    ``cells_removed`` (cells failing each filter; a cell may fail several), ``n_genes_before/after`` and
    ``genes_removed`` (names, first 1000).
    """
    adata = getattr(adata, "adata", adata)  # a Screen carries its AnnData
    params = _resolve(preset, overrides)
    del overrides
    counts = _raw_counts(adata)
    met = cell_qc_metrics(counts, adata.var_names, mt_prefix=params.mt_prefix)
    fails = {"min_genes": met["n_genes"] < params.min_genes}
    if params.max_genes is not None:
        fails["max_genes"] = met["n_genes"] >= params.max_genes
    if params.min_counts is not None:
        fails["min_counts"] = met["total_counts"] <= params.min_counts
    if params.max_counts is not None:
        fails["max_counts"] = met["total_counts"] >= params.max_counts
    if params.max_pct_mt is not None:
        fails["max_pct_mt"] = met["pct_mt"] >= params.max_pct_mt
    keep_cells = ~np.logical_or.reduce(list(fails.values()))
    if not keep_cells.any():
        raise ScreenContentError(
            f"QC removed every cell ({ {k: int(v.sum()) for k, v in fails.items()} } failing each filter); "
            "loosen the thresholds or check that the data are raw counts"
        )
    kept = counts[keep_cells]
    kept = sp.csr_matrix(kept) if sp.issparse(kept) else np.asarray(kept)
    detected_in = np.asarray((kept > 0).sum(axis=0)).ravel()
    keep_genes = detected_in >= params.min_cells
    if params.keep_targets and KEYS.PERT in adata.obs:
        targets = {t for c in adata.obs[KEYS.PERT].astype(str).unique() if c != KEYS.CONTROL
                   for t in c.split(KEYS.COMBO_SEP)}
        keep_genes |= adata.var_names.isin(list(targets))
    out = adata[keep_cells, keep_genes].copy()
    removed = adata.var_names[~keep_genes]
    out.uns[QC_KEY] = {
        "preset": preset or "none",
        "params": {k: ("none" if v is None else v) for k, v in asdict(params).items()},
        "n_cells_before": int(adata.n_obs),
        "n_cells_after": int(out.n_obs),
        "cells_removed": {k: int(v.sum()) for k, v in fails.items()},
        "n_genes_before": int(adata.n_vars),
        "n_genes_after": int(out.n_vars),
        "genes_removed": [str(g) for g in removed[:1000]],
    }
    logger.info("qc: kept %d/%d cells, %d/%d genes", out.n_obs, adata.n_obs, out.n_vars, adata.n_vars)
    return out


def filter_conditions(adata: Any, *, min_cells: int = 100) -> Any:
    """Keep the conditions with at least ``min_cells`` cells (control is always kept).

    Returns
    -------
    A filtered copy; ``uns["lcd_condition_filter"]`` records ``min_cells`` and the dropped conditions
    with their cell counts.
    """
    adata = getattr(adata, "adata", adata)
    if KEYS.PERT not in adata.obs:
        raise ScreenContentError(f"obs[{KEYS.PERT!r}] missing; load the data with lcd_core.data.read_screen first")
    n = adata.obs[KEYS.PERT].astype(str).value_counts()
    small = n[(n < min_cells) & (n.index != KEYS.CONTROL)]
    out = adata[~adata.obs[KEYS.PERT].astype(str).isin(small.index).to_numpy()].copy()
    if hasattr(out.obs[KEYS.PERT], "cat"):
        out.obs[KEYS.PERT] = out.obs[KEYS.PERT].cat.remove_unused_categories()
    out.uns[CONDITION_FILTER_KEY] = {
        "min_cells": int(min_cells),
        "dropped": {str(k): int(v) for k, v in small.sort_values().items()},
    }
    return out
