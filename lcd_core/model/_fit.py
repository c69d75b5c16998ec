"""The fit check of a run: does the model reproduce its own training conditions as well as the data allow?

``lcd train`` writes its result to ``fit.json`` in the run directory (PRODUCT.md, "A run directory");
``lcd fit`` recomputes it for an older run; Home says it in words.
"""

from __future__ import annotations


import numpy as np

from .._constants import KEYS
from ..data import Screen
from ..errors import ConfigError
from ..metrics import condition_rng, split_half, top_de_genes
from ..metrics._means import _pearson
from ..train import Progress, ProgressFn
from ._lcd import LCD

#: the file in the run directory
FIT_FILE = "fit.json"
FIT_FORMAT_VERSION = 1
#: a model reproduces a condition when its top-k shift correlation reaches this share of the replicate's
R_SHARE = 0.95
#: ... and its magnitude ratio lies in this band (widened to the split-half ratios' range where wider)
MAGNITUDE_BAND = (0.85, 1.15)
#: below this split-half correlation a condition has no reproducible top-k shift to reproduce
MIN_CEILING = 0.5

RULE = (f"A training condition is reproduced within replicate noise when its top-k shift correlation is at "
        f"least {R_SHARE:g} x the split-half ceiling (the mean correlation of one random half of its observed "
        f"cells with the other half) and its magnitude ratio lies in [{MAGNITUDE_BAND[0]:g}, {MAGNITUDE_BAND[1]:g}] "
        f"or inside the range of the split-half ratios where that is wider. A condition whose split-half "
        f"ceiling is below {MIN_CEILING:g} has no reproducible shift and is counted apart.")


def _shift_stats(pred_shift: np.ndarray, obs_shift: np.ndarray) -> tuple[float, float]:
    """Pearson correlation and norm ratio ``‖pred‖ / ‖obs‖`` of two ``(k,)`` shifts (NaN if undefined)."""
    norm_obs = float(np.linalg.norm(obs_shift))
    ratio = float(np.linalg.norm(pred_shift)) / norm_obs if norm_obs > 0 else float("nan")
    return _pearson(pred_shift, obs_shift), ratio


def fit_condition(pred: np.ndarray, obs: np.ndarray, control: np.ndarray, *, top: int = 20, n_splits: int = 10,
                  rng: np.random.Generator, validation: np.ndarray | None = None) -> dict:
    """Fit numbers of one condition: the prediction's top-``top`` shift against the replicate ceiling.

    Parameters
    ----------
    pred
        ``(n, d)`` predicted cells, log1p CP10k.
    obs
        ``(n', d)`` every observed cell of the condition (training and validation cells).
    control
        ``(n0, d)`` observed control cells.
    top
        Number of top DE genes (:func:`lcd_core.metrics.top_de_genes` of ``obs`` against ``control``).
    n_splits
        Random split halves the ceiling averages over.
    rng
        Draws the split halves.
    validation
        Optional boolean ``(n',)`` mask of the validation cells (never trained on).

    Returns
    -------
    dict: ``n_obs``, ``r`` (Pearson of predicted vs observed mean shift from the control mean over the
    top genes), ``magnitude`` (norm ratio), ``r_ceiling`` (mean split-half correlation) with
    ``r_ceiling_range``, ``magnitude_range`` (min and max split-half ratio), ``interval_pairs`` (the top
    genes' predicted and observed shifts: the prediction intervals' calibration), and with validation cells
    ``n_validation``, ``r_validation`` (prediction vs the validation cells' shift) and
    ``r_validation_ceiling`` (the training cells' mean shift vs the validation cells').
    """
    genes = top_de_genes(obs, control, k=top)
    ctrl = control[:, genes].mean(0)
    obs_g = obs[:, genes]
    pred_shift, obs_shift = pred[:, genes].mean(0) - ctrl, obs_g.mean(0) - ctrl
    r, magnitude = _shift_stats(pred_shift, obs_shift)
    reps = []
    for _ in range(n_splits):
        a, b = split_half(len(obs_g), rng)
        reps.append(_shift_stats(obs_g[a].mean(0) - ctrl, obs_g[b].mean(0) - ctrl))
    rep = np.array(reps, dtype=np.float64)
    out = {"n_obs": int(len(obs)), "r": r, "magnitude": magnitude,
           "r_ceiling": _nanmean(rep[:, 0]), "r_ceiling_range": _range(rep[:, 0]),
           "magnitude_range": _range(rep[:, 1]),
           # the prediction intervals' calibration (lcd_core.model._intervals.Calibration)
           "interval_pairs": {"predicted": [round(float(v), 5) for v in pred_shift],
                              "observed": [round(float(v), 5) for v in obs_shift]}}
    if validation is not None and validation.sum() >= 2 and (~validation).sum() >= 2:
        val_shift = obs_g[validation].mean(0) - ctrl
        out.update(n_validation=int(validation.sum()),
                   r_validation=_pearson(pred[:, genes].mean(0) - ctrl, val_shift),
                   r_validation_ceiling=_pearson(obs_g[~validation].mean(0) - ctrl, val_shift))
    return out


