"""What the pages show, computed by the engine in background jobs and cached: predicted cells, CLIPR,
the reference embedding, the fitted baselines, and small derived tables (:func:`memo`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import streamlit as st

from .jobs import jobs, run_job
from .state import _load_model, load_model, run_key, same_genes, settings

#: what the Perturb page samples until the user changes it: cells, seed, sampler budget (network evaluations)
PERTURB_DEFAULTS = {"n_cells": 300, "seed": 0, "n_evals": 32}


def _prediction_job(run_path, label: str, n_cells: int, seed: int, n_evals: int | None,
                    anchored: bool = False) -> tuple:
    """``(job key, job)`` sampling one label's cells: the one definition both the prefetch and the fetch use."""
    rk = run_key(run_path)
    model = _load_model(*rk)
    key = ("predict", rk, label, int(n_cells), int(seed), n_evals, bool(anchored))
    return key, (lambda: model.predict([label], n_cells=n_cells, seed=seed, n_evals=n_evals, anchored=anchored))


def prefetch_predictions(run_path: str | Path, labels, n_cells: int, seed: int, *, n_evals: int | None = None,
                         after: str | None = None, anchored: bool = False):
    """Queue sampling ``labels`` in the background (collected later with :func:`prediction`), one after
    the other, behind label ``after`` (submitted now if new). On a laptop's few cores, jobs running side by
    side each take as long as all of them together: queued, the cells the page shows first (``after``)
    arrive first, and the rest while the page draws them. Returns the last job queued."""
    prev = jobs().submit(*_prediction_job(run_path, after, n_cells, seed, n_evals, anchored), label="sampling cells") \
        if after is not None else None
    for label in labels:
        if label != after:
            prev = jobs().submit(*_prediction_job(run_path, label, n_cells, seed, n_evals, anchored), label="sampling cells",
                                 after=prev)
    return prev


def double_choices(model, screen) -> list[str]:
    """The doubles the Perturb page offers, held-out ones first (the first one is its default)."""
    from lcd_core.data._conventions import targets_of

    observed = set(screen.conditions) if same_genes(model, screen) else set()
    heldout = set(model.info.get("heldout", []))
    return sorted({c for c in [*observed, *heldout, *model.conditions] if len(targets_of(c)) == 2},
                  key=lambda c: (c not in heldout, c))


def warm_perturb(run_path: str | Path, model, screen) -> None:
    """Start sampling what the Perturb page shows first (its default double, control and the two singles),
    then fit the baselines it compares them with, while the user reads Home: the first Perturb visit then
    finds them ready instead of waiting ~2 s on a 2-core CPU. Jobs are shared, so nothing is done twice."""
    from lcd_core import KEYS
    from lcd_core.data._conventions import targets_of

    doubles = double_choices(model, screen)
    if not doubles:
        return
    first = doubles[0]
    n_cells, seed, n_evals = PERTURB_DEFAULTS["n_cells"], PERTURB_DEFAULTS["seed"], PERTURB_DEFAULTS["n_evals"]
    if model.info.get("sampler", "fast") != "fast":
        n_evals = None
    last = prefetch_predictions(run_path, (KEYS.CONTROL, *targets_of(first)), n_cells, seed, n_evals=n_evals,
                                after=first)
    if same_genes(model, screen):
        jobs("resources").submit(*_reference_job(run_path, screen), label="baselines", after=last)


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


def cells_later(run_path: str | Path, label: str, n_cells: int, seed: int, *, n_evals: int | None = None,
                anchored: bool = False) -> Callable[[], np.ndarray]:
    """A function that returns ``label``'s LCD cells, waiting for them (sampled in the background as by
    :func:`prediction`, submitted when called if need be). Callable from any thread (a deferred download),
    since the job table and the model are looked up here, in the script."""
    table = jobs()
    key, fn = _prediction_job(run_path, label, n_cells, seed, n_evals, anchored)

    def get() -> np.ndarray:
        return table.submit(key, fn, label="sampling cells").get().cells[label]

    return get


@st.cache_resource(show_spinner=False, max_entries=4)
def _ensemble(run: tuple[str, str], stamp: float):
    from lcd_core.model import Ensemble

    return Ensemble.load(run[0], _load_model(*run))


def ensemble(run_path: str | Path):
    """The run's ensemble of stage-2 networks (``lcd ensemble``), or ``None`` when it has none; reloaded
    when ``ensemble.json`` changes. A corrupt or mismatched one raises :class:`~lcd_core.LCDError`."""
    meta = Path(run_path) / "ensemble.json"
    if not meta.is_file():
        return None
    return _ensemble(run_key(run_path), meta.stat().st_mtime)


def intervals(run_path: str | Path, sources, label: str, control: np.ndarray, cells: np.ndarray, *, n_cells: int,
              seed: int, n_evals: int | None, anchored: bool, reference: str, generated_control: bool = False,
              wait: float = 1.0):
    """The prediction intervals of ``label``'s mean shifts (:func:`lcd_core.model.shift_intervals` with the
    run's :class:`~lcd_core.model.IntervalSources`: its ensemble and its fit check's calibration, as the
    page found them), computed in the background once per (run, label, settings, reference control); ``None``
    while running. ``control``: the reference control cells; ``generated_control``: they are the model's own,
    so their sampling error joins the interval."""
    from lcd_core.model import mean_se, shift_intervals

    models, calibration = sources.models, sources.calibration_for(label)
    key = ("intervals", run_key(run_path), label, int(n_cells), int(seed), n_evals, bool(anchored), reference,
           len(models), None if calibration is None else (len(calibration), calibration.held_out))
    control = np.asarray(control, dtype=np.float64)
    control_se = mean_se(control) if generated_control else None
    return run_job(key, lambda: shift_intervals(models, label, control.mean(0), n_cells=n_cells, seed=seed,
                                                n_evals=n_evals, anchored=anchored, cells=cells,
                                                calibration=calibration, control_se=control_se),
                   label="prediction intervals", what=f"Sampling {label} with the {len(models)} networks of the "
                   "ensemble", wait=wait)


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


def _reference_job(run_path: str | Path, screen) -> tuple:
    """``(job key, job)``: the mean perturbed training cell and every baseline fitted on the run's training
    conditions as the screen measures them (a shared job: Home's warm-up and the pages wait for the same)."""
    from lcd_core.model import training_reference
    from lcd_core.tl import fit_baselines

    model = load_model(run_path)

    def fit() -> tuple[np.ndarray, dict]:
        train_cells, perturbed_mean = training_reference(model, screen)
        return perturbed_mean, fit_baselines(train_cells, screen.genes)
    return ("training_reference", run_key(run_path), screen.data_hash), fit


def _training_reference(run_path: str | Path, screen) -> tuple[np.ndarray, dict]:
    return jobs("resources").submit(*_reference_job(run_path, screen), label="baselines").get()


def baselines(run_path: str | Path, screen) -> dict:
    """Every baseline, fitted on the run's training conditions as the screen measures them."""
    return _training_reference(run_path, screen)[1]


def train_perturbed_mean(run_path: str | Path, screen) -> np.ndarray:
    """``(d,)`` the reference of the Systema Pearson delta (:func:`lcd_core.model.training_reference`)."""
    return _training_reference(run_path, screen)[0]


@st.cache_data(max_entries=256, show_spinner=False)
def memo(key: tuple, _fn: Callable[[], Any]) -> Any:
    """Cache a small derived result (tables, scores) under an explicit key; ``_fn`` is not hashed."""
    return _fn()
