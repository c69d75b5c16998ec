"""The ``ray`` backend: training, prediction and CLIPR as tasks on a Ray cluster (docs/ray.md).

This is the only module of the package that imports ``ray``, and only inside functions guarded by
:func:`lcd_core._dependencies.require`, so ``import lcd_core.backends.ray`` works without Ray installed
and the first call that needs it names what to install.

What runs where
---------------
- A training is one task (1 GPU when the cluster has one and ``device`` allows it, else 1 CPU) that runs
  the engine's :func:`lcd_core.model.train`. Its progress records go to a small actor the client drains
  (``progress(stage, step, total, record)``, as the local backend). Stage 1 can be sharded across
  workers (:func:`fit_stage1_sharded`; see "Stage 1 across workers").
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
Stage-1 generators are independent per condition; only the per-gene dropout logits are shared.
:func:`fit_stage1_sharded` splits the conditions into contiguous shards, fits each shard with the engine's
:func:`~lcd_core.train.fit_stage1` on its own worker (its own copy of the logits), and after every round
(one call: a checkpoint slice of the training driver, or the whole fit) replaces each shard's logits by
the logit of the cell-weighted average dropout probability, so the shards start the next round from one shared measurement model and
the final model has one. With hundreds of conditions per shard each shard's logits are estimated from
tens of thousands of cells and agree closely; the largest deviation of a shard's dropout probability from the average is reported as
``dropout_spread``.
"""

from __future__ import annotations

import functools
import io
import json
import os
import shutil
import socket
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import __version__
from .._dependencies import require
from ..errors import ConfigError, LCDError, RunError
from ._base import Backend, BackendError, BackendResourceError, BackendUnavailable, Job, JobCancelled
from ..model._anchor import ANCHORS_FILE
from ._local import clipr_run, merge_predictions, predict_run, train_run

#: Ray reads this when it is imported: "0" makes a private instance advertise and bind 127.0.0.1 only
#: (Ray's single-machine mode); set only when this process starts its own instance.
_LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_PROBE_SECONDS = 3.0
_SOFT_CANCEL_SECONDS = 5.0
#: files a finished run needs for LCD.load (what prediction and CLIPR ship)
_MODEL_FILES = ("config.json", "model.json", "model.safetensors", "COMPLETE", ANCHORS_FILE)  # anchors: if present


def _import_ray(*, local: bool, client: bool = False):
    """``import ray``, first setting what Ray reads at import time: loopback-only for a private
    instance, token mode for a Ray Client (see :func:`_client_auth_mode`)."""
    require("ray", feature="--backend ray")
    if "ray" not in sys.modules:
        if local:
            os.environ.setdefault(_LOOPBACK_ENV, "0")
        if client:
            _client_auth_mode()
    import ray

    return ray


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
        "shard": ray.remote(max_retries=0)(_stage1_shard_task),
        "call": ray.remote(max_retries=0)(_call),
    }


# -- small helpers --------------------------------------------------------------------------------------
def _parse_address(address: str) -> tuple[str, int]:
    client = address.startswith("ray://")
    rest = address[len("ray://"):] if client else address
    host, sep, port = rest.rpartition(":")
    if not sep:
        host, port = rest, "10001" if client else "6379"
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"malformed Ray address {address!r}; expected HOST:PORT or ray://HOST:PORT") from None


