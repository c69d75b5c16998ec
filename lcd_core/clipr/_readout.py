"""The cached CLIPR read-out of a trained run (METHOD.md §4): get_clipr.

The estimators work on arrays and callables (:mod:`._paper`, :mod:`._directed`, :mod:`._fixed_points`);
this module feeds them a trained :class:`~lcd_core.model.LCD`: which conditions are single-gene
perturbations of modelled genes, the drift in standardised space, generated latent states for the directed
variant, and a cache in the run directory keyed by what made it (the options and
:data:`ALGORITHM_VERSION`), so the app and the CLI do not recompute.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._constants import KEYS
from ..data._conventions import targets_of
from ..errors import ConfigError, RunError
from ._directed import clipr_directed_from_data
from ._fixed_points import convergence_warning, limit_responses
from .._settings import CliprOptions, clipr_options
from ._paper import clipr_from_drift
from ._result import CliprResult

if TYPE_CHECKING:  # lcd_core.model imports this package: no import of it at module level
    from ..model import LCD

#: Version of the CLIPR read-out algorithm, part of every cache key (``cache/clipr-*.npz`` in a run).
#: Bump it by hand whenever a change to lcd_core.clipr changes the numbers get_clipr returns for the same
#: options (a new solver, schedule, step rule or estimator detail), so that caches written by the old code,
#: the shipped runs' included, are recomputed instead of read; then regenerate the shipped caches
#: (``lcd clipr assets/demo_run --variant paper|directed --out …``). History: 1 = the first keyed version
#: (denoiser fixed points, directed CG to 1e-4 warm-started from −Σ⁻¹/2).
ALGORITHM_VERSION = 1
#: the guidance of the cells CLIPR reads: 1, the learned drift as it is (guidance shapes predictions, README
#: "Guidance"; the drift's fixed points, the other source, have none), so a run's effects do not depend on it
GUIDANCE = 1.0



def cache_key(opts: CliprOptions) -> str:
    """16 hex digits naming what made a result: :data:`ALGORITHM_VERSION` and the options read."""
    blob = json.dumps({"algorithm": ALGORITHM_VERSION, **opts.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def single_gene_conditions(model: LCD) -> tuple[list[str], list[int]]:
    """Training conditions that perturb exactly one modelled gene, and that gene's index."""
    index = {g: i for i, g in enumerate(model.genes)}
    conds, targets = [], []
    for c in model.conditions:
        t = targets_of(c)
        if len(t) == 1 and t[0] in index:
            conds.append(c)
            targets.append(index[t[0]])
    return conds, targets


def get_clipr(model: LCD, options: CliprOptions | None = None, *, use_cache: bool = True, predict=None,
              screen=None, **overrides) -> CliprResult:
    """Causal effects of the run's learned drift.

    Parameters
    ----------
    model
        A trained :class:`~lcd_core.model.LCD`.
    options
        :class:`~lcd_core.clipr.CliprOptions`; default :data:`~lcd_core.clipr.CLIPR` (the directed variant).
        ``variant="paper"``: initial and limit responses of the drift, ridge solve (METHOD.md §4).
        ``variant="directed"`` [ours]: Lyapunov + on-target equations on the stationary covariance and
        mean shifts of latent states (generated cells, fixed points or measured cells: ``source``).
    use_cache
        Read / write ``cache/clipr-<variant>-<key>.npz`` in the run directory (key:
        :func:`cache_key`: the options read and :data:`ALGORITHM_VERSION`).
    predict
        Directed variant: ``predict(labels, n_cells, seed) -> Prediction`` that generates the cells;
        default ``model.predict``. A backend passes its own to spread the conditions over workers (a
        condition's cells depend only on (seed, label), so the result does not change).
    screen
        Directed variant with ``source="data"``: the training :class:`~lcd_core.data.Screen`.
    **overrides
        Fields of :class:`~lcd_core.clipr.CliprOptions` replacing those of ``options`` (``variant="paper"``,
        ``lam=1e-3``, ``n_cells=100``...); ``None`` keeps the default.

    Returns
    -------
    :class:`~lcd_core.clipr.CliprResult`; ``effects`` (d, d) with rows = sources; ``params`` the options
    read (:meth:`CliprOptions.to_dict`, unset ones resolved) and the algorithm version.
    """
    opts = clipr_options(options, **overrides)
    del options, overrides
    conds, targets = single_gene_conditions(model)
    if len(conds) < 2:
        raise ConfigError(f"CLIPR needs at least 2 single-gene perturbations of modelled genes in training; "
                          f"this run has {len(conds)}")
    cache = _cache_path(model, opts)
    if use_cache and cache is not None and cache.exists():
        return _load(cache)

    labels = [KEYS.CONTROL, *conds]
    target_index = [None, *targets]
    if opts.variant == "paper":
        result = clipr_from_drift(model.score_fn_for(labels), model.net.sde.sigmas.cpu().numpy(), model.mu,
                                  model.sd, target_index, lam=opts.lam, ref_point=opts.ref_point,
                                  ref_sigma=opts.ref_sigma, schedule=opts.schedule, max_steps=opts.max_steps,
                                  fixed_point_tol=opts.fixed_point_tol, device=model.device, names=labels)
    else:
        result = _directed(model, labels, target_index, opts, predict, screen)
    params = opts.to_dict()
    # an option left unset (None: the solver's choice) is recorded as the value the solver used
    params.update({k: v for k, v in result.params.items() if k in params and params[k] is None})
    result.params = {**params, "algorithm": ALGORITHM_VERSION}
    if not np.isfinite(result.effects).all():
        raise RunError("CLIPR produced non-finite effects: the learned drift diverged; retrain the run")
    if use_cache and cache is not None:
        _save(cache, result)
    return result


