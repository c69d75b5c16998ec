"""Task bodies of :mod:`lcd_core.backends.ray` (what runs on the workers) and the sharded stage 1's Ray
``map``; ``ray`` is imported inside functions only. The work itself is the local backend's
(:mod:`lcd_core.backends._local`) and the engine's (:func:`lcd_core.train.fit_stage1_sharded`)."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from .. import __version__
from .._progress import Progress
from ._base import BackendError, BackendUnavailable
from ._local import clipr_run, predict_run, train_run
from ._ray_cluster import _import_ray
from ._ray_files import _tar, _untar, _with_run


@functools.cache
def _remote():
    """Ray-wrapped versions of this module's task functions (built once, after ``import ray``)."""
    import ray

    class _Sink:
        """Collects progress records pushed by a task until the client drains them."""

        def __init__(self):
            self.items: list = []

        def push(self, item) -> None:
            self.items.append(item)

        def drain(self) -> list:
            out, self.items = self.items, []
            return out

    return {
        "sink": ray.remote(num_cpus=0)(_Sink),
        "train": ray.remote(max_retries=0)(_train_task),
        "predict": ray.remote(max_retries=0)(_predict_task),
        "clipr": ray.remote(max_retries=0)(_clipr_task),
        "call": ray.remote(max_retries=0)(_call),
    }


def _plain(record: dict) -> dict:
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in record.items()
            if isinstance(v, (int, float, str, bool)) or hasattr(v, "item")}


def _check_version(client_version: str) -> None:
    if client_version != __version__:
        raise BackendError(f"the Ray workers run lcd-explorer {__version__} but the client runs {client_version}; "
                           "install the same version on the cluster")


def _worker_setup() -> None:
    # read when OpenMP starts, i.e. at the worker's first torch import, which comes after this (this
    # module imports torch lazily): busy-waiting threads make shared CPUs 3-10x slower (METHOD.md §2)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# -- task bodies (run on the workers) ------------------------------------------------------------------
def _train_task(spec: dict, screen_blob: bytes | None, resume_blob: bytes | None, sink) -> bytes | None:
    _check_version(spec["version"])
    _worker_setup()

    def progress(p: Progress) -> None:
        sink.push.remote(Progress(p.stage, int(p.step), int(p.total), _plain(p.record)))

    kwargs = dict(config=spec["config"], device=spec["device"], heldout=spec["heldout"], fold=spec["fold"],
                  read_kwargs=spec["read_kwargs"], max_seconds_per_stage=spec["max_seconds_per_stage"],
                  progress=progress, **_stage1_hook(spec))
    if spec["transfer"] == "shared":
        train_run(spec["screen"], spec["out"], **kwargs)
        return None
    tmp = Path(tempfile.mkdtemp(prefix="lcd-ray-train-"))
    try:
        screen = tmp / spec["screen_name"]
        screen.write_bytes(screen_blob)
        run = tmp / "run"
        if resume_blob:
            _untar(resume_blob, run)
        train_run(screen, run, **kwargs)
        return _tar(run)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _stage1_hook(spec: dict) -> dict:
    """``stage1_fit=`` for :func:`lcd_core.model.train` when sharding is asked for and the engine takes it."""
    shards = spec.get("stage1_shards") or 1
    if shards <= 1:
        return {}
    import inspect

    from ..model import _train

    if "stage1_fit" not in inspect.signature(_train.train).parameters:
        return {}  # this engine version fits stage 1 in one piece
    return {"train_kwargs": {"stage1_fit": functools.partial(
        fit_stage1_sharded, n_shards=shards, local_shard=True, shard_options=spec["task_options"])}}


def _predict_task(version, run_blob, run_path, labels, n_cells, sampler, n_evals, seed, device, anchored, guidance):
    _check_version(version)
    _worker_setup()
    return _with_run(run_blob, run_path, lambda run: predict_run(run, labels, n_cells, sampler=sampler,
                                                                  n_evals=n_evals, seed=seed, device=device,
                                                                  anchored=anchored, guidance=guidance))


def _clipr_task(version, run_blob, run_path, variant, lam, seed, device, kwargs):
    _check_version(version)
    _worker_setup()
    return _with_run(run_blob, run_path, lambda run: clipr_run(run, variant=variant, lam=lam, seed=seed,
                                                                device=device, **kwargs))


def _call(fn, item):
    _worker_setup()
    return fn(item)


# -- stage 1 across workers ----------------------------------------------------------------------------
def _ray_map(options: dict, *, local_first: bool) -> Callable:
    """A ``map_fn`` for :func:`lcd_core.train.fit_stage1_sharded`: each item a Ray task with ``options``
    (item 0 in this process when ``local_first``: a task that already holds a GPU uses it)."""
    import ray

    def map_fn(fn, items):
        items = list(items)
        call = _remote()["call"].options(**options)
        refs = [None if local_first and i == 0 else call.remote(fn, item) for i, item in enumerate(items)]
        try:
            head = [fn(items[0])] if local_first else []
            return head + ray.get([r for r in refs if r is not None])
        except BaseException:
            for r in refs:
                if r is not None:
                    ray.cancel(r, force=True)
            raise

    return map_fn


def fit_stage1_sharded(counts: list, unit_scale, config, *, device="cpu", progress=None, state=None,
                       max_seconds=None, n_shards: int = 2, local_shard: bool = False,
                       shard_options: dict | None = None):
    """:func:`lcd_core.train.fit_stage1_sharded` with the shards as Ray tasks (one round).

    Parameters
    ----------
    counts, unit_scale, config, device, progress, state, max_seconds, n_shards
        As :func:`lcd_core.train.fit_stage1_sharded`.
    local_shard
        Fit shard 0 in this process (a Ray task that already holds a GPU uses it instead of leaving it
        idle); the other shards are Ray tasks.
    shard_options
        Resources of each shard task, e.g. ``{"num_cpus": 1}`` or ``{"num_gpus": 1}``.
    """
    from ..train import fit_stage1_sharded as fit

    ray = _import_ray(local=False)
    if not ray.is_initialized():
        raise BackendUnavailable("fit_stage1_sharded needs a connected Ray (get_backend('ray') first)")
    options = dict(shard_options or {"num_cpus": 1})
    remote_device = "cuda" if options.get("num_gpus") else "cpu"
    return fit(counts, unit_scale, config, map_fn=_ray_map(options, local_first=local_shard), n_shards=n_shards,
               device=str(device) if local_shard else remote_device, shard_device=remote_device,
               progress=progress, state=state, max_seconds=max_seconds)


# -- the backend ---------------------------------------------------------------------------------------
