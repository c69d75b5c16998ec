"""UI-only helpers shared by app.py and pages/: settings, session state, cached loaders, the
background job runner, training processes, uploads and the sidebar frame.

Science lives in :mod:`lcd_core`; this module only wires it to Streamlit. Rules kept here:
- ``st.cache_resource`` holds shared, read-only objects (screens, models, embeddings, the job table);
  nobody mutates them after they are built.
- Long work (sampling, CLIPR, UMAP, evaluation) runs in worker threads of :class:`Jobs`; training runs
  in a separate process (``lcd train``) that outlives page reloads. Workers never call ``st.*``.
- When the interpreter exits (also after the server's SIGINT/SIGTERM, which Streamlit turns into a
  normal exit) :func:`stop_jobs` stops the workers first: a thread still inside torch while the C++
  runtime is torn down aborts the process ("terminate called without an active exception", status 134).
"""

from __future__ import annotations

import atexit
import ctypes
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads starve shared CPUs

import numpy as np
import pandas as pd
import streamlit as st

from lcd_core import KEYS, LCDError, __version__

ROOT = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Settings:
    """Where the app looks for things; each field can be set by an environment variable."""

    demo_screen: Path | None  # LCD_APP_DEMO_SCREEN: the embedded demo screen (default: lcd_core's)
    demo_run: Path  # LCD_APP_DEMO_RUN: the shipped demo run (default assets/demo_run)
    real_screen: Path  # LCD_APP_REAL_SCREEN: the shipped real screen (default assets/norman2019_k562_subset.h5ad)
    real_run: Path  # LCD_APP_REAL_RUN: its shipped run (default assets/norman_run)
    runs_dir: Path  # LCD_APP_RUNS: where the Train page writes runs (default runs/)
    embedding: str  # LCD_APP_EMBEDDING: "umap" (default) or "pca" (no numba compile; for quick checks)
    python: str  # interpreter that runs `lcd train` in the background


def settings() -> Settings:
    demo = os.environ.get("LCD_APP_DEMO_SCREEN")
    if demo is None:
        try:
            from lcd_core.simulation import demo_screen_path

            demo = str(demo_screen_path())
        except (ImportError, LCDError, OSError):
            fallback = ROOT / "assets" / "demo_screen.h5ad"
            demo = str(fallback) if fallback.exists() else None
    return Settings(
        demo_screen=Path(demo) if demo else None,
        demo_run=Path(os.environ.get("LCD_APP_DEMO_RUN", ROOT / "assets" / "demo_run")),
        real_screen=Path(os.environ.get("LCD_APP_REAL_SCREEN", ROOT / "assets" / "norman2019_k562_subset.h5ad")),
        real_run=Path(os.environ.get("LCD_APP_REAL_RUN", ROOT / "assets" / "norman_run")),
        runs_dir=Path(os.environ.get("LCD_APP_RUNS", ROOT / "runs")),
        embedding=os.environ.get("LCD_APP_EMBEDDING", "umap"),
        python=sys.executable,
    )


def upload_limit_mb() -> int:
    return int(st.get_option("server.maxUploadSize"))


# ------------------------------------------------------------------------------------------ errors
def show_error(e: BaseException, what: str = "") -> None:
    """An LCDError (bad input, missing run, ...) as a red box with its message; the page goes on."""
    prefix = f"{what}: " if what else ""
    if isinstance(e, LCDError):
        st.error(f"{prefix}{e}")
    else:  # a bug: say so, keep the traceback visible for the report
        st.error(f"{prefix}unexpected {type(e).__name__}: {e}")
        with st.expander("details"):
            st.code("".join(traceback.format_exception(e)))


# ------------------------------------------------------------------------------------------ screens
def _stamp(path: Path) -> tuple[int, int]:
    s = path.stat()
    return s.st_mtime_ns, s.st_size


@st.cache_resource(show_spinner="Reading the screen…", max_entries=8)
def _load_screen(path: str, stamp: tuple[int, int], options: tuple[tuple[str, str], ...]):
    from lcd_core.data import read_screen
    from lcd_core.data._validate import check_signal

    screen = read_screen(path, **dict(options))
    check_signal(screen)  # a screen without signal is refused (an LCDError), so the previous one stays in use
    return screen


