"""The zero-inflated Poisson measurement model (METHOD.md §1) applied to simulated latent states, and
the assembly of a simulated screen into an AnnData that follows the project's conventions."""

from __future__ import annotations

import json
from collections.abc import Sequence

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._constants import KEYS

#: cells x genes above which count matrices are stored as sparse CSR (keeps 200k-cell files small)
_SPARSE_ABOVE = 10_000_000


def softplus(x: np.ndarray) -> np.ndarray:
    """Numerically stable ``log(1 + exp(x))``, elementwise, same shape and dtype as ``x``."""
    return np.logaddexp(x, 0.0).astype(x.dtype, copy=False)


def draw_measurement(
    d: int,
    *,
    unit_scale_range: tuple[float, float] = (5.0, 40.0),
    dropout_range: tuple[float, float] = (0.02, 0.25),
    rng: int | np.random.Generator | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw per-gene ZIP parameters.

    Parameters
    ----------
    d
        Number of genes.
    unit_scale_range
        ``u_g`` is log-uniform on this range (UMIs per unit of ``softplus(s)``).
    dropout_range
        ``pi_g`` is uniform on this range (extra probability of a zero).
    rng
        Seed or generator.

    Returns
    -------
    unit_scale
        (d,) float64, ``u_g``.
    dropout
        (d,) float64, ``pi_g``.
    """
    rng = np.random.default_rng(rng)
    lo, hi = np.log(unit_scale_range[0]), np.log(unit_scale_range[1])
    unit_scale = np.exp(rng.uniform(lo, hi, size=d))
    dropout = rng.uniform(dropout_range[0], dropout_range[1], size=d)
    return unit_scale, dropout


def zip_counts(
    latent: np.ndarray,
    unit_scale: np.ndarray,
    dropout: np.ndarray,
    *,
    rng: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Draw UMI counts from the ZIP measurement model given latent states.

    ``y_g ~ Poisson(u_g * softplus(s_g))``, then set to 0 with probability ``pi_g`` (Bernoulli
    zeroing), so ``P(y_g = 0) = pi_g + (1 - pi_g) exp(-rate_g)`` and ``E[y_g | s] = (1 - pi_g) rate_g``.

    Parameters
    ----------
    latent
        (n_cells, d) latent states ``s``.
    unit_scale
        (d,) unit scales ``u_g`` (UMIs).
    dropout
        (d,) zero-inflation probabilities ``pi_g``.
    rng
        Seed or generator.

    Returns
    -------
    (n_cells, d) int32 UMI counts.
    """
    rng = np.random.default_rng(rng)
    rate = softplus(np.asarray(latent, dtype=np.float64)) * np.asarray(unit_scale)[None, :]
    counts = rng.poisson(rate)
    counts[rng.random(counts.shape) < np.asarray(dropout)[None, :]] = 0
    return counts.astype(np.int32)


def expected_counts(latent: np.ndarray, unit_scale: np.ndarray, dropout: np.ndarray) -> np.ndarray:
    """``E[y | s] = (1 - pi) * u * softplus(s)``, shape of ``latent`` (n_cells, d), in UMIs."""
    return (1.0 - dropout)[None, :] * unit_scale[None, :] * softplus(np.asarray(latent, np.float64))


def condition_label(genes: Sequence[str]) -> str:
    """Canonical label of a target set: ``ctrl`` for none, ``A`` or ``A+B`` (order as given)."""
    return KEYS.COMBO_SEP.join(genes) if len(genes) else KEYS.CONTROL


def assemble_screen(
    *,
    latent: np.ndarray,
    sizes: Sequence[int],
    count_blocks: Sequence[np.ndarray | sp.csr_matrix] | None,
    labels: Sequence[str],
    gene_names: Sequence[str],
    simulated_note: str,
    truth: dict,
    params: dict,
    sparse: bool | None = None,
    store_latent: bool = True,
    counts_layer: bool = True,
) -> ad.AnnData:
    """Stack per-condition blocks into one AnnData following the project's conventions.

    Parameters
    ----------
    latent
        (n_cells, d) float32 latent states, conditions in consecutive blocks (used without a copy).
    sizes
        Cells per condition, in the order of ``labels``.
    count_blocks
        One (n_cells_q, d) count array (dense integers or float32 CSR) per condition, or ``None`` for
        a screen without a measurement model (``.X`` then holds the latent states, float32).
    labels
        Condition label per block.
    gene_names
        (d,) unique gene names.
    simulated_note
        Sentence stored in ``uns[KEYS.SIMULATED]``.
    truth
        Arrays stored in ``uns[KEYS.TRUTH]``; ``params`` is added as ``params_json``.
    params
        Generator settings, JSON-serialisable.
    sparse
        Store counts as CSR; ``None`` decides by size (``n_cells * d > 1e7``).
    store_latent
        Keep each cell's latent state in ``obsm["latent"]`` (float32).
    counts_layer
        Also keep the counts in ``layers[KEYS.COUNTS]`` (a second copy of ``.X``).

    Returns
    -------
    AnnData with ``.X`` (counts as float32 whole numbers, or latent states), ``layers[KEYS.COUNTS]``
    (count screens), ``obs[KEYS.PERT]``, ``obsm["latent"]``, ``uns[KEYS.SIMULATED]``,
    ``uns[KEYS.TRUTH]``.
    """
    n, d = sum(sizes), len(gene_names)
    if latent.shape != (n, d):
        raise ValueError(f"latent has shape {latent.shape}, expected {(n, d)}")
    if sparse is None:
        sparse = n * d > _SPARSE_ABOVE
    obs_labels = np.repeat(np.asarray(labels, dtype=object), sizes)
    # names like "c000123" stay unique and sortable whatever the screen size
    width = max(6, len(str(n)))
    obs = pd.DataFrame(
        {KEYS.PERT: pd.Categorical(obs_labels, categories=list(dict.fromkeys(labels)))},
        index=pd.Index([f"c{i:0{width}d}" for i in range(n)]),
    )
    var = pd.DataFrame(index=pd.Index(list(gene_names)))
    layers = {}
    if count_blocks is None:
        X = latent.astype(np.float32, copy=True)
    elif sparse:
        X = sp.vstack([sp.csr_matrix(b, dtype=np.float32) for b in count_blocks], format="csr")
    else:
        X = np.concatenate([np.asarray(b.toarray() if sp.issparse(b) else b, np.float32) for b in count_blocks])
    if count_blocks is not None and counts_layer:
        layers[KEYS.COUNTS] = X.copy()
    adata = ad.AnnData(X=X, obs=obs, var=var, layers=layers or None)
    if store_latent:
        adata.obsm["latent"] = latent.astype(np.float32, copy=False)
    adata.uns[KEYS.SIMULATED] = simulated_note
    adata.uns[KEYS.TRUTH] = {**truth, "params_json": json.dumps(params, sort_keys=True)}
    adata.uns[KEYS.IS_COUNTS] = count_blocks is not None
    return adata
