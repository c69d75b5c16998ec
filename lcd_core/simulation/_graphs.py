"""Random directed gene-regulatory graphs of the paper's linear generator (METHOD.md §8)."""

from __future__ import annotations

from typing import Literal

import networkx as nx
import numpy as np

from ..errors import ConfigError


def random_graph(
    d: int,
    *,
    kind: Literal["er", "sf"] = "er",
    expected_degree: float = 10,
    flip_fraction: float = 0.1,
    rng: int | np.random.Generator | None = None,
) -> np.ndarray:
    """Draw a random directed graph over ``d`` genes.

    Parameters
    ----------
    d
        Number of genes (nodes).
    kind
        ``"er"``: Erdős–Rényi, every ordered pair ``(i, j)``, ``i != j``, is an edge independently
        with probability ``expected_degree / (d - 1)`` (cycles allowed, as in the paper's generator).
        ``"sf"``: scale-free with out-going hubs: an undirected Barabási–Albert graph with
        ``m = round(expected_degree)`` edges per new node, every edge oriented from the endpoint of
        higher degree to the one of lower degree (so hubs are sources), then a fraction
        ``flip_fraction`` of the edges reversed.
    expected_degree
        Expected out-degree per gene (ER), or the BA parameter ``m`` (SF; the mean out-degree is then
        ``m (d - m) / d``).
    flip_fraction
        Fraction of SF edges whose direction is reversed (ignored for ER).
    rng
        Seed or generator.

    Returns
    -------
    Boolean adjacency of shape (d, d); ``adj[i, j]`` means an edge from source ``i`` to target ``j``.
    The diagonal is ``False``.
    """
    if d < 2:
        raise ConfigError(f"a graph needs at least 2 genes, got d={d}")
    if expected_degree <= 0:
        raise ConfigError(f"expected_degree must be positive, got {expected_degree}")
    if not 0.0 <= flip_fraction <= 1.0:
        raise ConfigError(f"flip_fraction must lie in [0, 1], got {flip_fraction}")
    rng = np.random.default_rng(rng)

    if kind == "er":
        p = min(1.0, expected_degree / (d - 1))
        adj = rng.random((d, d)) < p
        np.fill_diagonal(adj, False)
        return adj
    if kind == "sf":
        # BA needs m < d; small graphs get the densest valid m
        m = int(min(max(1, round(expected_degree)), d - 1))
        und = nx.barabasi_albert_graph(d, m, seed=int(rng.integers(2**31 - 1)))
        deg = np.array([und.degree(i) for i in range(d)])
        edges = np.array(sorted(und.edges()), dtype=np.int64).reshape(-1, 2)
        u, v = edges[:, 0], edges[:, 1]
        # orient from the higher-degree endpoint (the hub) to the lower; ties broken at random
        tie = deg[u] == deg[v]
        u_first = (deg[u] > deg[v]) | (tie & (rng.random(len(u)) < 0.5))
        src = np.where(u_first, u, v)
        dst = np.where(u_first, v, u)
        flip = rng.random(len(src)) < flip_fraction
        src, dst = np.where(flip, dst, src), np.where(flip, src, dst)
        adj = np.zeros((d, d), dtype=bool)
        adj[src, dst] = True
        return adj
    raise ConfigError(f"unknown graph kind {kind!r}; choose 'er' or 'sf'")