def load_screen(path: str | Path, options: dict | None = None):
    """The validated :class:`~lcd_core.data.Screen` at ``path``, cached per file version and reading
    options (``perturbation_key``, ``control_label``, ``combo_sep``; empty ones are auto-detected)."""
    p = Path(path)
    if not p.exists():
        raise LCDError(f"no file at {p}; check the path")
    opts = tuple(sorted((k, v) for k, v in (options or {}).items() if v))
    return _load_screen(str(p.resolve()), _stamp(p), opts)


@st.cache_resource
def _upload_dir() -> str:
    # one temporary folder per server process; removed when the process exits
    d = tempfile.TemporaryDirectory(prefix="lcd_uploads_")
    _upload_dir.keep = d  # type: ignore[attr-defined]
    return d.name


def save_upload(uploaded, suffix: str = ".h5ad") -> Path:
    """Write an uploaded file into the temporary upload folder (name: content hash + safe name)."""
    name = Path(uploaded.name).name
    if not name.lower().endswith(suffix):
        what = "an AnnData file saved with .write_h5ad()" if suffix == ".h5ad" else f"a {suffix} file"
        raise LCDError(f"{name!r} is not a {suffix} file; upload {what} (a {suffix} extension)")
    data = uploaded.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    out = Path(_upload_dir()) / f"{digest}_{safe}"
    if not out.exists():
        tmp = out.with_name(out.name + ".part")
        tmp.write_bytes(data)
        tmp.replace(out)
    return out


# ------------------------------------------------------------------------------------------ runs
@dataclass
class RunInfo:
    path: Path
    name: str
    complete: bool
    status: str
    data_hash: str | None = None
    preset: str | None = None
    n_genes: int | None = None
    modified: float = 0.0
    config: dict = field(default_factory=dict, repr=False)


def list_runs() -> list[RunInfo]:
    """The shipped demo run and every run directory under the runs folder, newest first."""
    from lcd_core.model import RunDir
    from lcd_core.errors import RunError

    cfg = settings()
    shipped = {cfg.demo_run: "demo (shipped)", cfg.real_run: "Norman 2019 subset (shipped)"}
    candidates = list(shipped) + (sorted(p for p in cfg.runs_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
                                   if cfg.runs_dir.is_dir() else [])
    out = []
    for p in candidates:
        if not (p / "config.json").exists():
            continue
        run = RunDir(p)
        try:
            c = run.read_config()
            status = "complete" if run.is_complete() else str(c.get("status", "incomplete"))
        except RunError as e:
            c, status = {}, f"unreadable ({e})"
        name = shipped.get(p, p.name)
        out.append(RunInfo(path=p, name=name, complete=run.is_complete() and bool(c), status=status,
                           data_hash=c.get("data_hash"), preset=(c.get("config") or {}).get("preset"),
                           n_genes=len(c.get("genes", [])) or None, modified=(p / "config.json").stat().st_mtime,
                           config=c))
    first = [r for r in out if r.path in shipped]
    rest = sorted((r for r in out if r.path not in shipped), key=lambda r: -r.modified)
    return first + rest


def default_run(screen) -> Path | None:
    """The shipped run of the screen (demo or real) if it fits, else the newest complete run trained on it."""
    same = [r for r in list_runs() if r.complete and screen is not None and r.data_hash == screen.data_hash]
    return same[0].path if same else None


def run_key(path: str | Path) -> tuple[str, str]:
    """Cache key of a finished run: its path and the weights hash recorded in COMPLETE."""
    p = Path(path)
    try:
        stamp = json.loads((p / "COMPLETE").read_text()).get("weights_sha256", "")
    except (OSError, json.JSONDecodeError):
        stamp = ""
    return str(p.resolve()), stamp


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _load_model(path: str, stamp: str):
    from lcd_core.model import LCD

    model = LCD.load(path, device="cpu")
    return model


def load_model(path: str | Path):
    return _load_model(*run_key(path))


# ------------------------------------------------------------------------------------------ jobs
@dataclass
class Job:
    key: tuple
    label: str
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def ok(self) -> bool:
        return self.done.is_set() and self.error is None

    def wait(self, timeout: float | None) -> bool:
        return self.done.wait(timeout)


class _Shutdown(BaseException):
    """Raised inside a job's thread when the interpreter exits (a BaseException, so that no ``except
    Exception`` of the engine swallows it)."""


#: set once the interpreter is exiting: queued jobs do not start, running ones are stopped
_STOPPING = threading.Event()
#: the job threads ever started in this process (finished ones are dropped as they end)
_WORKERS: set[threading.Thread] = set()
_WORKERS_LOCK = threading.Lock()


def stop_jobs(timeout: float = 30.0) -> list[str]:
    """Stop the background job threads and wait for them; run at interpreter exit.

    Job code is the engine's (torch, numpy): it cannot be asked to stop, so each worker gets a
    :class:`_Shutdown` exception raised asynchronously, which Python delivers at the worker's next
    bytecode, i.e. as soon as the current torch / numpy call returns (sent again until the thread ends,
    in case it lands where it is caught). Queued jobs see :data:`_STOPPING` and never start.

    Returns
    -------
    Names of the threads still alive after ``timeout`` seconds (a single C call that long).
    """
    _STOPPING.set()
    me = threading.current_thread()
    deadline = time.monotonic() + timeout
    while True:
        with _WORKERS_LOCK:
            alive = [t for t in _WORKERS if t.is_alive() and t is not me]
        if not alive or time.monotonic() >= deadline:
            return [t.name for t in alive]
        for t in alive:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(_Shutdown))
        for t in alive:
            t.join(min(0.5, max(0.0, deadline - time.monotonic())))


