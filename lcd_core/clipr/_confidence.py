"""How sure is an edge? Bootstrap intervals, sign stability and a shuffled-label null of directed CLIPR.

- **Bootstrap** (:func:`bootstrap_directed`): resample the cells of each condition with replacement, recompute
  the condition means and the pooled within-condition covariance, solve again. Covers the sampling noise of
  the finite cells the read-out draws (generated cells: ``source="cells"``; measured cells: ``"data"``); it does
  *not* cover the model's own error (a different stage-2 network would draw different cells) nor what the
  regulariser sets (see :func:`~lcd_core.clipr.identifiability`: an interval of a not-identified edge is the
  spread of the minimum-norm choice, not of the edge). Percentile interval at ``level``; sign stability = share
  of resamples whose sign agrees with the point estimate's. No retraining and no new cells: each resample
  costs one pooled covariance and one solve.
- **Shuffled-label null** (:func:`null_directed`): permute the condition labels of all cells (group sizes
  kept), so that the perturbations carry no signal, and solve; the pooled |edge| of the shuffles is the
  distribution of edge strengths without perturbation signal. Edges above its 99th percentile are reported.
  The covariance is kept by the shuffle, so the null's edges are those of the symmetric −Σ⁻¹/2 that the
  covariance alone gives, plus noise: exceeding it means stronger than what the covariance and chance make.
- **The model's uncertainty** (``ensemble=``, the networks of ``lcd ensemble``): each network draws the
  read-out's cells, and resample b is drawn from network b mod M (the run's own is network 0). The
  percentile interval and the sign stability then pool resamples of every network: they cover the cells'
  noise and the spread between networks trained with other seeds, not a bias all of them share.
- :func:`clipr_confidence`: all of it for a trained run, computed once and cached in the run directory
  (``cache/clipr-confidence-<key>.npz``, key with :data:`ALGORITHM_VERSION`, the options and the
  ensemble's seeds).
"""

from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._blas import shared_blas
from .._constants import KEYS
from .._settings import CliprOptions, clipr_options
from ..errors import ConfigError
from ._directed import clipr_directed_from_data
from ._readout import ALGORITHM_VERSION, cache_key, directed_cells, get_clipr, single_gene_conditions, solver_args

if TYPE_CHECKING:
    from ..model import LCD

#: the null's percentile that an edge must exceed (issue 16)
NULL_PERCENTILE = 99.0


@dataclass
class CliprConfidence:
    """Per-edge confidence of directed CLIPR (rows = SOURCES, like ``CliprResult.effects``).

    Attributes
    ----------
    effects
        ``(d, d)`` point estimate (the read-out's).
    lower, upper
        ``(d, d)`` bootstrap percentile interval at ``level``.
    sign_stability
        ``(d, d)`` share of resamples with the point estimate's sign, in [0, 1].
    level
        Nominal coverage of the interval (0.9: 5th to 95th percentile).
    n_boot
        Bootstrap resamples.
    null_quantiles
        |edge| of the shuffled-label null at percentiles 50, 90, 99, 99.9 (empty without a null).
    n_null
        Shuffles.
    exceeds_null
        ``(d, d)`` bool, |effect| above the null's 99th percentile (all False without a null).
    params
        Options, seed and timings (``seconds_cells``, ``seconds_bootstrap``, ``seconds_null``).
    """

    effects: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    sign_stability: np.ndarray
    level: float
    n_boot: int
    null_quantiles: np.ndarray
    n_null: int
    exceeds_null: np.ndarray
    params: dict = field(default_factory=dict)

    @property
    def null_threshold(self) -> float | None:
        """The null's 99th percentile of |edge| (``None`` without a null)."""
        return float(self.null_quantiles[2]) if self.null_quantiles.size else None

    def n_exceeding(self) -> int:
        """Off-diagonal edges above the null's 99th percentile."""
        ex = self.exceeds_null.copy()
        np.fill_diagonal(ex, False)
        return int(ex.sum())

    def columns(self) -> dict[str, np.ndarray]:
        """Per-edge columns for :func:`lcd_core.tl.effects_long` / the exports."""
        pct = int(round(100 * self.level))
        cols = {f"lower{pct}": self.lower, f"upper{pct}": self.upper, "sign_stability": self.sign_stability}
        if self.n_null:
            cols["exceeds_null99"] = self.exceeds_null
        return cols


