"""The ``ray`` backend: training, prediction and CLIPR as tasks on a Ray cluster (docs/ray.md).

This module and its private helpers (``_ray_*.py``) are the only ones that import ``ray``, and only
inside functions guarded by :func:`lcd_core._dependencies.require`, so ``import lcd_core.backends.ray`` works without Ray installed
and the first call that needs it names what to install.

What runs where
---------------
- A training is one task (1 GPU when the cluster has one and ``device`` allows it, else 1 CPU) that runs
  the engine's :func:`lcd_core.model.train`. Its progress records go to a small actor the client drains
  (one :class:`~lcd_core.train.Progress` each, as the local backend). Stage 1 can be sharded across
  workers (see "Stage 1 across workers").
- Prediction splits the requested perturbations across tasks; CLIPR (either variant, through the same
  :func:`lcd_core.model.get_clipr` as a local call) runs as one task (the paper variant's fixed points are
  one batched flow over all conditions, the directed variant's cells one batched generation, which a GPU
  already parallelises).
- :meth:`RayBackend.map` runs any importable function over items, one task each.

What travels
------------
``transfer="ship"`` (default): the client sends the screen file's bytes (and, for a resumed training,
the partial run directory) through the object store; the worker trains in a temporary folder and sends
the finished run directory back as one tar, which the client unpacks next to ``out`` and renames into
place (atomic: ``out`` never looks complete before it is). ``transfer="shared"``: client and workers see
the same file system (NFS, a mounted bucket, one machine); only paths travel and the worker trains
directly into ``out``, so a cancelled training keeps its checkpoints and resumes.

Stage 1 across workers
----------------------
``stage1_shards=N`` fits stage 1 with :func:`lcd_core.train.fit_stage1_sharded` (the algorithm, and
its description, live there), its shards run as Ray tasks by :func:`fit_stage1_sharded` here.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ConfigError, LCDError, RunError
from ..model._anchor import ANCHORS_FILE
from ._base import Backend, BackendError, BackendResourceError, BackendUnavailable
from ._local import clipr_run, merge_predictions
from ._ray_cluster import _import_ray, _probe  # noqa: F401 (_probe: used by the tests)
from ._ray_files import _MODEL_FILES, _deliver_run, _tar
from ._ray_job import RayJob
from ._ray_tasks import _remote, fit_stage1_sharded


class RayBackend(Backend):
    """Runs training, prediction and CLIPR on a Ray cluster.

    Parameters
    ----------
    address
        ``None``/``"local"``: start a private Ray instance in this process, bound to 127.0.0.1 (tests,
        one machine); ``"auto"``: the cluster started on this machine with ``ray start``; ``HOST:PORT``:
        join a cluster's head; ``ray://HOST:10001``: connect as a Ray Client (from a laptop).
    transfer
        ``"ship"``: data file and run directory travel through Ray; ``"shared"``: both sides see the same
        paths (see the module docstring).
    num_cpus
        CPUs of a private instance (default: all).
    cpus_per_task
        CPUs each task asks for (threads of its torch).
    stage1_shards
        Split stage 1 of a training over this many workers (needs an engine whose ``train`` takes
        ``stage1_fit``; otherwise stage 1 runs in one piece).
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, transfer: str = "ship", num_cpus: int | None = None,
                 cpus_per_task: int = 1, stage1_shards: int | None = None):
        if transfer not in ("ship", "shared"):
            raise ConfigError(f"transfer must be 'ship' or 'shared', not {transfer!r}")
        self.transfer, self.cpus_per_task, self.stage1_shards = transfer, int(cpus_per_task), stage1_shards
        self._jobs: list[RayJob] = []
        local = address in (None, "local")
        ray = _import_ray(local=local, client=str(address).startswith("ray://"))
        self._owns = False
        if not local and address != "auto":
            _probe(address)  # seconds, not Ray's own minute of retries
        if ray.is_initialized():  # one Ray connection per process (the app's cached backend, tests)
            self.address = ray.get_runtime_context().gcs_address
            return
        try:
            if local:
                ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                         logging_level="WARNING")
            else:
                ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except (ConnectionError, TimeoutError, RuntimeError, ValueError) as e:
            raise BackendUnavailable(f"could not connect to Ray at {address}: {' '.join(str(e).split())[:300]}; "
                                     "start a cluster with 'ray start --head' (docs/ray.md)") from None
        self._owns = True
        self.address = "local" if local else address

    # -- resources ---------------------------------------------------------------------------------
    def _max_node(self, key: str) -> float:
        import ray

        return max((n["Resources"].get(key, 0.0) for n in ray.nodes() if n.get("Alive")), default=0.0)

    def _task_options(self, device: str) -> tuple[dict, str]:
        """Ray resources of one task and the torch device it uses there (GPU if the cluster has one)."""
        gpus = self._max_node("GPU")
        cpus = self._max_node("CPU")
        if self.cpus_per_task > cpus:
            raise BackendResourceError(f"tasks ask for {self.cpus_per_task} CPUs but the largest node of the Ray "
                                       f"cluster has {cpus:g}; lower cpus_per_task or add a bigger node")
        if device.startswith("cuda") or device == "gpu":
            if gpus < 1:
                raise BackendResourceError("--device cuda asks for a GPU but the Ray cluster has none "
                                           f"(resources: {self._describe()}); use --device auto or cpu, or "
                                           "start the head on a GPU machine (docs/ray.md)")
            return {"num_cpus": self.cpus_per_task, "num_gpus": 1}, "cuda"
        if device == "auto" and gpus >= 1:
            return {"num_cpus": self.cpus_per_task, "num_gpus": 1}, "cuda"
        if device not in ("auto", "cpu"):
            raise ConfigError(f"device {device!r} is not available on a Ray cluster; use auto, cpu or cuda")
        return {"num_cpus": self.cpus_per_task}, "cpu"

    def _describe(self) -> str:
        import ray

        res = ray.cluster_resources()
        return ", ".join(f"{k} {res[k]:g}" for k in ("CPU", "GPU") if k in res) or "none"

    def _slots(self, options: dict) -> int:
        import ray

        res = ray.cluster_resources()
        key, need = ("GPU", options["num_gpus"]) if options.get("num_gpus") else ("CPU", options["num_cpus"])
        return max(1, int(res.get(key, 1) // max(need, 1e-9)))

    # -- training ----------------------------------------------------------------------------------
    def submit_train(self, screen, out, *, config, device="auto", heldout=None, fold=None, read_kwargs=None,
                     max_seconds_per_stage=None) -> RayJob:
        import ray

        from ..data._validate import check_file
        from ..model._run import RunDir

        screen_path = check_file(screen)  # a missing or non-HDF5 file fails here, before anything travels
        out_dir, run = Path(out), RunDir(out)
        if run.is_complete():
            raise RunError(f"{out_dir} already holds a finished run; choose another --out or delete it")
        options, worker_device = self._task_options(device)
        spec = {
            "version": __version__, "config": config.to_dict() if hasattr(config, "to_dict") else dict(config),
            "device": worker_device,
            "heldout": heldout, "fold": fold, "read_kwargs": read_kwargs or {},
            "max_seconds_per_stage": max_seconds_per_stage, "transfer": self.transfer,
            "stage1_shards": self.stage1_shards, "task_options": options,
        }
        screen_blob = resume_blob = None
        if self.transfer == "shared":
            spec |= {"screen": str(screen_path.resolve()), "out": str(out_dir.resolve())}
        else:
            if out_dir.exists() and any(out_dir.iterdir()):
                if not (out_dir / "config.json").exists():
                    raise RunError(f"{out_dir} exists and is not a run directory; choose another --out")
                resume_blob = ray.put(_tar(out_dir))  # an interrupted run: continue it remotely
            spec["screen_name"] = screen_path.name
            screen_blob = ray.put(screen_path.read_bytes())
        sink = _remote()["sink"].remote()
        ref = _remote()["train"].options(name=f"lcd-train:{out_dir.name}", **options).remote(
            spec, screen_blob, resume_blob, sink)

        def deliver(blob) -> Path:
            if blob is None:
                return out_dir
            return _deliver_run(blob, out_dir, data_path=str(screen_path))

        job = RayJob(out_dir, ref, sink, deliver)
        self._jobs = [j for j in self._jobs if not j._finished] + [job]
        return job

    def train_folds(self, screen, outs, folds, *, config, device="auto", progress=None, read_kwargs=None,
                    max_seconds_per_stage=None) -> list[Path]:
        """The k trainings of ``lcd evaluate --folds`` at once, one task each (as many run together as the
        cluster has GPUs or CPUs for); progress stages are prefixed ``fold{F}/``."""
        def tagged(f):
            return (lambda p: progress(p.with_stage(f"fold{f}/{p.stage}"))) if progress is not None else None

        jobs = [self.submit_train(screen, o, config=config, device=device, fold=f, read_kwargs=read_kwargs,
                                  max_seconds_per_stage=max_seconds_per_stage) for o, f in zip(outs, folds)]
        try:
            while not all(j.done() for j in jobs):
                for f, j in zip(folds, jobs):
                    for event in j.poll():
                        if progress is not None:
                            tagged(f)(event)
                time.sleep(0.25)
        except KeyboardInterrupt:
            for j in jobs:
                j.cancel()
            raise
        # every job has ended: forward the records that came with its end, and deliver every finished fold
        # before raising the first failure (a failed fold does not throw away the others' trainings)
        runs, errors = [], []
        for f, j in zip(folds, jobs):
            try:
                runs.append(j.wait(tagged(f)))
            except LCDError as e:
                errors.append(e)
        if errors:
            raise errors[0]
        return runs

    # -- inference ---------------------------------------------------------------------------------
    def _run_ref(self, run) -> tuple[Any, str | None]:
        import ray

        from ..model._run import RunDir

        RunDir(run).require_complete()  # a clear message here rather than on a worker
        if self.transfer == "shared":
            return None, str(Path(run).resolve())
        files = [f for f in _MODEL_FILES if f != ANCHORS_FILE or (Path(run) / f).exists()]
        return ray.put(_tar(Path(run), files)), None

    def predict(self, run, perturbations, n_cells=500, *, sampler=None, n_evals=None, seed=0, device="auto",
                anchored=False, guidance=None):
        import numpy as np
        import ray

        labels = list(perturbations)
        if not labels:
            raise ConfigError("no perturbation given")
        options, worker_device = self._task_options(device)
        blob, path = self._run_ref(run)
        n = min(len(labels), self._slots(options))
        chunks = [list(c) for c in np.array_split(np.array(labels, dtype=object), n) if len(c)]
        fn = _remote()["predict"].options(**options)
        refs = [fn.remote(__version__, blob, path, c, n_cells, sampler, n_evals, seed, worker_device, anchored, guidance)
                for c in chunks]
        pred = merge_predictions(self._get(refs))
        pred.params["run"] = str(run)
        return pred

    def clipr(self, run, options=None, *, device="auto", **overrides):
        from ..clipr import clipr_options
        from ..clipr._readout import GUIDANCE

        screen = overrides.pop("screen", None)  # source="data": the measured cells, read here
        opts = clipr_options(options, **overrides)  # resolved and checked here, not after shipping the weights
        if opts.variant == "directed":
            # the cost is generating cells of every condition: spread them over the workers (self.predict),
            # then the Lyapunov + on-target solve here (seconds at d = 1000)
            return clipr_run(run, opts, device="cpu", screen=screen,
                             predict=lambda labels, n, seed: self.predict(run, labels, n, seed=seed, device=device,
                                                                           guidance=GUIDANCE))
        task_options, worker_device = self._task_options(device)
        blob, path = self._run_ref(run)
        # _clipr_task takes (variant, lam, seed, kwargs): the options as plain values, the same on the worker
        rest = {k: v for k, v in opts.to_dict().items() if k not in ("variant", "lam", "seed")}
        ref = _remote()["clipr"].options(**task_options).remote(__version__, blob, path, opts.variant, opts.lam,
                                                                opts.seed, worker_device, rest)
        return self._get([ref])[0]

    def map(self, fn, items, *, gpus: float = 0.0) -> list:
        options = {"num_cpus": self.cpus_per_task, **({"num_gpus": gpus} if gpus else {})}
        if gpus and self._max_node("GPU") < gpus:
            raise BackendResourceError(f"map asks for {gpus:g} GPU per task but the Ray cluster has "
                                       f"{self._describe()}")
        call = _remote()["call"].options(**options)
        return self._get([call.remote(fn, item) for item in items])

    def _get(self, refs: list) -> list:
        import ray
        from ray import exceptions as rex

        try:
            return ray.get(refs)
        except KeyboardInterrupt:
            for r in refs:
                ray.cancel(r, force=True)
            raise
        except rex.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, LCDError):
                raise cause from None
            raise BackendError(f"a Ray task failed: {type(cause).__name__}: {cause}") from None

    def close(self) -> None:
        import ray

        self.cancel()
        if self._owns and ray.is_initialized():
            ray.shutdown()
        self._owns = False


__all__ = ["RayBackend", "RayJob", "fit_stage1_sharded"]