atexit.register(stop_jobs)


class Jobs:
    """Background work shared by all sessions, keyed by what it computes (so two sessions asking the same
    question share one job, and different questions never see each other's results). Workers are daemon
    threads that never call ``st.*``; :func:`stop_jobs` stops them when the interpreter exits."""

    def __init__(self, max_results: int = 64):
        self._lock = threading.Lock()
        self._jobs: OrderedDict[tuple, Job] = OrderedDict()
        self._max = max_results

    def submit(self, key: tuple, fn: Callable[[], Any], label: str = "", *, after: Job | None = None) -> Job:
        """Start ``fn`` in a daemon thread unless a job under ``key`` exists (a failed one is retried only
        for unexpected errors). ``after``: a job this one waits for before it starts, so that work queued
        behind what the page shows first does not take the CPU from it."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not (job.done.is_set() and job.error is not None and not isinstance(job.error, LCDError)):
                self._jobs.move_to_end(key)
                return job
            job = Job(key=key, label=label)
            self._jobs[key] = job
            while len(self._jobs) > self._max:
                old_key, old = next(iter(self._jobs.items()))
                if not old.done.is_set():
                    break
                self._jobs.pop(old_key)

        def work():
            try:
                # waits in slices: an exception raised asynchronously (stop_jobs) is not seen inside a wait
                while after is not None and not after.wait(0.2):
                    if _STOPPING.is_set():
                        raise _Shutdown
                if _STOPPING.is_set():
                    raise _Shutdown
                job.result = fn()
            except BaseException as e:  # noqa: BLE001 - reported to the page, never raised in the worker
                job.error = e
            finally:
                job.finished = time.time()
                job.done.set()
                with _WORKERS_LOCK:
                    _WORKERS.discard(threading.current_thread())

        thread = threading.Thread(target=work, name=f"lcd-job-{label}", daemon=True)
        with _WORKERS_LOCK:
            _WORKERS.add(thread)
        thread.start()
        return job

    def get(self, key: tuple) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def running(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if not j.done.is_set()]


@st.cache_resource
def jobs(store: str = "predictions") -> Jobs:
    """The job table: ``"predictions"`` (many small results, least recently used dropped first) or
    ``"resources"`` (reference embeddings, CLIPR, evaluations: few, expensive, kept)."""
    return Jobs(max_results=64 if store == "predictions" else 32)


def run_job(key: tuple, fn: Callable[[], Any], *, label: str, wait: float = 2.0, what: str = "",
            store: str = "predictions") -> Any | None:
    """Submit (or find) a job and wait up to ``wait`` s; return its result, or ``None`` while it runs
    (a polling fragment then reruns the page when it is done). Errors are shown and give ``None``."""
    job = jobs(store).submit(key, fn, label=label)
    if not job.wait(wait):
        st.info(f"⏳ {what or label}: working in the background (started {time.time() - job.started:.0f} s ago); "
                "this page updates by itself.")
        _poll(key, store)
        return None
    if job.error is not None:
        show_error(job.error, what or label)
        return None
    return job.result


def _poll(key: tuple, store: str) -> None:
    @st.fragment(run_every=1.0)
    def poll():
        job = jobs(store).get(key)
        if job is None or job.done.is_set():
            st.rerun(scope="app")

    poll()


# ------------------------------------------------------------------------------------------ derived objects
def _prediction_job(run_path, label: str, n_cells: int, seed: int, n_evals: int | None,
                    anchored: bool = False) -> tuple:
    """``(job key, job)`` sampling one label's cells: the one definition both the prefetch and the fetch use."""
    rk = run_key(run_path)
    model = _load_model(*rk)
    key = ("predict", rk, label, int(n_cells), int(seed), n_evals, bool(anchored))
    return key, (lambda: model.predict([label], n_cells=n_cells, seed=seed, n_evals=n_evals, anchored=anchored))


