"""A reference embedding fitted once (control + training cells) into which new cells are projected.

Why a fixed reference: predicted cells of a new perturbation must land in the *same* coordinates as
the observed cells they are compared with, and refitting UMAP per question would move everything.
So PCA and UMAP are fitted once on the reference cells, and new cells go through ``pca.transform``
then ``umap.transform`` (McInnes et al. 2018, arXiv:1802.03426, §"transform").
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .._constants import KEYS
from ..errors import ConfigError


@dataclass
class ReferenceEmbedding:
    """PCA (+ UMAP) fitted on reference cells; :meth:`transform` projects new cells into it.

    Attributes
    ----------
    coords
        ``(n_ref, 2)`` coordinates of the reference cells (UMAP, or the first two PCs for ``method="pca"``).
    labels
        ``(n_ref,)`` condition label of each reference cell.
    method
        ``"umap"`` or ``"pca"``.
    params
        Fitting parameters (cells used, PCs, neighbours, seed).
    """

    coords: np.ndarray
    labels: np.ndarray
    method: str
    params: dict = field(default_factory=dict)
    _mean: np.ndarray | None = None
    _components: np.ndarray | None = None
    _umap: object | None = None
    # umap's transform mutates internal state lazily (search index); serialise calls across sessions
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def pcs(self, X: np.ndarray) -> np.ndarray:
        """``(n, n_pcs)`` principal-component scores of log1p cells."""
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self._mean.size:
            raise ConfigError(f"cells must be (n, {self._mean.size}); got {X.shape}")
        return (X - self._mean) @ self._components.T

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(n, 2)`` coordinates of new log1p cells in the reference embedding."""
        if len(X) == 0:
            return np.zeros((0, 2))
        Z = self.pcs(X)
        if self.method == "pca":
            return Z[:, :2].copy()
        with self._lock:
            return np.asarray(self._umap.transform(Z.astype(np.float32)), dtype=np.float64)


def fit_reference_embedding(
    X: np.ndarray,
    labels: Sequence[str],
    *,
    method: str = "umap",
    n_pcs: int = 30,
    max_cells: int = 5000,
    n_neighbors: int = 15,
    min_dist: float = 0.3,
    rng: int | np.random.Generator | None = 0,
) -> ReferenceEmbedding:
    """Fit the reference embedding on ``X`` (control + training cells, log1p CP10k).

    Parameters
    ----------
    X
        ``(n, d)`` reference cells, log1p CP10k.
    labels
        ``(n,)`` condition of each cell; a stratified subsample of at most ``max_cells`` cells is used,
        keeping every condition (control first in line).
    method
        ``"umap"`` (umap-learn on the PCs) or ``"pca"`` (first two PCs; instant, no numba compile).
    n_pcs
        Principal components UMAP works on (fewer when the data have fewer dimensions).
    max_cells
        Cap on reference cells (UMAP's cost grows with them; the picture does not need more).
    n_neighbors, min_dist
        UMAP parameters.
    rng
        Seed or Generator for the subsample, PCA and UMAP.

    Returns
    -------
    ReferenceEmbedding
    """
    X = np.asarray(X, dtype=np.float64)
    labels = np.asarray(list(labels), dtype=object)
    if X.ndim != 2 or X.shape[0] != labels.size or X.shape[0] < 5:
        raise ConfigError(f"need (n >= 5, d) reference cells and one label each; got {X.shape} and {labels.size}")
    if method not in ("umap", "pca"):
        raise ConfigError(f"method must be 'umap' or 'pca', got {method!r}")
    if not np.isfinite(X).all():
        raise ConfigError("reference cells contain NaN or infinite values; pass log1p-normalised expression")
    rng = np.random.default_rng(rng)
    seed = int(rng.integers(0, 2**31 - 1))
    keep = _stratified(labels, max_cells, rng)
    X, labels = X[keep], labels[keep]

    # PCA by SVD of the centred matrix (deterministic up to sign; fix signs for reproducibility)
    mean = X.mean(0)
    k = int(max(2, min(n_pcs, X.shape[1], X.shape[0] - 1)))
    _, _, Vt = np.linalg.svd(X - mean, full_matrices=False)
    comps = Vt[:k]
    comps *= np.sign(comps[np.arange(k), np.abs(comps).argmax(1)])[:, None]
    Z = (X - mean) @ comps.T
    params = {"n_cells": int(X.shape[0]), "n_pcs": k, "seed": seed, "max_cells": max_cells}
    if method == "pca":
        return ReferenceEmbedding(coords=Z[:, :2].copy(), labels=labels, method="pca", params=params,
                                  _mean=mean, _components=comps)
    import umap  # heavy import (numba); only when asked for

    nn = int(min(n_neighbors, X.shape[0] - 1))
    # force_approximation_algorithm: below 4096 cells umap otherwise keeps an exact, Python-level
    # distance loop for transform (seconds per call); the NN-descent index answers in milliseconds
    model = umap.UMAP(n_neighbors=nn, min_dist=min_dist, n_components=2, random_state=seed, n_epochs=200,
                      low_memory=True, force_approximation_algorithm=True, verbose=False)
    coords = np.asarray(model.fit_transform(Z.astype(np.float32)), dtype=np.float64)
    params.update(n_neighbors=nn, min_dist=min_dist)
    emb = ReferenceEmbedding(coords=coords, labels=labels, method="umap", params=params, _mean=mean,
                             _components=comps, _umap=model)
    emb.transform(X[: min(5, len(X))])  # compile umap's search functions now, not at the first question
    return emb


def _stratified(labels: np.ndarray, max_cells: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of at most ``max_cells`` cells, an equal share per condition (sorted)."""
    n = labels.size
    if n <= max_cells:
        return np.arange(n)
    groups = {lab: np.flatnonzero(labels == lab) for lab in dict.fromkeys(labels.tolist())}
    share = max(1, max_cells // len(groups))
    out = [rng.choice(ix, size=min(share, ix.size), replace=False) for ix in groups.values()]
    return np.sort(np.concatenate(out))


def reference_cells(screen, conditions: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """log1p cells and labels of ``conditions`` (always including control) of a :class:`Screen`."""
    conds = [KEYS.CONTROL] + [c for c in conditions if c != KEYS.CONTROL]
    conds = [c for c in conds if c in set(screen.conditions)]
    X = np.concatenate([screen.log1p(c) for c in conds])
    labels = np.repeat(conds, [len(screen.cell_indices(c)) for c in conds])
    return X, labels
