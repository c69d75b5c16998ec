"""Where the app looks for things, what each session has chosen (screen, run), and the cached loaders
of screens, uploads and models.

``st.cache_resource`` holds shared, read-only objects (screens, models): nobody mutates them after
they are built.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # busy-waiting OpenMP threads starve shared CPUs

import streamlit as st

from lcd_core import LCDError

ROOT = Path(__file__).resolve().parents[1]


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
    threads: int  # LCD_APP_THREADS: torch threads of the server (default: every core but one, see share_cores)


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
        threads=_threads(os.environ.get("LCD_APP_THREADS")),
    )


def _threads(value: str | None) -> int:
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            raise LCDError(f"LCD_APP_THREADS={value!r} is not a number of threads") from None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores - 1)


def share_cores(threads: int) -> None:
    """Give torch ``threads`` threads in this server process. The browser that draws the pages usually runs on
    the same machine: with every core sampling cells, a new double's UMAP reached the screen later (2-core CPU,
    40 doubles each: median 1.72 s with 2 threads, 1.61 s with 1; whole page 2.23 → 1.79 s; docs/benchmarks.md).
    Trainings started from the app run in their own processes and keep every core."""
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)  # job threads started afterwards take it too


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
    options (``perturbation_key``, ``control_label``, ``combo_sep``: empty ones are auto-detected;
    ``subset``: a tuple of ``"key=value"`` contexts to keep)."""
    p = Path(path)
    if not p.is_file():
        raise LCDError(f"no file at {p}; check the path" if not p.exists() else f"{p} is a folder, not an .h5ad file")
    opts = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in (options or {}).items() if v))
    return _load_screen(str(p.resolve()), _stamp(p), opts)


@st.cache_data(show_spinner=False, max_entries=16)
def _file_contexts(path: str, stamp: tuple[int, int]) -> list:
    from lcd_core.data import contexts_in_file

    return contexts_in_file(path)


def file_contexts(path: str | Path) -> list:
    """The obs columns of an .h5ad file that split its cells into contexts (cell types, replicates…);
    ``[]`` when the file cannot be read (reading it reports why)."""
    p = Path(path)
    try:
        return _file_contexts(str(p.resolve()), _stamp(p))
    except (LCDError, OSError):
        return []


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
    """The shipped run of the screen (demo or real) if it fits, else the newest complete run trained on
    it, else the newest one that models the same genes; ``None`` when no run belongs to the screen."""
    runs = [r for r in list_runs() if r.complete]
    for fit in ("same screen", "same genes"):
        same = [r for r in runs if run_fits(r, screen) == fit]
        if same:
            return same[0].path
    return None


def run_key(path: str | Path) -> tuple[str, str]:
    """Cache key of a finished run: its path and the weights hash recorded in COMPLETE."""
    from lcd_core.model import RunDir

    p = Path(path)
    return str(p.resolve()), RunDir(p).recorded_weights() or ""


@st.cache_resource(show_spinner="Loading the model…", max_entries=4)
def _load_model(path: str, stamp: str):
    from lcd_core.model import LCD

    model = LCD.load(path, device="cpu")
    return model


def load_model(path: str | Path):
    return _load_model(*run_key(path))


def same_genes(model, screen) -> bool:
    return screen is not None and list(model.genes) == list(screen.genes)


def run_fits(run: RunInfo, screen) -> str:
    """How a run relates to a screen: ``"same screen"`` (trained on it), ``"same genes"`` (its genes,
    another file or context: predictions and comparisons work) or ``"other genes"``."""
    if screen is None:
        return "other genes"
    if run.data_hash is not None and run.data_hash == screen.data_hash:
        return "same screen"
    genes = run.config.get("genes") or []
    return "same genes" if list(map(str, genes)) == [str(g) for g in screen.genes] else "other genes"


def clear_screen() -> None:
    """Forget the session's screen and run (after a file that could not be read), so that no page
    shows the previous screen's numbers or model."""
    st.session_state["screen_path"] = None
    st.session_state["screen_options"] = {}
    st.session_state["run_path"] = None


# ------------------------------------------------------------------------------------------ session
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

