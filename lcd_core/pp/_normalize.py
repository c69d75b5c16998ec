"""Library-size normalisation: the one definition of "log1p CP10k" used everywhere."""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .._constants import NORM_TARGET_SUM


def normalize_log1p(counts: Any, *, target_sum: float = NORM_TARGET_SUM) -> Any:
    """Scale each cell's counts to ``target_sum`` over the given genes, then ``log1p``.

    ``x_ig = log(1 + target_sum * y_ig / sum_g' y_ig')`` (METHOD.md §1: normalisation is used for
    evaluation, baselines, UMAP and DE, never inside the likelihood). A cell with no counts stays 0.

    Parameters
    ----------
    counts
        (n_cells, n_genes) raw counts, dense array or scipy sparse matrix. The sum runs over exactly
        these genes, so subset genes first if the library size should be over the modelled genes.
    target_sum
        Library size after scaling (default :data:`lcd_core.NORM_TARGET_SUM`, 1e4: "CP10k").

    Returns
    -------
    (n_cells, n_genes) float32: a dense ndarray for dense input, a CSR matrix for sparse input
    (zeros stay zeros, so sparsity is kept). The input is not modified.
    """
    if sp.issparse(counts):
        m = sp.csr_matrix(counts, dtype=np.float64, copy=True)
        lib = np.asarray(m.sum(axis=1)).ravel()
        scale = np.divide(target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
        # scale stored values row by row: repeat each row's factor over its stored entries
        m.data *= np.repeat(scale, np.diff(m.indptr))
        np.log1p(m.data, out=m.data)
        return m.astype(np.float32)
    y = np.asarray(counts, dtype=np.float64)
    lib = y.sum(axis=1, keepdims=True)
    scale = np.divide(target_sum, lib, out=np.zeros_like(lib), where=lib > 0)
    return np.log1p(y * scale).astype(np.float32)
