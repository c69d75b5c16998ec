"""The ``local`` backend: everything in this process (CPU, or this machine's GPU).

It is also the code the Ray workers run: each remote task calls one of the private functions below, so
the two backends cannot drift apart in what they compute.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._base import Backend, Job, JobCancelled, Progress, ProgressFn

if TYPE_CHECKING:
    from ..clipr import CliprOptions


class _Stop(BaseException):
    """Raised inside the engine's progress callback to stop a cancelled training. A BaseException, so no
    ``except Exception`` in the engine can swallow it; the engine's checkpoints stay as they were."""


# -- the work itself (shared with the Ray workers) ---------------------------------------------------
def train_run(screen_path: str | os.PathLike, out: str | os.PathLike, *, config: dict, device: str = "auto",
              heldout: list[str] | None = None, fold: int | None = None, read_kwargs: dict | None = None,
              max_seconds_per_stage: float | None = None, progress: ProgressFn | None = None,
              train_kwargs: dict | None = None) -> Path:
    """Read the screen and train into ``out`` with :func:`lcd_core.model.train` (config as a dict;
    ``train_kwargs``: further keywords of ``train``, e.g. a ``stage1_fit`` hook)."""
    from ..data import read_screen
    from ..model import TrainConfig, train

    screen = read_screen(screen_path, **(read_kwargs or {}))
    train(screen, out, config=TrainConfig.from_dict(config), device=device, heldout=heldout, fold=fold,
          progress=progress, max_seconds_per_stage=max_seconds_per_stage, **(train_kwargs or {}))
    return Path(out)


def predict_run(run: str | os.PathLike, labels: Sequence[str], n_cells: int, *, sampler: str | None = None,
                n_evals: int | None = None, seed: int = 0, device: str = "auto", anchored: bool = False,
                guidance: float | None = None):
    """``LCD.load(run).predict(labels, ...)``. Cells of a label depend only on (seed, label), so a
    prediction split across workers equals the one made in one piece (on the same kind of device)."""
    from ..model import LCD

    model = LCD.load(run, device=device)
    return model.predict(list(labels), n_cells=n_cells, sampler=sampler, n_evals=n_evals, seed=seed, anchored=anchored,
                         guidance=guidance)


def merge_predictions(parts: list):
    """One :class:`~lcd_core.model.Prediction` from several, in order."""
    from ..model import Prediction

    if len(parts) == 1:
        return parts[0]
    out = Prediction(cells={}, latent={}, unseen={}, params=dict(parts[0].params))
    for p in parts:
        out.cells.update(p.cells)
        out.latent.update(p.latent)
        out.unseen.update(p.unseen)
        out.counts.update(p.counts)
        out.extrapolation.update(p.extrapolation)
    return out


def clipr_run(run: str | os.PathLike, options: CliprOptions | None = None, *, device: str = "auto",
              use_cache: bool = False, predict=None, **overrides):
    """CLIPR of a finished run through :func:`lcd_core.clipr.get_clipr` (METHOD.md §4), the function the
    local ``lcd clipr`` and the app call, so every backend computes the same thing.

    ``options`` (default :data:`lcd_core.clipr.CLIPR`) with ``overrides`` by field name, as get_clipr;
    ``predict`` as get_clipr's. ``use_cache`` reads / writes the run's CLIPR cache (off by default: a Ray
    worker computes on a temporary copy of the run). ``params["conditions"]`` lists control plus the
    single-gene conditions used, in the order of the columns of ``A``.
    """
    from .._constants import KEYS
    from ..clipr import get_clipr, single_gene_conditions
    from ..model import LCD

    model = LCD.load(run, device=device)
    result = get_clipr(model, options, use_cache=use_cache, predict=predict, **overrides)
    result.params["conditions"] = [KEYS.CONTROL, *single_gene_conditions(model)[0]]
    return result


# -- the backend ---------------------------------------------------------------------------------------
class LocalJob(Job):
    """A training in a background thread of this process."""

    def __init__(self, out, target: Callable[[ProgressFn], Path]):
        super().__init__(out)
        self._box: dict[str, Any] = {}
        self._thread = threading.Thread(target=self._run, args=(target,), name=f"lcd-train:{self.out.name}",
                                        daemon=True)
        self._thread.start()

    def _progress(self, p: Progress) -> None:
        if self._cancel.is_set():
            raise _Stop()
        self._events.put(p)

    def _run(self, target) -> None:
        try:
            self._box["result"] = target(self._progress)
        except _Stop:
            self._box["error"] = JobCancelled(f"training into {self.out} was cancelled; its checkpoints are "
                                              "kept (rerun the same command to resume)")
        except BaseException as e:  # handed to the waiting thread, re-raised there
            self._box["error"] = e

    def _step(self, timeout: float) -> bool:
        self._thread.join(timeout if timeout > 0 else 0)
        return not self._thread.is_alive()

    def _result(self) -> Path:
        if "error" in self._box:
            raise self._box["error"]
        return self._box["result"]

    def _request_cancel(self) -> None:
        pass  # the flag is read at the next progress report


class LocalBackend(Backend):
    """Runs everything in this process; ``device`` picks CPU or this machine's GPU."""

    name = "local"

    def __init__(self):
        self._jobs: list[LocalJob] = []

    def submit_train(self, screen, out, *, config, device="auto", heldout=None, fold=None, read_kwargs=None,
                     max_seconds_per_stage=None) -> LocalJob:
        cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)

        def target(progress):
            return train_run(screen, out, config=cfg, device=device, heldout=heldout, fold=fold,
                             read_kwargs=read_kwargs, max_seconds_per_stage=max_seconds_per_stage,
                             progress=progress)

        job = LocalJob(out, target)
        self._jobs = [j for j in self._jobs if not j.done()] + [job]
        return job

    def predict(self, run, perturbations, n_cells=500, *, sampler=None, n_evals=None, seed=0, device="auto",
                anchored=False, guidance=None):
        return predict_run(run, perturbations, n_cells, sampler=sampler, n_evals=n_evals, seed=seed, device=device,
                           anchored=anchored, guidance=guidance)

    def clipr(self, run, options=None, *, device="auto", **overrides):
        return clipr_run(run, options, device=device, **overrides)

    def map(self, fn, items: Iterable, *, gpus: float = 0.0) -> list:
        return [fn(item) for item in items]


__all__ = ["LocalBackend", "LocalJob", "train_run", "predict_run", "clipr_run", "merge_predictions"]
