"""A small ensemble of stage-2 networks: what the model would have predicted with another seed, and
without some of its combinations.

A deep ensemble (Lakshminarayanan et al. 2017): stage 2 retrained from scratch with other seeds (other
initial weights, batches, noise levels) on the samples the run's own stage 2 learned from, re-derived
from the screen with the run's split and settings. The spread of the members' predictions is the model
uncertainty that :mod:`lcd_core.model._intervals` adds to the finite-cell error.

That spread does not cover a bias every member shares, and the run's errors on its training conditions
(``fit.json``) understate its errors on combinations it never saw. So the members are also *cross-fitted*
(the CV+ / jackknife+ idea of Barber et al. 2021, with an ensemble's members as the folds as in Kim, Xu &
Barber 2020): the run's training combinations (conditions of ≥ 2 targets) are split into one fold per
member, and member k learns without fold k's combinations (every single and the control stay). Its
predictions of those combinations, scored against their measured shifts like the fit check scores the
training conditions, are errors on combinations the predicting network never saw: the calibration of the
intervals of unseen combinations (``crossfit`` in ``ensemble.json``). A screen with fewer than two
training combinations gets plain seed members.

Saved in the run directory as ``ensemble.safetensors`` (the members' weights, float16: a member's
sampling error dwarfs the rounding) and ``ensemble.json`` (seeds, steps, the data hash, the cross-fit's
folds and scores); the run's own network is member 0 and is not stored twice.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .._device import resolve_device
from .._settings import ENSEMBLE_MEMBERS
from ..data import Screen
from ..data._conventions import targets_of
from ..errors import ConfigError, RunError
from ..module import ScoreNet
from ..train import Progress, ProgressFn, fit_stage1, fit_stage2
from ._lcd import LCD, multihot
from ._run import RunDir, atomic_write_json, sha256_file
from ._fit import fit_report
from ._train import _stage2_validation, stage2_samples

if TYPE_CHECKING:
    from ._intervals import Calibration

ENSEMBLE_WEIGHTS = "ensemble.safetensors"
ENSEMBLE_META = "ensemble.json"
ENSEMBLE_FORMAT_VERSION = 1
DEFAULT_MEMBERS = ENSEMBLE_MEMBERS
#: cells each member generates per left-out combination, and the top DE genes scored (as the fit check's)
CROSSFIT_CELLS, CROSSFIT_TOP = 300, 20


def crossfit_folds(conditions: list[str], members: int, seed: int) -> list[list[str]]:
    """The training combinations (≥ 2 targets) dealt at random into ``members`` folds, one per member; all
    folds empty when there are fewer than two (nothing to leave out without losing the only one)."""
    combos = sorted(c for c in conditions if len(targets_of(c)) > 1)
    if len(combos) < 2:
        return [[] for _ in range(members)]
    order = np.random.default_rng(seed).permutation(len(combos))
    return [[combos[i] for i in part] for part in np.array_split(order, members)]


@dataclasses.dataclass
class Ensemble:
    """The run's extra stage-2 networks (the run's own network is not among them).

    Attributes
    ----------
    nets
        One :class:`~lcd_core.module.ScoreNet` per extra member, in ``eval()`` mode.
    seeds
        Their stage-2 seeds.
    info
        ``ensemble.json``: data hash, steps, seconds and ``crossfit`` (the folds the members left out and
        their scores on them; absent for a screen without two training combinations and for older
        ensembles); plus ``weights_sha256``, a reading of the weights file, not stored.
    """

    nets: list[ScoreNet]
    seeds: list[int]
    info: dict

    def __len__(self) -> int:
        return len(self.nets)

    def models(self, model: LCD) -> list[LCD]:
        """The run's model followed by one :class:`LCD` per member: the same genes, count model, decoder
        and standardisation, another score network."""
        out = [model]
        for net, seed in zip(self.nets, self.seeds):
            m = copy.copy(model)  # shallow: shares everything but the network (and says which one it is)
            m.net = net.to(model.device).eval()
            # which weights: a cache of what the members computed (CLIPR's confidence) is keyed by it
            m.info = dict(model.info, stage2_seed=seed, ensemble_weights=self.info.get("weights_sha256"))
            out.append(m)
        return out

    @property
    def folds(self) -> list[list[str]]:
        """The training combinations each member left out (one list per member; empty: none)."""
        return [list(f) for f in (self.info.get("crossfit") or {}).get("folds") or [[] for _ in self.nets]]

    def heldout_calibration(self) -> "Calibration | None":
        """The cross-fitted :class:`~lcd_core.model.Calibration`: each member's errors on the combinations it
        left out, or ``None`` when it has none."""
        from ._intervals import calibration_from_fit

        return calibration_from_fit(self.info.get("crossfit"), held_out=True)

    def save(self, run: str | Path) -> None:
        run = RunDir(run)
        tensors = {f"m{i}.{k}": (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous()
                   for i, net in enumerate(self.nets) for k, v in net.state_dict().items()}
        tmp = run / f".{ENSEMBLE_WEIGHTS}.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(run / ENSEMBLE_WEIGHTS)
        self.info["weights_sha256"] = sha256_file(run / ENSEMBLE_WEIGHTS)
        self.save_meta(run.path)

    def save_meta(self, run: str | Path) -> None:
        """Write ``ensemble.json`` alone (new cross-fit scores of the same networks: the weights stay)."""
        meta = {k: v for k, v in self.info.items() if k != "weights_sha256"}  # a reading of the file, not stored
        atomic_write_json(RunDir(run) / ENSEMBLE_META, dict(meta, format_version=ENSEMBLE_FORMAT_VERSION,
                                                            seeds=self.seeds, net_init=self.nets[0].init_params))

    @classmethod
    def load(cls, run: str | Path, model: LCD) -> "Ensemble | None":
        """The run's ensemble, or ``None`` when it has none; refuses one made for other data or another
        network shape with a message saying how to rebuild it."""
        run = RunDir(run)
        if not (run / ENSEMBLE_META).exists():
            return None
        rebuild = f"rebuild it with `lcd ensemble {run.path} --data SCREEN`"
        try:
            meta = json.loads((run / ENSEMBLE_META).read_text())
            tensors = load_file(str(run / ENSEMBLE_WEIGHTS), device="cpu")  # safetensors: never unpickles
        except (OSError, json.JSONDecodeError, UnicodeDecodeError, SafetensorError, ValueError) as e:
            raise RunError(f"{run.path}'s ensemble is missing or corrupt ({type(e).__name__}); {rebuild}") from None
        if meta.get("format_version") != ENSEMBLE_FORMAT_VERSION or meta.get("data_hash") != model.info.get("data_hash") \
                or not _same_network(meta.get("net_init"), model.net):
            raise RunError(f"{run.path}'s ensemble was made for other data or another network; {rebuild}")
        nets = []
        try:
            for i in range(len(meta["seeds"])):
                net = ScoreNet(**meta["net_init"])
                state = {k.split(".", 1)[1]: v.float() if v.is_floating_point() else v
                         for k, v in tensors.items() if k.startswith(f"m{i}.")}
                net.load_state_dict(state)
                nets.append(net.to(model.device).eval())
        except (RuntimeError, KeyError, TypeError) as e:
            raise RunError(f"{run.path}'s ensemble does not fit its description ({type(e).__name__}); {rebuild}") from None
        return cls(nets=nets, seeds=[int(s) for s in meta["seeds"]],
                   info=dict(meta, weights_sha256=sha256_file(run / ENSEMBLE_WEIGHTS)))


def fit_ensemble(run: str | Path, screen: Screen, *, members: int = DEFAULT_MEMBERS, device: str = "auto",
                 crossfit: bool = True, progress: ProgressFn | None = None) -> Ensemble:
    """Train ``members`` extra stage-2 networks for a finished run and save them in it.

    The samples are re-derived from ``screen`` with the run's split, validation cells and settings (count
    mode refits stage 1 with the run's seed) and standardised with the run's own μ and σ, so every member
    lives in the run's latent space; member ``k`` uses stage-2 seed ``seed + 1000 k``. With ``crossfit``
    member k leaves out fold k of the training combinations (:func:`crossfit_folds`; their training and
    validation samples) and is then scored on them (:func:`~lcd_core.model.fit_report`'s numbers, at the
    run's sampler and guidance): the module docstring.

    Parameters
    ----------
    run
        A complete run directory.
    screen
        The screen it was trained on (checked by data hash).
    members
        Extra networks (≥ 1); with the run's own, ``members + 1`` predictions.
    crossfit
        Leave out a fold of the training combinations per member (``False``: every member learns every
        training condition; no calibration on unseen combinations).
    progress
        Called with a :class:`~lcd_core.train.Progress` of stage ``"ensemble"`` after each member, and
        with stage ``"stage1"`` / ``"stage2"`` inside each fit.

    Cost: one stage 1 (count mode) and ``members`` stage-2 fits of the run's preset, and with ``crossfit``
    :data:`CROSSFIT_CELLS` cells per left-out combination.
    """
    if members < 1:
        raise ConfigError(f"an ensemble needs at least 1 extra member, got {members}")
    rd = RunDir(run)
    cfg, config, train_conds, held = rd.trained_from(screen, "the ensemble must learn from the run's own screen")
    model = LCD.load(rd.path, device="cpu")
    dev = resolve_device(device)
    t0 = time.monotonic()

    def fit1(counts, unit_scale, **kw):
        return fit_stage1(counts, unit_scale, config.stage1, device=dev, progress=progress, **kw)

    torch.manual_seed(config.seed)
    latents, val_latents, _, _ = stage2_samples(screen, train_conds, held, config, fit1,
                                                counts_mode=cfg["mode"] == "counts")
    x = [((s - model.mu) / model.sd).astype(np.float32) for s in latents]
    del latents
    val = None if val_latents is None else [((v - model.mu) / model.sd).astype(np.float32) for v in val_latents]
    index = {g: i for i, g in enumerate(model.pert_genes)}
    pert = np.stack([multihot(targets_of(c), index) for c in train_conds])
    folds = crossfit_folds(train_conds, members, config.seed) if crossfit else [[] for _ in range(members)]
    nets, seeds = [], []
    for k in range(1, members + 1):
        keep = [i for i, c in enumerate(train_conds) if c not in set(folds[k - 1])]
        s2 = dataclasses.replace(config.stage2, seed=config.stage2.seed + 1000 * k)
        res = fit_stage2([x[i] for i in keep], pert[keep], s2, device=str(dev), progress=progress,
                         val_x=None if val is None else _stage2_validation([val[i] for i in keep]))
        res.use_best()
        nets.append(res.net.cpu().eval())
        seeds.append(s2.seed)
        if progress is not None:
            progress(Progress("ensemble", k, members, {"seconds": time.monotonic() - t0}))
    info = {"data_hash": screen.data_hash, "steps": config.stage2.steps}
    ens = Ensemble(nets=nets, seeds=seeds, info=dict(info, crossfit={"folds": folds}))
    crossfit = score_crossfit(ens, model, screen, seed=config.seed)
    ens.info = dict(info, seconds=round(time.monotonic() - t0, 1), **({"crossfit": crossfit} if crossfit else {}))
    ens.save(rd.path)
    return ens


def score_crossfit(ensemble: Ensemble, model: LCD, screen: Screen, *, seed: int = 0) -> dict | None:
    """Each member's fit numbers (:func:`~lcd_core.model.fit_report`) on the combinations it left out, at the
    run's sampler and guidance: ``ensemble.json``'s ``crossfit`` (``folds``, ``n_cells``, ``top``,
    ``guidance``, ``conditions`` → numbers + ``member``), or ``None`` when no member left any out."""
    folds = ensemble.folds
    if not any(folds):
        return None
    scored = {}
    for k, (member, fold) in enumerate(zip(ensemble.models(model)[1:], folds), start=1):
        if fold:
            report = fit_report(member, screen, conditions=fold, n_cells=CROSSFIT_CELLS, top=CROSSFIT_TOP,
                                n_splits=1, seed=seed)
            scored.update({c: dict(e, member=k) for c, e in report["conditions"].items()})
    return {"folds": folds, "n_cells": CROSSFIT_CELLS, "top": CROSSFIT_TOP, "guidance": model.guidance,
            "conditions": scored}


def _same_network(net_init, net: ScoreNet) -> bool:
    """Whether an ensemble's stored ``net_init`` describes ``net``'s architecture (a key written before it
    existed takes ScoreNet's default, as the run's own model.json does), without building a network."""
    if not isinstance(net_init, dict):
        return False
    defaults = {name: p.default for name, p in inspect.signature(ScoreNet).parameters.items()
                if p.default is not inspect.Parameter.empty}
    return {**defaults, **net_init} == net.init_params