def prefetch_predictions(run_path: str | Path, labels, n_cells: int, seed: int, *, n_evals: int | None = None,
                         after: str | None = None, anchored: bool = False) -> None:
    """Queue sampling ``labels`` in the background (collected later with :func:`prediction`), one after
    the other, behind label ``after`` (submitted now if new). On a laptop's few cores, jobs running side by
    side each take as long as all of them together: queued, the cells the page shows first (``after``)
    arrive first, and the rest while the page draws them."""
    prev = jobs().submit(*_prediction_job(run_path, after, n_cells, seed, n_evals, anchored), label="sampling cells") \
        if after is not None else None
    for label in labels:
        if label != after:
            prev = jobs().submit(*_prediction_job(run_path, label, n_cells, seed, n_evals, anchored), label="sampling cells",
                                 after=prev)


def prediction(run_path: str | Path, labels: tuple[str, ...], n_cells: int, seed: int, *,
               n_evals: int | None = None, wait: float = 2.0, anchored: bool = False) -> dict[str, np.ndarray] | None:
    """LCD cells (log1p CP10k) of each label, sampled in the background, one job per label: a label's
    cells depend only on (seed, label, sampler budget ``n_evals``; ``None``: the run's default), so control
    and singles are shared by every double that needs them. All jobs are submitted first, then awaited;
    ``None`` while any is still running."""
    pending = {}
    for label in labels:
        pending[label] = _prediction_job(run_path, label, n_cells, seed, n_evals, anchored)
        jobs().submit(*pending[label], label="sampling cells")
    out = {}
    for label, (key, fn) in pending.items():
        pred = run_job(key, fn, label="sampling cells", what=f"Sampling cells of {label}", wait=wait)
        if pred is None:
            return None
        out[label] = pred.cells[label]
        if pred.unseen:
            out.setdefault("_unseen", {}).update(pred.unseen)
    return out


def clipr(run_path: str | Path, variant: str, lam: float | None = None, *, wait: float = 2.0):
    """The run's CLIPR result (cached on disk by lcd_core, in memory here)."""
    from lcd_core.model import get_clipr

    key = ("clipr", run_key(run_path), variant, lam)
    model = load_model(run_path)
    return run_job(key, lambda: get_clipr(model, variant=variant, lam=lam if variant == "paper" else None),
                   label="CLIPR", what=f"Computing CLIPR ({variant})", wait=wait, store="resources")


def embedding(run_path: str | Path, screen, *, wait: float = 0.5):
    """The reference embedding of control + training cells: loaded from the run directory (saved by
    training), or fitted once and saved there."""
    from lcd_core.model import get_embedding

    method = settings().embedding
    key = ("embedding", run_key(run_path), screen.data_hash, method)
    model = load_model(run_path)
    return run_job(key, lambda: get_embedding(model, screen, method=method), label="reference embedding",
                   what=f"Fitting the reference {method.upper()} of control + training cells (once per run; "
                        "saved in the run directory)", wait=wait, store="resources")


