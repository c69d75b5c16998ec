"""Training driver: a screen in, a finished run directory out, resumable at every checkpoint.

The two stage loops (:mod:`lcd_core.train`) know tensors only; this driver knows the screen, the split,
the run directory and the clock. It runs each stage in slices of ``checkpoint_seconds`` and saves a
checkpoint after each slice, so SIGINT or SIGKILL lose at most one slice, and rerunning the same command
continues from the last checkpoint. (Just over 400 lines on purpose: what a training writes, and in which
order, reads in one file.)
"""

from __future__ import annotations

import inspect
import os
import shutil
import time
import zlib
from pathlib import Path

import numpy as np
import torch

from .._constants import KEYS
from .._device import resolve_device
from ..data import Screen, file_space_record
from ..data._conventions import targets_of
from ..errors import ConfigError, RunError
from ..module import QuantileDecoder, unit_scale_from_counts
from ..pp import explicit_split, fold_split, split_combinations
from ..sampling import check_guidance
from ..train import Progress, ProgressFn, fit_stage1, fit_stage2, standardize
from ._anchor import fit_anchors
from ._calibration import fit_rate_calibration
from ._embedding import EMBEDDING_METHODS, write_run_embedding
from ._lcd import LCD, multihot
from ._presets import TrainConfig
from ._run import RunDir

#: a condition with validation cells keeps at least this many of them (fewer give no usable estimate)
MIN_VALIDATION_CELLS = 3
#: stage-2 validation samples over all conditions: the loss is evaluated every log interval, so its
#: cost is bounded to a few training steps' worth whatever the screen's size
MAX_STAGE2_VALIDATION = 4096


