"""Training loops, one per stage; data-agnostic (arrays in, fitted modules out)."""

from ._stage1 import Stage1Config, Stage1Result, fit_stage1, standardize
from ._stage2 import Stage2Config, Stage2Result, fit_stage2

__all__ = ["Stage1Config", "Stage1Result", "fit_stage1", "standardize", "Stage2Config", "Stage2Result", "fit_stage2"]
