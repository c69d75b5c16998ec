"""Distances between two sets of cells: unbiased MMD², energy distance, per-gene Wasserstein-1.

All three compare a predicted set of cells with an observed one (METHOD.md §7). Inputs are
``(n_cells, n_genes)`` arrays of normalised ``log1p`` CP10k expression. The pairwise computations are
done in row blocks so that peak memory is ``O(block · n)`` rather than ``O(n²)``, in float64 (after
centring both sets on their pooled mean, so ``‖x‖² + ‖y‖² − 2x·y`` loses no precision).

References
----------
Gretton, Borgwardt, Rasch, Schölkopf, Smola, "A kernel two-sample test", JMLR 13 (2012), eq. (3)
(unbiased MMD²). Székely & Rizzo, "Energy statistics: a class of statistics based on distances",
J. Stat. Plan. Inference 143 (2013), eq. (2.3) (energy distance).
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..errors import ConfigError

logger = logging.getLogger(__name__)

#: number of length-scales of the RBF kernel mixture (METHOD.md §7)
N_SCALES = 10
#: elements of one ``(block, n)`` distance block: 2**20 float64 = 8 MiB (two such blocks are alive)
_BLOCK_ELEMENTS = 2**20


def rbf_length_scales(n_genes: int) -> np.ndarray:
    """The MMD kernel's length-scales ℓ: ``logspace(−2, 1, 10) · sqrt(n_genes)``.

    Parameters
    ----------
    n_genes
        d_eff, the number of genes the distance is computed on.

    Returns
    -------
    ``(10,)`` float64 length-scales in log1p-CP10k units.
    """
    return np.logspace(-2.0, 1.0, N_SCALES) * np.sqrt(float(n_genes))


def _as_tensor(x: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float64))


def _pairwise_sums(
    a: torch.Tensor, b: torch.Tensor, inv_two_l2: torch.Tensor, *, same: bool, with_dist: bool = True
) -> tuple[float, torch.Tensor]:
    """Sum over all pairs (i, j) of ‖a_i − b_j‖ and of exp(−‖a_i − b_j‖² / (2ℓ²)) for each ℓ.

    Parameters
    ----------
    a, b
        ``(n, d)`` and ``(m, d)`` float64 tensors.
    inv_two_l2
        ``(L,)`` values 1 / (2ℓ²); may be empty (no kernel sums).
    with_dist
        Also sum the distances (skipped when only MMD is wanted: the square roots cost time).
    same
        ``a`` and ``b`` are the same set: the diagonal distances are set to exactly 0 (rounding
        would otherwise leave tiny positive values there).

    Returns
    -------
    ``(sum of distances, (L,) sums of kernel values)``, diagonal included.
    """
    n, m = a.shape[0], b.shape[0]
    b_sq = (b * b).sum(1)
    block = max(1, _BLOCK_ELEMENTS // max(m, 1))
    dist_sum = 0.0
    k_sum = torch.zeros_like(inv_two_l2)
    for start in range(0, n, block):
        ab = a[start : start + block]
        bs = ab.shape[0]
        # a set against itself is symmetric: only columns from `start` on, the square part once and
        # the rest twice (a third less work than all pairs)
        cols = slice(start, None) if same else slice(None)
        # squared distances of one row block; clamp because cancellation can give tiny negatives
        # (in place, so one block and one scratch block are all that is alive)
        d2 = (ab @ b[cols].T).mul_(-2.0).add_((ab * ab).sum(1, keepdim=True)).add_(b_sq[None, cols]).clamp_(min=0.0)
        if same:
            idx = torch.arange(bs)
            d2[idx, idx] = 0.0

        def total(v: torch.Tensor) -> torch.Tensor:
            return v[:, :bs].sum() + 2.0 * v[:, bs:].sum() if same else v.sum()

        buf = torch.empty_like(d2)  # one scratch block reused by every scale (no allocation per exp)
        if with_dist:
            dist_sum += float(total(torch.sqrt(d2, out=buf)))
        for k, c in enumerate(inv_two_l2.tolist()):
            k_sum[k] += total(torch.mul(d2, -c, out=buf).exp_())
    return dist_sum, k_sum


def _check_pair(x: np.ndarray, y: np.ndarray, min_cells: int) -> None:
    if x.ndim != 2 or y.ndim != 2:
        raise ConfigError(f"Cell sets must be 2-D (n_cells, n_genes); got shapes {x.shape} and {y.shape}.")
    if x.shape[1] != y.shape[1]:
        raise ConfigError(f"Cell sets have different gene counts: {x.shape[1]} vs {y.shape[1]}.")
    if x.shape[0] < min_cells or y.shape[0] < min_cells:
        raise ConfigError(
            f"Need at least {min_cells} cells in each set; got {x.shape[0]} and {y.shape[0]}."
        )
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ConfigError("Cell sets contain NaN or infinite values; normalise and log1p them first.")


def _subsample_rows(x: np.ndarray, max_cells: int | None, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
    """Rows of ``x`` sampled without replacement down to ``max_cells``; ``(x, whether it happened)``."""
    if max_cells is None or x.shape[0] <= max_cells:
        return x, False
    idx = np.sort(rng.choice(x.shape[0], size=max_cells, replace=False))
    return x[idx], True


def _inv_two_l2(n_genes: int, want_mmd: bool) -> torch.Tensor:
    """``(L,)`` 1 / (2ℓ²) of the kernel mixture on ``n_genes`` genes (empty when MMD is not wanted)."""
    inv = torch.as_tensor(1.0 / (2.0 * rbf_length_scales(n_genes) ** 2))
    return inv if want_mmd else inv[:0]


def _self_sums(y: np.ndarray, *, want_mmd: bool = True, want_energy: bool = True) -> tuple[float, torch.Tensor]:
    """:func:`_pairwise_sums` of a set ``(m, d)`` against itself, centred on its own mean: the observed side of
    :func:`_mmd_energy`, computed once when several predictions are scored against one set."""
    yt = _as_tensor(y - y.mean(0))
    return _pairwise_sums(yt, yt, _inv_two_l2(y.shape[1], want_mmd), same=True, with_dist=want_energy)


def _mmd_energy(x: np.ndarray, y: np.ndarray, *, want_mmd: bool = True, want_energy: bool = True,
                y_self: tuple[float, torch.Tensor] | None = None) -> tuple[float, float]:
    """Unbiased MMD² (RBF mixture) and V-statistic energy distance, sharing one pass over distances.

    Parameters
    ----------
    x, y
        ``(n, d)`` and ``(m, d)`` cells, n, m ≥ 2.
    want_mmd, want_energy
        Skip the kernel (or distance) sums of a value not wanted; it is returned as NaN.
    y_self
        ``y``'s sums against itself from :func:`_self_sums` with the same ``want_*`` (computed here if absent).

    Returns
    -------
    ``(mmd2, energy)``: MMD² (dimensionless) and energy distance (log1p-CP10k units).
    """
    n, m = x.shape[0], y.shape[0]
    inv_two_l2 = _inv_two_l2(x.shape[1], want_mmd)
    kw = {"with_dist": want_energy}
    # distances are translation-invariant: centre on the pooled mean to keep the Gram trick precise
    centre = (x.sum(0) + y.sum(0)) / (n + m)
    xt, yt = _as_tensor(x - centre), _as_tensor(y - centre)
    dxx, kxx = _pairwise_sums(xt, xt, inv_two_l2, same=True, **kw)
    dyy, kyy = y_self if y_self is not None else _self_sums(y, want_mmd=want_mmd, want_energy=want_energy)
    dxy, kxy = _pairwise_sums(xt, yt, inv_two_l2, same=False, **kw)
    # unbiased MMD² (Gretton et al. 2012, eq. 3): drop the k(x, x) = 1 diagonal terms
    mmd2_per_scale = (kxx - n) / (n * (n - 1)) + (kyy - m) / (m * (m - 1)) - 2.0 * kxy / (n * m)
    mmd2 = float(mmd2_per_scale.mean()) if want_mmd else float("nan")
    energy = 2.0 * dxy / (n * m) - dxx / (n * n) - dyy / (m * m) if want_energy else float("nan")
    return mmd2, energy


def mmd(x: np.ndarray, y: np.ndarray, *, max_cells: int | None = None, seed: int = 0) -> float:
    """Unbiased squared maximum mean discrepancy with a mixture of 10 RBF kernels.

    The kernel is the average over ℓ ∈ ``logspace(−2, 1, 10) · sqrt(d)`` of
    ``k_ℓ(x, y) = exp(−‖x − y‖² / (2ℓ²))`` (d = ``x.shape[1]``, the genes used), and MMD² is the
    unbiased U-statistic of Gretton et al. (2012, eq. 3). It can be slightly negative; its expectation
    is 0 when both sets come from the same distribution.

    Parameters
    ----------
    x, y
        ``(n, d)`` and ``(m, d)`` cells, log1p CP10k; n, m ≥ 2.
    max_cells
        If set, each set is sub-sampled without replacement to at most this many cells (logged).
    seed
        Seed of that sub-sampling.

    Returns
    -------
    MMD² (dimensionless: kernel values lie in [0, 1]).
    """
    x, y = np.asarray(x), np.asarray(y)
    _check_pair(x, y, 2)
    x, y = _maybe_subsample(x, y, max_cells, seed)
    return _mmd_energy(x, y, want_energy=False)[0]


def energy_distance(x: np.ndarray, y: np.ndarray, *, max_cells: int | None = None, seed: int = 0) -> float:
    """Energy distance ``2E‖X−Y‖ − E‖X−X′‖ − E‖Y−Y′‖`` with plain Euclidean distance.

    V-statistic (all pairs, diagonal included), so it is exactly 0 for identical sets and equals
    ``dcor.energy_distance(x, y)`` (Székely & Rizzo 2013, eq. 2.3).

    Parameters
    ----------
    x, y
        ``(n, d)`` and ``(m, d)`` cells, log1p CP10k; n, m ≥ 2.
    max_cells, seed
        Optional sub-sampling of each set, as in :func:`mmd`.

    Returns
    -------
    Energy distance, in log1p-CP10k units.
    """
    x, y = np.asarray(x), np.asarray(y)
    _check_pair(x, y, 2)
    x, y = _maybe_subsample(x, y, max_cells, seed)
    return _mmd_energy(x, y, want_mmd=False)[1]


def _maybe_subsample(x: np.ndarray, y: np.ndarray, max_cells: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x, sx = _subsample_rows(x, max_cells, rng)
    y, sy = _subsample_rows(y, max_cells, rng)
    if sx or sy:
        logger.info("Sub-sampled cell sets to at most %d cells (seed %d).", max_cells, seed)
    return x, y


#: genes per block in the Wasserstein computation (bounds the (genes, n + m) temporaries)
_W1_GENE_BLOCK = 64


def _wasserstein_per_gene(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Exact 1-D Wasserstein-1 distance of every gene's two empirical distributions.

    W1 = ∫ |F_x(t) − F_y(t)| dt, evaluated exactly on the merged sorted sample: between consecutive
    merged values both CDFs are constant (the formula scipy's ``wasserstein_distance`` uses).

    Parameters
    ----------
    x, y
        ``(n, d)`` and ``(m, d)`` cells.

    Returns
    -------
    ``(d,)`` distances, log1p-CP10k units.
    """
    n, m = x.shape[0], y.shape[0]
    out = np.empty(x.shape[1])
    for g0 in range(0, x.shape[1], _W1_GENE_BLOCK):
        xs = torch.sort(_as_tensor(x[:, g0 : g0 + _W1_GENE_BLOCK].T), dim=1).values  # (genes, n)
        ys = torch.sort(_as_tensor(y[:, g0 : g0 + _W1_GENE_BLOCK].T), dim=1).values  # (genes, m)
        merged = torch.sort(torch.cat([xs, ys], dim=1), dim=1).values  # (genes, n + m)
        widths = merged[:, 1:] - merged[:, :-1]
        left = merged[:, :-1].contiguous()
        # empirical CDFs on each interval [merged_k, merged_{k+1})
        fx = torch.searchsorted(xs, left, right=True).double() / n
        fy = torch.searchsorted(ys, left, right=True).double() / m
        out[g0 : g0 + xs.shape[0]] = ((fx - fy).abs() * widths).sum(1).numpy()
    return out


def wasserstein(x: np.ndarray, y: np.ndarray) -> float:
    """Per-gene Wasserstein-1 distance between two cell sets, averaged over genes.

    Parameters
    ----------
    x, y
        ``(n, d)`` and ``(m, d)`` cells, log1p CP10k; n, m ≥ 1. No sub-sampling is needed: the cost is
        ``O(d (n + m) log(n + m))``.

    Returns
    -------
    Mean over genes of W1, in log1p-CP10k units.
    """
    x, y = np.asarray(x), np.asarray(y)
    _check_pair(x, y, 1)
    return float(_wasserstein_per_gene(x, y).mean())