def verdict(entry: dict) -> tuple[str, str]:
    """``(status, why)`` of one condition under :data:`RULE`.

    status is ``"within"`` (within replicate noise), ``"outside"`` or ``"no_shift"`` (the data show no
    reproducible top-k shift).
    """
    r, ceiling, mag = entry["r"], entry["r_ceiling"], entry["magnitude"]
    if not np.isfinite(ceiling) or ceiling < MIN_CEILING:
        return "no_shift", f"split-half ceiling r {ceiling:.2f} < {MIN_CEILING:g}: no reproducible shift"
    lo = min(MAGNITUDE_BAND[0], entry["magnitude_range"][0])
    hi = max(MAGNITUDE_BAND[1], entry["magnitude_range"][1])
    problems = []
    if not (np.isfinite(r) and r >= R_SHARE * ceiling):
        problems.append(f"r {r:.2f} vs ceiling {ceiling:.2f}")
    if not (np.isfinite(mag) and lo <= mag <= hi):
        problems.append(f"magnitude {mag:.2f} outside [{lo:.2f}, {hi:.2f}]")
    if problems:
        return "outside", ", ".join(problems)
    return "within", f"r {r:.2f} vs ceiling {ceiling:.2f}, magnitude {mag:.2f}"


def summary_sentence(conditions: dict[str, dict], *, max_listed: int = 8) -> str:
    """``"reproduces 23 of 25 training conditions within replicate noise; not these 2: A (...), B (...)"``."""
    judged = {c: e for c, e in conditions.items() if e["status"] != "no_shift"}
    within = [c for c, e in judged.items() if e["status"] == "within"]
    outside = [c for c, e in judged.items() if e["status"] == "outside"]
    no_shift = [c for c, e in conditions.items() if e["status"] == "no_shift"]
    text = f"reproduces {len(within)} of {len(judged)} training conditions within replicate noise"
    if outside:
        shown = ", ".join(f"{c} ({conditions[c]['why']})" for c in outside[:max_listed])
        more = f" and {len(outside) - max_listed} more" if len(outside) > max_listed else ""
        text += f"; not {'this one' if len(outside) == 1 else f'these {len(outside)}'}: {shown}{more}"
    if no_shift:
        text += (f"; {len(no_shift)} condition{'s' if len(no_shift) > 1 else ''} without a reproducible "
                 f"shift in the data (split-half r < {MIN_CEILING:g}) not judged")
    return text


