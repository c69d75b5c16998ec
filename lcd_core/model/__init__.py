"""The user-facing model: the :class:`LCD` class, training presets, the training driver and run directories."""

from ._lcd import LCD, Prediction
from ._presets import PRESETS, TrainConfig, apply_overrides, get_preset
from ._run import RunDir
from ._train import resolve_split, train

__all__ = ["LCD", "Prediction", "TrainConfig", "PRESETS", "get_preset", "apply_overrides", "RunDir", "train", "resolve_split"]
