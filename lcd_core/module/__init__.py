"""Model modules, each with its loss: the ZIP measurement model (or, without counts, the zero-aware
decoder), the stage-1 generators and the
noise-conditional score network of stage 2 (METHOD.md §1–2)."""

from ._generator import StackedGenerators, tempered_evidence_loss
from ._normalised import QuantileDecoder
from ._noise import ZIPNoise, naive_latent_inverse, unit_scale_from_counts
from ._output import LossOutput
from ._score import ScoreNet, dsm_loss

__all__ = [
    "LossOutput",
    "QuantileDecoder",
    "ZIPNoise",
    "unit_scale_from_counts",
    "naive_latent_inverse",
    "StackedGenerators",
    "tempered_evidence_loss",
    "ScoreNet",
    "dsm_loss",
]