def fit_report(model: LCD, screen: Screen, *, conditions: list[str] | None = None,
               validation: dict[str, list[int]] | None = None, n_cells: int = 300, top: int = 20,
               n_splits: int = 10, seed: int = 0, anchored: bool = False,
               progress: ProgressFn | None = None) -> dict:
    """How well a trained model reproduces its training conditions, against the replicate ceiling.

    For every perturbed training condition the model generates ``n_cells`` cells; its mean shift from
    the observed control mean over the condition's top-``top`` DE genes (:func:`lcd_core.metrics.top_de_genes`)
    is compared with the observed one: Pearson ``r`` and magnitude ratio ``‖predicted‖ / ‖observed‖``.

    Which observed cells: the observed side is *all* of the condition's cells, the training cells and
    the validation cells together, so that the observed shift is as precise as the data allow (a
    magnitude ratio against a few validation cells would be inflated by their noise). The ceiling is
    the same two numbers for one random half of those cells against the other half, averaged over
    ``n_splits`` splits. This is a check of *fit* (the model saw most of these cells); the validation
    cells, never trained on, give a generalisation check beside it: ``r_validation`` (prediction vs the
    validation cells' shift) against ``r_validation_ceiling`` (the training cells' own mean shift vs
    the validation cells'). Held-out *conditions* are ``lcd evaluate``'s job.

    Parameters
    ----------
    model
        A trained :class:`LCD`.
    screen
        The screen it was trained on (same genes).
    conditions
        Conditions to check; default the model's training conditions measured in the screen (control
        is skipped: it has no shift).
    validation
        condition → indices of its validation cells (``config.json["validation"]["cells"]``).
    n_cells
        Cells generated per condition.
    top
        Number of top DE genes.
    n_splits
        Split halves of the ceiling.
    seed
        Seeds the prediction and the splits.
    anchored
        Check the anchored prediction (:mod:`lcd_core.model._anchor`) instead of LCD's own. Its singles'
        means are fitted to these very cells, so it reproduces them by construction: a check of the anchors,
        not of the model (``fit.json`` always checks LCD's own prediction).
    progress
        Called with a :class:`~lcd_core.train.Progress` (stage ``"fit"``, ``record["condition"]``) after
        each condition.

    Returns
    -------
    JSON-ready dict: ``format_version``, ``rule`` (:data:`RULE`), the settings, ``conditions``
    (condition → :func:`fit_condition` numbers + ``status`` and ``why`` of :func:`verdict`) and
    ``summary`` (counts, medians and ``sentence``).
    """
    from ._evaluate import check_screen_matches

    check_screen_matches(model, screen)
    measured = set(screen.conditions)
    if conditions is None:
        conditions = [c for c in model.conditions if c in measured]
    unknown = [c for c in conditions if c not in measured]
    if unknown:
        raise ConfigError(f"conditions not measured in the screen: {', '.join(unknown[:10])}")
    conditions = [c for c in conditions if c != KEYS.CONTROL]
    if not conditions:
        raise ConfigError("no perturbed training condition to check the fit on")
    if n_cells < 2 or top < 2 or n_splits < 1:
        raise ConfigError("fit_report needs n_cells >= 2, top >= 2 and n_splits >= 1")
    control = screen.log1p(KEYS.CONTROL).astype(np.float64)
    validation = validation or {}
    entries = {}
    for i, cond in enumerate(conditions):
        obs = screen.log1p(cond).astype(np.float64)
        pred = model.predict([cond], n_cells, seed=seed, anchored=anchored).cells[cond].astype(np.float64)
        mask = None
        if validation.get(cond):
            mask = np.zeros(len(obs), dtype=bool)
            mask[np.asarray(validation[cond], dtype=int)] = True
        entry = fit_condition(pred, obs, control, top=top, n_splits=n_splits, rng=condition_rng(seed, cond),
                              validation=mask)
        entry["status"], entry["why"] = verdict(entry)
        entries[cond] = entry
        if progress is not None:
            progress(Progress("fit", i + 1, len(conditions), {"condition": cond}))
    return {"format_version": FIT_FORMAT_VERSION, "rule": RULE, "top": top, "n_cells": n_cells,
            "n_splits": n_splits, "seed": seed, "anchored": anchored, "conditions": _jsonable(entries), "summary": _summary(entries)}


def _summary(entries: dict[str, dict]) -> dict:
    def med(key: str) -> float | None:
        v = np.array([e[key] for e in entries.values() if e["status"] != "no_shift"], dtype=np.float64)
        v = v[np.isfinite(v)]
        return float(np.median(v)) if v.size else None

    status = [e["status"] for e in entries.values()]
    return {"n_conditions": len(entries), "n_judged": sum(s != "no_shift" for s in status),
            "n_within": status.count("within"), "n_no_shift": status.count("no_shift"),
            "outside": [c for c, e in entries.items() if e["status"] == "outside"],
            "median_r": med("r"), "median_r_ceiling": med("r_ceiling"), "median_magnitude": med("magnitude"),
            "sentence": summary_sentence(entries)}


