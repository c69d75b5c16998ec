"""The ``lcd`` command line: every step the app does, scriptable (PRODUCT.md, "Command line").

Each sub-command is a small function that parses nothing itself: argparse does that, the engine does the
work. One file over 400 lines on purpose: every command and its parser, found in one place. Heavy imports
(torch, anndata) happen inside the commands so that ``lcd --help`` is instant.

Errors: an :class:`~lcd_core.errors.LCDError` (bad input, bad configuration) prints one line on stderr
and exits 2; an unexpected exception prints one line and exits 1 (``LCD_DEBUG=1`` shows the traceback);
Ctrl-C exits 130.

(Over 400 lines on purpose: one small function per sub-command plus their argparse declarations, so the
whole command-line contract of PRODUCT.md reads in one file; the work itself is in the engine.)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import __version__
from ._settings import (CLIPR, DEFAULT_PRESET, DIRECTED_SOURCES, ENSEMBLE_MEMBERS, INTERVAL_LEVEL, PRESET_NAMES, VARIANTS,
                        CliprOptions, clipr_options)
from .errors import ConfigError, LCDError


# --------------------------------------------------------------------------------------------------
# shared argument groups


def _add_screen_keys(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("reading the screen (auto-detected when omitted)")
    g.add_argument("--perturbation-key", help="obs column holding the perturbation labels")
    g.add_argument("--control-label", help="label of control cells in that column (e.g. ctrl, control, non-targeting)")
    g.add_argument("--combo-sep", help="separator of genes in a combination label (e.g. '+', '_')")
    g.add_argument("--gene-key", help="var column holding gene symbols (default: var_names)")
    g.add_argument("--layer", help="layer holding raw counts (default: layers['counts'] if present, else .X)")
    g.add_argument("--min-cells", type=int, default=1, help="refuse conditions with fewer cells (see --drop-small)")
    g.add_argument("--drop-small", action="store_true", help="drop conditions below --min-cells instead of refusing")
    g.add_argument("--strict", action="store_true", help="refuse perturbation targets that are not measured genes")
    g.add_argument("--subset", action="append", metavar="KEY=VALUE",
                   help="keep the cells of one context, e.g. cell_type=K562 (an obs column and one of its values; "
                        "repeatable)")
    g.add_argument("--no-count-recovery", action="store_true",
                   help="read a normalised .X as it is, without recovering its integer counts "
                        "(the no-measurement-model mode)")


def _screen_kwargs(args: argparse.Namespace) -> dict:
    return dict(
        count_recovery=not args.no_count_recovery,
        subset=args.subset,
        perturbation_key=args.perturbation_key,
        control_label=args.control_label,
        combo_sep=args.combo_sep,
        gene_key=args.gene_key,
        layer=args.layer,
        min_cells=args.min_cells,
        drop_small=args.drop_small,
        strict=args.strict,
    )


def _add_guidance(p: argparse.ArgumentParser) -> None:
    p.add_argument("--guidance", type=float, metavar="W",
                   help="[ours] push each perturbation's score away from the control's by this weight (README, "
                        "'Guidance'; 1: the learned score as it is); default: the run's")


def _add_backend(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("where it runs")
    g.add_argument("--backend", choices=["local", "ray"], default="local", help="local process or a Ray cluster")
    g.add_argument("--ray-address", help="address of a running Ray cluster (with --backend ray)")


# --------------------------------------------------------------------------------------------------
# commands


def cmd_simulate(args: argparse.Namespace) -> None:
    from .simulation import simulate

    kwargs = {}
    if args.genes is not None:
        kwargs["n_genes"] = args.genes
    if args.cells is not None:
        kwargs["n_cells"] = args.cells
    if args.kind == "linear":
        if args.perturbed is not None:
            kwargs["n_perturbed"] = args.perturbed
        if args.graph is not None:
            kwargs["graph"] = args.graph
        if args.no_counts:
            kwargs["counts"] = False
    elif args.perturbed is not None or args.graph is not None or args.no_counts:
        raise ConfigError("--perturbed, --graph and --no-counts apply to --kind linear only")
    adata = simulate(args.kind, seed=args.seed, **kwargs)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_h5ad(adata, out)
    print(f"wrote {out}: {adata.n_obs} cells x {adata.n_vars} genes, "
          f"{adata.obs['perturbation'].nunique()} conditions (simulated, kind={args.kind}, seed={args.seed})")


def _follow_run(kwargs: dict, run: str) -> dict:
    """Read a run's screen as it was trained on: same context, and no recovered counts for a run trained
    on the normalised values (its predictions live in the file's space, not ours)."""
    from .data._contexts import parse_subset
    from .model import RunDir

    cfg = RunDir(run).read_config()
    trained = cfg.get("subset") or None
    given = parse_subset(kwargs.get("subset")) or None
    if given is None and trained:
        kwargs["subset"] = trained
    elif given is not None and trained is not None and given != trained:
        raise ConfigError(f"{run} was trained on --subset {' '.join(f'{k}={v}' for k, v in trained.items())}; "
                          "pass the same subset (or none)")
    if cfg.get("mode") == "normalised":
        kwargs["count_recovery"] = False
    return kwargs


def cmd_inspect(args: argparse.Namespace) -> None:
    from .data import read_screen
    from .data._validate import check_signal, signal_problems

    screen = read_screen(args.screen, backed=args.backed, **_screen_kwargs(args))
    screen.problems += signal_problems(screen)  # listed with the rest, then refused (non-zero exit)
    print(screen.format_summary())
    check_signal(screen)


def _backend(args: argparse.Namespace):
    """The backend named by --backend / --ray-address (Ray is imported only when asked for)."""
    from .backends import get_backend

    if args.backend == "local" and args.ray_address:
        raise ConfigError("--ray-address needs --backend ray")
    return get_backend(args.backend, address=args.ray_address) if args.backend == "ray" else get_backend("local")


class _ProgressBar:
    """One self-overwriting stderr line per stage: step, loss and ETA."""

    def __init__(self, quiet: bool = False):
        self.quiet, self.stage, self.t0 = quiet, None, 0.0

    def __call__(self, p) -> None:  # p: lcd_core.train.Progress
        import time

        if self.quiet:
            return
        stage, step, total, record = p.stage, p.step, p.total, p.record
        if stage != self.stage:
            if self.stage is not None:
                sys.stderr.write("\n")
            self.stage, self.t0, self.step0 = stage, time.monotonic(), step
        done = max(step - self.step0, 1)
        eta = (time.monotonic() - self.t0) / done * max(total - step, 0)
        width = 24
        fill = int(width * step / max(total, 1))
        loss = f"loss {record['loss']:.4g} " if "loss" in record else ""
        val = f"val {record['val_loss']:.4g} " if "val_loss" in record else ""
        sys.stderr.write(f"\r{stage} [{'#' * fill}{'.' * (width - fill)}] {step}/{total} "
                         f"{loss}{val} ETA {int(eta // 60)}:{int(eta % 60):02d} ")
        sys.stderr.flush()

    def close(self) -> None:
        if self.stage is not None and not self.quiet:
            sys.stderr.write("\n")


def cmd_train(args: argparse.Namespace) -> None:
    from .model import RunDir, apply_overrides, get_preset

    if args.preset == "auto":
        config = apply_overrides(_auto_preset(args), args.set)
    else:
        config = apply_overrides(get_preset(args.preset, seed=args.seed), args.set)
    heldout = [c for c in args.holdout_combos.split(",") if c.strip()] if args.holdout_combos else None
    from .data import check_pooling, contexts_in_file

    # cell lines, cell types or datasets are never pooled silently (replicates and batches are)
    check_pooling(contexts_in_file(args.screen, subset=args.subset), pool=args.pool_contexts)
    if args.dry_run:
        print(json.dumps(config.to_dict(), indent=2))
        return
    from .data import read_screen
    from .data._validate import check_signal

    # refused here, before a process or a Ray job starts (backed: the values stay on disk)
    check_signal(read_screen(args.screen, backed=True, **_screen_kwargs(args)))
    bar = _ProgressBar(args.quiet)
    max_s = args.max_minutes * 60 if args.max_minutes else None
    with _backend(args) as backend:
        try:
            run = backend.train(args.screen, args.out, config=config, device=args.device, heldout=heldout,
                                fold=args.fold, progress=bar, read_kwargs=_screen_kwargs(args),
                                max_seconds_per_stage=max_s)
        finally:
            bar.close()
    cfg = RunDir(run).read_config()
    print(f"trained {run}: {len(cfg['train_conditions'])} training conditions, {len(cfg['genes'])} genes, "
          f"held out {len(cfg['heldout'])} (backend {args.backend})")
    _print_fit(run)


def _auto_preset(args: argparse.Namespace):
    """The auto preset for this screen (its gene and condition counts) and the device it will train on."""
    from ._device import resolve_device
    from .data import read_screen
    from .model._presets import auto_preset

    screen = read_screen(args.screen, backed=True, **_screen_kwargs(args))
    device = "cuda" if args.backend == "ray" and args.device == "cuda" else str(resolve_device(args.device))
    return auto_preset(len(screen.genes), len(screen.conditions), device=device, seed=args.seed)


def _print_fit(run) -> None:
    from .model import read_fit

    fit = read_fit(run)
    if fit is None:
        print(f"fit: no fit report in {run} (compute it with 'lcd fit {run} --data SCREEN')")
        return
    s = fit["summary"]
    medians = ""
    if s.get("median_r") is not None:
        medians = (f" (median top-{fit.get('top', 20)} shift r {s['median_r']:.2f} vs ceiling "
                   f"{s['median_r_ceiling']:.2f}, magnitude ratio {s['median_magnitude']:.2f})")
    print(f"fit: {s['sentence']}{medians}")


def cmd_fit(args: argparse.Namespace) -> None:
    from .data import read_screen
    from .model import FIT_FILE, LCD, RunDir, fit_report
    from .model._run import atomic_write_json

    cfg = RunDir(args.run).require_complete()
    screen = read_screen(args.data, **_screen_kwargs(args))
    bar = _ProgressBar(args.quiet)
    if args.guidance is not None or args.rate_calibration is not None:
        from .model import calibration_from_fit, refit
        from .model._ensemble import ENSEMBLE_META

        calibrate = None if args.rate_calibration is None else args.rate_calibration == "on"
        try:
            model = refit(args.run, screen, guidance=args.guidance, rate_calibration=calibrate, progress=bar)
        finally:
            bar.close()
        # what refit rescored, read from the ensemble's description (its networks need not be loaded again)
        meta = Path(args.run) / ENSEMBLE_META
        crossfit = meta.is_file() and calibration_from_fit(json.loads(meta.read_text()).get("crossfit"),
                                                           held_out=True) is not None
        calibrated = model.noise is not None and bool(model.noise.log_calibration.abs().max() > 0)
        redone = (["the fit check"] + (["the rate calibration"] if calibrated else []) +
                  (["the anchors"] if model.anchors is not None else []) +
                  (["the no-count decoder"] if model.decoder is not None else []) +
                  (["the ensemble's cross-fit scores"] if crossfit else []))
        calibration = "" if model.noise is None else f", rate calibration {'on' if calibrated else 'off'}"
        print(f"{args.run} samples at guidance {model.guidance:g}{calibration} from now on; made again with these "
              f"settings: {', '.join(redone)}")
        _print_fit(args.run)
        return
    model = LCD.load(args.run, device=args.device)
    validation = (cfg.get("validation") or {}).get("cells")
    try:
        fit = fit_report(model, screen, validation=validation, n_cells=args.cells, seed=args.seed,
                         progress=bar)
    finally:
        bar.close()
    atomic_write_json(Path(args.run) / FIT_FILE, fit)
    print(f"wrote {Path(args.run) / FIT_FILE}")
    _print_fit(args.run)


def cmd_embed(args: argparse.Namespace) -> None:
    import time

    from .model import LCD, embedding_path, get_embedding

    screen = _run_screen(args)
    model = LCD.load(args.run, device="cpu")
    path = embedding_path(model, screen, method=args.method)
    had = path.is_file()
    t0 = time.monotonic()
    emb = get_embedding(model, screen, method=args.method)
    how = "already saved" if had else f"fitted in {time.monotonic() - t0:.1f} s"
    where = f"{path} ({path.stat().st_size / 1e3:.0f} kB)" if path.is_file() else "nowhere (run directory not writable)"
    print(f"reference {args.method.upper()} of {emb.params['n_cells']:,} control + training cells: {how}; saved in {where}")


def _run_screen(args: argparse.Namespace):
    """The screen a finished run was trained on: ``--data``, else the path its config records, read as it was."""
    from .data import read_screen
    from .model import RunDir

    cfg = RunDir(args.run).require_complete()
    data = args.data or cfg.get("data_path")
    if not data:
        raise ConfigError(f"{args.run} does not record its screen; pass --data SCREEN")
    return read_screen(data, **_follow_run(_screen_kwargs(args), args.run))


def cmd_ensemble(args: argparse.Namespace) -> None:
    from .model import fit_ensemble

    screen = _run_screen(args)
    bar = _ProgressBar(args.quiet)
    try:
        ens = fit_ensemble(args.run, screen, members=args.members, device=args.device, crossfit=not args.no_crossfit,
                           progress=bar)
    finally:
        bar.close()
    print(f"ensemble of {args.run}: {len(ens) + 1} networks (the run's own and seeds {', '.join(map(str, ens.seeds))}), "
          f"{ens.info['seconds']:.0f} s; saved in {Path(args.run) / 'ensemble.safetensors'}")
    cal = ens.heldout_calibration()
    if cal is not None:
        print(f"unseen combinations' intervals are calibrated on {cal.describe()}")
    elif not args.no_crossfit:
        print("the run has fewer than 2 training combinations: no cross-fit; intervals of unseen combinations are "
              "calibrated on its training conditions (fit.json), which is optimistic for them")


def _write_intervals(adata, run: str, pred, args: argparse.Namespace) -> None:
    """``lcd predict --intervals``: each perturbation's mean-shift interval per gene, into ``var``."""
    import numpy as np

    from .model import LCD, Ensemble, IntervalSources, mean_se, read_fit, shift_intervals

    model = LCD.load(run, device=args.device)
    src = IntervalSources.of(model, Ensemble.load(run, model), read_fit(run))
    if not src.available:
        raise ConfigError(f"{run} has neither an ensemble nor a calibrated fit check, and intervals need one: run "
                          f"`lcd ensemble {run}` (the spread between networks, and their errors on combinations they "
                          f"were trained without) and/or `lcd fit {run} --data SCREEN` (the errors on the training "
                          "conditions)")
    ctrl = pred.cells.get("ctrl")
    if ctrl is None:
        ctrl = model.predict(["ctrl"], n_cells=args.cells, seed=args.seed, n_evals=args.n_evals).cells["ctrl"]
    ctrl = np.asarray(ctrl, dtype=np.float64)
    calibrations = {}  # perturbation → which calibration its intervals used
    for label, cells in pred.cells.items():
        if label == "ctrl":
            continue
        # the generated control's own sampling error joins the interval
        iv = shift_intervals(src.models, label, ctrl.mean(0), n_cells=args.cells, seed=args.seed,
                             n_evals=args.n_evals, anchored=args.anchored, guidance=args.guidance, level=args.level,
                             cells=cells, control_se=mean_se(ctrl), calibration=src.calibration_for(label))
        calibrations[label] = iv.attrs["calibrated_on"]
        for col in ("shift", "shift_low", "shift_high", "shift_se", "sd_model", "calibrated"):
            adata.var[f"{label}_{col}"] = iv["predicted_shift" if col == "shift" else col].to_numpy()
    covers = src.covers()
    adata.uns["lcd_intervals"] = {
        "level": float(args.level), "networks": len(src.models), "n_cells": int(args.cells),
        "n_calibration": 0 if src.calibration is None else int(len(src.calibration)),
        "n_calibration_heldout": 0 if src.heldout is None else int(len(src.heldout)),
        "calibrated_on": calibrations,
        "reference": "the run's generated control cells (their sampling error included)",
        "covers": covers, "space": "log1p CP10k over the run's genes"}
    print(f"lcd predict: {args.level:.0%} intervals on every gene's mean shift (var['<perturbation>_shift_low' / "
          f"'_shift_high']): {covers}", file=sys.stderr)


def cmd_predict(args: argparse.Namespace) -> None:
    from .model import RunDir

    if args.cells < 1:
        raise ConfigError(f"--cells must be at least 1, got {args.cells}")
    if args.intervals and not 0.0 < args.level < 1.0:
        raise ConfigError(f"--level must lie strictly between 0 and 1, got {args.level}")
    if args.intervals and args.cells < 2:
        raise ConfigError("--intervals needs at least 2 cells per perturbation")
    if args.intervals and args.backend == "ray":
        raise ConfigError("--intervals runs locally (every network of the ensemble samples the same "
                          "perturbations); drop --backend ray")
    genes = RunDir(args.run).require_complete()["genes"]
    labels = [p for item in args.perturb for p in item.split(",") if p.strip()]
    if args.with_control:
        labels = ["ctrl", *labels]
    with _backend(args) as backend:
        pred = backend.predict(args.run, labels, args.cells, sampler=args.sampler, n_evals=args.n_evals,
                               seed=args.seed, device=args.device, anchored=args.anchored, guidance=args.guidance)
    for label, sentence in pred.extrapolation.items():
        print(f"lcd predict: extrapolation: {label}: {sentence}", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    adata = pred.to_anndata(genes)
    space = "log1p CP10k over the run's genes"
    record = RunDir(args.run).read_config().get("count_recovery")
    if record and pred.counts and not args.our_space:
        import numpy as np

        from .data import to_file_space

        # the run's counts were recovered from a normalised file: write the cells in that file's convention
        counts = np.concatenate([pred.counts[k] for k in pred.cells])
        adata.X, size_factors = to_file_space(counts, record, rng=args.seed)
        adata.layers["counts"] = counts
        adata.obs["lcd_size_factor"] = size_factors
        space = f"the training file's own space, {record['formula']}"
        if args.anchored:
            # the factors match each gene's normalised mean, which hardly depends on a uniform scale of all
            # rates: the counts' depth is not the measured one (docs/benchmarks.md, "the anchored counts' depth")
            adata.uns["lcd_prediction"]["counts_note"] = (
                "anchored: layers['counts'] reproduce normalised expression, not sequencing depth (their library "
                "sizes can be many times the measured ones); use .X")
    adata.uns["lcd_prediction"]["space"] = space
    if args.intervals:
        _write_intervals(adata, args.run, pred, args)
    _atomic_write_h5ad(adata, out)
    print(f"wrote {out}: {sum(len(v) for v in pred.cells.values())} cells of {len(pred.cells)} perturbation(s), "
          f"values in {space}")


def _provenance(model, **extra) -> dict:
    return {"data_hash": model.info.get("data_hash"), "run": model.info.get("run"),
            "seed": model.info.get("seed"), "version": __version__, **extra}


def clipr_options_of(args: argparse.Namespace) -> CliprOptions:
    """The CLIPR options of ``lcd clipr`` / ``lcd modules`` arguments (unset flags: :data:`CLIPR`'s)."""
    source = getattr(args, "source", None)
    if source not in (None, CLIPR.source) and args.variant != "directed":
        raise ConfigError("--source chooses where directed CLIPR takes Σ and the limit responses from; "
                          "add --variant directed")
    return clipr_options(variant=args.variant, lam=getattr(args, "lam", None), source=source)


def cmd_clipr(args: argparse.Namespace) -> None:
    from .clipr import clipr_confidence, get_clipr, identifiability
    from .model import LCD
    from .tl import provenance_path, write_effects_csv

    options = clipr_options_of(args)
    if (args.confidence or args.null) and args.backend == "ray":
        raise ConfigError("--confidence / --null run locally (the resampling reuses the read-out's cells); "
                          "drop --backend ray")
    if (args.confidence or args.null) and (options.variant != "directed" or options.source == "fixed_points"):
        raise ConfigError("--confidence / --null resample the cells directed CLIPR reads: use the directed variant "
                          "with --source cells or data")
    if args.n_boot < 2 or args.null < 0:
        raise ConfigError(f"--n-boot must be at least 2 and --null at least 0, got {args.n_boot} and {args.null}")
    extra = {}
    if args.source == "data":
        from .data import read_screen

        if not args.data:
            raise ConfigError("--source data needs --data: the screen the run was trained on")
        extra["screen"] = read_screen(args.data, **_follow_run(_screen_kwargs(args), args.run))
    if args.backend == "ray":
        # the client needs only the genes and provenance (its own device may lack what --device names)
        model = LCD.load(args.run, device="cpu")
        with _backend(args) as backend:  # either variant runs where the cluster has a GPU, as get_clipr
            result = backend.clipr(args.run, options, device=args.device, **extra)
    else:
        model = LCD.load(args.run, device=args.device)
        result = get_clipr(model, options, **extra)
    for w in result.warnings:
        print(f"lcd clipr: warning: {w}", file=sys.stderr)
    columns, notes, prov_extra = {}, [], {}
    try:
        ident = identifiability(result)
        columns["identifiability"] = ident.labels
        notes.append(f"identifiability: {ident.summary()}")
        if ident.caveat:
            print(f"lcd clipr: warning: {ident.caveat}", file=sys.stderr)
        prov_extra["identifiability"] = {"rank": ident.rank, "condition_number": ident.condition_number,
                                         **ident.params, **ident.counts()}
    except ConfigError as err:
        print(f"lcd clipr: note: no identifiability labels: {err}", file=sys.stderr)
    if args.confidence or args.null:
        from .model import Ensemble

        ens = None if args.no_ensemble or options.source == "data" else Ensemble.load(args.run, model)
        members = ens.models(model)[1:] if ens is not None else []
        conf = clipr_confidence(model, options, n_boot=args.n_boot, n_null=args.null, ensemble=members, **extra)
        columns.update(conf.columns())
        prov_extra["confidence"] = {"level": conf.level, "n_boot": conf.n_boot, "n_null": conf.n_null,
                                    "null_quantiles": conf.null_quantiles.tolist()}
        over = (f"the cells of {len(members) + 1} networks (the run's ensemble)" if members else
                "the cells (no ensemble: `lcd ensemble` adds the spread between networks)")
        notes.append(f"confidence: {int(round(100 * conf.level))} % bootstrap intervals from {conf.n_boot} "
                     f"resamples of {over}; {int((conf.sign_stability >= 0.9).sum() - len(model.genes))} edges "
                     "with sign stability >= 0.9")
        prov_extra["confidence"]["networks"] = len(members) + 1
        if conf.n_null:
            d = len(model.genes)
            notes.append(f"null: {conf.n_null} label shuffles; 99th percentile |edge| = {conf.null_threshold:.4g}; "
                         f"{conf.n_exceeding():,} of {d * (d - 1):,} edges exceed it")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_effects_csv(out, result.effects, model.genes, columns=columns,
                      provenance=_provenance(model, **options.to_dict(), **prov_extra))
    print(f"wrote {out}: {len(model.genes)}x{len(model.genes)} effects (rows = sources), variant={options.variant}; "
          f"provenance in {provenance_path(out).name}")
    for line in notes:
        print(line)


def cmd_modules(args: argparse.Namespace) -> None:
    from .clipr import get_clipr
    from .model import LCD
    from .tl import enrich_modules, find_modules, provenance_path, read_gmt, write_modules_tsv

    model = LCD.load(args.run, device="auto")
    result = get_clipr(model, clipr_options_of(args))
    # --cut alone keeps PRODUCT.md's meaning (the dendrogram cut of METHOD §5); otherwise consensus Louvain
    method = args.method or ("hierarchical" if args.cut is not None else "louvain")
    cut = 0.175 if args.cut is None else args.cut
    modules = find_modules(result.effects, model.genes, method=method, cut=cut, resolution=args.resolution,
                           min_size=args.min_size)
    enrichment = None
    if args.gmt:
        enrichment = enrich_modules(modules.labels, model.genes, read_gmt(args.gmt, genes=model.genes))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_modules_tsv(out, modules, enrichment=enrichment,
                      provenance=_provenance(model, variant=args.variant, gmt=args.gmt))
    n = len(set(modules.labels) - {"unassigned"})
    how = f"cut {cut}" if method == "hierarchical" else f"resolution {args.resolution}"
    print(f"wrote {out}: {n} modules over {len(model.genes)} genes ({method}, {how}, variant={args.variant}); "
          f"provenance in {provenance_path(out).name}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    from .data import read_screen
    from .model import LCD, evaluate_run, write_report
    from .model._evaluate import cell_eval_files

    screen = read_screen(args.data, **(_screen_kwargs(args) if args.folds else _follow_run(_screen_kwargs(args), args.run)))
    half: list = []  # the calibration protocol's scores (replicate-calibrated columns of the report)
    if args.folds:
        from .model import evaluate_folds

        with _backend(args) as backend:  # trains the folds (in parallel on Ray), then scores them here
            per_condition = evaluate_folds(args.run, screen, n_cells=args.cells, seed=args.seed, device=args.device,
                                           backend=backend, read_kwargs=_screen_kwargs(args), half_protocol=half)
        prov = {"run": args.run, "protocol": "k-fold", "version": __version__, "data_hash": screen.data_hash}
    else:
        if args.backend != "local":
            raise ConfigError("--backend ray applies to 'lcd evaluate --folds'; a single run is scored locally")
        model = LCD.load(args.run, device=args.device)
        if args.guidance is not None:  # every LCD column of the report at this weight (anchors refitted to it)
            model.info["guidance"] = args.guidance
        kept: dict = {}
        per_condition = evaluate_run(model, screen, n_cells=args.cells, seed=args.seed, keep_predictions=kept,
                                     half_protocol=half)
        prov = _provenance(model, cells_per_condition=args.cells, sampler=model.info.get("sampler"),
                           guidance=model.guidance)
    out = write_report(per_condition, args.out, provenance=prov, half_rows=half)
    if not args.folds:
        cell_eval_files(model, screen, kept["lcd"], out, seed=args.seed)
    print((out / "summary.md").read_text())
    print(f"wrote {out}/ (per_condition.csv, summary.md, summary.csv, plots"
          + ("; calibrated_per_condition.csv, summary_calibrated.csv, calibrated.json" if half else "")
          + ("" if args.folds else "; predicted.h5ad + observed.h5ad for cell-eval") + ")")


def _atomic_write_h5ad(adata, out: Path) -> None:
    """Write next to the target and rename, so an interrupted write never leaves a half file."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        adata.write_h5ad(tmp, compression="gzip")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lcd",
        description="LCD Explorer: latent causal diffusion and CLIPR for Perturb-seq screens.",
    )
    parser.add_argument("--version", action="version", version=f"lcd-explorer {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("simulate", help="write a simulated screen with known causal truth")
    p.add_argument("--kind", choices=["demo", "linear", "nonlinear"], default="demo")
    p.add_argument("--genes", type=int, help="number of genes (default: the kind's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cells", type=int, help="cells per condition (linear, nonlinear)")
    p.add_argument("--perturbed", type=int, help="number of perturbed genes K (linear; default all)")
    p.add_argument("--graph", choices=["er", "sf"], help="graph of the linear generator: Erdős–Rényi or scale-free")
    p.add_argument("--no-counts", action="store_true",
                   help="linear: write the latent states themselves (no measurement model, values may be negative)")
    p.add_argument("--out", required=True, help="output .h5ad")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("inspect", help="summarise a screen and list problems found")
    p.add_argument("screen", help="an .h5ad file")
    p.add_argument("--backed", action="store_true", help="read .X from disk on demand (huge files)")
    _add_screen_keys(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("train", help="train an LCD model on a screen into a run directory")
    p.add_argument("screen", help="an .h5ad file")
    p.add_argument("--out", required=True, help="run directory (resumed if it holds a checkpoint)")
    p.add_argument("--preset", choices=PRESET_NAMES, default=DEFAULT_PRESET,
                   help="auto (default): demo sized to the screen on a CPU (a few minutes), standard on a GPU")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    split = p.add_mutually_exclusive_group()
    split.add_argument("--holdout-combos", help="comma-separated combinations to hold out, e.g. A+B,C+D")
    split.add_argument("--fold", type=int, help="hold out fold F of the paper's split protocol")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-minutes", type=float, help="stop each stage early after this wall time")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a preset field, e.g. --set stage2.steps=2000 (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="print the resolved configuration and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--pool-contexts", action="store_true",
                   help="train on cells of several cell lines / cell types / datasets pooled (refused otherwise; "
                        "see --subset)")
    _add_screen_keys(p)
    _add_backend(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("fit", help="recompute a run's fit report (fit.json): its training conditions against "
                                   "the replicate ceiling")
    p.add_argument("run", help="run directory written by 'lcd train'")
    p.add_argument("--data", required=True, help="the screen the run was trained on")
    p.add_argument("--cells", type=int, default=300, help="cells generated per training condition")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--guidance", type=float, metavar="W",
                   help="[ours] make W the run's guidance weight (README, 'Guidance'), and redo at W what was made "
                        "from its generated cells: the fit check, the anchors, the ensemble's cross-fit scores and "
                        "the no-count decoder (nothing is retrained; --cells and --seed are the run's then)")
    p.add_argument("--rate-calibration", choices=["on", "off"],
                   help="[ours] count-model runs: fit (on) or drop (off) the per-gene rate calibration that makes "
                        "generated training conditions as bright as the measured ones (README, 'Rate calibration'); "
                        "redoes the same as --guidance. Runs trained before it existed have it off")
    _add_screen_keys(p)
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("embed", help="fit and save a run's reference embedding (the app's UMAP; 'lcd train' "
                                     "does it at the end)")
    p.add_argument("run", help="run directory written by 'lcd train'")
    p.add_argument("--data", help="the screen the run was trained on (default: the path its config records)")
    p.add_argument("--method", choices=["umap", "pca"], default="umap")
    _add_screen_keys(p)
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("ensemble", help="train extra stage-2 networks with other seeds, each without a fold of the "
                                        "training combinations: the model uncertainty of `lcd predict --intervals` "
                                        "and the Perturb page's intervals, and their calibration on unseen combinations")
    p.add_argument("run", help="run directory written by 'lcd train'")
    p.add_argument("--data", help="the screen the run was trained on (default: the path its config records)")
    p.add_argument("--members", type=int, default=ENSEMBLE_MEMBERS, help="extra networks (the run's own makes one more)")
    p.add_argument("--no-crossfit", action="store_true",
                   help="every member learns every training condition (no calibration on unseen combinations)")
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_screen_keys(p)
    p.set_defaults(func=cmd_ensemble)

    p = sub.add_parser("predict", help="generate cells for perturbations (unseen combinations included)")
    p.add_argument("run", help="run directory written by 'lcd train'")
    p.add_argument("--perturb", action="append", required=True,
                   help="a perturbation, e.g. A or A+B; repeat for several")
    p.add_argument("--cells", type=int, default=500, help="cells per perturbation")
    p.add_argument("--sampler", help="fast or reference (default: the run's, fast unless set at training)")
    p.add_argument("--steps", type=int, dest="n_evals", metavar="N_EVALS",
                   help="sampler budget: network evaluations per generated cell, for every sampler (the reference "
                        "sampler spreads them over its noise levels); default: the run's; trades speed for quality")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--with-control", action="store_true", help="also write predicted control cells")
    p.add_argument("--intervals", action="store_true",
                   help="write each gene's mean-shift interval per perturbation to var (<perturbation>_shift_low / "
                        "_shift_high, log1p CP10k against the generated control): the cells drawn, the spread of the "
                        "run's ensemble (`lcd ensemble`), its members' errors on combinations they were trained "
                        "without (unseen conditions) and the run's errors on its training conditions (fit.json)")
    p.add_argument("--level", type=float, default=INTERVAL_LEVEL, help="nominal coverage of --intervals")
    p.add_argument("--anchored", action="store_true",
                   help="[ours] anchored prediction: each gene's mean set by the measured singles, the distribution "
                        "and the interaction LCD's (runs with a count model)")
    _add_guidance(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--our-space", action="store_true",
                   help="for a run on counts recovered from a normalised file: write log1p CP10k over the run's "
                        "genes instead of the file's own space")
    p.add_argument("--out", required=True,
                   help="output .h5ad: log1p CP10k over the run's genes, or, for a run on counts recovered from a "
                        "normalised file, that file's own space (generated counts in layers['counts'])")
    _add_backend(p)
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("clipr", help="causal effects between genes (CLIPR)")
    p.add_argument("run")
    p.add_argument("--variant", choices=VARIANTS, default=CLIPR.variant,
                   help=f"directed (ours, METHOD §4) or the paper's CLIPR (default {CLIPR.variant})")
    p.add_argument("--lam", type=float, default=CLIPR.lam,
                   help=f"ridge regularisation λ of the paper variant (default {CLIPR.lam:g})")
    p.add_argument("--source", choices=DIRECTED_SOURCES, default=CLIPR.source,
                   help="directed variant: Σ and limit responses from generated cells of every condition "
                        "(default), from the drift's fixed points and generated control cells (fast at "
                        "large d), or from the measured cells of --data (runs without a count model)")
    p.add_argument("--data", help="the training screen (with --source data)")
    p.add_argument("--device", default="auto")
    p.add_argument("--confidence", action="store_true",
                   help="directed variant: bootstrap the read-out's cells within each condition (no retraining) for "
                        "a 90%% interval and a sign stability per edge (columns lower90, upper90, sign_stability); "
                        "cached in the run directory")
    p.add_argument("--no-ensemble", action="store_true",
                   help="--confidence from the run's own network only, even when it has an ensemble (`lcd ensemble`)")
    p.add_argument("--n-boot", type=int, default=100, help="bootstrap resamples of --confidence (default 100)")
    p.add_argument("--null", type=int, default=0, metavar="N",
                   help="directed variant: N shuffles of the condition labels give the edge strengths without "
                        "perturbation signal; reports how many edges exceed its 99th percentile (column exceeds_null99)")
    p.add_argument("--out", required=True,
                   help="output CSV: source,target,effect,identifiability (+ the --confidence / --null columns)")
    _add_screen_keys(p)
    _add_backend(p)
    p.set_defaults(func=cmd_clipr)

    p = sub.add_parser("modules", help="functional modules of the causal graph, with enrichment")
    p.add_argument("run")
    p.add_argument("--variant", choices=VARIANTS, default=CLIPR.variant,
                   help=f"CLIPR variant (default {CLIPR.variant}: it recovers the graph better on every benchmark)")
    p.add_argument("--method", choices=["louvain", "hierarchical"],
                   help="consensus Louvain on the kNN closeness graph (default), or METHOD §5's average-linkage "
                        "tree cut at --cut (the default when --cut is given)")
    p.add_argument("--cut", type=float, help="hierarchical: dendrogram cut height (default 0.175)")
    p.add_argument("--resolution", type=float, default=1.0, help="louvain: modularity resolution")
    p.add_argument("--min-size", type=int, default=5, help="smallest module")
    p.add_argument("--gmt", help="gene sets (GMT) for enrichment")
    p.add_argument("--out", required=True, help="output TSV: gene, module, is_hub, top_terms")
    p.set_defaults(func=cmd_modules)

    p = sub.add_parser("evaluate", help="held-out conditions: LCD vs baselines on every metric")
    p.add_argument("run")
    p.add_argument("--data", required=True, help="the screen the run was trained on")
    p.add_argument("--cells", type=int, default=500, help="cells generated per condition")
    p.add_argument("--folds", action="store_true", help="run the paper's k-fold protocol end to end")
    p.add_argument("--seed", type=int, default=0)
    _add_guidance(p)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", required=True, help="report folder")
    _add_screen_keys(p)
    _add_backend(p)
    p.set_defaults(func=cmd_evaluate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except LCDError as e:
        print(f"lcd {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed: not an error of ours
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"lcd {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # a bug, or bad input we did not anticipate: still one line
        if os.environ.get("LCD_DEBUG"):
            raise
        print(f"lcd {args.command}: internal error: {type(e).__name__}: {_one_line(e)} "
              "(rerun with LCD_DEBUG=1 for the traceback, and please report it)", file=sys.stderr)
        return 1
    return 0


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
