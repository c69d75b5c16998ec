"""A run's guidance weight changed after training (``lcd fit RUN --data SCREEN --guidance W``).

The weight (:func:`lcd_core.sampling.guided`) is a sampling setting: no network changes with it. What a
run derived from cells it generated does: the no-count mode's decoder (fitted on generated cells), the
anchored prediction's factors, the fit check with the intervals' training calibration (``fit.json``),
and the ensemble's cross-fit scores. :func:`set_guidance` records the new weight and makes each of those
again, as training at that weight would have; nothing is retrained. Runs trained before guidance existed
have weight 1; this is how they move to the current default.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..data import Screen
from ..sampling import check_guidance
from ..train import ProgressFn
from ._ensemble import Ensemble, score_crossfit
from ._fit import FIT_FILE, fit_report
from ._lcd import LCD
from ._run import MODEL_META, RunDir, atomic_write_json
from ._train import fit_decoder, fit_run_anchors, stage2_samples


def set_guidance(run: str | Path, screen: Screen, weight: float, *, progress: ProgressFn | None = None) -> LCD:
    """Make ``weight`` the run's guidance and redo what depends on it (module docstring).

    Parameters
    ----------
    run, screen
        A complete run directory and the screen it was trained on (checked by data hash and subset).
    weight
        The new weight (> 0; 1: the paper's sampling).
    progress
        Called with the fit check's :class:`~lcd_core.train.Progress` (stage ``"fit"``).

    Returns
    -------
    The run's :class:`LCD` at the new weight.

    Cost: one fit check (every training condition sampled once), the anchors' fit in count mode, the
    decoder's in no-count mode, and each cross-fitted ensemble member's left-out combinations.
    """
    check_guidance(weight)
    rd = RunDir(run)
    cfg, config, train_conds, held = rd.trained_from(screen, "its guidance is set against the screen it learned from")
    model = LCD.load(rd.path, device="cpu")
    model.info["guidance"] = float(weight)
    if model.decoder is not None:  # fitted on generated cells: the weight's cells
        observed = stage2_samples(screen, train_conds, held, config, None, counts_mode=False)[3]
        model.decoder = fit_decoder(model, train_conds, observed, seed=config.seed)
        model.save(rd)
        rd.mark_complete()  # the weights file changed with the decoder
    else:
        meta = json.loads((rd / MODEL_META).read_text())
        atomic_write_json(rd / MODEL_META, dict(meta, info=dict(meta.get("info", {}), guidance=float(weight))))
    if model.noise is not None:
        fit_run_anchors(model, screen, train_conds, rd, seed=config.seed)
    atomic_write_json(rd / FIT_FILE, fit_report(model, screen, conditions=train_conds, validation=held,
                                                seed=config.seed, progress=progress))
    ensemble = Ensemble.load(rd.path, model)
    if ensemble is not None and ensemble.heldout_calibration() is not None:
        ensemble.info["crossfit"] = score_crossfit(ensemble, model, screen, seed=config.seed)
        ensemble.save_meta(rd.path)
    rd.write_config(dict(cfg, config=dict(cfg["config"], guidance=float(weight))))
    return model
