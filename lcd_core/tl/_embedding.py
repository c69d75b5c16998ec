"""A reference embedding fitted once (control + training cells) into which new cells are placed.

Why a fixed reference: predicted cells of a new perturbation must land in the *same* coordinates as
the observed cells they are compared with, and refitting UMAP per question would move everything.
So PCA and UMAP are fitted once on the reference cells (:func:`fit_reference_embedding`); a new cell
goes through the PCA, starts at the membership-weighted mean of its nearest reference cells' coordinates
and is moved by UMAP's layout gradient against the fixed reference — what umap-learn's ``transform`` does
(McInnes et al. 2018, arXiv:1802.03426, §3.1–3.2), written here on arrays. Placement therefore needs only
plain arrays (the PCA basis, the reference cells' PCs and their coordinates): the embedding is saved as
an ``.npz`` of those (:meth:`ReferenceEmbedding.to_arrays`) and loads in milliseconds, with no pickle and
no numba import, and a loaded embedding places cells exactly as the freshly fitted one.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from .._constants import KEYS
from ..errors import ConfigError

#: bump when fitting or placement changes: a saved embedding of another version is refitted
EMBEDDING_VERSION = 3


@dataclass
class ReferenceEmbedding:
    """PCA (+ UMAP) fitted on reference cells; :meth:`transform` places new cells in it.

    Attributes
    ----------
    coords
        ``(n_ref, 2)`` float32 coordinates of the reference cells (UMAP, or the first two PCs for
        ``method="pca"``).
    labels
        ``(n_ref,)`` condition label of each reference cell.
    method
        ``"umap"`` or ``"pca"``.
    params
        Fitting parameters (cells used, PCs, neighbours, seed, ``version``).
    """

    coords: np.ndarray
    labels: np.ndarray
    method: str
    params: dict = field(default_factory=dict)
    _mean: np.ndarray | None = None  # (d,) float32: centre of the reference cells
    _components: np.ndarray | None = None  # (k, d) float32: principal axes
    _ref_pcs: np.ndarray | None = None  # (n_ref, k) float16: the reference cells' PCs (kNN placement)

    def pcs(self, X: np.ndarray) -> np.ndarray:
        """``(n, k)`` float32 principal-component scores of log1p cells ``(n, d)``."""
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self._mean.size:
            raise ConfigError(f"cells must be (n, {self._mean.size}); got {X.shape}")
        return (X - self._mean) @ self._components.T

    def transform(self, X: np.ndarray) -> np.ndarray:
        """``(n, 2)`` float64 coordinates of new log1p cells ``(n, d)`` in the reference embedding."""
        if len(X) == 0:
            return np.zeros((0, 2))
        Z = self.pcs(X)
        if self.method == "pca":
            return Z[:, :2].astype(np.float64)
        idx, w = _knn(Z, self._ref_pcs.astype(np.float32), int(self.params["n_neighbors"]))
        ref = self.coords.astype(np.float64)
        # initial place: the membership-weighted mean of the neighbours' coordinates; then UMAP's layout
        # step for the new points alone (the reference stays fixed), which spreads them as umap-learn's
        # transform does instead of leaving them at their neighbours' centroids
        y0 = np.einsum("nk,nkc->nc", w, ref[idx]) / w.sum(1, keepdims=True)
        return _refine(y0, idx, w, ref, *_curve(float(self.params["min_dist"])), seed=int(self.params["seed"]))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays that :meth:`from_arrays` rebuilds the embedding from (``np.savez``-able, no pickle)."""
        import json

        # labels as codes into their distinct names: a string per cell would dominate the file
        names, codes = np.unique(np.asarray(self.labels, dtype=str), return_inverse=True)
        return {"coords": self.coords, "label_names": names, "label_codes": codes.astype(np.int32),
                "mean": self._mean, "components": self._components,
                "ref_pcs": self._ref_pcs if self._ref_pcs is not None else np.zeros((0, 0), np.float16),
                "meta": np.array(json.dumps({"method": self.method, "params": self.params}))}

    @classmethod
    def from_arrays(cls, arrays) -> ReferenceEmbedding:
        """The embedding saved by :meth:`to_arrays` (a dict or an open ``np.load`` file)."""
        import json

        meta = json.loads(str(arrays["meta"]))
        ref = arrays["ref_pcs"]
        labels = np.asarray(arrays["label_names"], dtype=object)[arrays["label_codes"]]
        return cls(coords=arrays["coords"], labels=labels, method=meta["method"],
                   params=meta["params"], _mean=arrays["mean"], _components=arrays["components"],
                   _ref_pcs=ref if ref.size else None)


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
        Principal components UMAP and the placement of new cells work on (fewer when the data have fewer
        dimensions).
    max_cells
        Cap on reference cells (UMAP's cost grows with them; the picture does not need more).
    n_neighbors, min_dist
        UMAP parameters; ``n_neighbors`` is also the number of reference cells a new cell is placed among.
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

    # PCA by SVD of the centred matrix (deterministic up to sign; fix signs for reproducibility). The basis
    # is kept in float32, the precision it is saved in, so a loaded embedding computes the same scores.
    mean = X.mean(0)
    k = int(max(2, min(n_pcs, X.shape[1], X.shape[0] - 1)))
    _, _, Vt = np.linalg.svd(X - mean, full_matrices=False)
    comps = Vt[:k]
    comps *= np.sign(comps[np.arange(k), np.abs(comps).argmax(1)])[:, None]
    params = {"n_cells": int(X.shape[0]), "n_pcs": k, "seed": seed, "max_cells": max_cells,
              "version": EMBEDDING_VERSION}
    emb = ReferenceEmbedding(coords=np.zeros((0, 2), np.float32), labels=labels, method=method, params=params,
                             _mean=mean.astype(np.float32), _components=comps.astype(np.float32))
    Z = emb.pcs(X)
    if method == "pca":
        emb.coords = Z[:, :2].copy()
        return emb
    import umap  # heavy import (numba); only when fitting

    nn = int(min(n_neighbors, X.shape[0] - 1))
    # exact neighbours handed in: umap-learn's own search (brute force below 4096 cells, NN-descent above)
    # is numba code compiled in every new process, ~9 s of a ~25 s fit on the 2-core CPU
    idx, dist = _neighbours(Z, Z, nn, self_first=True)
    model = umap.UMAP(n_neighbors=nn, min_dist=min_dist, n_components=2, random_state=seed, n_epochs=200,
                      low_memory=True, n_jobs=1, verbose=False,  # seeded umap runs on one thread anyway
                      precomputed_knn=(idx, dist.astype(np.float32), None), force_approximation_algorithm=True)
    with warnings.catch_warnings():  # "transform will be unavailable": placement is ours (ReferenceEmbedding)
        warnings.filterwarnings("ignore", message="precomputed_knn", category=UserWarning)
        emb.coords = np.asarray(model.fit_transform(Z), dtype=np.float32)
    # float16 halves the saved file; the placement reads these, fresh or loaded alike
    emb._ref_pcs = Z.astype(np.float16)
    params.update(n_neighbors=nn, min_dist=min_dist)
    return emb


def _neighbours(Z: np.ndarray, ref: np.ndarray, k: int, *, self_first: bool = False,
                chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """``(idx, dist)``, both ``(n, k)``: each row of ``Z`` ``(n, p)``'s ``k`` nearest rows of ``ref``
    ``(n_ref, p)`` (Euclidean, nearest first). ``self_first``: ``ref`` is ``Z`` and each row is its own first
    neighbour at distance 0 even beside a duplicate (umap-learn's ``precomputed_knn`` layout)."""
    k = int(min(k, len(ref)))
    ref = ref.astype(np.float64)
    ref_sq = (ref**2).sum(1)
    idx = np.empty((len(Z), k), dtype=np.int64)
    dist = np.empty((len(Z), k))
    for s in range(0, len(Z), chunk):
        z = Z[s:s + chunk].astype(np.float64)
        d2 = (z**2).sum(1)[:, None] + ref_sq[None, :] - 2.0 * (z @ ref.T)
        if self_first:
            d2[np.arange(len(d2)), np.arange(s, s + len(d2))] = -1.0
        ix = np.argpartition(d2, k - 1, axis=1)[:, :k]
        part = np.take_along_axis(d2, ix, axis=1)
        order = np.argsort(part, axis=1, kind="stable")
        idx[s:s + chunk] = np.take_along_axis(ix, order, axis=1)
        dist[s:s + chunk] = np.sqrt(np.maximum(np.take_along_axis(part, order, axis=1), 0.0))
    return idx, dist


def _knn(Z: np.ndarray, ref: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``(idx, w)``, both ``(n, k)``: each row of ``Z`` ``(n, p)``'s ``k`` nearest rows of ``ref``
    ``(n_ref, p)`` (Euclidean, in PC space) and their fuzzy memberships (:func:`_memberships`)."""
    idx, dist = _neighbours(Z, ref, k)
    return idx, _memberships(dist)


@functools.lru_cache(maxsize=8)
def _curve(min_dist: float, spread: float = 1.0) -> tuple[float, float]:
    """UMAP's low-dimensional similarity ``1 / (1 + a d^(2b))`` fitted to ``min_dist`` (McInnes et al. 2018,
    §3.2 / Definition 11): ``(a, b)``."""
    from scipy.optimize import curve_fit

    x = np.linspace(0.0, 3.0 * spread, 300)
    y = np.where(x < min_dist, 1.0, np.exp(-(x - min_dist) / spread))
    (a, b), _ = curve_fit(lambda x, a, b: 1.0 / (1.0 + a * x ** (2.0 * b)), x, y, p0=(1.0, 1.0))
    return float(a), float(b)


def _refine(y: np.ndarray, idx: np.ndarray, w: np.ndarray, ref: np.ndarray, a: float, b: float, *,
            n_epochs: int = 30, n_negative: int = 2, seed: int = 0) -> np.ndarray:
    """``(n, 2)``: new points ``y`` moved by UMAP's cross-entropy gradient (McInnes et al. 2018, §3.2)
    against the fixed reference ``ref`` ``(n_ref, 2)``: attraction to their neighbours ``idx`` ``(n, k)``
    weighted by the memberships ``w``, repulsion from ``n_negative`` random reference points per neighbour;
    the step decays linearly over ``n_epochs``. umap-learn's transform takes 66 epochs and 5 negatives; 30 and
    2 keep as many of a cell's PC-space neighbours beside it in the picture as umap-learn does, in half the
    time (docs/benchmarks.md, "The reference embedding")."""
    rng = np.random.default_rng(seed)
    n, k = idx.shape
    wn = w / w.max(1, keepdims=True)
    wneg = np.repeat(wn, n_negative, axis=1)[..., None]
    y = y.copy()
    for epoch in range(n_epochs):
        alpha = 1.0 - epoch / n_epochs
        diff = y[:, None, :] - ref[idx]  # attraction: d/dy of -log(1 / (1 + a d^2b))
        d2 = (diff**2).sum(-1)
        coef = np.where(d2 > 0, -2.0 * a * b * np.power(d2, b - 1.0, where=d2 > 0, out=np.ones_like(d2))
                        / (1.0 + a * np.power(d2, b)), 0.0)
        step = (np.clip(coef[..., None] * diff, -4.0, 4.0) * wn[..., None]).sum(1)
        neg = ref[rng.integers(0, len(ref), size=(n, k * n_negative))]  # repulsion: d/dy of -log(1 - ...)
        diff = y[:, None, :] - neg
        d2 = (diff**2).sum(-1)
        coef = 2.0 * b / ((1e-3 + d2) * (1.0 + a * np.power(d2, b)))
        step += (np.clip(coef[..., None] * diff, -4.0, 4.0) * wneg).sum(1)
        y += alpha * step / k
    return y


def _memberships(dist: np.ndarray, n_iter: int = 64) -> np.ndarray:
    """``(n, k)`` fuzzy memberships ``exp(-d / σ)`` of each row's ``k`` neighbour distances, with ``σ`` per
    row set by bisection so that they sum to ``log2 k`` (UMAP's smooth kNN distances, McInnes et al. 2018
    §3.1, with no local-connectivity offset as in its ``transform``)."""
    target = np.log2(dist.shape[1]) if dist.shape[1] > 1 else 1.0
    lo = np.zeros(len(dist))
    hi = np.full(len(dist), np.inf)
    sigma = np.ones(len(dist))
    for _ in range(n_iter):  # bisection on σ: the sum of memberships grows with σ
        total = np.exp(-dist / sigma[:, None]).sum(1)
        big = total > target
        hi = np.where(big, sigma, hi)
        lo = np.where(big, lo, sigma)
        sigma = np.where(np.isinf(hi), sigma * 2.0, (lo + hi) / 2.0)
    # a floor against σ → 0 when all neighbours sit at one distance (as UMAP's MIN_K_DIST_SCALE)
    sigma = np.maximum(sigma, 1e-3 * dist.mean(1) + 1e-12)
    return np.exp(-dist / sigma[:, None])


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
    conds = reference_conditions(screen, conditions)
    X = np.concatenate([screen.log1p(c) for c in conds])
    labels = np.repeat(conds, [len(screen.cell_indices(c)) for c in conds])
    return X, labels


def reference_conditions(screen, conditions: Sequence[str]) -> list[str]:
    """The conditions whose cells :func:`reference_cells` takes: control first, then ``conditions`` that
    ``screen`` has (the identity of a saved embedding's cells, with the screen's data hash)."""
    conds = [KEYS.CONTROL] + [c for c in conditions if c != KEYS.CONTROL]
    have = set(screen.conditions)
    return [c for c in conds if c in have]
