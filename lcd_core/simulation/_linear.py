"""The paper's linear generator (METHOD.md §8): a linear stationary SDE on a random graph, with cells
drawn exactly from its Gaussian stationary law, optionally pushed through the ZIP measurement model."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import anndata as ad
import numpy as np
import scipy.linalg
import scipy.sparse as sp

from .._constants import KEYS
from ..errors import ConfigError
from ._graphs import random_graph
from ._measurement import _SPARSE_ABOVE, assemble_screen, condition_label, draw_measurement, zip_counts


@dataclass(frozen=True)
class LinearSDE:
    """A linear SDE ``ds = (A s + b + c_q) dt + sqrt(2) dW`` and its stationary laws.

    Attributes
    ----------
    graph
        (d, d) bool adjacency, rows = sources.
    causal_matrix
        (d, d) ``A_causal = W - (max Re eig(W) + 0.5) I``, rows = sources: entry ``[i, j]`` is the
        direct effect of gene i on gene j's drift.
    sde_matrix
        (d, d) ``A = A_causal.T`` (rows = targets), the drift matrix.
    bias
        (d,) ``b``.
    shifts
        (d,) on-target shift ``c_j`` applied to gene j's drift when j is perturbed.
    cov
        (d, d) stationary covariance ``Sigma`` solving ``A Sigma + Sigma A^T = -I`` (diffusion
        ``sqrt(2) I`` gives ``-2 I``; the paper's generator uses ``-I``, i.e. unit-variance noise,
        and so do we).
    """

    graph: np.ndarray
    causal_matrix: np.ndarray
    sde_matrix: np.ndarray
    bias: np.ndarray
    shifts: np.ndarray
    cov: np.ndarray

    @property
    def d(self) -> int:
        """Number of genes."""
        return len(self.bias)

    def shift(self, targets: Iterable[int]) -> np.ndarray:
        """(d,) total shift ``c_T = sum_{j in T} c_j e_j`` of a target set (indices); shifts add."""
        c = np.zeros(self.d)
        for j in targets:
            c[j] += self.shifts[j]
        return c

    def mean(self, targets: Iterable[int] = ()) -> np.ndarray:
        """(d,) stationary mean ``-A^{-1} (b + c_T)`` of the condition with target set ``targets``."""
        return -np.linalg.solve(self.sde_matrix, self.bias + self.shift(targets))

    def covariance(self, targets: Iterable[int] = ()) -> np.ndarray:
        """(d, d) stationary covariance; shifts do not change it, so it is ``Sigma`` for every set."""
        del targets
        return self.cov

    def sample(self, targets: Iterable[int], n: int, *, rng: int | np.random.Generator | None = None) -> np.ndarray:
        """Draw ``n`` latent states exactly from ``N(mean(targets), Sigma)``; (n, d) float64."""
        rng = np.random.default_rng(rng)
        chol = self._chol()
        return self.mean(targets)[None, :] + rng.standard_normal((n, self.d)) @ chol.T

    def _chol(self) -> np.ndarray:
        # cached on the frozen instance: the Cholesky factor is reused for every condition
        cached = self.__dict__.get("_chol_cache")
        if cached is None:
            cached = np.linalg.cholesky(self.cov)
            object.__setattr__(self, "_chol_cache", cached)
        return cached


def linear_sde(
    d: int,
    *,
    graph: Literal["er", "sf"] = "er",
    expected_degree: float = 10,
    weight_range: tuple[float, float] = (1.0, 3.0),
    bias_range: tuple[float, float] = (-3.0, 3.0),
    shift_range: tuple[float, float] = (5.0, 15.0),
    rng: int | np.random.Generator | None = None,
) -> LinearSDE:
    """Draw the paper's linear SDE (METHOD.md §8).

    Parameters
    ----------
    d
        Number of genes.
    graph
        ``"er"`` or ``"sf"``; see :func:`random_graph`.
    expected_degree
        Expected out-degree of the graph.
    weight_range
        Edge weights are ``±U(weight_range)`` with a random sign.
    bias_range
        ``b ~ U(bias_range)``.
    shift_range
        On-target shifts ``c_j = ±U(shift_range)`` with a random sign.
    rng
        Seed or generator.

    Returns
    -------
    The :class:`LinearSDE`.
    """
    rng = np.random.default_rng(rng)
    adj = random_graph(d, kind=graph, expected_degree=expected_degree, rng=rng)
    signs = rng.choice([-1.0, 1.0], size=(d, d))
    W = np.where(adj, signs * rng.uniform(*weight_range, size=(d, d)), 0.0)
    # shift the spectrum so every eigenvalue has real part <= -0.5: a stable, stationary SDE
    A_causal = W - (np.max(np.linalg.eigvals(W).real) + 0.5) * np.eye(d)
    A = A_causal.T
    b = rng.uniform(*bias_range, size=d)
    c = rng.choice([-1.0, 1.0], size=d) * rng.uniform(*shift_range, size=d)
    cov = scipy.linalg.solve_continuous_lyapunov(A, -np.eye(d))
    cov = 0.5 * (cov + cov.T)  # symmetrise round-off so the Cholesky factor exists
    return LinearSDE(graph=adj, causal_matrix=A_causal, sde_matrix=A, bias=b, shifts=c, cov=cov)


def simulate_linear(
    n_genes: int,
    *,
    n_perturbed: int | None = None,
    n_cells: int = 200,
    n_control_cells: int | None = None,
    graph: Literal["er", "sf"] = "er",
    expected_degree: float = 10,
    counts: bool = False,
    n_doubles: int = 0,
    unit_scale_range: tuple[float, float] = (5.0, 40.0),
    dropout_range: tuple[float, float] = (0.02, 0.25),
    sparse: bool | None = None,
    store_latent: bool = True,
    counts_layer: bool = True,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate a screen from the paper's linear generator.

    Conditions: control, one single per perturbed gene, and ``n_doubles`` random pairs of perturbed
    genes. Latent states are drawn exactly from ``N(-A^{-1}(b + c_q), Sigma)``.

    Parameters
    ----------
    n_genes
        Number of genes ``d``.
    n_perturbed
        Number of genes with a single-gene perturbation (chosen at random); default all ``d``.
    n_cells
        Cells per perturbed condition.
    n_control_cells
        Control cells; default ``n_cells``.
    graph, expected_degree
        Graph kind and expected out-degree; see :func:`random_graph`.
    counts
        ``False``: ``.X`` holds the latent states (float32), ``uns["lcd_is_counts"] = False`` (the
        paper's no-measurement-model mode). ``True``: ``.X`` and ``layers[KEYS.COUNTS]`` hold UMI
        counts from the ZIP measurement model.
    n_doubles
        Number of random double perturbations (pairs of perturbed genes, distinct).
    unit_scale_range, dropout_range
        Ranges of the ZIP parameters; see :func:`draw_measurement`.
    sparse
        Store counts as CSR; default: when cells x genes exceeds 1e7.
    store_latent
        Keep the latent states in ``obsm["latent"]`` (float32; at 200k x 1000 this is 0.8 GB in memory
        and ~0.74 GB of a gzip file, more than the counts).
    counts_layer
        Also keep the counts in ``layers[KEYS.COUNTS]`` (a second copy of ``.X``).
    seed
        Seed; the same seed gives identical arrays.

    Returns
    -------
    AnnData: ``.X`` (n_cells_total, d), ``obs[KEYS.PERT]``, ``obsm["latent"]`` float32,
    ``uns[KEYS.SIMULATED]`` (str), ``uns[KEYS.TRUTH]`` with ``causal_matrix`` (d, d) rows = sources,
    ``graph`` (d, d) bool, ``modules`` (d,) str (all ``"none"``: the linear generator has no modules),
    ``conditions`` (n_cond,), ``latent_mean`` (n_cond, d) exact stationary means, ``latent_cov``
    (d, d), ``sde_matrix`` (d, d), ``bias`` (d,), ``shifts`` (d,), ``perturbed`` (K,) gene names,
    ``unit_scale`` (d,) and ``dropout`` (d,) (count screens only) and ``params_json``.
    """
    d = int(n_genes)
    n_perturbed = d if n_perturbed is None else int(n_perturbed)
    if not 0 <= n_perturbed <= d:
        raise ConfigError(f"n_perturbed must lie in [0, {d}], got {n_perturbed}")
    if n_doubles > n_perturbed * (n_perturbed - 1) // 2:
        raise ConfigError(f"cannot draw {n_doubles} distinct doubles from {n_perturbed} perturbed genes")
    n_control_cells = n_cells if n_control_cells is None else int(n_control_cells)
    params = dict(
        generator="linear", graph=graph, d=d, seed=seed, n_perturbed=n_perturbed, n_cells=n_cells,
        n_control_cells=n_control_cells, expected_degree=expected_degree, counts=counts,
        n_doubles=n_doubles, unit_scale_range=list(unit_scale_range), dropout_range=list(dropout_range),
        weight_range=[1.0, 3.0], bias_range=[-3.0, 3.0], shift_range=[5.0, 15.0],
    )
    # independent streams, so e.g. changing n_cells leaves the graph and the parameters unchanged
    rng_sde, rng_design, rng_cells, rng_meas, rng_counts = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )
    sde = linear_sde(d, graph=graph, expected_degree=expected_degree, rng=rng_sde)
    width = max(4, len(str(d)))
    genes = np.array([f"G{i:0{width}d}" for i in range(d)])

    perturbed = np.sort(rng_design.choice(d, size=n_perturbed, replace=False))
    target_sets: list[tuple[int, ...]] = [()] + [(int(j),) for j in perturbed]
    if n_doubles:
        pairs: set[tuple[int, int]] = set()
        while len(pairs) < n_doubles:
            a, b = np.sort(rng_design.choice(perturbed, size=2, replace=False))
            pairs.add((int(a), int(b)))
        target_sets += sorted(pairs)
    labels = [condition_label(genes[list(t)]) for t in target_sets]
    means = np.stack([sde.mean(t) for t in target_sets])

    unit_scale, dropout = draw_measurement(d, unit_scale_range=unit_scale_range, dropout_range=dropout_range, rng=rng_meas)
    sizes = [n_control_cells if not t else n_cells for t in target_sets]
    if sparse is None:
        sparse = sum(sizes) * d > _SPARSE_ABOVE
    # float32 keeps a 200k x 1000 screen at 0.8 GB; each block is drawn in float64
    latent = np.empty((sum(sizes), d), dtype=np.float32)
    count_blocks = []
    chol = sde._chol()
    start = 0
    for q, n_q in enumerate(sizes):
        block = latent[start:start + n_q]
        block[:] = means[q][None, :] + rng_cells.standard_normal((n_q, d)) @ chol.T
        start += n_q
        if counts:
            y = zip_counts(block, unit_scale, dropout, rng=rng_counts)
            # convert block by block so a large screen never holds all its counts densely
            count_blocks.append(sp.csr_matrix(y, dtype=np.float32) if sparse else y)

    truth = {
        "causal_matrix": sde.causal_matrix,
        "graph": sde.graph,
        "modules": np.array(["none"] * d, dtype=object),
        "conditions": np.array(labels, dtype=object),
        "latent_mean": means,
        "latent_cov": sde.cov,
        "sde_matrix": sde.sde_matrix,
        "bias": sde.bias,
        "shifts": sde.shifts,
        "perturbed": genes[perturbed].astype(object),
    }
    if counts:
        truth.update(unit_scale=unit_scale, dropout=dropout)
    how = (
        "latent states are stored in .X (no measurement model)"
        if not counts
        else "counts are drawn from a zero-inflated Poisson measurement model of the latent states"
    )
    note = (
        f"SIMULATED screen (lcd_core.simulation.simulate_linear, seed={seed}): a linear stationary SDE "
        f"on a random {graph.upper()} graph over {d} synthetic genes (the LCD paper's generator); cells "
        f"are exact draws from each condition's Gaussian stationary law; {how}. Not real data."
    )
    return assemble_screen(
        latent=latent, sizes=sizes, count_blocks=count_blocks if counts else None, labels=labels,
        gene_names=genes, simulated_note=note, truth=truth, params=params, sparse=sparse,
        store_latent=store_latent, counts_layer=counts_layer,
    )
