"""Trainings that outlive their caller: ``lcd train`` in a process of its own, found again by name.

A long-lived client (the app's server) starts a training with :func:`submit_detached`: the CLI runs in
its own session, on the backend its request names (``local`` or ``ray``), so a page reload or a
restart of the client does not stop it, and a cancel stops it with its children. Each training leaves
``<jobs_dir>/<name>.json`` (its :class:`TrainRequest` and process id) and ``<name>.log`` (its output);
:func:`list_detached` reads them back as :class:`DetachedJob` objects, the :class:`~lcd_core.backends.Job`
interface (``poll``, ``done``, ``wait``, ``cancel``) with progress read from the run's ``log.jsonl``.
Resuming re-submits the recorded request into the same run directory, which ``lcd train`` continues
from its last checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .._progress import progress_of
from .._settings import DEFAULT_PRESET
from ..errors import BackendError, ConfigError, JobCancelled
from ._base import Job

#: a job name is a file name in the jobs folder (and usually the run's folder name)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: how ``lcd train`` spells the screen-reading options of :func:`lcd_core.data.read_screen`
READ_OPTIONS = ("perturbation_key", "control_label", "combo_sep")

#: processes started here, by pid, so that finished ones are reaped (a zombie is not "running");
#: a restarted client finds its trainings through the job files and checks their pids instead
_CHILDREN: dict[int, subprocess.Popen] = {}
_CHILDREN_LOCK = threading.Lock()


@dataclass(frozen=True)
class TrainRequest:
    """Everything ``lcd train`` needs to (re)start a training; saved as JSON in the job file."""

    screen: str  # the .h5ad file
    out: str  # the run directory (resumed when it holds a checkpoint)
    preset: str = DEFAULT_PRESET  # one of lcd_core._settings.PRESET_NAMES
    device: str = "auto"  # auto, cpu, cuda, cuda:N or mps
    backend: str = "local"  # where the CLI trains: local or ray
    ray_address: str | None = None  # ray only: the cluster to join (None: a private local instance)
    holdout: str | None = None  # held-out combinations "A+B,C+D" (None: the screen's own split)
    seed: int = 0
    overrides: tuple[str, ...] = ()  # "key=value" settings of the training config (--set)
    read_options: dict = field(default_factory=dict)  # READ_OPTIONS of the screen, when not auto-detected
    subset: tuple[str, ...] = ()  # "key=value" contexts to keep (--subset; the cells of one cell type, ...)

    def argv(self, python: str = sys.executable) -> list[str]:
        """The command line that runs this request."""
        cmd = [python, "-m", "lcd_core.cli", "train", str(self.screen), "--out", str(self.out), "--preset", self.preset,
               "--device", self.device, "--seed", str(int(self.seed)), "--backend", self.backend]
        if self.backend == "ray" and self.ray_address:
            cmd += ["--ray-address", self.ray_address]
        if self.holdout:
            cmd += ["--holdout-combos", self.holdout]
        for o in self.overrides:
            cmd += ["--set", o]
        for kv in self.subset:
            cmd += ["--subset", kv]
        for k, v in self.read_options.items():
            if v:
                cmd += [f"--{k.replace('_', '-')}", str(v)]
        return cmd

    @classmethod
    def from_dict(cls, d: dict) -> TrainRequest:
        return cls(**{**d, "overrides": tuple(d.get("overrides", ())), "read_options": dict(d.get("read_options") or {}),
                      "subset": tuple(d.get("subset") or ())})


class DetachedJob(Job):
    """A training run by ``lcd train`` in its own process (see the module docstring).

    Attributes
    ----------
    name
        The job's name (its files in ``jobs_dir``).
    request
        What it trains.
    pid
        The process id (also its process-group id).
    started
        Start time (seconds since the epoch).
    """

    def __init__(self, record: Path):
        rec = json.loads(Path(record).read_text())
        self.request = TrainRequest.from_dict(rec["request"])
        super().__init__(self.request.out)
        self.record, self.name, self.pid, self.started = Path(record), rec["name"], int(rec["pid"]), float(rec["started"])
        if rec.get("cancelled"):
            self._cancel.set()
        self._log_pos = 0  # bytes of the run's log.jsonl already turned into progress events

    @property
    def log_file(self) -> Path:
        """The process's own output (stdout and stderr)."""
        return self.record.with_suffix(".log")

    @property
    def state(self) -> str:
        """``running``, ``complete``, ``cancelled`` or ``failed``."""
        if (self.out / "COMPLETE").exists():  # usable even while the process is still exiting
            return "complete"
        if _alive(self.pid):
            return "running"
        return "cancelled" if self.cancelled else "failed"

    @property
    def cancelled(self) -> bool:
        """Cancelled here, or by another client (the job file says so)."""
        if not self._cancel.is_set():
            try:
                if json.loads(self.record.read_text()).get("cancelled"):
                    self._cancel.set()
            except (OSError, ValueError):
                pass
        return self._cancel.is_set()

    def log_tail(self, n_chars: int = 1500) -> str:
        """The last ``n_chars`` of the process's output ('' when there is none yet)."""
        try:
            return self.log_file.read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def resume(self, *, python: str = sys.executable, env: dict | None = None, cwd: str | os.PathLike | None = None
               ) -> DetachedJob:
        """Start the recorded request again under the same name: ``lcd train`` continues the run from its
        last checkpoint. Refused while the job is running or once its run is complete."""
        return submit_detached(self.request, jobs_dir=self.record.parent, name=self.name, python=python, env=env,
                               cwd=cwd)

    # the Job interface -----------------------------------------------------------------------
    def _step(self, timeout: float) -> bool:
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            self._read_progress()
            if self.state != "running":
                self._read_progress()
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))

    def _read_progress(self) -> None:
        log = self.out / "log.jsonl"
        try:
            with open(log, "rb") as fh:
                fh.seek(self._log_pos)
                chunk = fh.read()
        except OSError:
            return
        end = chunk.rfind(b"\n") + 1  # a line still being written is read next time
        self._log_pos += end
        for line in chunk[:end].splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if r.get("event") == "progress":
                self._events.put(progress_of(r))

    def _result(self) -> Path:
        state = self.state
        if state == "complete":
            return self.out
        if state == "cancelled":
            raise JobCancelled(f"training {self.name!r} was cancelled; its checkpoints in {self.out} are kept "
                               "(resume it to continue)")
        last = self.log_tail().strip().splitlines()
        raise BackendError(f"training {self.name!r} stopped: {last[-1] if last else 'no output'} (log: {self.log_file})")

    def _request_cancel(self) -> None:
        if _alive(self.pid):
            try:
                os.killpg(self.pid, signal.SIGTERM)  # its own session: the process and its children
            except ProcessLookupError:
                pass
            with _CHILDREN_LOCK:
                proc = _CHILDREN.get(self.pid)
            if proc is not None:
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(self.pid, signal.SIGKILL)
                    proc.wait()
        rec = json.loads(self.record.read_text())
        rec["cancelled"] = True
        _write_json(self.record, rec)