@st.cache_resource(show_spinner="Fitting the baselines…", max_entries=4)
def _baselines(run: tuple[str, str], data_hash: str, _model, _screen) -> dict:
    from lcd_core.tl import fit_baselines

    train = {c: _screen.log1p(c) for c in _model.conditions if c in set(_screen.conditions)}
    return fit_baselines(train, _screen.genes)


def baselines(run_path: str | Path, screen) -> dict:
    return _baselines(run_key(run_path), screen.data_hash, load_model(run_path), screen)


@st.cache_data(max_entries=64, show_spinner=False)
def train_perturbed_mean(run: tuple[str, str], data_hash: str, _model, _screen) -> np.ndarray:
    means = [_screen.log1p(c).mean(0) for c in _model.conditions if c != KEYS.CONTROL and c in set(_screen.conditions)]
    return np.mean(means, axis=0) if means else _screen.log1p(KEYS.CONTROL).mean(0)


@st.cache_data(max_entries=256, show_spinner=False)
def memo(key: tuple, _fn: Callable[[], Any]) -> Any:
    """Cache a small derived result (tables, scores) under an explicit key; ``_fn`` is not hashed."""
    return _fn()


def provenance(screen, run_path: str | Path | None, **extra) -> dict:
    """What every export is stamped with: data set, run, seed, version (+ the call's parameters)."""
    prov = {"data_hash": getattr(screen, "data_hash", None), "data": str(getattr(screen, "path", "")),
            "run": str(run_path) if run_path else None, "version": __version__}
    if run_path:
        try:
            prov["seed"] = load_model(run_path).info.get("seed")
        except LCDError:
            pass
    prov.update(extra)
    return prov


# ------------------------------------------------------------------------------------------ training processes
def _jobs_dir() -> Path:
    d = settings().runs_dir / ".jobs"
    d.mkdir(parents=True, exist_ok=True)
    return d


@st.cache_resource
def _popen_handles() -> dict:
    # Popen objects of trainings started by this server (to reap them); a restarted server finds its
    # trainings again through the job files and their pids
    return {}