def _probe(address: str, timeout: float = _PROBE_SECONDS) -> None:
    """Fail within seconds unless a Ray head answers at ``address`` (ray.init itself retries for a
    minute or more, against a closed port and against a server that is not Ray alike).

    Two steps: a TCP connection, then one real gRPC call of the service Ray listens with there (the GCS
    for ``HOST:PORT``, the Ray Client server for ``ray://``). A Ray server answers it (possibly with
    "unauthenticated": the token is ray.init's business); anything else (a proxy, a web server, another
    gRPC service) does not implement the method.
    """
    host, port = _parse_address(address)
    hint = "start one with 'ray start --head' (docs/ray.md), or check the address, the port and the firewall"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        reason = "timed out" if isinstance(e, (TimeoutError, socket.timeout)) else (e.strerror or type(e).__name__)
        raise BackendUnavailable(f"no Ray cluster answers at {address} ({reason}); {hint}") from None
    import grpc  # a dependency of ray[default]

    method = ("/ray.rpc.RayletDriver/ClusterInfo" if address.startswith("ray://")
              else "/ray.rpc.NodeInfoGcsService/GetClusterId")
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    channel = grpc.insecure_channel(target)
    try:
        channel.unary_unary(method)(b"", timeout=timeout)
    except grpc.RpcError as e:
        code = e.code()
        if code in (grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise BackendUnavailable(f"no Ray cluster answers at {address}: the port is open but what answers is "
                                     f"not a Ray {'client server' if address.startswith('ray://') else 'head (GCS)'} "
                                     f"({code.name}); {hint}") from None
    finally:
        channel.close()


def _client_auth_mode() -> None:
    """A Ray Client sends the cluster's token only in token mode, read when ray is imported; a driver
    (HOST:PORT) turns that on by itself when it finds a token, the client does not. Turn it on when a
    token is configured (the variables or the file Ray reads; the token itself is never read or logged
    here). In a process that imported ray earlier, set ``RAY_AUTH_MODE=token`` yourself."""
    if "RAY_AUTH_MODE" in os.environ:
        return
    if (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
            or (Path.home() / ".ray" / "auth_token").is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"


def _tar(folder: Path, names: Iterable[str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in (names if names is not None else sorted(os.listdir(folder))):
            tar.add(folder / name, arcname=name)
    return buf.getvalue()


def _untar(blob: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        tar.extractall(folder, filter="data")  # "data": no absolute paths, no escapes, no devices


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


def _to_cpu(obj):
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


# -- task bodies (run on the workers) ------------------------------------------------------------------
def _train_task(spec: dict, screen_blob: bytes | None, resume_blob: bytes | None, sink) -> bytes | None:
    _check_version(spec["version"])
    _worker_setup()

    def progress(stage, step, total, record):
        sink.push.remote((stage, int(step), int(total), _plain(record)))

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


def _with_run(run_ref, run_path: str | None, fn: Callable[[str], Any]):
    """Call ``fn(run directory)`` on a shipped copy (``run_ref`` bytes) or the shared path."""
    if run_path is not None:
        return fn(run_path)
    tmp = Path(tempfile.mkdtemp(prefix="lcd-ray-run-"))
    try:
        _untar(run_ref, tmp / "run")
        return fn(str(tmp / "run"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _predict_task(version, run_blob, run_path, labels, n_cells, sampler, n_evals, seed, device, anchored):
    _check_version(version)
    _worker_setup()
    return _with_run(run_blob, run_path, lambda run: predict_run(run, labels, n_cells, sampler=sampler,
                                                                  n_evals=n_evals, seed=seed, device=device,
                                                                  anchored=anchored))


def _clipr_task(version, run_blob, run_path, variant, lam, seed, device, kwargs):
    _check_version(version)
    _worker_setup()
    return _with_run(run_blob, run_path, lambda run: clipr_run(run, variant=variant, lam=lam, seed=seed,
                                                                device=device, **kwargs))


def _call(fn, item):
    _worker_setup()
    return fn(item)


# -- stage 1 across workers ----------------------------------------------------------------------------
def _stage1_shard_task(counts, unit_scale, config: dict, device: str, state, max_seconds, progress=None):
    """Fit (or continue) one shard of conditions; return its state (tensors on the CPU)."""
    from ..train import Stage1Config, fit_stage1

    _worker_setup()
    cfg = Stage1Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    res = fit_stage1(counts, unit_scale, cfg, device=device, state=state, max_seconds=max_seconds,
                     progress=progress)
    return _to_cpu(res.state_dict())


class ShardedStage1Result:
    """Stage 1 fitted in shards: what :func:`lcd_core.model.train` uses of a
    :class:`~lcd_core.train.Stage1Result` (``noise``, ``done``, ``state_dict()``, ``sample_latents``)."""

    def __init__(self, shards: list[dict], bounds: list[tuple[int, int]], unit_scale, config, history):
        from ..module import ZIPNoise

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

    def sample_latents(self, n_per_condition: int, seed: int = 0, chunk: int = 2000) -> list:
        """Latent states of every condition, in input order (shard ``i`` draws with seed ``seed + i``)."""
        import torch

        from ..module._generator import StackedGenerators
        from ..train import Stage1Result

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


def fit_stage1_sharded(counts: list, unit_scale, config, *, device="cpu", progress=None, state=None,
                       max_seconds=None, n_shards: int = 2, local_shard: bool = False,
                       shard_options: dict | None = None) -> ShardedStage1Result:
    """:func:`lcd_core.train.fit_stage1` with the conditions split across Ray workers (one round).

    Parameters
    ----------
    counts, unit_scale, config, device, progress, state, max_seconds
        As :func:`~lcd_core.train.fit_stage1` (``state`` from :meth:`ShardedStage1Result.state_dict`).
    n_shards
        Number of shards (at most one per condition).
    local_shard
        Fit shard 0 in this process (a Ray task that already holds a GPU uses it instead of leaving it
        idle); the other shards are Ray tasks.
    shard_options
        Resources of each shard task, e.g. ``{"num_cpus": 1}`` or ``{"num_gpus": 1}``.
    """
    import numpy as np
    import torch

    ray = _import_ray(local=False)
    if not ray.is_initialized():
        raise BackendUnavailable("fit_stage1_sharded needs a connected Ray (get_backend('ray') first)")
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
    options = dict(shard_options or {"num_cpus": 1})
    shard_device = "cuda" if options.get("num_gpus") else "cpu"
    cfg = asdict(config)
    fn = _remote()["shard"].options(**options)
    u_ref = ray.put(np.asarray(unit_scale))
    refs = []
    for i, (lo, hi) in enumerate(bounds):
        if local_shard and i == 0:
            refs.append(None)
            continue
        st = state["shards"][i] if state is not None else None
        refs.append(fn.remote(ray.put(counts[lo:hi]), u_ref, cfg, shard_device, st, max_seconds))
    try:
        results = [None] * n
        if local_shard:
            st = state["shards"][0] if state is not None else None
            lo, hi = bounds[0]
            shard_progress = (lambda s, t, r: progress(s, t, dict(r, shard=0))) if progress else None
            results[0] = _stage1_shard_task(counts[lo:hi], np.asarray(unit_scale), cfg, str(device), st,
                                            max_seconds, shard_progress)
        remote = [(i, r) for i, r in enumerate(refs) if r is not None]
        for (i, _), res in zip(remote, ray.get([r for _, r in remote])):
            results[i] = res
    except BaseException:
        for r in refs:
            if r is not None:
                ray.cancel(r, force=True)
        raise
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
        progress(record["step"], config.steps, record)
    return ShardedStage1Result(results, bounds, np.asarray(unit_scale), config, history)


# -- the backend ---------------------------------------------------------------------------------------
class RayJob(Job):
    """A training running as a Ray task."""

    def __init__(self, out, ref, sink, deliver: Callable[[Any], Path]):
        super().__init__(out)
        self._ref, self._sink, self._deliver = ref, sink, deliver
        self._finished = False
        self._delivered: Path | None = None
        self._lock = threading.Lock()

    def _drain(self) -> None:
        import ray

        if self._sink is None:
            return
        try:
            items = ray.get(self._sink.drain.remote(), timeout=30)
        except Exception:  # the sink died with the cluster: the task's own error says why
            return
        for item in items:
            self._events.put(tuple(item))

    def _step(self, timeout: float) -> bool:
        import ray

        with self._lock:
            if self._finished:
                return True
            ready, _ = ray.wait([self._ref], timeout=max(timeout, 0.0))
            self._drain()
            if ready:
                self._finished = True
                self._drain()
                try:
                    ray.kill(self._sink)
                except Exception:  # already gone with its node: nothing left to free
                    pass
                self._sink = None
            return self._finished

    def _result(self) -> Path:
        import ray
        from ray import exceptions as rex

        if self._delivered is not None:
            return self._delivered
        try:
            blob = ray.get(self._ref)
        except (rex.TaskCancelledError, rex.WorkerCrashedError) as e:
            if self.cancelled:
                raise JobCancelled(f"training into {self.out} was cancelled; no finished run was written") from None
            raise BackendError(f"the Ray worker training {self.out} died ({type(e).__name__}); see the Ray logs "
                               "of the cluster (out of memory?)") from None
        except rex.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if self.cancelled or isinstance(cause, (KeyboardInterrupt, rex.TaskCancelledError)):
                raise JobCancelled(f"training into {self.out} was cancelled; no finished run was written") from None
            if isinstance(cause, LCDError):
                raise cause from None
            raise BackendError(f"the remote training failed: {type(cause).__name__}: {cause}") from None
        except rex.RayError as e:
            raise BackendError(f"Ray failed while training {self.out}: {type(e).__name__}: {e}") from None
        self._delivered = self._deliver(blob)
        return self._delivered

    def _request_cancel(self) -> None:
        import ray

        if self._finished:
            return
        # polite first (the task gets KeyboardInterrupt and cleans its temporary folder), then forced
        ray.cancel(self._ref, force=False, recursive=True)

        def force():
            t0 = time.monotonic()
            while time.monotonic() - t0 < _SOFT_CANCEL_SECONDS:
                if ray.wait([self._ref], timeout=0.25)[0]:
                    return
            ray.cancel(self._ref, force=True, recursive=True)

        threading.Thread(target=force, daemon=True, name="lcd-ray-cancel").start()


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
            return (lambda stage, *rest: progress(f"fold{f}/{stage}", *rest)) if progress is not None else None

        jobs = [self.submit_train(screen, o, config=config, device=device, fold=f, read_kwargs=read_kwargs,
                                  max_seconds_per_stage=max_seconds_per_stage) for o, f in zip(outs, folds)]
        try:
            while not all(j.done() for j in jobs):
                for f, j in zip(folds, jobs):
                    for event in j.poll():
                        if progress is not None:
                            tagged(f)(*event)
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
                anchored=False):
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
        refs = [fn.remote(__version__, blob, path, c, n_cells, sampler, n_evals, seed, worker_device, anchored)
                for c in chunks]
        pred = merge_predictions(self._get(refs))
        pred.params["run"] = str(run)
        return pred

    def clipr(self, run, options=None, *, device="auto", **overrides):
        from ..clipr import clipr_options

        screen = overrides.pop("screen", None)  # source="data": the measured cells, read here
        opts = clipr_options(options, **overrides)  # resolved and checked here, not after shipping the weights
        if opts.variant == "directed":
            # the cost is generating cells of every condition: spread them over the workers (self.predict),
            # then the Lyapunov + on-target solve here (seconds at d = 1000)
            return clipr_run(run, opts, device="cpu", screen=screen,
                             predict=lambda labels, n, seed: self.predict(run, labels, n, seed=seed, device=device))
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


def _deliver_run(blob: bytes, out: Path, *, data_path: str) -> Path:
    """Unpack a shipped run next to ``out`` and rename it into place; a run that looks complete appears
    only with the final rename. Paths recorded by the worker (its temporary folder) become the client's."""
    from ..model._run import atomic_write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out.with_name(f".{out.name}.incoming-{tag}")
    try:
        _untar(blob, tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("data_path") is not None:
            atomic_write_json(cfg_path, dict(cfg, data_path=data_path))
        meta_path = tmp / "model.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if "run" in meta.get("info", {}):
                meta["info"]["run"] = str(out)
                atomic_write_json(meta_path, meta)
        if out.exists():  # an interrupted run we shipped for resuming: replace it
            old = out.with_name(f".{out.name}.replaced-{tag}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


__all__ = ["RayBackend", "RayJob", "fit_stage1_sharded", "ShardedStage1Result"]
