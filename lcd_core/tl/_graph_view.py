"""Choosing what the Causal graph page shows: an edge threshold from a number of edges (the raw |effect|
scale is unreadable: its useful range is a small part of 0–max), and a gene whose neighbourhood can be read.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigError

#: most edges (regulators + targets) a neighbourhood may have to be drawn readably
READABLE_EDGES = 15


def _off_diagonal_abs(effects: np.ndarray) -> np.ndarray:
    E = np.abs(np.asarray(effects, dtype=float))
    if E.ndim != 2 or E.shape[0] != E.shape[1]:
        raise ConfigError(f"effects must be a square (genes × genes) matrix, got {E.shape}")
    return E[~np.eye(len(E), dtype=bool)]


def top_k_threshold(effects: np.ndarray, k: int) -> float:
    """The |effect| threshold that keeps the ``k`` strongest off-diagonal edges (``effects``: genes ×
    genes, rows = sources): edges with |effect| > threshold. ``k`` ≥ the number of edges keeps them all
    (threshold 0); ties at the threshold may keep a few fewer."""
    off = np.sort(_off_diagonal_abs(effects))[::-1]
    if k <= 0:
        return float(off[0]) if off.size else 0.0
    if k >= off.size:
        return 0.0
    return float(off[k])


def edge_counts(effects: np.ndarray, threshold: float) -> np.ndarray:
    """Edges of each gene with |effect| > ``threshold`` (in + out, self-effects excluded), ``(n_genes,)`` int."""
    keep = np.abs(np.asarray(effects, dtype=float)) > threshold
    np.fill_diagonal(keep, False)
    return keep.sum(0) + keep.sum(1)


def readable_gene(effects: np.ndarray, genes: Sequence[str], threshold: float, *,
                  max_edges: int = READABLE_EDGES) -> str:
    """The gene to open the Causal graph on: the one with the most edges above ``threshold`` among those
    with at most ``max_edges`` (a hub with a hundred edges is a hairball); ties go to the larger total
    |effect|. When every gene with edges has more than ``max_edges``, the one with the fewest; with no
    edge at all, the gene of largest total |effect|."""
    genes = [str(g) for g in genes]
    E = np.abs(np.asarray(effects, dtype=float))
    if E.shape != (len(genes), len(genes)):
        raise ConfigError(f"effects {E.shape} do not match {len(genes)} genes")
    off = E.copy()
    np.fill_diagonal(off, 0.0)
    strength = off.sum(0) + off.sum(1)
    n = edge_counts(E, threshold)
    readable = (n > 0) & (n <= max_edges)
    if readable.any():
        score = np.where(readable, n + strength / (strength.max() + 1.0), -np.inf)  # count first, then strength
    elif (n > 0).any():
        score = np.where(n > 0, -n + strength / (strength.max() + 1.0), -np.inf)
    else:
        score = strength
    return genes[int(np.argmax(score))]