def _nanmean(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else float("nan")


def _range(v: np.ndarray) -> list[float]:
    v = v[np.isfinite(v)]
    return [float(v.min()), float(v.max())] if v.size else [float("nan"), float("nan")]


def _jsonable(obj):
    """NaN → None (JSON has no NaN), numpy scalars → floats."""
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def read_fit(run) -> dict | None:
    """The run's ``fit.json``, or ``None`` when it has none or it is unreadable (older runs)."""
    import json
    from pathlib import Path

    try:
        fit = json.loads((Path(run) / FIT_FILE).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(fit, dict) or not isinstance(fit.get("summary"), dict):
        return None
    return fit


def no_change_check(predicted: np.ndarray, observed: np.ndarray, control: np.ndarray, *, max_cells: int | None = 500,
                    seed: int = 0) -> dict:
    """Is a prediction further from its own observed cells than "no change" (the control cells) is?

    Parameters
    ----------
    predicted, observed, control
        ``(n, d)`` log1p CP10k cells of the prediction, the condition's measured cells and control.
    max_cells, seed
        Cells per set in MMD (:func:`lcd_core.metrics.mmd`, the Perturb metrics table's ``mmd``).

    Returns
    -------
    ``{"mmd_predicted", "mmd_control", "worse_than_no_change": bool, "sentence"}``: MMD² of the prediction
    and of the control cells against the observed cells, on all genes.
    """
    from ..metrics import mmd

    ours = mmd(predicted, observed, max_cells=max_cells, seed=seed)
    none = mmd(control, observed, max_cells=max_cells, seed=seed)
    worse = bool(ours > none)
    if worse:
        sentence = (f"the prediction is further from the observed cells than the control cells are (MMD² {ours:.3g} "
                    f"vs {none:.3g} for 'no change'): the model does not reproduce this condition")
    else:
        sentence = f"the prediction is closer to the observed cells than 'no change' (MMD² {ours:.3g} vs {none:.3g})"
    return {"mmd_predicted": ours, "mmd_control": none, "worse_than_no_change": worse, "sentence": sentence}


def condition_fit(fit: dict | None, condition: str, *, no_change: dict | None = None) -> dict:
    """Whether a run reproduces one condition: its ``fit.json`` verdict, and optionally the no-change check.

    Parameters
    ----------
    fit
        The run's fit report (:func:`read_fit`; ``None`` for a run without one).
    condition
        The condition shown.
    no_change
        :func:`no_change_check` of the shown prediction against the condition's observed cells; a prediction
        worse than no change is flagged whatever ``fit.json`` says.

    Returns
    -------
    ``{"status", "reproduced", "sentence"}``. ``status``: ``within`` / ``outside`` / ``no_shift`` (the fit
    check's, :func:`verdict`), ``worse_than_no_change``, ``not_checked`` (not a training condition of the
    check: held out or never measured) or ``no_fit`` (the run has no fit report). ``reproduced`` is
    ``True``, ``False`` or ``None`` (not judged).
    """
    entry = ((fit or {}).get("conditions") or {}).get(condition)
    if fit is None:
        status, ok, sentence = "no_fit", None, "this run has no fit report, so whether it reproduces its training conditions is unknown"
    elif entry is None:
        status, ok, sentence = "not_checked", None, (f"{condition} is not among the training conditions the fit check "
                                                     "judged (held out or not measured): its prediction is a generalisation")
    elif entry.get("status") == "within":
        status, ok, sentence = "within", True, f"the model reproduces {condition} within replicate noise ({entry.get('why', '')})"
    elif entry.get("status") == "outside":
        status, ok, sentence = "outside", False, (f"the model does not reproduce {condition}, a training condition, within "
                                                  f"replicate noise ({entry.get('why', '')}): read its prediction and "
                                                  "interaction class with care")
    else:
        status, ok, sentence = "no_shift", None, (f"{condition} shows no reproducible shift in the data "
                                                  f"(split-half r < {MIN_CEILING:g}): the fit check does not judge it")
    if no_change is not None and no_change.get("worse_than_no_change"):
        status, ok = "worse_than_no_change", False
        sentence = f"{condition}: {no_change['sentence']}" + ("" if entry is None else f"; fit check: {sentence}")
    return {"status": status, "reproduced": ok, "sentence": sentence[0].upper() + sentence[1:] + "."}
