"""Trainings started from the app: :func:`lcd_core.backends.submit_detached` jobs in ``runs/.jobs``, so
they outlive page reloads and server restarts, and a restarted server lists them again."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from lcd_core._settings import DEFAULT_PRESET
from lcd_core.backends import DetachedJob, TrainRequest, list_detached, submit_detached

from .state import ROOT, settings


def jobs_dir() -> Path:
    return settings().runs_dir / ".jobs"


def _process_env() -> dict:
    return dict(os.environ, OMP_WAIT_POLICY="PASSIVE")


def start_training(screen_path: str | Path, name: str, *, preset: str = DEFAULT_PRESET, device: str = "auto",
                   backend: str = "local", ray_address: str | None = None, overrides: list[str] | None = None,
                   holdout: str | None = None, seed: int = 0, screen_options: dict | None = None) -> DetachedJob:
    """Start ``lcd train`` into ``runs/<name>`` in its own process; ``screen_options``: how the screen
    was read on Home (``perturbation_key``, ..., and ``subset``: the ``"key=value"`` contexts chosen)."""
    read = {k: v for k, v in (screen_options or {}).items() if v}
    subset = tuple(read.pop("subset", ()) or ())
    request = TrainRequest(screen=str(screen_path), out=str(settings().runs_dir / (name or "")), preset=preset,
                           device=device, backend=backend, ray_address=ray_address, holdout=holdout, seed=int(seed),
                           overrides=tuple(overrides or ()),
                           read_options=read, subset=subset)
    return submit_detached(request, jobs_dir=jobs_dir(), name=name, python=settings().python, env=_process_env(),
                           cwd=ROOT)


def resume_training(job: DetachedJob) -> DetachedJob:
    """Start a cancelled or failed training again: it continues from its last checkpoint."""
    return job.resume(python=settings().python, env=_process_env(), cwd=ROOT)


def trainings() -> list[DetachedJob]:
    """Every training started from the app, newest first (``job.state``: running / complete / cancelled /
    failed)."""
    return list_detached(jobs_dir())


def training_progress(job: DetachedJob) -> dict:
    """Stage, step, total, loss, ETA (s) and the loss history of a training, from its log.jsonl."""
    from lcd_core.model import RunDir
    from lcd_core.train import last_progress

    log = RunDir(job.out).read_log()
    last, eta = last_progress(log)
    out = {"stage": None, "step": 0, "total": 0, "loss": None, "eta": eta,
           "history": pd.DataFrame([r for r in log if r.get("event") == "progress"]), "tail": ""}
    if last is not None:
        out.update(stage=last.stage, step=last.step, total=last.total, loss=last.loss)
    out["tail"] = job.log_tail()
    return out


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