def start_training(screen_path: str | Path, name: str, *, preset: str = "demo", device: str = "auto",
                   backend: str = "local", ray_address: str | None = None, overrides: list[str] | None = None,
                   holdout: str | None = None, seed: int = 0, screen_options: dict | None = None) -> dict:
    """Start ``lcd train`` in its own process (own session: survives page reloads and is cancelled as a
    group). Returns the job record written to ``runs/.jobs/<name>.json``."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name or ""):
        raise LCDError("run names use letters, digits, '.', '_' and '-' (at most 64), e.g. demo-2")
    out = settings().runs_dir / name
    if (out / "COMPLETE").exists():
        raise LCDError(f"a finished run named {name!r} already exists; choose another name")
    for rec in training_jobs():
        if rec["name"] == name and rec["state"] == "running":
            raise LCDError(f"run {name!r} is already training")
    cmd = [settings().python, "-m", "lcd_core.cli", "train", str(screen_path), "--out", str(out), "--preset", preset,
           "--device", device, "--seed", str(int(seed)), "--backend", backend]
    if backend == "ray" and ray_address:
        cmd += ["--ray-address", ray_address]
    if holdout:
        cmd += ["--holdout-combos", holdout]
    for o in overrides or []:
        cmd += ["--set", o]
    for k, v in (screen_options or {}).items():  # how the screen was read on Home (perturbation_key, ...)
        if v:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    out.parent.mkdir(parents=True, exist_ok=True)
    log = _jobs_dir() / f"{name}.log"
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", PYTHONUNBUFFERED="1")
    with open(log, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=str(ROOT),
                                env=env, start_new_session=True)
    _popen_handles()[proc.pid] = proc
    rec = {"name": name, "pid": proc.pid, "out": str(out), "screen": str(screen_path), "preset": preset,
           "device": device, "backend": backend, "started": time.time(), "cmd": cmd, "cancelled": False}
    (_jobs_dir() / f"{name}.json").write_text(json.dumps(rec, indent=2))
    return rec


def _alive(pid: int) -> bool:
    proc = _popen_handles().get(pid)
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


def training_jobs() -> list[dict]:
    """Every training started from the app, with ``state`` (running / complete / cancelled / failed)."""
    d = settings().runs_dir / ".jobs"
    recs = []
    for f in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            rec = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (Path(rec["out"]) / "COMPLETE").exists():  # usable even while the process is still exiting
            rec["state"] = "complete"
        elif _alive(int(rec["pid"])):
            rec["state"] = "running"
        elif rec.get("cancelled"):
            rec["state"] = "cancelled"
        else:
            rec["state"] = "failed"
        recs.append(rec)
    return sorted(recs, key=lambda r: -r["started"])


def resume_options(rec: dict) -> dict:
    """The options of a recorded training (from its command line), to rerun it into the same folder,
    which `lcd train` resumes from its last checkpoint."""
    cmd, out = rec.get("cmd", []), {"overrides": [], "screen_options": {}}
    for flag, val in zip(cmd, cmd[1:]):
        if flag == "--set":
            out["overrides"].append(val)
        elif flag == "--seed":
            out["seed"] = int(val)
        elif flag == "--holdout-combos":
            out["holdout"] = val
        elif flag == "--ray-address":
            out["ray_address"] = val
        elif flag in ("--perturbation-key", "--control-label", "--combo-sep"):
            out["screen_options"][flag[2:].replace("-", "_")] = val
    return out


def cancel_training(name: str) -> None:
    f = _jobs_dir() / f"{name}.json"
    rec = json.loads(f.read_text())
    if _alive(int(rec["pid"])):
        try:
            os.killpg(int(rec["pid"]), signal.SIGTERM)  # its own session: the process and its children
        except ProcessLookupError:
            pass
        proc = _popen_handles().get(int(rec["pid"]))
        if proc is not None:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(int(rec["pid"]), signal.SIGKILL)
    rec["cancelled"] = True
    f.write_text(json.dumps(rec, indent=2))


def training_progress(rec: dict) -> dict:
    """Stage, step, total, loss, ETA (s) and the loss history of a training, from its log.jsonl."""
    from lcd_core.model import RunDir

    log = RunDir(rec["out"]).read_log()
    prog = [r for r in log if r.get("event") == "progress"]
    out = {"stage": None, "step": 0, "total": 0, "loss": None, "eta": None, "history": pd.DataFrame(prog),
           "tail": ""}
    if prog:
        last = prog[-1]
        out.update(stage=last.get("stage"), step=int(last.get("step", 0)), total=int(last.get("total", 0)),
                   loss=last.get("loss"))
        same = [r for r in prog if r.get("stage") == last.get("stage")]
        if len(same) >= 2 and same[-1]["step"] > same[0]["step"]:
            rate = (same[-1]["time"] - same[0]["time"]) / (same[-1]["step"] - same[0]["step"])
            out["eta"] = max(0.0, rate * (out["total"] - out["step"]))
    try:
        out["tail"] = (_jobs_dir() / f"{rec['name']}.log").read_text(errors="replace")[-1500:]
    except OSError:
        pass
    return out


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


# ------------------------------------------------------------------------------------------ session + frame
NAV = [("app.py", "Home", ":material/home:"), ("pages/1_Perturb.py", "Perturb", ":material/science:"),
       ("pages/2_Causal_graph.py", "Causal graph", ":material/hub:"), ("pages/3_Modules.py", "Modules", ":material/grid_view:"),
       ("pages/4_Train.py", "Train", ":material/model_training:"), ("pages/5_Benchmark.py", "Benchmark", ":material/leaderboard:")]


def init_state() -> None:
    """Per-session choices, initialised once: the screen (the demo by default) and the run."""
    ss = st.session_state
    if "screen_path" not in ss:
        demo = settings().demo_screen
        ss["screen_path"] = str(demo) if demo else None
        ss["screen_source"] = "demo"
    if "run_path" not in ss:
        ss["run_path"] = None
        try:
            scr = current_screen()
            run = default_run(scr) if scr is not None else None
            ss["run_path"] = str(run) if run else None
        except LCDError:
            pass


def current_screen():
    """The session's screen, or ``None``; raises LCDError when it cannot be read."""
    path = st.session_state.get("screen_path")
    return load_screen(path, st.session_state.get("screen_options")) if path else None


