"""A run's held-out evaluation, computed once and saved in its run directory (the Benchmark page's tables).

Scoring every held-out condition with LCD, the anchored prediction and four baselines takes 25 s on the
demo's 2-core CPU; every later request with the same inputs loads the saved result. The file is keyed by
everything that makes it: the run's weights, its anchors, the screen's bytes, the conditions, the cells,
the seed, the scoring settings and :data:`EVALUATION_VERSION` (bumped when the evaluation's code changes
what it returns), so a retrained run, another screen or changed code never reads a stale table.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ..data import Screen
from ..metrics import SCORING
from ._evaluate import evaluate_run, heldout_conditions
from ._lcd import LCD
from ._run import RunDir, atomic_write_bytes

#: bump when evaluate_run's rows or the calibration protocol's rows change for the same inputs
EVALUATION_VERSION = 2  # 2: a combination's anchored fit takes the coupled Newton step


def _plain(value):
    """numpy scalars as JSON numbers."""
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _anchors_digest(model: LCD) -> str | None:
    """The anchors' settings and values (refitted anchors change the anchored rows)."""
    a = model.anchors
    if a is None:
        return None
    h = hashlib.sha256(json.dumps([a.labels, a.settings], sort_keys=True).encode())
    for arr in (a.log_scale, a.gap):
        h.update(np.ascontiguousarray(arr, dtype=np.float32).tobytes())
    return h.hexdigest()


def evaluation_path(model: LCD, screen: Screen, *, n_cells: int, seed: int = 0) -> Path | None:
    """Where the run of ``model`` keeps its evaluation on ``screen`` (``None``: no run directory, or a run
    without the weights hash of a finished run)."""
    run = model.info.get("run")
    if not run:
        return None
    weights = RunDir(run).recorded_weights()
    if weights is None:
        return None
    key = {"version": EVALUATION_VERSION, "weights": weights, "data_hash": screen.data_hash,
           "conditions": heldout_conditions(model, screen), "n_cells": int(n_cells), "seed": int(seed),
           "scoring": asdict(SCORING), "sampler": model.info.get("sampler"),
           "anchors": _anchors_digest(model)}
    if model.guidance != 1.0:  # absent at 1 so that runs from before guidance keep their saved evaluation
        key["guidance"] = model.guidance
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return RunDir(run).cache / f"evaluation-{digest}.json"


def saved_evaluation(model: LCD, screen: Screen, *, n_cells: int = 200, seed: int = 0,
                     use_cache: bool = True) -> tuple[pd.DataFrame, list[dict]]:
    """:func:`~lcd_core.model.evaluate_run` of the run's held-out conditions, with its calibration rows:
    loaded from the run directory when saved there for these inputs, else computed and saved.

    Returns
    -------
    ``(per_condition, half_protocol)``: evaluate_run's table and the rows of its ``half_protocol`` list.
    A run directory that cannot be written (a read-only install) computes and keeps nothing.
    """
    path = evaluation_path(model, screen, n_cells=n_cells, seed=seed) if use_cache else None
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
            per, half = pd.DataFrame.from_records(saved["per_condition"]), list(saved["half_protocol"])
            if {"method", "condition"} <= set(per.columns) and len(per) and all(isinstance(h, dict) for h in half):
                return per, half
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
        # unreadable, torn or not ours: computed again and rewritten
    half: list[dict] = []
    per = evaluate_run(model, screen, n_cells=n_cells, seed=seed, half_protocol=half)
    if path is not None:
        # NaN stays NaN (Python's json reads what it writes); records keep the column order, integers stay integers
        text = json.dumps({"per_condition": per.to_dict(orient="records"), "half_protocol": half}, default=_plain)
        try:
            atomic_write_bytes(path, text.encode())
        except OSError:
            pass
    return per, half
