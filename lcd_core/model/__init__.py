"""The user-facing model: the :class:`LCD` class, training presets, the training driver and run directories."""

from ._lcd import LCD, Prediction
from ._presets import PRESETS, TrainConfig, apply_overrides, get_preset
from ._run import RunDir
from ._causal import get_clipr, single_gene_conditions
from ._embedding import embedding_path, get_embedding
from ._evaluate import evaluate_folds, evaluate_run, summary_markdown, write_report
from ._fit import FIT_FILE, fit_report, read_fit
from ._train import resolve_split, train, validation_split

__all__ = ["LCD", "Prediction", "TrainConfig", "PRESETS", "get_preset", "apply_overrides", "RunDir", "train", "resolve_split",
           "get_clipr", "single_gene_conditions", "evaluate_run", "evaluate_folds", "summary_markdown", "write_report",
           "fit_report", "read_fit", "FIT_FILE", "validation_split", "get_embedding", "embedding_path"]
