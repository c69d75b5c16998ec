"""Functional modules of the causal-effect graph: consensus Louvain (default) or METHOD §5's hierarchical clustering."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import networkx as nx
import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
from scipy.sparse.csgraph import shortest_path
from scipy.spatial.distance import squareform

from ..errors import ConfigError

UNASSIGNED = "unassigned"


@dataclass
class ModuleResult:
    """Modules of a causal-effect matrix.

    Attributes
    ----------
    labels
        ``(d,)`` module label per gene (``"M1"``, ``"M2"``, ... by decreasing size, or ``"unassigned"``).
    genes
        ``(d,)`` gene names, input order.
    order
        ``(d,)`` leaf order of the optimally ordered dendrogram (indices into ``genes``).
    reordered
        ``(d, d)`` the effect matrix with rows and columns in leaf order.
    hubs
        Module label → genes sorted by within-module |effect| degree (highest first, at most ``n_hubs``).
    linkage
        ``(d − 1, 4)`` SciPy linkage matrix (average linkage, optimal leaf ordering).
    distances
        ``(d, d)`` distances that were clustered: normalised shortest paths (hierarchical) or
        1 − co-assignment frequency (louvain).
    params
        ``method`` and its settings (``cut``, ``quantile`` or ``resolution``, ``n_neighbors``, ``n_runs``,
        ``seed``), ``min_size``.
    """

    labels: np.ndarray
    genes: np.ndarray
    order: np.ndarray
    reordered: np.ndarray
    hubs: dict
    linkage: np.ndarray
    distances: np.ndarray
    params: dict = field(default_factory=dict)


METHODS = ("louvain", "hierarchical")


def find_modules(
    effects: np.ndarray,
    genes: Sequence[str],
    *,
    method: str = "louvain",
    cut: float = 0.175,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    n_runs: int = 20,
    min_size: int = 5,
    quantile: float = 0.95,
    n_hubs: int = 3,
    seed: int = 0,
) -> ModuleResult:
    """Functional modules of a causal-effect matrix Âᵀ.

    Both methods start from the closeness ``C = |Âᵀ| + |Âᵀ|ᵀ`` scaled by its maximum.

    ``"hierarchical"`` (METHOD §5, the paper's): edge length ``1 / (C + 1e-10)``; all-pairs shortest
    paths; average-linkage clustering with optimal leaf ordering; cut at ``cut``. Distance scale (ours;
    the paper does not state it): path lengths are divided by their ``quantile`` over gene pairs and
    clipped at 1, so ``cut = 0.175`` means "closer than 17.5 % of a typical far distance", independent
    of the units of Â. Genes with no link at all sit at distance 1 from everything.

    ``"louvain"`` [ours, the default]: each gene keeps its ``n_neighbors`` strongest links (a symmetric
    kNN graph, as scanpy builds before Leiden); Louvain modularity communities (networkx) at
    ``resolution`` for ``n_runs`` seeds; genes are then grouped by how often they share a community
    (average linkage on 1 − co-assignment, cut at 0.5: together in most runs). Why: on the demo screen
    the paper's method recovers the 6 true modules from the *true* matrix at ARI ≤ 0.56 over all cut
    heights (shortest paths through the 85 cross-module edges blur the modules), this one at 0.88; from
    the directed-CLIPR estimate 0.73 against ≤ 0.18 (docs/benchmarks.md). The consensus removes most
    of Louvain's seed-to-seed variation (single runs ranged 0.61–0.78 there).

    In both, clusters of at least ``min_size`` genes are modules; ``order`` is the leaf order of the
    clustering's dendrogram, in which every module is a contiguous block.

    Parameters
    ----------
    effects
        ``(d, d)`` effect matrix (rows = sources).
    genes
        ``(d,)`` gene names.
    method
        ``"louvain"`` or ``"hierarchical"``.
    cut
        Hierarchical: dendrogram cut height on the normalised distance in [0, 1].
    resolution
        Louvain: modularity resolution (higher → more, smaller modules).
    n_neighbors
        Louvain: strongest links kept per gene (0: keep all).
    n_runs
        Louvain: seeded runs in the consensus.
    min_size
        Smallest module; smaller clusters are ``"unassigned"``.
    quantile
        Hierarchical: quantile of the pairwise path lengths that maps to distance 1.
    n_hubs
        Hub genes reported per module.
    seed
        Louvain: first seed of the consensus runs.

    Returns
    -------
    ModuleResult
    """
    E = np.asarray(effects, dtype=float)
    genes = np.asarray(list(genes), dtype=object)
    d = E.shape[0]
    if E.shape != (d, d) or genes.size != d:
        raise ConfigError(f"effects must be (d, d) with d gene names; got {E.shape} and {genes.size} names.")
    if d < 2 or not np.isfinite(E).all():
        raise ConfigError("effects must be finite and have at least 2 genes.")
    if method not in METHODS:
        raise ConfigError(f"unknown module method {method!r}; use one of {', '.join(METHODS)}.")
    if not 0 < quantile <= 1 or cut < 0 or min_size < 1:
        raise ConfigError("Need 0 < quantile <= 1, cut >= 0 and min_size >= 1.")
    if resolution <= 0 or n_neighbors < 0 or n_runs < 1:
        raise ConfigError("Need resolution > 0, n_neighbors >= 0 and n_runs >= 1.")
    del effects
    if method == "hierarchical":
        D, height = _module_distances(E, quantile), cut
        params = {"method": method, "cut": cut, "min_size": min_size, "quantile": quantile}
    else:
        D, height = 1.0 - _coassignment(_closeness(E), resolution, n_neighbors, n_runs, seed), 0.5
        params = {"method": method, "resolution": resolution, "n_neighbors": n_neighbors, "n_runs": n_runs,
                  "seed": seed, "min_size": min_size}
    Z = linkage(squareform(D, checks=False), method="average", optimal_ordering=True)
    order = leaves_list(Z)
    raw = fcluster(Z, t=height, criterion="distance")
    labels = np.full(d, UNASSIGNED, dtype=object)
    ids, counts = np.unique(raw, return_counts=True)
    big = [i for _, i in sorted(((-c, i) for i, c in zip(ids, counts) if c >= min_size))]
    absE = np.abs(E)
    hubs = {}
    for k, cid in enumerate(big, start=1):
        members = np.flatnonzero(raw == cid)
        labels[members] = f"M{k}"
        sub = absE[np.ix_(members, members)]
        degree = sub.sum(0) + sub.sum(1) - 2 * np.diag(sub)  # in + out strength within the module
        hubs[f"M{k}"] = genes[members[np.argsort(-degree, kind="stable")[:n_hubs]]].tolist()
    return ModuleResult(
        labels=labels, genes=genes, order=order, reordered=E[np.ix_(order, order)], hubs=hubs,
        linkage=Z, distances=D, params=params,
    )


def module_names(modules: ModuleResult) -> list[str]:
    """The module labels of ``modules`` in order ``M1, M2, ...`` (largest first), without ``unassigned``."""
    names = [m for m in dict.fromkeys(np.asarray(modules.labels).tolist()) if m != UNASSIGNED]
    return sorted(names, key=lambda m: int(m[1:]) if m[1:].isdigit() else 0)


def module_table(modules: ModuleResult, *, enrichment: pd.DataFrame | None = None, n_terms: int = 3) -> pd.DataFrame:
    """One row per module: ``module``, ``size``, ``hubs`` and ``genes`` (comma-joined, input order).

    With ``enrichment`` (the table of :func:`lcd_core.tl.enrich_modules`, best term first per module) a
    column ``top terms (q)`` lists the module's first ``n_terms`` terms with their BH q-values, or
    ``"none at q < 0.01"`` (the enrichment table keeps only those).
    """
    labels = np.asarray(modules.labels)
    rows = []
    for name in module_names(modules):
        row = {"module": name, "size": int((labels == name).sum()), "hubs": ", ".join(modules.hubs.get(name, [])),
               "genes": ", ".join(str(g) for g, lab in zip(modules.genes, labels) if lab == name)}
        if enrichment is not None:
            sub = enrichment[enrichment["module"] == name].head(n_terms)
            row["top terms (q)"] = "; ".join(f"{t} ({q:.2g})" for t, q in zip(sub["term"], sub["q"])) or "none at q < 0.01"
        rows.append(row)
    return pd.DataFrame(rows, columns=["module", "size", "hubs", "genes"] + (["top terms (q)"] if enrichment is not None else []))


def module_agreement(modules: ModuleResult, truth: Sequence) -> float:
    """Adjusted Rand index between the module labels and ``truth`` (``(d,)`` true module per gene, e.g. a
    simulated screen's ``uns["truth"]["modules"]``); ``unassigned`` genes count as one more cluster."""
    from sklearn.metrics import adjusted_rand_score

    truth = [str(t) for t in truth]
    if len(truth) != len(modules.labels):
        raise ConfigError(f"truth has {len(truth)} module labels for {len(modules.labels)} genes; pass one per gene.")
    return float(adjusted_rand_score(truth, [str(m) for m in modules.labels]))


def truth_gene_sets(genes: Sequence[str], truth: Sequence, *, prefix: str = "TRUE_") -> dict[str, list[str]]:
    """The true modules of a simulated screen as gene sets (``prefix + module`` → its genes), for enrichment."""
    sets: dict[str, list[str]] = {}
    for g, m in zip(genes, truth):
        sets.setdefault(f"{prefix}{m}", []).append(str(g))
    return sets


def _closeness(E: np.ndarray) -> np.ndarray:
    """``C = |E| + |E|ᵀ`` with a zero diagonal, scaled to max 1 (all zeros when E has no off-diagonal effect)."""
    absE = np.abs(E)
    C = absE + absE.T
    np.fill_diagonal(C, 0.0)
    cmax = C.max()
    return C / cmax if cmax > 0 else C


def _coassignment(C: np.ndarray, resolution: float, n_neighbors: int, n_runs: int, seed: int) -> np.ndarray:
    """``(d, d)`` fraction of seeded Louvain runs in which two genes share a community (diagonal 1)."""
    d = len(C)
    if n_neighbors and n_neighbors < d - 1:
        keep = np.zeros_like(C, dtype=bool)
        keep[np.arange(d)[:, None], np.argsort(-C, axis=1, kind="stable")[:, :n_neighbors]] = True
        C = np.where((keep | keep.T) & (C > 0), C, 0.0)
    graph = nx.from_numpy_array(C)
    co = np.zeros((d, d))
    for r in range(n_runs):
        label = np.empty(d, dtype=int)
        for i, members in enumerate(nx.community.louvain_communities(graph, weight="weight", resolution=resolution,
                                                                     seed=seed + r)):
            label[list(members)] = i
        co += label[:, None] == label[None, :]
    return co / n_runs


def _module_distances(E: np.ndarray, quantile: float) -> np.ndarray:
    """Normalised shortest-path distances of the closeness graph (array in, array out)."""
    C = _closeness(E)
    if C.max() <= 0:
        return np.ones_like(C) - np.eye(len(C))
    with np.errstate(divide="ignore"):
        W = np.where(C > 0, 1.0 / (C + 1e-10), 0.0)  # 0 = no edge for csgraph (dense input)
    P = shortest_path(W, method="D", directed=False)
    off = P[~np.eye(len(P), dtype=bool)]
    finite = off[np.isfinite(off)]
    scale = np.quantile(finite, quantile) if finite.size else 1.0
    D = np.minimum(P / scale, 1.0)  # unreachable pairs (inf) → 1
    np.fill_diagonal(D, 0.0)
    return D
