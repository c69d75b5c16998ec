"""A small ensemble of stage-2 networks: what the model would have predicted with another seed.

A deep ensemble (Lakshminarayanan et al. 2017): stage 2 retrained from scratch with other seeds (other
initial weights, batches, noise levels) on the samples the run's own stage 2 learned from, re-derived
from the screen with the run's split and settings. The spread of the members' predictions is the model
uncertainty that :mod:`lcd_core.model._intervals` adds to the finite-cell error; it does not cover a
bias every member shares (a wrong direction learned from the same data), which is why the prediction
intervals are checked against held-out observed shifts (docs/benchmarks.md).

Saved in the run directory as ``ensemble.safetensors`` (the members' weights, float16: a member's
sampling error dwarfs the rounding) and ``ensemble.json`` (seeds, steps, the data hash); the run's own
network is member 0 and is not stored twice.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

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
from ._presets import TrainConfig
from ._run import RunDir, atomic_write_json
from ._train import _stage2_validation, stage2_samples

ENSEMBLE_WEIGHTS = "ensemble.safetensors"
ENSEMBLE_META = "ensemble.json"
ENSEMBLE_FORMAT_VERSION = 1
DEFAULT_MEMBERS = ENSEMBLE_MEMBERS


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
        ``ensemble.json``: data hash, steps, seconds.
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
            m.info = dict(model.info, stage2_seed=seed)
            out.append(m)
        return out

    def save(self, run: str | Path) -> None:
        run = RunDir(run)
        tensors = {f"m{i}.{k}": (v.detach().cpu().half() if v.is_floating_point() else v.detach().cpu()).contiguous()
                   for i, net in enumerate(self.nets) for k, v in net.state_dict().items()}
        tmp = run / f".{ENSEMBLE_WEIGHTS}.tmp"
        save_file(tensors, str(tmp))
        tmp.replace(run / ENSEMBLE_WEIGHTS)
        atomic_write_json(run / ENSEMBLE_META, dict(self.info, format_version=ENSEMBLE_FORMAT_VERSION,
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
                or meta.get("net_init") != model.net.init_params:
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
        return cls(nets=nets, seeds=[int(s) for s in meta["seeds"]], info=meta)


def fit_ensemble(run: str | Path, screen: Screen, *, members: int = DEFAULT_MEMBERS, device: str = "auto",
                 progress: ProgressFn | None = None) -> Ensemble:
    """Train ``members`` extra stage-2 networks for a finished run and save them in it.

    The samples are re-derived from ``screen`` with the run's split, validation cells and settings (count
    mode refits stage 1 with the run's seed) and standardised with the run's own μ and σ, so every member
    lives in the run's latent space; member ``k`` uses stage-2 seed ``seed + 1000 k``.

    Parameters
    ----------
    run
        A complete run directory.
    screen
        The screen it was trained on (checked by data hash).
    members
        Extra networks (≥ 1); with the run's own, ``members + 1`` predictions.
    progress
        Called with a :class:`~lcd_core.train.Progress` of stage ``"ensemble"`` after each member, and
        with stage ``"stage1"`` / ``"stage2"`` inside each fit.

    Cost: one stage 1 (count mode) and ``members`` stage-2 fits of the run's preset.
    """
    if members < 1:
        raise ConfigError(f"an ensemble needs at least 1 extra member, got {members}")
    rd = RunDir(run)
    cfg = rd.require_complete()
    model = LCD.load(rd.path, device="cpu")
    if screen.data_hash != cfg.get("data_hash"):
        raise ConfigError(f"{rd.path} was trained on other data (hash {str(cfg.get('data_hash'))[:12]}…, this screen "
                          f"{screen.data_hash[:12]}…): the ensemble must learn from the run's own screen")
    if (cfg.get("subset") or None) != (screen.subset or None):
        raise ConfigError(f"{rd.path} was trained on the cells {cfg.get('subset') or 'all'} of its file, this screen "
                          f"holds {screen.subset or 'all'}: read it with the run's subset")
    config = TrainConfig.from_dict(cfg["config"])
    dev = resolve_device(device)
    train_conds = list(cfg["train_conditions"])
    # the run's validation cells (runs from before validation existed trained on every cell)
    cells = (cfg.get("validation") or {}).get("cells") or {}
    held = {c: [int(i) for i in cells.get(c, [])] for c in train_conds}
    t0 = time.monotonic()

    def fit1(counts, unit_scale, **kw):
        return fit_stage1(counts, unit_scale, config.stage1, device=dev, progress=progress, **kw)

    torch.manual_seed(config.seed)
    latents, val_latents, _, _ = stage2_samples(screen, train_conds, held, config, fit1,
                                                counts_mode=cfg["mode"] == "counts")
    x = [((s - model.mu) / model.sd).astype(np.float32) for s in latents]
    del latents
    val_x = None if val_latents is None else _stage2_validation([((v - model.mu) / model.sd).astype(np.float32)
                                                                for v in val_latents])
    index = {g: i for i, g in enumerate(model.pert_genes)}
    pert = np.stack([multihot(targets_of(c), index) for c in train_conds])
    nets, seeds = [], []
    for k in range(1, members + 1):
        s2 = dataclasses.replace(config.stage2, seed=config.stage2.seed + 1000 * k)
        res = fit_stage2(x, pert, s2, device=str(dev), progress=progress, val_x=val_x)
        res.use_best()
        nets.append(res.net.cpu().eval())
        seeds.append(s2.seed)
        if progress is not None:
            progress(Progress("ensemble", k, members, {"seconds": time.monotonic() - t0}))
    ens = Ensemble(nets=nets, seeds=seeds, info={"data_hash": screen.data_hash, "steps": config.stage2.steps,
                                                  "seconds": round(time.monotonic() - t0, 1)})
    ens.save(rd.path)
    return ens
