"""The user-facing model: the :class:`LCD` class, training presets, the training driver and run directories."""

from ._lcd import LCD, Prediction
from .._settings import DEFAULT_PRESET, PRESET_NAMES
from ._presets import PRESETS, TrainConfig, apply_overrides, get_preset
from ._run import RunDir
from ..clipr import get_clipr, single_gene_conditions  # re-exported: CLIPR's home is lcd_core.clipr
from ._extrapolation import extrapolation_notes
from ._embedding import embedding_path, get_embedding
from ._evaluate import (cell_eval_anndata, evaluate_folds, evaluate_run, h5ad_bytes, heldout_conditions,
                        prediction_anndata, summary_markdown, training_reference, write_report)
from ._saved_evaluation import EVALUATION_VERSION, evaluation_path, saved_evaluation
from ._fit import FIT_FILE, condition_fit, fit_report, no_change_check, read_fit
from ._train import resolve_split, train, validation_split
from ._ensemble import DEFAULT_MEMBERS, Ensemble, fit_ensemble
from ._guidance import refit, set_guidance
from ._intervals import (Calibration, IntervalSources, calibration_from_fit, interval_coverage, mean_se,
                         shift_intervals)

__all__ = ["LCD", "Prediction", "TrainConfig", "PRESETS", "PRESET_NAMES", "DEFAULT_PRESET", "get_preset", "apply_overrides", "RunDir", "train", "resolve_split",
           "get_clipr", "single_gene_conditions", "evaluate_run", "evaluate_folds", "summary_markdown", "write_report",
           "training_reference", "fit_report", "read_fit", "FIT_FILE", "validation_split",
           "condition_fit", "no_change_check", "prediction_anndata", "cell_eval_anndata", "h5ad_bytes",
           "get_embedding", "embedding_path", "extrapolation_notes", "Ensemble", "fit_ensemble", "DEFAULT_MEMBERS",
           "set_guidance", "refit",
           "shift_intervals", "interval_coverage", "Calibration", "calibration_from_fit",
           "IntervalSources", "mean_se", "saved_evaluation", "evaluation_path", "EVALUATION_VERSION", "heldout_conditions"]
