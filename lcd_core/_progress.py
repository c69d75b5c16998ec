"""The one shape of a progress report: every loop (stage 1, stage 2, the fit check, the held-out
evaluation), the training driver, the backends' jobs, the CLI's bar and the app read a :class:`Progress`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class Progress:
    """One progress report.

    Attributes
    ----------
    stage
        ``"stage1"``, ``"stage2"``, ``"fit"`` (the fit check after training) or ``"evaluate"``; the
        backends' fold trainings prefix it (``"fold2/stage1"``).
    step, total
        Steps done and steps of the stage (conditions for ``"fit"`` and ``"evaluate"``).
    record
        The loop's history entry: ``loss``, ``lr``, ``seconds`` (of this slice), ``val_loss`` with
        validation cells, ``dropout_spread`` and ``shard`` when stage 1 runs in shards, ``condition`` for
        ``"fit"``/``"evaluate"``.
    """

    stage: str
    step: int
    total: int
    record: Mapping[str, Any] = field(default_factory=dict)

    @property
    def loss(self) -> float | None:
        return self.record.get("loss")

    @property
    def val_loss(self) -> float | None:
        return self.record.get("val_loss")

    def with_stage(self, stage: str) -> Progress:
        return replace(self, stage=stage)

    def with_record(self, **extra: Any) -> Progress:
        return replace(self, record={**self.record, **extra})


#: the callback every layer takes
ProgressFn = Callable[[Progress], None]


def progress_of(record: dict) -> Progress:
    """The :class:`Progress` event of one ``"progress"`` record of a run's ``log.jsonl``."""
    rest = {k: v for k, v in record.items() if k not in ("event", "stage", "step", "total", "time")}
    return Progress(str(record.get("stage")), int(record.get("step", 0)), int(record.get("total", 0)), rest)


def last_progress(log: list[dict]) -> tuple[Progress | None, float | None]:
    """The last progress report in a run's ``log.jsonl`` records and the ETA of its stage.

    Returns
    -------
    ``(progress, eta)``: the report (``None`` before the first) and the seconds left in its stage,
    from the logged wall times of that stage's reports (``None`` with fewer than two).
    """
    prog = [r for r in log if r.get("event") == "progress"]
    if not prog:
        return None, None
    p = progress_of(prog[-1])
    rate = stage_rates(log).get(p.stage)
    return p, None if rate is None else max(0.0, rate * (p.total - p.step))


def stage_rates(log: list[dict]) -> dict[str, float]:
    """Seconds per step of each stage of a run's ``log.jsonl`` records, from the wall times of its
    progress reports (stages with fewer than two timed reports are left out)."""
    by_stage: dict[str, list[dict]] = {}
    for r in log:
        if r.get("event") == "progress" and "time" in r:
            by_stage.setdefault(str(r.get("stage")), []).append(r)
    out = {}
    for stage, rows in by_stage.items():
        if len(rows) >= 2 and rows[-1]["step"] > rows[0]["step"]:
            out[stage] = (rows[-1]["time"] - rows[0]["time"]) / (rows[-1]["step"] - rows[0]["step"])
    return out


def overall_eta(log: list[dict], totals: Mapping[str, int], *,
                rates: Mapping[str, float] | None = None) -> tuple[float | None, list[str]]:
    """Seconds left in a whole training: every stage of ``totals`` (in order), not only the current one.

    Parameters
    ----------
    log
        The run's ``log.jsonl`` records so far.
    totals
        Steps of each stage, in training order (``{"stage1": 250, "stage2": 5000}``: the run's
        config.json).
    rates
        Seconds per step to assume for a stage that has not been timed yet in this run (e.g.
        :func:`stage_rates` of an earlier run of the same preset); a stage timed in ``log`` uses its
        own rate.

    Returns
    -------
    ``(eta, untimed)``: seconds left (``None`` before the first timed report) and the stages left whose
    time is unknown (not counted, so ``eta`` is then a lower bound).
    """
    own = stage_rates(log)
    done: dict[str, int] = {}
    for r in log:
        if r.get("event") == "progress":
            done[str(r.get("stage"))] = int(r.get("step", 0))
        elif r.get("event") == "stage_done":
            done[str(r.get("stage"))] = int(totals.get(str(r.get("stage")), 0))
    if not own:
        return None, [s for s in totals if done.get(s, 0) < totals[s]]
    eta, untimed = 0.0, []
    for stage, total in totals.items():
        left = max(int(total) - done.get(stage, 0), 0)
        if not left:
            continue
        rate = own.get(stage, (rates or {}).get(stage))
        if rate is None:
            untimed.append(stage)
        else:
            eta += rate * left
    return eta, untimed
