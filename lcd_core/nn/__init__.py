"""Neural building blocks: plain backbones with no knowledge of noise levels or perturbations."""

from ._blocks import ResidualBlock, StackedLinear, StackedResidualBlock
from ._embeddings import SinusoidalEmbedding
from ._mlp import MLP

__all__ = ["MLP", "ResidualBlock", "SinusoidalEmbedding", "StackedLinear", "StackedResidualBlock"]