def _moments(cells: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``(d, Q)`` condition means and the ``(d, d)`` pooled within-condition covariance (N − Q dof)."""
    means = np.stack([x.mean(0) for x in cells], axis=1)
    scatter = sum((x - x.mean(0)).T @ (x - x.mean(0)) for x in cells)
    return means, scatter / (sum(len(x) for x in cells) - len(cells))


def _solve(means, Sigma, target_index, solver, x0=None) -> np.ndarray:
    with warnings.catch_warnings():  # an unconverged resample is as informative as the others
        warnings.simplefilter("ignore")
        return clipr_directed_from_data(None, target_index, Sigma=Sigma, means=means, x0=x0, **solver).effects


def bootstrap_directed(cells: Sequence[np.ndarray], target_index: Sequence[int | None], *, n_boot: int = 100,
                       level: float = 0.9, rng=0, effects: np.ndarray | None = None,
                       members: Sequence[Sequence[np.ndarray]] = (), **solver) -> dict[str, np.ndarray]:
    """Bootstrap of cells within each condition through directed CLIPR (see the module docstring).

    Parameters
    ----------
    cells
        One ``(n_q, d)`` array per condition, control first (what :func:`clipr_directed_from_data` takes).
    target_index
        ``None`` for the control, the target gene of each single-gene condition.
    n_boot
        Resamples.
    level
        Nominal coverage of the percentile interval.
    rng
        Seed or Generator.
    effects
        ``(d, d)`` point estimate whose sign the stability refers to; default the estimate from ``cells``.
    members
        The same conditions' cells drawn by other networks (an ensemble): resample b comes from network
        b mod (1 + len(members)), ``cells`` being network 0.
    **solver
        Passed to :func:`clipr_directed` (``weight_on_target``, ``ridge``, ``tol``).

    Returns
    -------
    dict
        ``effects``, ``lower``, ``upper``, ``sign_stability`` (each ``(d, d)``, rows = sources), ``samples``
        ``(n_boot, d, d)``.
    """
    if n_boot < 2:
        raise ConfigError(f"n_boot must be at least 2, got {n_boot}")
    if not 0 < level < 1:
        raise ConfigError(f"level must lie in (0, 1), got {level}")
    rng = np.random.default_rng(rng)
    nets = [[np.asarray(x, dtype=float) for x in c] for c in (cells, *members)]
    if any(len(c) != len(nets[0]) for c in nets):
        raise ConfigError("every network must draw the same conditions")
    if effects is None:
        effects = _solve(*_moments(nets[0]), target_index, solver)
    samples = np.empty((n_boot, *effects.shape))
    with shared_blas():  # the moments too: small products, where a second thread only spins
        for b in range(n_boot):
            Xb = [x[rng.integers(0, len(x), len(x))] for x in nets[b % len(nets)]]
            samples[b] = _solve(*_moments(Xb), target_index, solver, x0=effects.T)  # CG starts at the estimate
    alpha = (1 - level) / 2
    lower, upper = np.quantile(samples, [alpha, 1 - alpha], axis=0)
    stability = (np.sign(samples) == np.sign(effects)[None]).mean(0)
    return {"effects": effects, "lower": lower, "upper": upper, "sign_stability": stability, "samples": samples}


def null_directed(cells: Sequence[np.ndarray], target_index: Sequence[int | None], *, n_null: int = 20, rng=0,
                  **solver) -> np.ndarray:
    """|edge| (off-diagonal, pooled) of directed CLIPR on ``n_null`` shuffles of the condition labels.

    Returns
    -------
    ``(n_null · d (d − 1),)`` absolute edge values under the shuffled-label null.
    """
    if n_null < 1:
        raise ConfigError(f"n_null must be at least 1, got {n_null}")
    rng = np.random.default_rng(rng)
    X = np.concatenate([np.asarray(x, dtype=float) for x in cells])
    cuts = np.cumsum([len(x) for x in cells])[:-1]
    d = X.shape[1]
    off = ~np.eye(d, dtype=bool)
    out = []
    with shared_blas():
        for _ in range(n_null):
            perm = np.split(X[rng.permutation(len(X))], cuts)
            out.append(np.abs(_solve(*_moments(perm), target_index, solver))[off])
    return np.concatenate(out)


def clipr_confidence(model: LCD, options: CliprOptions | None = None, *, n_boot: int = 100, level: float = 0.9,
                     n_null: int = 0, seed: int = 0, use_cache: bool = True, predict=None, screen=None,
                     ensemble: Sequence[LCD] = (), **overrides) -> CliprConfidence:
    """Bootstrap confidence (and optionally the shuffled-label null) of a run's directed CLIPR, cached.

    Parameters
    ----------
    model
        A trained :class:`~lcd_core.model.LCD`.
    options, **overrides
        CLIPR options as for :func:`get_clipr`; the directed variant with ``source="cells"`` (the generated
        cells of the read-out, drawn again with its seed) or ``"data"`` (measured cells; pass ``screen``).
    n_boot, level
        Bootstrap resamples and the interval's nominal coverage.
    n_null
        Shuffles of the condition labels for the null (0: none).
    seed
        Seed of the resampling and the shuffles.
    use_cache
        Read / write ``cache/clipr-confidence-<key>.npz`` in the run directory.
    predict, screen
        As for :func:`get_clipr`.
    ensemble
        Other networks of the run (:meth:`lcd_core.model.Ensemble.models` without the first): their cells
        join the bootstrap (module docstring). Not with ``source="data"``: measured cells do not depend on
        the network.

    Returns
    -------
    CliprConfidence
    """
    opts = clipr_options(options, **overrides)
    del options, overrides
    if opts.variant != "directed" or opts.source == "fixed_points":
        raise ConfigError("edge confidence resamples the cells directed CLIPR reads: use the directed variant with "
                          "source 'cells' or 'data' (the paper variant and source 'fixed_points' draw no cells per "
                          "condition)")
    if ensemble and opts.source == "data":
        raise ConfigError("an ensemble adds the spread between networks' generated cells; with source='data' "
                          "every network reads the same measured cells")
    conf_params = _conf_params(n_boot, level, n_null, seed, ensemble)
    cache = _cache_path(model, opts, conf_params)
    if use_cache and cache is not None and cache.exists():
        return _load(cache)
    point = get_clipr(model, opts, use_cache=use_cache, predict=predict, screen=screen)
    conds, targets = single_gene_conditions(model)
    labels, target_index = [KEYS.CONTROL, *conds], [None, *targets]
    t0 = time.perf_counter()
    cells = directed_cells(model, labels, opts, predict, screen)
    t1 = time.perf_counter()
    solver = solver_args(opts)
    rng = np.random.default_rng(seed)
    members = [directed_cells(m, labels, opts) for m in ensemble]
    t_members = time.perf_counter()
    boot = bootstrap_directed(cells, target_index, n_boot=n_boot, level=level, rng=rng, effects=point.effects,
                              members=members, **solver)
    t2 = time.perf_counter()
    d = point.effects.shape[0]
    if n_null:
        null = null_directed(cells, target_index, n_null=n_null, rng=rng, **solver)
        quant = np.percentile(null, [50, 90, NULL_PERCENTILE, 99.9])
        exceeds = np.abs(point.effects) > quant[2]
    else:
        quant, exceeds = np.zeros(0), np.zeros((d, d), dtype=bool)
    t3 = time.perf_counter()
    params = {**point.params, **conf_params, "seconds_cells": t1 - t0, "seconds_ensemble_cells": t_members - t1,
              "seconds_bootstrap": t2 - t_members,
              "seconds_null": t3 - t2, "algorithm": ALGORITHM_VERSION}
    out = CliprConfidence(effects=point.effects, lower=boot["lower"], upper=boot["upper"],
                          sign_stability=boot["sign_stability"], level=float(level), n_boot=int(n_boot),
                          null_quantiles=quant, n_null=int(n_null), exceeds_null=exceeds, params=params)
    if use_cache and cache is not None:
        _save(cache, out)
    return out


def cached_confidence(model: LCD, options: CliprOptions | None = None, *, n_boot: int = 100, level: float = 0.9,
                      n_null: int = 0, seed: int = 0, ensemble: Sequence[LCD] = (),
                      **overrides) -> CliprConfidence | None:
    """The run's cached :func:`clipr_confidence` for these arguments, or ``None`` when it was never computed
    (nothing is computed: what a page asks before it offers to start the computation)."""
    opts = clipr_options(options, **overrides)
    if opts.variant != "directed" or opts.source == "fixed_points":
        return None
    cache = _cache_path(model, opts, _conf_params(n_boot, level, n_null, seed, ensemble))
    return _load(cache) if cache is not None and cache.exists() else None


def _conf_params(n_boot, level, n_null, seed, ensemble) -> dict:
    """What a cached confidence was made with (its key): the networks by their stage-2 seeds and the hash of
    their weights file (an ensemble rebuilt with the same seeds, cross-fitted say, is another ensemble)."""
    out = {"n_boot": int(n_boot), "level": float(level), "n_null": int(n_null), "seed": int(seed)}
    if ensemble:
        out["ensemble_seeds"] = [int(m.info.get("stage2_seed", -1)) for m in ensemble]
        out["ensemble_weights"] = ensemble[0].info.get("ensemble_weights")
    return out


def _cache_path(model: LCD, opts: CliprOptions, conf_params: dict) -> Path | None:
    from ..model import RunDir

    run = model.info.get("run")
    if not run:
        return None
    extra = hashlib.sha256(json.dumps(conf_params, sort_keys=True).encode()).hexdigest()[:8]
    return RunDir(run).cache / f"clipr-confidence-{cache_key(opts)}-{extra}.npz"


def _save(path: Path, conf: CliprConfidence) -> None:
    from ..model._run import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, effects=conf.effects, lower=conf.lower, upper=conf.upper, sign_stability=conf.sign_stability,
             null_quantiles=conf.null_quantiles, exceeds_null=conf.exceeds_null,
             meta=np.array(json.dumps({"level": conf.level, "n_boot": conf.n_boot, "n_null": conf.n_null,
                                       "params": conf.params}, default=str)))
    atomic_write_bytes(path, buf.getvalue())


def _load(path: Path) -> CliprConfidence:
    with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        return CliprConfidence(effects=z["effects"], lower=z["lower"], upper=z["upper"],
                               sign_stability=z["sign_stability"], level=meta["level"], n_boot=meta["n_boot"],
                               null_quantiles=z["null_quantiles"], n_null=meta["n_null"],
                               exceeds_null=z["exceeds_null"], params={**meta["params"], "cache": str(path)})
