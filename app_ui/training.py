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


def _stage_totals(run) -> dict[str, int]:
    """Steps of each training stage, in order, from the run's config.json (written when it starts)."""
    try:
        cfg = run.read_config().get("config") or {}
    except Exception:  # noqa: BLE001  (not written yet, or being written: no totals yet)
        return {}
    return {s: int(cfg[s]["steps"]) for s in ("stage1", "stage2") if isinstance(cfg.get(s), dict) and "steps" in cfg[s]}


def _earlier_rates(job: DetachedJob) -> tuple[dict[str, float], str | None]:
    """Seconds per step of each stage in the newest finished training of the same preset and device."""
    from lcd_core.model import RunDir
    from lcd_core.train import stage_rates

    for other in trainings():
        if other.name != job.name and other.state == "complete" and other.request.preset == job.request.preset \
                and other.request.device == job.request.device:
            rates = stage_rates(RunDir(other.out).read_log())
            if rates:
                return rates, other.name
    return {}, None


def training_progress(job: DetachedJob) -> dict:
    """Stage, step, total, loss, the ETAs (s) of the stage and of the whole training, and the loss
    history of a training, from its log.jsonl (stages not timed yet: the rate of an earlier run of the
    same preset, else left out and named in ``untimed``)."""
    from lcd_core.model import RunDir
    from lcd_core.train import last_progress, overall_eta

    run = RunDir(job.out)
    log = run.read_log()
    last, eta = last_progress(log)
    totals = _stage_totals(run)
    rates, rates_from = _earlier_rates(job) if job.state == "running" else ({}, None)
    total_eta, untimed = overall_eta(log, totals, rates=rates) if totals else (None, [])
    out = {"stage": None, "step": 0, "total": 0, "loss": None, "eta": eta, "eta_total": total_eta,
           "untimed": untimed, "rates_from": rates_from,
           "history": pd.DataFrame([r for r in log if r.get("event") == "progress"]), "tail": ""}
    if last is not None:
        out.update(stage=last.stage, step=last.step, total=last.total, loss=last.loss)
    out["tail"] = job.log_tail()
    return out


def eta_text(prog: dict) -> str:
    """One overall ETA for the progress line (all stages), saying what it does not count yet."""
    if prog.get("eta_total") is None:
        return f"ETA {fmt_seconds(prog.get('eta'))} (this stage)"
    if prog.get("untimed"):  # a lower bound: say which stages it leaves out
        return (f"ETA at least {fmt_seconds(prog['eta_total'])} for the whole training "
                f"({', '.join(prog['untimed'])} not timed yet)")
    text = f"ETA {fmt_seconds(prog['eta_total'])} for the whole training"
    if prog.get("rates_from") and prog.get("stage") != "stage2":
        text += f" (later stages timed on run {prog['rates_from']})"
    return text


def fmt_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