def submit_detached(request: TrainRequest, *, jobs_dir: str | os.PathLike, name: str, python: str = sys.executable,
                    env: dict | None = None, cwd: str | os.PathLike | None = None) -> DetachedJob:
    """Start ``request`` as ``lcd train`` in its own session; return at once.

    Parameters
    ----------
    request
        What to train.
    jobs_dir
        Folder of the job files (``<name>.json``, ``<name>.log``); created when missing.
    name
        The job's name: letters, digits, ``.``, ``_``, ``-`` (at most 64). A finished job of that name is
        replaced; a running one refuses.
    python, env, cwd
        Interpreter, environment (default: this one's) and working directory of the process.
    """
    if not _NAME.fullmatch(name or ""):
        raise ConfigError("run names use letters, digits, '.', '_' and '-' (at most 64), e.g. demo-2")
    out = Path(request.out)
    if (out / "COMPLETE").exists():
        raise ConfigError(f"a finished run named {out.name!r} already exists; choose another name")
    jobs_dir = Path(jobs_dir)
    jobs_dir.mkdir(parents=True, exist_ok=True)
    if any(j.name == name and j.state == "running" for j in list_detached(jobs_dir)):
        raise ConfigError(f"run {name!r} is already training")
    out.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    with open(jobs_dir / f"{name}.log", "wb") as fh:
        proc = subprocess.Popen(request.argv(python), stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                cwd=None if cwd is None else str(cwd), env=env, start_new_session=True)
    with _CHILDREN_LOCK:
        _CHILDREN[proc.pid] = proc
    record = jobs_dir / f"{name}.json"
    _write_json(record, {"name": name, "pid": proc.pid, "started": time.time(), "cancelled": False,
                         "request": asdict(request), "cmd": request.argv(python)})
    return DetachedJob(record)


def list_detached(jobs_dir: str | os.PathLike) -> list[DetachedJob]:
    """Every training recorded in ``jobs_dir``, newest first (unreadable job files are skipped)."""
    d = Path(jobs_dir)
    jobs = []
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            jobs.append(DetachedJob(f))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(jobs, key=lambda j: -j.started)


def _alive(pid: int) -> bool:
    with _CHILDREN_LOCK:
        proc = _CHILDREN.get(pid)
    if proc is not None:
        return proc.poll() is None
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie (finished, not reaped by us) counts as dead
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return True


def _write_json(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(obj, indent=2))
    tmp.replace(path)