def current_run() -> str | None:
    """The session's run path when it still exists and is complete, else ``None``."""
    p = st.session_state.get("run_path")
    if p and (Path(p) / "COMPLETE").exists():
        return p
    return None


def page_setup(title: str, icon: str = "🧬", *, run_in_sidebar: bool = True) -> tuple[Any, str | None]:
    """Page config, session state and the sidebar (screen and run pickers). Returns (screen, run path);
    an unreadable screen is reported and gives ``None``."""
    st.set_page_config(page_title=f"{title} · LCD Explorer", page_icon=icon, layout="wide")
    init_state()
    screen = None
    try:
        screen = current_screen()
    except LCDError as e:
        st.sidebar.error(f"Screen: {e}")
    with st.sidebar:
        for target, label, icon in NAV:
            st.page_link(target, label=label, icon=icon)
        st.divider()
        st.caption(f"lcd-explorer {__version__}")
        if screen is not None:
            src = st.session_state.get("screen_source", "demo")
            st.markdown(f"**Screen** ({src}): `{Path(screen.path).name if screen.path else 'in memory'}`  \n"
                        f"{screen.adata.n_obs:,} cells · {screen.adata.n_vars} genes · {len(screen.conditions)} conditions")
        if run_in_sidebar:
            run_picker(screen, where="sidebar")
    return screen, current_run()


def run_picker(screen, *, where: str = "main") -> str | None:
    """Select box over complete runs (runs trained on this screen first); stores ``run_path``."""
    box = st.sidebar if where == "sidebar" else st
    runs = [r for r in list_runs() if r.complete]
    if screen is not None:
        runs.sort(key=lambda r: r.data_hash != screen.data_hash)
    if not runs:
        box.warning("No trained model yet: train one on the **Train** page (the demo preset takes minutes on a CPU).")
        st.session_state["run_path"] = None
        return None
    paths = [str(r.path) for r in runs]
    names = {str(r.path): r.name + ("" if screen is None or r.data_hash == screen.data_hash else " (other screen)")
             for r in runs}
    cur = st.session_state.get("run_path")
    index = paths.index(cur) if cur in paths else 0
    # no widget key: the value lives in session_state["run_path"], so it survives page switches
    choice = box.selectbox("Model (run)", paths, index=index, format_func=lambda p: names[p],
                           help="Runs in the runs/ folder and the shipped demo run. Train new ones on the Train page.")
    st.session_state["run_path"] = choice
    return choice


def require_model(screen, run_path: str | None):
    """The loaded model of the session's run, or ``None`` after explaining what to do."""
    if run_path is None:
        st.warning("No model is selected. Pick a run in the sidebar, or train one on the **Train** page "
                   "(the demo preset takes a few minutes on a laptop CPU).")
        st.page_link("pages/4_Train.py", label="Go to Train", icon=":material/model_training:")
        return None
    try:
        return load_model(run_path)
    except LCDError as e:
        show_error(e, "The model could not be loaded")
        return None


def same_genes(model, screen) -> bool:
    return screen is not None and list(model.genes) == list(screen.genes)


def csv_bytes(df: pd.DataFrame, *, sep: str = ",") -> bytes:
    """A table as plain CSV/TSV, header first (as lcd_core writes them): Excel, R and pandas open it as it is."""
    return df.to_csv(index=False, sep=sep).encode()


def provenance_button(prov: dict, file_name: str, *, key: str, where=None) -> None:
    """A download of the provenance of the tables beside it, named as the CLI's sidecar of ``file_name``
    (``effects.csv`` → ``effects.provenance.json``): a second, optional file rather than a zip, so the
    table itself still opens with a double click."""
    from lcd_core.tl import provenance_json, provenance_path

    text = provenance_json(json.loads(json.dumps(prov, default=str)))
    (where or st).download_button("Provenance (JSON)", text.encode(), provenance_path(file_name).name,
                                  "application/json", key=key,
                                  help="Data set hash, run, seed, package version and the settings behind the tables")