def solver_args(opts: CliprOptions) -> dict:
    """The keyword arguments of :func:`clipr_directed` that the options set."""
    return {"weight_on_target": opts.weight_on_target, "ridge": opts.ridge, "tol": opts.solver_tol}


def _directed(model: LCD, labels, target_index, opts: CliprOptions, predict, screen) -> CliprResult:
    solver = solver_args(opts)
    predict = predict or (lambda lab, n, seed: model.predict(lab, n, seed=seed, guidance=GUIDANCE))
    if opts.source == "fixed_points":
        return _fixed_points_directed(model, labels, target_index, opts, predict, solver)
    return clipr_directed_from_data(directed_cells(model, labels, opts, predict, screen), target_index, **solver)


def directed_cells(model: LCD, labels, opts: CliprOptions, predict=None, screen=None) -> list[np.ndarray]:
    """The per-condition latent states directed CLIPR reads for ``source="cells"`` (generated, the read-out's
    seed: the same cells as :func:`get_clipr`) or ``"data"`` (measured): one ``(n_q, d)`` float64 array per
    label, control first. What the bootstrap and the shuffled-label null resample (:mod:`._confidence`)."""
    predict = predict or (lambda lab, n, seed: model.predict(lab, n, seed=seed, guidance=GUIDANCE))
    if opts.source == "data":
        if screen is None:
            raise ConfigError("source='data' needs the training screen (get_clipr(..., screen=...), lcd clipr --data)")
        if model.noise is not None:
            raise ConfigError("source='data' needs a run without a count model: this run's latent states are not "
                              "measured (use source='cells' or 'fixed_points')")
        missing = [c for c in labels if c not in set(screen.conditions)]
        if missing or list(screen.genes) != list(model.genes):
            raise ConfigError("source='data' needs the run's own screen: "
                              + (f"no cells of {', '.join(missing[:5])}" if missing else "other genes than the run's"))
        return [screen.log1p(c).astype(np.float64) for c in labels]
    if opts.source != "cells":
        raise ConfigError(f"per-condition cells exist for source='cells' or 'data', not {opts.source!r}")
    pred = predict(labels, opts.n_cells, opts.seed)
    return [pred.latent[lbl].astype(np.float64) for lbl in labels]


def _fixed_points_directed(model: LCD, labels, target_index, opts: CliprOptions, predict, solver) -> CliprResult:
    L, fp_info = limit_responses(model.score_fn_for(labels), model.net.sde.sigmas.cpu().numpy(), model.mu,
                                 model.sd, len(labels), schedule=opts.schedule, max_steps=opts.max_steps,
                                 tol=opts.fixed_point_tol, device=model.device, names=labels)
    # one condition's covariance: more cells than the K + 1 pooled ones of "cells" need for the same
    # precision (on the d = 20 pipeline test, AUROC 0.85 from 300 control cells, 0.89 from 2000), and
    # more than d to be full rank
    n_ctrl = max(opts.n_cells, 2000, 2 * model.n_genes)
    ctrl = predict([KEYS.CONTROL], n_ctrl, opts.seed).latent[KEYS.CONTROL].astype(np.float64)
    result = clipr_directed_from_data(None, target_index, means=L, Sigma=np.cov(ctrl, rowvar=False), **solver)
    result.info["fixed_points"] = fp_info
    result.params["fixed_point_tol"] = fp_info["tol"]
    note = convergence_warning(fp_info, labels)
    if note:  # the limit responses are this source's means: the same warning as the paper variant's
        result.warnings.append(note)
        warnings.warn(note, stacklevel=3)
    return result


def _cache_path(model: LCD, opts: CliprOptions) -> Path | None:
    """``cache/clipr-<variant>-<key>.npz`` of the model's run directory; ``None`` for a model without one."""
    from ..model import RunDir

    run = model.info.get("run")
    if not run:
        return None
    return RunDir(run).cache / f"clipr-{opts.variant}-{cache_key(opts)}.npz"


def _save(path: Path, result: CliprResult) -> None:
    """Plain arrays (no pickles); ``effects`` is ``A.T`` and not stored twice (half the file)."""
    from ..model._run import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, A=result.A, b=result.b, c=result.c, L=result.L,
             V=result.V if result.V is not None else np.zeros((0, 0)),
             target_index=np.array([-1 if t is None else t for t in result.target_index]),
             # what edge identifiability reads (lcd_core.clipr.identifiability): Σ (directed), s⁰ (paper)
             Sigma=np.asarray(result.info.get("Sigma", np.zeros((0, 0)))),
             ref=np.asarray(result.info["ref"]) if result.info.get("ref") is not None else np.zeros(0),
             meta=np.array(json.dumps({"params": result.params, "warnings": result.warnings}, default=str)))
    atomic_write_bytes(path, buf.getvalue())


def _load(path: Path) -> CliprResult:
    with np.load(path, allow_pickle=False) as z:  # no pickles: plain arrays only
        meta = json.loads(str(z["meta"]))
        V = z["V"] if z["V"].size else None
        tidx = [None if t < 0 else int(t) for t in z["target_index"]]
        A = z["A"]
        info = {"cache": str(path)}
        if "Sigma" in z.files and z["Sigma"].size:
            info["Sigma"] = z["Sigma"]
        if "ref" in z.files and z["ref"].size:
            info["ref"] = z["ref"]
        return CliprResult(effects=A.T.copy(), A=A, b=z["b"], c=z["c"], V=V, L=z["L"], target_index=tidx,
                           params=meta["params"], warnings=meta["warnings"], info=info)
