"""What the Train page shows of a training, computed in lcd_core: one ETA over all stages, and the
loss of each stage on its own panel."""

from __future__ import annotations

import pandas as pd
import pytest

from lcd_core.pl import loss_curve
from lcd_core.train import overall_eta, stage_rates


def _log(stage1_done: int, stage2_done: int | None) -> list[dict]:
    """Stage 1 at 0.1 s/step (of 100), stage 2 at 0.5 s/step (of 1000)."""
    log, t = [{"event": "start", "time": 0.0}], 0.0
    for step in range(10, stage1_done + 1, 10):
        t = step * 0.1
        log.append({"event": "progress", "stage": "stage1", "step": step, "total": 100, "loss": 1000.0 - step, "time": t})
    if stage2_done is not None:
        log.append({"event": "stage_done", "stage": "stage1", "time": t})
        for step in range(100, stage2_done + 1, 100):
            log.append({"event": "progress", "stage": "stage2", "step": step, "total": 1000, "loss": 1.0 / step,
                        "time": t + step * 0.5})
    return log


TOTALS = {"stage1": 100, "stage2": 1000}


def test_stage_rates_are_seconds_per_step():
    assert stage_rates(_log(100, 500)) == pytest.approx({"stage1": 0.1, "stage2": 0.5})


def test_overall_eta_counts_every_stage_left():
    # in stage 1 (40 of 100 steps) with stage 2 timed on an earlier run: 60·0.1 + 1000·0.5
    eta, untimed = overall_eta(_log(40, None), TOTALS, rates={"stage2": 0.5})
    assert eta == pytest.approx(6.0 + 500.0) and untimed == []
    # without an earlier run stage 2 is not counted, and said so
    eta, untimed = overall_eta(_log(40, None), TOTALS)
    assert eta == pytest.approx(6.0) and untimed == ["stage2"]
    # in stage 2 (300 of 1000): only its own rate counts, stage 1 is done
    eta, untimed = overall_eta(_log(100, 300), TOTALS, rates={"stage2": 99.0})
    assert eta == pytest.approx(700 * 0.5) and untimed == []
    # before any timed report: no ETA
    assert overall_eta([{"event": "start", "time": 0.0}], TOTALS)[0] is None


def test_loss_curve_draws_each_stage_on_its_own_axis():
    hist = pd.DataFrame([r for r in _log(100, 1000) if r.get("event") == "progress"])
    fig = loss_curve(hist)
    assert [t.name for t in fig.data] == ["stage1 loss", "stage2 loss"]
    assert fig.data[0].yaxis != fig.data[1].yaxis  # separate panels: stage 2's small loss is not flattened
    assert fig.layout.legend.y < 0  # the legend sits below the plot, clear of the toolbar
    assert len(loss_curve(pd.DataFrame()).data) == 0
