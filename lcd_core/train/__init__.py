"""Training loops, one per stage; data-agnostic (arrays in, fitted modules out)."""

from .._progress import Progress, ProgressFn, last_progress, overall_eta, stage_rates
from ._sharded import ShardedStage1Result, fit_stage1_sharded
from ._stage1 import Stage1Config, Stage1Result, fit_stage1, standardize
from ._stage2 import Stage2Config, Stage2Result, fit_stage2

__all__ = ["Progress", "ProgressFn", "last_progress", "overall_eta", "stage_rates", "Stage1Config", "Stage1Result", "fit_stage1", "fit_stage1_sharded", "ShardedStage1Result", "standardize",
           "Stage2Config", "Stage2Result", "fit_stage2"]
