"""A run's sampling settings changed after training (``lcd fit RUN --data SCREEN --guidance W
--rate-calibration on|off``).

The guidance weight (:func:`lcd_core.sampling.guided`) is a sampling setting: no network changes with it. What
a run derived from cells it generated does: the no-count mode's decoder (fitted on generated cells), the count
model's rate calibration (:mod:`._calibration`), the anchored prediction's factors, the fit check with the
intervals' training calibration (``fit.json``), and the ensemble's cross-fit scores. :func:`refit` records the
new settings and makes each of those again, as training with them would have; nothing is retrained. Runs
trained before guidance existed have weight 1, and runs trained before the rate calibration have none; this
is how they move to the current defaults.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..data import Screen
from ..errors import ConfigError
from ..sampling import check_guidance
from ..train import ProgressFn
from ._calibration import NO_COUNT_MODEL
from ._ensemble import Ensemble, score_crossfit
from ._fit import FIT_FILE, fit_report
from ._lcd import LCD
from ._run import RunDir, atomic_write_json
from ._train import fit_decoder, fit_run_anchors, fit_run_calibration, stage2_samples


def refit(run: str | Path, screen: Screen, *, guidance: float | None = None, rate_calibration: bool | None = None,
          progress: ProgressFn | None = None) -> LCD:
    """Change a run's sampling settings and redo what depends on them (module docstring).

    Parameters
    ----------
    run, screen
        A complete run directory and the screen it was trained on (checked by data hash and subset).
    guidance
        The new weight (> 0; 1: the paper's sampling); ``None`` keeps the run's.
    rate_calibration
        [ours] Calibrate the count model's rates (:mod:`lcd_core.model._calibration`; ``False``: LCD's rates as
        stage 1 learned them); ``None`` keeps the run's setting. Runs with a count model only.
    progress
        Called with the fit check's :class:`~lcd_core.train.Progress` (stage ``"fit"``).

    Returns
    -------
    The run's :class:`LCD` with the new settings.

    Cost: one fit check (every training condition sampled once), the rate calibration's (once more) and the
    anchors' fits in count mode, the decoder's in no-count mode, and each cross-fitted ensemble member's
    left-out combinations.
    """
    if guidance is not None:
        check_guidance(guidance)
    rd = RunDir(run)
    cfg, config, train_conds, held = rd.trained_from(screen, "its sampling is refitted against the screen it learned from")
    model = LCD.load(rd.path, device="cpu")
    if rate_calibration is not None:
        if model.noise is None and rate_calibration:
            raise ConfigError(NO_COUNT_MODEL)
        config.rate_calibration = bool(rate_calibration)
    weight = model.guidance if guidance is None else float(guidance)
    model.info["guidance"] = weight
    if model.decoder is not None:  # fitted on generated cells: the weight's cells
        observed = stage2_samples(screen, train_conds, held, config, None, counts_mode=False)[3]
        model.decoder = fit_decoder(model, train_conds, observed, seed=config.seed)
    elif model.noise is not None:
        if config.rate_calibration:  # fitted on generated cells too
            fit_run_calibration(model, screen, train_conds, held, rd, seed=config.seed)
        else:
            with torch.no_grad():
                model.noise.log_calibration.zero_()
    model.save(rd)
    rd.mark_complete()  # the weights file changed with the decoder or the calibration
    if model.noise is not None:
        fit_run_anchors(model, screen, train_conds, rd, seed=config.seed)
    atomic_write_json(rd / FIT_FILE, fit_report(model, screen, conditions=train_conds, validation=held,
                                                seed=config.seed, progress=progress))
    ensemble = Ensemble.load(rd.path, model)
    if ensemble is not None and ensemble.heldout_calibration() is not None:
        ensemble.info["crossfit"] = score_crossfit(ensemble, model, screen, seed=config.seed)
        ensemble.save_meta(rd.path)
    rd.write_config(dict(cfg, config=dict(cfg["config"], guidance=weight, rate_calibration=config.rate_calibration)))
    return model


def set_guidance(run: str | Path, screen: Screen, weight: float, *, progress: ProgressFn | None = None) -> LCD:
    """Make ``weight`` the run's guidance and redo what depends on it: :func:`refit` with ``guidance=weight``."""
    return refit(run, screen, guidance=weight, progress=progress)
