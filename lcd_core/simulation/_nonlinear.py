"""[ours] A nonlinear count-screen generator (METHOD.md §8): genes in functional modules, saturating
regulation and AND-like gates, perturbations as additive shifts of the target's drift, so combinations
are not additive in the cells' states although they are additive in the perturbation.
(Over 400 lines on purpose: the drift, its parameters' sampling and its integration are one generator and
are read together.)

The drift of gene i in condition q (target set T) is

    f_i(s) = -s_i + b_i + h_i tanh( sum_j W_ji (s_j - theta_j) / h_i )
             + sum_{gates g -> i} v_g  sig(k (e_j (s_j - theta_j) - o_j)) sig(k (e_k (s_k - theta_k) - o_k))
             + c_{T,i},          c_T = sum_{j in T} c_j e_j,

with ``sig`` the logistic function. ``h_i`` saturates the summed input (two regulators that each push
i to saturation do not add up), ``theta_j`` is regulator j's deterministic control level (a Hill-like
threshold, so every regulator acts in its sensitive range in control), and a gate fires only when both
its regulators move by more than ``o`` in direction ``e`` (synergy). Regulation goes forward in the
gene order (modules in order; within a module, from earlier to later genes): the graph is a DAG, so
the stationary law is unique and reached quickly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch

from .._constants import KEYS
from ..errors import ConfigError
from ._measurement import assemble_screen, condition_label, draw_measurement, zip_counts


@dataclass
class NonlinearConfig:
    """Settings of the nonlinear generator (defaults give visible interactions at ~200 cells)."""

    # --- graph
    n_hubs: int = 5  # hub regulators at the top of each module
    p_hub: float = 0.5  # probability that a hub regulates a later gene of its module
    p_within: float = 0.05  # probability that a non-hub regulates a later gene of its module
    p_between: float = 0.01  # probability of an edge to a gene of a later module (sparse)
    activation_fraction: float = 0.7  # share of positive regulation weights
    weight_range: tuple[float, float] = (0.5, 1.5)  # |W_ji| ~ U(range)
    # --- dynamics
    saturation_range: tuple[float, float] = (5.0, 10.0)  # h_i ~ U(range), in latent units
    bias_range: tuple[float, float] = (2.0, 6.0)  # b_i ~ U(range)
    gates_per_module: int = 2  # AND-like gates per module
    gate_weight_range: tuple[float, float] = (5.0, 10.0)  # |v_g| ~ U(range), random sign
    gate_offset_range: tuple[float, float] = (3.0, 6.0)  # o ~ U(range): move needed to open a gate
    gate_slope: float = 2.0  # k, steepness of the gates' logistic switches
    # --- perturbations
    shift_range: tuple[float, float] = (10.0, 25.0)  # |c_j| ~ U(range)
    knockdown_fraction: float = 0.5  # share of negative shifts (CRISPRi-like)
    # --- integration (exponential Euler-Maruyama)
    dt: float = 0.1  # step, in units of the self-decay time
    t_burn: float = 12.0  # integration time from the deterministic fixed point
    # --- measurement
    unit_scale_range: tuple[float, float] = (5.0, 40.0)
    dropout_range: tuple[float, float] = (0.0, 0.03)


@dataclass
class NonlinearSDE:
    """The nonlinear SDE ``ds = f_q(s) dt + sqrt(2) dW`` (drift in the module docstring).

    All index arrays refer to genes in topological order (regulators before targets).

    Attributes
    ----------
    weights
        (d, d) regulation weights ``W``, rows = sources, strictly upper triangular.
    saturation
        (d,) ``h_i``.
    bias
        (d,) ``b_i``.
    threshold
        (d,) ``theta_j``, each gene's deterministic control level.
    shifts
        (d,) on-target shifts ``c_j``.
    gate_regulators
        (G, 2) int regulator indices of each gate.
    gate_targets
        (G,) int target index.
    gate_weights
        (G,) ``v_g``.
    gate_directions
        (G, 2) ``e`` (±1): the direction in which each regulator must move to open the gate.
    gate_offsets
        (G, 2) ``o``.
    gate_slope
        ``k``.
    modules
        (d,) int module index per gene.
    """

    weights: np.ndarray
    saturation: np.ndarray
    bias: np.ndarray
    threshold: np.ndarray
    shifts: np.ndarray
    gate_regulators: np.ndarray
    gate_targets: np.ndarray
    gate_weights: np.ndarray
    gate_directions: np.ndarray
    gate_offsets: np.ndarray
    gate_slope: float
    modules: np.ndarray
    _wt: sp.csr_matrix = field(init=False, repr=False)

    def __post_init__(self):
        # W^T as float32 CSR: the drift needs W^T (s - theta) for all cells at every step
        self._wt = sp.csr_matrix(self.weights.T.astype(np.float32))

    @property
    def d(self) -> int:
        """Number of genes."""
        return len(self.bias)

    @property
    def graph(self) -> np.ndarray:
        """(d, d) bool: regulation edges and gate edges, rows = sources."""
        adj = self.weights != 0
        for (j, k), i in zip(self.gate_regulators, self.gate_targets):
            adj[j, i] = adj[k, i] = True
        return adj

    def shift(self, targets: Sequence[int]) -> np.ndarray:
        """(d,) total shift of a target set; single shifts add."""
        c = np.zeros(self.d)
        for j in targets:
            c[j] += self.shifts[j]
        return c

    def _gate_args(self, states: np.ndarray, g: int) -> tuple[np.ndarray, np.ndarray]:
        # logits of gate g's two switches; states are (d, n) in this private layout
        j, k = self.gate_regulators[g]
        ej, ek = self.gate_directions[g]
        oj, ok = self.gate_offsets[g]
        aj = self.gate_slope * (ej * (states[j] - self.threshold[j]) - oj)
        ak = self.gate_slope * (ek * (states[k] - self.threshold[k]) - ok)
        return aj, ak

    def drift_input(self, states: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """``g(s) = f(s) + s``, the drift without the self-decay.

        Parameters
        ----------
        states
            (d, n) latent states, genes first (the integrator's layout).
        shift
            (d, n) or (d, 1) perturbation shifts ``c_T``.

        Returns
        -------
        (d, n) array, dtype of ``states``.
        """
        dtype = states.dtype
        wt = self._wt if dtype == np.float32 else self._wt.astype(dtype)
        h = self.saturation[:, None].astype(dtype)
        # W^T (s - theta) = W^T s - W^T theta: one sparse product, no centred copy of the states
        out = np.asarray(wt @ states)
        out -= (wt @ self.threshold.astype(dtype))[:, None]
        out /= h
        np.tanh(out, out=out)
        out *= h
        out += self.bias[:, None].astype(dtype)
        out += shift.astype(dtype, copy=False)
        for g, i in enumerate(self.gate_targets):
            aj, ak = self._gate_args(states, g)
            out[i] += dtype.type(self.gate_weights[g]) * _sigmoid(aj) * _sigmoid(ak)
        return out

    def drift(self, states: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """(d, n) drift ``f_q(s) = -s + g(s)`` at states (d, n) under shifts (d, n) or (d, 1)."""
        return self.drift_input(states, shift) - states

    def fixed_point(self, shift: np.ndarray) -> np.ndarray:
        """Deterministic fixed points ``f(s) = 0``, exact, for shifts (d, m); returns (d, m) float64.

        The graph is a DAG in gene order, so solving gene by gene in that order is exact.
        """
        shift = np.asarray(shift, dtype=np.float64)
        s = np.array(self.threshold[:, None] + np.zeros_like(shift))
        for i in range(self.d):
            s[i] = self.drift_input(s, shift)[i]
        return s

    def mean_jacobian(self, states: np.ndarray) -> np.ndarray:
        """Direct causal effects: ``C[j, i] = mean over cells of d f_i / d s_j`` (rows = sources).

        Parameters
        ----------
        states
            (n, d) latent states (here: control cells).

        Returns
        -------
        (d, d) float64; the diagonal is the self-decay, -1.
        """
        x = np.asarray(states, dtype=np.float64).T
        u = (self.weights.T @ (x - self.threshold[:, None])) / self.saturation[:, None]
        # d/ds_j of h_i tanh(u_i) = W_ji (1 - tanh^2 u_i); W is constant, so average the slope only
        slope = (1.0 - np.tanh(u) ** 2).mean(axis=1)
        jac = self.weights * slope[None, :]
        jac -= np.eye(self.d)
        for g, i in enumerate(self.gate_targets):
            aj, ak = self._gate_args(x, g)
            sj, sk = _sigmoid(aj), _sigmoid(ak)
            j, k = self.gate_regulators[g]
            ej, ek = self.gate_directions[g]
            v, kk = self.gate_weights[g], self.gate_slope
            jac[j, i] += np.mean(v * kk * ej * sj * (1 - sj) * sk)
            jac[k, i] += np.mean(v * kk * ek * sk * (1 - sk) * sj)
        return jac

    def integrate(
        self,
        states: np.ndarray,
        shift: np.ndarray,
        *,
        t: float,
        dt: float,
        rng: int | np.random.Generator | None = None,
    ) -> np.ndarray:
        """Run the SDE for time ``t`` with the exponential Euler–Maruyama scheme.

        Each step integrates the self-decay ``-s`` exactly and holds ``g(s)`` fixed over the step::

            s <- e^{-dt} s + (1 - e^{-dt}) g(s) + sqrt(1 - e^{-2 dt}) xi,   xi ~ N(0, I)

        which is exact for the Ornstein–Uhlenbeck part (plain Euler–Maruyama would inflate the
        stationary variance by ~dt/2) and first-order accurate for the regulation.

        Parameters
        ----------
        states
            (d, n) float32 initial states, one column per cell; not modified.
        shift
            (d, n) float32 per-cell shifts ``c_T``.
        t, dt
            Integration time and step (self-decay time units).
        rng
            Seed or generator.

        Returns
        -------
        (d, n) float32 states at time ``t``.
        """
        rng = np.random.default_rng(rng)
        # torch draws normals ~2.5x faster than numpy on CPU; its stream is seeded from ``rng``
        gen = torch.Generator().manual_seed(int(rng.integers(2**63 - 1)))
        n_steps = int(round(t / dt))
        decay = np.float32(np.exp(-dt))
        gain = np.float32(1.0 - np.exp(-dt))
        noise = np.float32(np.sqrt(1.0 - np.exp(-2.0 * dt)))
        x = states.astype(np.float32, copy=True)
        for _ in range(n_steps):
            g = self.drift_input(x, shift)
            x *= decay
            g *= gain
            x += g
            x += noise * torch.randn(x.shape, generator=gen, dtype=torch.float32).numpy()
        return x


def _sigmoid(a: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * a))  # overflow-free logistic


def nonlinear_sde(
    module_sizes: Sequence[int],
    *,
    config: NonlinearConfig | None = None,
    rng: int | np.random.Generator | None = None,
) -> NonlinearSDE:
    """Draw a nonlinear modular SDE.

    Parameters
    ----------
    module_sizes
        Genes per module; genes are numbered module by module.
    config
        Generator settings; default :class:`NonlinearConfig`.
    rng
        Seed or generator.

    Returns
    -------
    The :class:`NonlinearSDE`.
    """
    cfg = config or NonlinearConfig()
    rng = np.random.default_rng(rng)
    sizes = [int(m) for m in module_sizes]
    if min(sizes) < 2:
        raise ConfigError(f"every module needs at least 2 genes, got sizes {sizes}")
    d = sum(sizes)
    modules = np.repeat(np.arange(len(sizes)), sizes)
    starts = np.cumsum([0] + sizes[:-1])
    pos = np.arange(d) - starts[modules]  # position within its module

    # regulation edges: forward in gene order, dense inside a module (hubs denser), sparse between
    same = modules[:, None] == modules[None, :]
    later = np.arange(d)[:, None] < np.arange(d)[None, :]
    p = np.where(same, np.where(pos[:, None] < cfg.n_hubs, cfg.p_hub, cfg.p_within), 0.0)
    p = np.where(~same & (modules[:, None] < modules[None, :]), cfg.p_between, p)
    adj = (rng.random((d, d)) < p) & later
    sign = np.where(rng.random((d, d)) < cfg.activation_fraction, 1.0, -1.0)
    weights = np.where(adj, sign * rng.uniform(*cfg.weight_range, size=(d, d)), 0.0)
    saturation = rng.uniform(*cfg.saturation_range, size=d)
    bias = rng.uniform(*cfg.bias_range, size=d)
    shift_sign = np.where(rng.random(d) < cfg.knockdown_fraction, -1.0, 1.0)
    shifts = shift_sign * rng.uniform(*cfg.shift_range, size=d)

    # AND-like gates inside each module: two earlier regulators (hubs preferred) -> one later target
    g_reg, g_tgt = [], []
    for m, (start, size) in enumerate(zip(starts, sizes)):
        if size < 4:
            continue
        for _ in range(cfg.gates_per_module):
            upper = max(2, min(size - 1, size // 2))  # regulators from the module's upper half
            j, k = np.sort(rng.choice(upper, size=2, replace=False)) + start
            i = int(rng.integers(k + 1, start + size))
            g_reg.append((int(j), int(k)))
            g_tgt.append(i)
    g_reg = np.array(g_reg, dtype=np.int64).reshape(-1, 2)
    g_tgt = np.array(g_tgt, dtype=np.int64)
    g_w = rng.choice([-1.0, 1.0], size=len(g_tgt)) * rng.uniform(*cfg.gate_weight_range, size=len(g_tgt))
    g_off = rng.uniform(*cfg.gate_offset_range, size=(len(g_tgt), 2))
    # a gate opens when its regulators move the way their own perturbation pushes them, so a
    # double of the two regulators shows synergy
    g_dir = shift_sign[g_reg] if len(g_reg) else np.zeros((0, 2))

    # thresholds = control fixed point; at s = theta the regulation input is 0, so theta_i is the
    # bias plus the (almost closed) gates, computed in gene order
    sde = NonlinearSDE(
        weights=weights, saturation=saturation, bias=bias, threshold=np.zeros(d), shifts=shifts,
        gate_regulators=g_reg, gate_targets=g_tgt, gate_weights=g_w, gate_directions=g_dir,
        gate_offsets=g_off, gate_slope=cfg.gate_slope, modules=modules,
    )
    theta = bias.copy()
    for g, i in enumerate(g_tgt):
        theta[i] += g_w[g] * _sigmoid(-cfg.gate_slope * g_off[g, 0]) * _sigmoid(-cfg.gate_slope * g_off[g, 1])
    sde.threshold = theta
    return sde


def _choose_design(
    sde: NonlinearSDE, n_singles: int, n_doubles: int, within_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Pick perturbed genes (regulators preferred) and doubles (mostly within modules, gate pairs first)."""
    d = sde.d
    if not 0 < n_singles <= d:
        raise ConfigError(f"n_singles must lie in [1, {d}], got {n_singles}")
    out_degree = sde.graph.sum(axis=1)
    w = out_degree + 0.5
    singles = np.sort(rng.choice(d, size=n_singles, replace=False, p=w / w.sum()))
    chosen = set(int(j) for j in singles)
    within = [(int(a), int(b)) for a in singles for b in singles if a < b and sde.modules[a] == sde.modules[b]]
    between = [(int(a), int(b)) for a in singles for b in singles if a < b and sde.modules[a] != sde.modules[b]]
    if n_doubles > len(within) + len(between):
        raise ConfigError(f"cannot draw {n_doubles} distinct doubles from {n_singles} perturbed genes")
    n_within = min(len(within), int(round(within_fraction * n_doubles)))
    n_between = n_doubles - n_within
    if n_between > len(between):
        n_between, n_within = len(between), n_doubles - len(between)
    gate_pairs = [tuple(int(x) for x in pr) for pr in sde.gate_regulators if set(pr) <= chosen]
    gate_pairs = sorted(set(gate_pairs))[: n_within // 2]
    rest = [pr for pr in within if pr not in gate_pairs]
    # like screens that pair genes of one pathway: within-module pairs sharing targets are preferred
    adj = sde.graph
    shared = np.array([np.sum(adj[a] & adj[b]) for a, b in rest], dtype=float)
    n_rest = min(len(rest), n_within - len(gate_pairs))
    pick = rng.choice(len(rest), size=n_rest, replace=False, p=(shared + 0.05) / (shared + 0.05).sum()) if n_rest else []
    doubles = gate_pairs + [rest[i] for i in pick]
    n_between = n_doubles - len(doubles)
    if n_between:
        pick = rng.choice(len(between), size=n_between, replace=False)
        doubles += [between[i] for i in pick]
    return singles, sorted(doubles)


def simulate_nonlinear(
    n_genes: int,
    *,
    n_modules: int,
    n_singles: int,
    n_doubles: int,
    n_cells: int = 200,
    n_control_cells: int | None = None,
    within_module_fraction: float = 0.85,
    gene_names: Sequence[str] | None = None,
    module_names: Sequence[str] | None = None,
    counts: bool = True,
    config: NonlinearConfig | None = None,
    sparse: bool | None = None,
    store_latent: bool = True,
    counts_layer: bool = True,
    seed: int = 0,
) -> ad.AnnData:
    """Simulate a nonlinear modular screen whose combinations interact (METHOD.md §8, [ours]).

    Cells of every condition are integrated together (one vectorised exponential Euler–Maruyama
    chain per cell) for ``config.t_burn`` time units from the condition's deterministic fixed point
    plus unit Gaussian noise, then measured through the ZIP model.

    Parameters
    ----------
    n_genes
        Number of genes ``d``, split into ``n_modules`` near-equal modules.
    n_modules
        Number of functional modules.
    n_singles
        Number of perturbed genes (one single condition each; regulators preferred).
    n_doubles
        Number of double perturbations among the perturbed genes.
    n_cells
        Cells per perturbed condition.
    n_control_cells
        Control cells; default ``n_cells``.
    within_module_fraction
        Share of doubles whose two genes share a module (gate pairs first).
    gene_names, module_names
        Optional names (d,) and (n_modules,); defaults ``M1G01``... and ``M1``...
    counts
        ``True``: ZIP counts in ``.X`` and ``layers[KEYS.COUNTS]``; ``False``: latent states in ``.X``.
    config
        :class:`NonlinearConfig`.
    sparse, store_latent
        See :func:`simulate_linear`.
    counts_layer
        Also keep the counts in ``layers[KEYS.COUNTS]`` (count screens).
    seed
        Seed; the same seed gives identical arrays.

    Returns
    -------
    AnnData with ``obs[KEYS.PERT]``, ``obsm["latent"]``, ``uns[KEYS.SIMULATED]`` and
    ``uns[KEYS.TRUTH]``: ``causal_matrix`` (d, d) rows = sources, the control-averaged Jacobian
    ``E_ctrl[d f_i / d s_j]`` at entry ``[j, i]`` (diagonal -1); ``graph`` (d, d) bool;
    ``weights`` (d, d) signed regulation weights ``W``; ``modules`` (d,) str; ``conditions``
    (n_cond,); ``latent_mean`` and ``latent_std`` (n_cond, d), mean and standard deviation of the simulated
    cells' latent states;
    ``fixed_point`` (n_cond, d) deterministic fixed points; ``shifts``, ``bias``, ``saturation``,
    ``threshold`` (d,); ``gate_*`` arrays; ``perturbed`` (K,) gene names; ``unit_scale`` and
    ``dropout`` (d,) (count screens); ``params_json``.
    """
    cfg = config or NonlinearConfig()
    d, n_modules = int(n_genes), int(n_modules)
    if not 1 <= n_modules <= d // 2:
        raise ConfigError(f"n_modules must lie in [1, {d // 2}] for {d} genes, got {n_modules}")
    sizes = [d // n_modules + (m < d % n_modules) for m in range(n_modules)]
    module_names = list(module_names) if module_names is not None else [f"M{m + 1}" for m in range(n_modules)]
    if gene_names is None:
        gene_names = [f"{module_names[m]}G{k + 1:02d}" for m, size in enumerate(sizes) for k in range(size)]
    gene_names = np.asarray(list(gene_names), dtype=object)
    if len(gene_names) != d or len(set(gene_names)) != d or len(module_names) != n_modules:
        raise ConfigError("gene_names must be d unique names and module_names n_modules names")
    n_control_cells = n_cells if n_control_cells is None else int(n_control_cells)
    params = dict(
        generator="nonlinear", graph="modular-dag", d=d, seed=seed, n_modules=n_modules,
        module_sizes=sizes, n_singles=n_singles, n_doubles=n_doubles, n_cells=n_cells,
        n_control_cells=n_control_cells, within_module_fraction=within_module_fraction, counts=counts,
        config={k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
    )
    rng_sde, rng_design, rng_chain, rng_meas, rng_counts = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(5)
    )
    sde = nonlinear_sde(sizes, config=cfg, rng=rng_sde)
    singles, doubles = _choose_design(sde, n_singles, n_doubles, within_module_fraction, rng_design)
    target_sets: list[tuple[int, ...]] = [()] + [(int(j),) for j in singles] + doubles
    labels = [condition_label(list(gene_names[list(t)])) for t in target_sets]
    sizes_q = [n_control_cells if not t else n_cells for t in target_sets]

    # one chain per cell, all conditions at once, from the fixed point plus unit noise
    shifts_q = np.stack([sde.shift(t) for t in target_sets], axis=1)  # (d, n_cond)
    fixed = sde.fixed_point(shifts_q)
    cell_q = np.repeat(np.arange(len(target_sets)), sizes_q)
    shift_cells = shifts_q[:, cell_q].astype(np.float32)
    start = fixed[:, cell_q].astype(np.float32) + rng_chain.standard_normal(shift_cells.shape, dtype=np.float32)
    states = np.ascontiguousarray(sde.integrate(start, shift_cells, t=cfg.t_burn, dt=cfg.dt, rng=rng_chain).T)

    bounds = np.cumsum([0] + sizes_q)
    latent_blocks = [states[bounds[q]:bounds[q + 1]] for q in range(len(target_sets))]
    unit_scale, dropout = draw_measurement(
        d, unit_scale_range=cfg.unit_scale_range, dropout_range=cfg.dropout_range, rng=rng_meas
    )
    count_blocks = [zip_counts(b, unit_scale, dropout, rng=rng_counts) for b in latent_blocks] if counts else None

    truth = {
        "causal_matrix": sde.mean_jacobian(latent_blocks[0]),
        "graph": sde.graph,
        "weights": sde.weights,
        "modules": np.asarray(module_names, dtype=object)[sde.modules],
        "conditions": np.array(labels, dtype=object),
        "latent_mean": np.stack([b.astype(np.float64).mean(axis=0) for b in latent_blocks]),
        "latent_std": np.stack([b.astype(np.float64).std(axis=0, ddof=1) for b in latent_blocks]),
        "fixed_point": fixed.T,
        "shifts": sde.shifts,
        "bias": sde.bias,
        "saturation": sde.saturation,
        "threshold": sde.threshold,
        "gate_regulators": sde.gate_regulators,
        "gate_targets": sde.gate_targets,
        "gate_weights": sde.gate_weights,
        "gate_directions": sde.gate_directions,
        "gate_offsets": sde.gate_offsets,
        "perturbed": gene_names[singles],
    }
    if counts:
        truth.update(unit_scale=unit_scale, dropout=dropout)
    note = (
        f"SIMULATED screen (lcd_core.simulation.simulate_nonlinear, seed={seed}): {d} synthetic genes in "
        f"{n_modules} functional modules regulated by a nonlinear stationary SDE (saturating tanh "
        "regulation and AND-like gates on a modular DAG); perturbations are additive shifts of the "
        "target gene's drift, so combinations interact only through the nonlinear dynamics; cells "
        "are integrated to stationarity with exponential Euler-Maruyama"
        + ("; counts come from a zero-inflated Poisson measurement model" if counts else "; .X holds latent states")
        + ". Not real data."
    )
    return assemble_screen(
        latent=states, sizes=sizes_q, count_blocks=count_blocks, labels=labels, gene_names=gene_names,
        simulated_note=note, truth=truth, params=params, sparse=sparse, store_latent=store_latent,
        counts_layer=counts_layer,
    )