def validation_split(n_cells: dict[str, int], fraction: float, seed: int) -> dict[str, list[int]]:
    """Which cells of each training condition are held out for validation (indices within the condition).

    Each condition holds out ``max(3, round(fraction · n))`` cells, at most half of them (none when
    ``fraction`` is 0), drawn by a generator seeded with ``(seed, crc32(condition))``: the same cells for
    the same seed, whatever else the screen holds.

    Returns
    -------
    condition → sorted cell indices (positions among the condition's cells in the screen's order).
    """
    if fraction <= 0:
        return {c: [] for c in n_cells}
    out = {}
    for c, n in n_cells.items():
        k = min(max(MIN_VALIDATION_CELLS, int(round(fraction * n))), n // 2)
        rng = np.random.default_rng([seed, zlib.crc32(c.encode())])
        out[c] = sorted(int(i) for i in rng.permutation(n)[:k])
    return out


def _split_rows(x: np.ndarray, held: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(training rows, validation rows)`` of one condition's cells."""
    mask = np.zeros(len(x), dtype=bool)
    mask[held] = True
    return x[~mask], x[mask]


def _stage2_validation(val: list[np.ndarray]) -> list[np.ndarray]:
    """At most :data:`MAX_STAGE2_VALIDATION` samples, spread evenly over conditions (first rows of each)."""
    per = max(1, MAX_STAGE2_VALIDATION // max(len(val), 1))
    return [v[:per] for v in val]


def resolve_split(screen: Screen, *, heldout: list[str] | None = None, fold: int | None = None,
                  seed: int = 0) -> dict:
    """Which conditions train and which are held out.

    Priority: an explicit ``heldout`` list (``[]``: hold out nothing, even if the screen ships a split);
    else fold ``fold`` of the paper's protocol (:func:`lcd_core.pp.split_combinations`); else the split
    shipped with the screen (``uns["lcd_split"]``, e.g. the demo's); else nothing is held out.
    """
    if heldout is not None and len(heldout) == 0:
        held, source = [], "none (explicitly)"
    elif heldout is not None:
        split = explicit_split(screen, heldout)
        held = list(split["test"]) if "test" in split else list(split.get("heldout", heldout))
        source = "explicit"
    elif fold is not None:
        protocol = split_combinations(screen, seed=seed)
        if not 0 <= fold < len(protocol["folds"]):
            raise ConfigError(f"--fold {fold} is out of range: the protocol has {len(protocol['folds'])} folds (0–{len(protocol['folds']) - 1})")
        fs = fold_split(protocol, fold)
        held = list(fs["test"])
        held += [c for c in protocol["tuning"] if c not in held]
        source = f"fold {fold} of the paper's protocol (seed {seed}); tuning doubles also held out"
    elif screen.split and len(screen.split.get("heldout", [])):
        held = [str(c) for c in screen.split["heldout"]]
        unknown = [c for c in held if c not in set(screen.conditions)]
        if unknown:
            raise ConfigError(f"the split shipped with the screen holds out conditions it does not measure: "
                              f"{', '.join(unknown[:5])}; pass --holdout-combos explicitly")
        source = "shipped with the screen (uns['lcd_split'])"
    else:
        held, source = [], "none"
    held_set = set(held)
    return {"heldout": sorted(held_set), "train": [c for c in screen.conditions if c not in held_set],
            "source": source}


def stage2_samples(screen: Screen, train_conds: list[str], held_cells: dict[str, list[int]], config: TrainConfig,
                   fit1, *, counts_mode: bool, with_validation: bool = True):
    """Stage 2's training and validation samples of a screen, one ``(n, d)`` array per training condition
    (control first): latent states drawn from stage 1's generators (count mode; ``fit1(counts, unit_scale,
    **kw)`` fits stage 1) or the normalised cells themselves (no measurement model).

    Returns
    -------
    ``(latents, val_latents or None, noise model or None, observed cells or None)``; the observed cells
    (no-count mode) are what the zero-aware decoder is fitted on.
    """
    validating = any(held_cells[c] for c in train_conds)
    if counts_mode:
        parts = [_split_rows(screen.counts(c), held_cells[c]) for c in train_conds]
        counts = [tr for tr, _ in parts]
        kw = {"val_counts": [va for _, va in parts]} if validating and with_validation else {}
        del parts
        res1 = fit1(counts, unit_scale_from_counts(counts[0]), **kw)
        if hasattr(res1, "use_best"):  # the sharded Ray result keeps no validation state
            res1.use_best()
        latents = res1.sample_latents(config.n_latent_samples, seed=config.seed)
        # stage 2's held-out signal in this mode: fresh draws of the same generators (another seed), i.e.
        # whether the score net learned each condition's distribution or memorised its finite sample
        val_latents = (res1.sample_latents(max(1, MAX_STAGE2_VALIDATION // len(train_conds)), seed=config.seed + 1)
                       if validating else None)
        return latents, val_latents, res1.noise, None
    # no measurement model (PRODUCT.md "Data in"): stage 2 directly on the normalised values, decoded
    # back onto the data's domain by a zero-aware decoder fitted after stage 2 (README "No-count mode");
    # its held-out signal is the validation cells themselves
    parts = [_split_rows(screen.log1p(c).astype(np.float32), held_cells[c]) for c in train_conds]
    latents = [tr for tr, _ in parts]
    return latents, ([va for _, va in parts] if validating else None), None, latents


def train(screen: Screen, out: str | os.PathLike, *, config: TrainConfig, device: str = "auto",
          heldout: list[str] | None = None, fold: int | None = None, progress: ProgressFn | None = None,
          max_seconds_per_stage: float | None = None, stage1_fit=fit_stage1) -> LCD:
    """Train LCD on ``screen`` into the run directory ``out`` (resuming from its checkpoints).

    Parameters
    ----------
    screen
        A validated screen (:func:`lcd_core.data.read_screen`).
    out
        Run directory; created, or resumed when it holds checkpoints of the same training.
    config
        A :class:`TrainConfig` (:func:`get_preset`).
    device
        ``auto``, ``cpu``, ``cuda[:N]`` or ``mps``.
    heldout, fold
        The split (:func:`resolve_split`).
    progress
        Called with each :class:`~lcd_core.train.Progress` of stage 1, stage 2 and the fit check; also
        written to ``log.jsonl``.
    max_seconds_per_stage
        Cut each stage short after this wall time (a run still completes, with fewer steps).
    stage1_fit
        The stage-1 fitter (same signature as :func:`lcd_core.train.fit_stage1`); the Ray backend passes
        one that shards the per-condition generators across workers.

    Returns
    -------
    The trained :class:`LCD`, also saved in ``out``.
    """
    run = RunDir(out)
    dev = resolve_device(device)
    split = resolve_split(screen, heldout=heldout, fold=fold, seed=config.seed)
    n_cells = screen.n_cells
    small = [c for c in split["train"] if n_cells[c] < config.min_cells]
    train_conds = [c for c in split["train"] if c not in small]
    if KEYS.CONTROL not in train_conds:
        raise ConfigError(f"the control condition has {n_cells.get(KEYS.CONTROL, 0)} cells, fewer than the "
                          f"{config.min_cells} training needs")
    if len(train_conds) < 2:
        raise ConfigError("training needs control and at least one perturbed condition")
    genes = screen.genes
    extra_targets = sorted({g for c in screen.conditions for g in targets_of(c)} - set(genes))
    pert_genes = genes + extra_targets
    mode = "counts" if screen.is_counts else "normalised"
    if not 0.0 <= config.val_fraction < 0.5:
        raise ConfigError(f"val_fraction must lie in [0, 0.5), got {config.val_fraction}")
    check_guidance(config.guidance)  # before the run directory exists
    if config.embedding not in EMBEDDING_METHODS:
        raise ConfigError(f"embedding must be one of {', '.join(EMBEDDING_METHODS)}; got {config.embedding!r}")
    held_cells = _resumed_validation(run, train_conds) or validation_split(
        {c: int(n_cells[c]) for c in train_conds}, config.val_fraction, config.seed)

    cfg_json = {
        "status": "training",
        "data_hash": screen.data_hash,
        "data_path": str(screen.path) if screen.path else None,
        "genes": genes, "pert_genes": pert_genes, "conditions": screen.conditions,
        "train_conditions": train_conds, "heldout": split["heldout"], "split_source": split["source"],
        "left_out_small": small, "mode": mode, "device": str(dev), "seed": config.seed,
        "config": config.to_dict(),
        # how the counts were recovered from a normalised file, and what `lcd predict` needs to write
        # its cells back in that file's space; the context selected with --subset
        "count_recovery": file_space_record(screen, train_conds), "subset": screen.subset,
        "validation": {"fraction": config.val_fraction, "seed": config.seed, "cells": held_cells},
    }
    _check_resume(run, cfg_json)
    run.path.mkdir(parents=True, exist_ok=True)
    run.write_config(cfg_json)
    run.log({"event": "start", "device": str(dev), "n_train_conditions": len(train_conds), "mode": mode})

    def report(p: Progress) -> None:
        run.log({"event": "progress", "stage": p.stage, "step": p.step, "total": p.total,
                 **{k: v for k, v in p.record.items() if isinstance(v, (int, float))}})
        if progress is not None:
            progress(p)

    torch.manual_seed(config.seed)

    def fit1(counts, unit_scale, **kw):
        res1 = _run_sliced(
            "stage1", run, config.checkpoint_seconds, max_seconds_per_stage,
            lambda state, secs: stage1_fit(counts, unit_scale, config.stage1, device=dev, state=state, max_seconds=secs,
                                           progress=report, **kw),
            get_state=lambda r: r.state_dict(), is_done=lambda r: r.done,
        )
        if getattr(res1, "best", None) is not None:
            run.log({"event": "best", "stage": "stage1", "step": int(res1.best["step"]),
                     "val_loss": float(res1.best["val_loss"])})
        return res1

    latents, val_latents, noise, observed = stage2_samples(screen, train_conds, held_cells, config, fit1,
                                                           counts_mode=mode == "counts",
                                                           with_validation="val_counts" in inspect.signature(stage1_fit).parameters)
    x, mu, sd = standardize(latents, control_index=0, scale=config.stage2.scale)
    del latents
    val_x = None
    if val_latents is not None:
        val_x = _stage2_validation([((v - mu) / sd).astype(np.float32) for v in val_latents])
    pert_index = {g: i for i, g in enumerate(pert_genes)}
    pert = np.stack([multihot(targets_of(c), pert_index) for c in train_conds])
    res2 = _run_sliced(
        "stage2", run, config.checkpoint_seconds, max_seconds_per_stage,
        lambda state, secs: fit_stage2(x, pert, config.stage2, device=str(dev), state=state, max_seconds=secs,
                                       progress=report,
                                       val_x=val_x),
        get_state=lambda r: r.state_dict(), is_done=lambda r: r.done,
    )
    res2.use_best()
    if res2.best_step is not None:
        run.log({"event": "best", "stage": "stage2", "step": res2.best_step, "val_loss": res2.best_val_loss})
    info = {"data_hash": screen.data_hash, "run": str(run.path), "seed": config.seed, "preset": config.preset,
            "mode": mode, "sampler": config.sampler, "sampler_evals": config.sampler_evals,
            "guidance": config.guidance,
            "train_conditions": train_conds, "heldout": split["heldout"]}
    model = LCD(genes=genes, pert_genes=pert_genes, conditions=train_conds, net=res2.net, mu=mu, sd=sd,
                noise=noise, info=info)
    if mode == "normalised":
        t_decoder = time.monotonic()
        model.decoder = fit_decoder(model, train_conds, observed, seed=config.seed)
        del observed
        run.log({"event": "decoder_fitted", "seconds": time.monotonic() - t_decoder,
                 "zero_fraction": float(model.decoder.zero_fraction.mean()),
                 "genes_zero_everywhere": int((model.decoder.zero_fraction >= 1.0).sum())})
    if noise is not None and config.rate_calibration:
        fit_run_calibration(model, screen, train_conds, held_cells, run, seed=config.seed)
    model.save(run)
    if noise is not None:
        fit_run_anchors(model, screen, train_conds, run, seed=config.seed)
    _write_fit(model, screen, run, train_conds, held_cells, config.seed, report)
    write_run_embedding(model, screen, run, config.embedding, report)  # the app's UMAP, loaded at first visit
    run.write_config(dict(cfg_json, status="complete"))
    run.mark_complete()
    # a finished run is never resumed, and its checkpoints dwarf it (the standard preset's stage-1 state is
    # ~14 MB per condition: 2.1 GB of a 150-condition run on the H200 benchmark, the model tens of MB)
    shutil.rmtree(run.checkpoints, ignore_errors=True)
    run.log({"event": "complete"})
    return model


def _resumed_validation(run: RunDir, train_conds: list[str]) -> dict[str, list[int]] | None:
    """The validation cells an interrupted training of this run directory used (None: a new training)."""
    if not (run / "config.json").exists():
        return None
    try:
        cells = run.read_config().get("validation", {}).get("cells")
    except RunError:
        return None
    if not isinstance(cells, dict) or set(cells) != set(train_conds):
        return None  # another training: _check_resume refuses it with the reason
    return {c: [int(i) for i in cells[c]] for c in train_conds}


def _write_fit(model: LCD, screen: Screen, run: RunDir, train_conds: list[str], held_cells: dict[str, list[int]],
               seed: int, report: ProgressFn) -> None:
    """``fit.json``: how well the finished model reproduces its training conditions (:func:`fit_report`)."""
    from ._fit import FIT_FILE, fit_report

    try:
        fit = fit_report(model, screen, conditions=train_conds, validation=held_cells, seed=seed,
                         progress=report)
    except Exception as e:  # noqa: BLE001 -- hours of training must not be lost to the report
        run.log({"event": "fit_failed", "error": f"{type(e).__name__}: {e}"})
        return
    from ._run import atomic_write_json

    atomic_write_json(run / FIT_FILE, fit)
    run.log({"event": "fit", "summary": fit["summary"]["sentence"]})


def fit_decoder(model: LCD, conditions: list[str], observed: list[np.ndarray], *, seed: int = 0,
                max_cells: int = 500) -> QuantileDecoder:
    """[ours] Fit the no-count mode's zero-aware decoder (:class:`~lcd_core.module.QuantileDecoder`).

    Generates cells of every training condition with the trained stage 2 (the run's sampler) and
    matches each gene's generated values, pooled, to the observed ones, pooled in the same proportions
    (each condition contributes ``min(n_q, max_cells)`` cells to both sides).

    Parameters
    ----------
    model
        The trained :class:`LCD` (no measurement model).
    conditions
        Its training conditions.
    observed
        One ``(n_q, d)`` array of observed normalised values per condition, in ``conditions``' order.
    """
    rng = np.random.default_rng(seed)
    generated, kept = [], []
    for label, cells in zip(conditions, observed):
        n = min(len(cells), max_cells)
        x = model.sample_standardised(label, n, seed=seed + 7919)  # not the seeds predictions use
        generated.append(model.mu + model.sd * x)
        kept.append(cells[rng.choice(len(cells), n, replace=False)] if n < len(cells) else cells)
    return QuantileDecoder.fit(np.concatenate(generated), np.concatenate(kept))


def fit_run_calibration(model: LCD, screen: Screen, train_conds: list[str], held_cells: dict[str, list[int]],
                        run: RunDir, *, seed: int) -> None:
    """[ours] The count model's per-gene rate calibration (:func:`fit_rate_calibration`), fitted on the training
    conditions' training cells (the fit check's validation cells stay unseen) and set on ``model``."""
    t0 = time.monotonic()
    observed = {c: _split_rows(screen.counts(c), held_cells.get(c, []))[0] for c in train_conds}
    fitted = fit_rate_calibration(model, observed, seed=seed)
    log_factor, library = fitted["log_factor"], fitted["library"]
    run.log({"event": "rate_calibrated", "seconds": time.monotonic() - t0,
             "median_abs_log_factor": float(np.median(np.abs(log_factor))),
             "max_abs_log_factor": float(np.max(np.abs(log_factor))),
             **{f"library_{k}": v for k, v in library.items()}})


def fit_run_anchors(model: LCD, screen: Screen, train_conds: list[str], run: RunDir, *, seed: int) -> None:
    """[ours] The anchored prediction's factors (:func:`fit_anchors`), fitted on the measured control and training
    singles at the model's guidance, set on ``model`` and saved in ``run``."""
    singles = [c for c in train_conds if len(targets_of(c)) <= 1]
    model.anchors = fit_anchors(model, {c: screen.log1p(c) for c in singles}, seed=seed)
    model.anchors.save(run.path)


def _check_resume(run: RunDir, cfg: dict) -> None:
    """A run directory may only be resumed by the same training (data, split, configuration)."""
    if not (run / "config.json").exists():
        if run.path.exists() and any(run.path.iterdir()):
            raise RunError(f"{run.path} exists and is not a run directory; choose another --out")
        return
    old = run.read_config()
    if run.is_complete():
        raise RunError(f"{run.path} already holds a finished run; choose another --out or delete it")
    for key in ("data_hash", "genes", "train_conditions", "mode", "config", "validation"):
        if old.get(key) != _jsonable(cfg[key]):
            raise RunError(f"{run.path} holds an interrupted training with a different {key.replace('_', ' ')}; "
                           "resume it with the same screen and options, or choose another --out")


def _jsonable(v):
    import json

    return json.loads(json.dumps(v, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))


def _run_sliced(stage: str, run: RunDir, slice_seconds: float, max_seconds: float | None, fit, *, get_state, is_done):
    """Run ``fit(state, seconds)`` in slices, checkpointing after each, until done (or out of time)."""
    ckpt = run.checkpoints / f"{stage}.pt"
    state = _load_checkpoint(ckpt)
    t0 = time.monotonic()
    while True:
        budget = slice_seconds
        if max_seconds is not None:
            budget = min(budget, max(0.0, max_seconds - (time.monotonic() - t0)))
        result = fit(state, budget)
        state = get_state(result)
        _save_checkpoint(ckpt, state)
        if is_done(result) or (max_seconds is not None and time.monotonic() - t0 >= max_seconds):
            run.log({"event": "stage_done", "stage": stage, "finished_all_steps": bool(is_done(result))})
            return result


def _save_checkpoint(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load_checkpoint(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        # weights_only: a checkpoint is tensors and plain containers; never unpickle arbitrary objects
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for a corrupt or foreign file
        raise RunError(f"checkpoint {path} is corrupt or not ours ({type(e).__name__}); delete it to restart that stage") from None
