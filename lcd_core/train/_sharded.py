"""Stage 1 in shards of conditions, each fitted by :func:`fit_stage1`, run by any ``map`` (METHOD.md §2).

Stage-1 generators are independent per condition; only the per-gene dropout logits are shared. The
conditions are split into contiguous shards, each shard is fitted on its own (its own copy of the
logits), and after every call (one round: a checkpoint slice of the training driver, or the whole fit)
each shard's logits are replaced by the logit of the cell-weighted average dropout probability, so the
shards start the next round from one shared measurement model and the final model has one. The largest
deviation of a shard's dropout probability from that average is reported as ``dropout_spread``.

Where the shards run is the caller's choice, through ``map_fn(fn, items) -> list``: the builtin
:func:`map` (one after the other, in this process), :meth:`lcd_core.backends.Backend.map`, or the Ray
backend's tasks. Every ``map_fn`` runs this same code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError
from ..module._generator import StackedGenerators
from ..module._noise import ZIPNoise
from .._progress import Progress, ProgressFn
from ._stage1 import Stage1Config, Stage1Result, fit_stage1

#: ``map_fn(fn, items) -> [fn(item) for item in items]``, in order (the builtin ``map`` qualifies)
MapFn = Callable[[Callable[[Any], Any], list], Any]


@dataclass
class Shard:
    """One shard's work: what :func:`fit_shard` needs, in plain containers (it may travel to a worker).

    ``progress`` stays in this process: a pickled shard (a Ray task) arrives without it.
    """

    counts: list  # one (n_q, d) count array per condition of the shard
    unit_scale: np.ndarray  # (d,)
    config: dict  # asdict(Stage1Config)
    device: str
    state: dict | None  # the shard's state_dict() to resume from
    max_seconds: float | None
    progress: ProgressFn | None = None

    def __getstate__(self) -> dict:
        return dict(self.__dict__, progress=None)


def fit_shard(shard: Shard) -> dict:
    """Fit (or continue) one shard of conditions; return its ``state_dict()`` (tensors on the CPU)."""
    cfg = Stage1Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in shard.config.items()})
    res = fit_stage1(shard.counts, shard.unit_scale, cfg, device=shard.device, state=shard.state,
                     max_seconds=shard.max_seconds, progress=shard.progress)
    return _to_cpu(res.state_dict())


def _to_cpu(obj):
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


class ShardedStage1Result:
    """Stage 1 fitted in shards: what :func:`lcd_core.model.train` uses of a :class:`Stage1Result`
    (``noise``, ``done``, ``state_dict()``, ``sample_latents``)."""

    def __init__(self, shards: list[dict], bounds: list[tuple[int, int]], unit_scale, config: Stage1Config,
                 history: list[dict]):
        self.shards, self.bounds, self.config, self.history = shards, bounds, config, history
        self.step = min(int(s["step"]) for s in shards)
        self.noise = ZIPNoise(unit_scale, config.dropout_init)
        self.noise.load_state_dict({"unit_scale": self.noise.unit_scale,
                                    "dropout_logit": shards[0]["model"]["noise.dropout_logit"]})
        self.noise.eval()

    @property
    def done(self) -> bool:
        return self.step >= self.config.steps

    def state_dict(self) -> dict:
        return {"sharded": True, "bounds": [list(b) for b in self.bounds], "shards": self.shards,
                "step": self.step, "history": [dict(h) for h in self.history], "config": asdict(self.config)}

    def sample_latents(self, n_per_condition: int, seed: int = 0, chunk: int = 2000) -> list[np.ndarray]:
        """Latent states of every condition, in input order (shard ``i`` draws with seed ``seed + i``)."""
        c, out = self.config, []
        for i, ((lo, hi), st) in enumerate(zip(self.bounds, self.shards)):
            gens = StackedGenerators(hi - lo, self.noise.n_genes, kind=c.generator, latent_dim=c.latent_dim,
                                     width=c.width, n_blocks=c.n_blocks, gene_hidden=c.gene_hidden,
                                     n_gene_blocks=c.n_gene_blocks)
            gens.load_state_dict({k[len("generators."):]: v for k, v in st["model"].items()
                                  if k.startswith("generators.")})
            res = Stage1Result(self.noise, gens.eval(), [], c, self.step, None, torch.Generator())
            out += res.sample_latents(n_per_condition, seed=seed + i, chunk=chunk)
        return out


def fit_stage1_sharded(counts: list[np.ndarray], unit_scale: np.ndarray, config: Stage1Config, *,
                       map_fn: MapFn = map, n_shards: int = 2, device: str = "cpu",
                       shard_device: str | None = None, progress: ProgressFn | None = None,
                       state: dict | None = None, max_seconds: float | None = None) -> ShardedStage1Result:
    """:func:`fit_stage1` with the conditions split into shards (one round; see the module docstring).

    Parameters
    ----------
    counts, unit_scale, config, state, max_seconds
        As :func:`fit_stage1` (``state`` from :meth:`ShardedStage1Result.state_dict`).
    map_fn
        Runs :func:`fit_shard` over the shards (builtin ``map``: one after the other here).
    n_shards
        Number of shards (at most one per condition).
    device, shard_device
        Torch device of shard 0 and of the others (default: ``device``); shard 0 is the one that reports
        ``progress`` while it runs, when ``map_fn`` runs it in this process.
    progress
        Called with shard 0's records (``record["shard"] == 0``) and once per round with the merged
        record (``step``, ``loss``, ``dropout_spread``, ``shards``).
    """
    K = len(counts)
    n = max(1, min(int(n_shards), K))
    if state is not None:
        if not state.get("sharded") or len(state["shards"]) != n:
            raise ConfigError("this stage-1 checkpoint was written with a different number of shards; resume "
                              f"with the same backend options (it has {len(state.get('shards', [])) or 1})")
        bounds = [tuple(b) for b in state["bounds"]]
        history = [dict(h) for h in state["history"]]
    else:
        edges = np.linspace(0, K, n + 1).round().astype(int)
        bounds = [(int(edges[i]), int(edges[i + 1])) for i in range(n)]
        history = []
    cfg, u = asdict(config), np.asarray(unit_scale)
    shard0_progress = None
    if progress is not None:
        def shard0_progress(p: Progress) -> None:
            progress(p.with_record(shard=0))
    shards = [Shard(counts[lo:hi], u, cfg, str(device) if i == 0 else str(shard_device or device),
                    state["shards"][i] if state is not None else None, max_seconds,
                    shard0_progress if i == 0 else None)
              for i, (lo, hi) in enumerate(bounds)]
    results = list(map_fn(fit_shard, shards))
    # shared dropout: cell-weighted average of the probabilities π = sigmoid(ℓ) over shards (π is the
    # fraction of cells zeroed, additive over cells; logits of rare dropout differ by units where π
    # differs by 1e-3), written back into every shard as a logit
    cells = np.array([sum(len(y) for y in counts[lo:hi]) for lo, hi in bounds], dtype=np.float64)
    pis = torch.sigmoid(torch.stack([r["model"]["noise.dropout_logit"].double() for r in results]))
    pi = (pis * torch.as_tensor(cells / cells.sum())[:, None]).sum(0).clamp(1e-6, 1 - 1e-6)
    avg = torch.logit(pi).float()
    spread = float((pis - pi).abs().max())
    for r in results:
        r["model"]["noise.dropout_logit"] = avg.clone()
    last = [r["history"][-1] for r in results if r["history"]]
    record = {"step": min(int(r["step"]) for r in results), "dropout_spread": spread, "shards": n}
    if last:
        w = cells[[i for i, r in enumerate(results) if r["history"]]]
        record["loss"] = float(np.average([h["loss"] for h in last], weights=w))
    history.append(record)
    if progress is not None:
        progress(Progress("stage1", record["step"], config.steps, record))
    return ShardedStage1Result(results, bounds, u, config, history)
