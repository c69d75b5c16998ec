"""Evaluation metrics for predicted perturbation responses (METHOD.md §7).

All functions take NumPy arrays of normalised ``log1p`` CP10k expression, ``(n_cells, n_genes)``, so
the CLI, Ray workers and the app can call them without AnnData.
"""

from __future__ import annotations

from ._calibrated import (REPLICATE, calibrate, calibrated_score, calibrated_summary, condition_rng, split_half,
                          split_half_protocol)
from ._de import de_recovery, top_de_genes
from ._distribution import energy_distance, mmd, rbf_length_scales, wasserstein
from ._evaluate import (METRIC_LOWER_IS_BETTER, METRIC_MEANINGS, SCORING, SUMMARY_COLUMNS, Scoring,
                        evaluate_condition, lower_is_better, metric_legend, score_prediction, score_predictions,
                        summarize)
from ._means import pearson_delta, rmse
from ._winrate import WinRate, win_rate

__all__ = [
    "mmd",
    "energy_distance",
    "wasserstein",
    "rbf_length_scales",
    "rmse",
    "pearson_delta",
    "top_de_genes",
    "de_recovery",
    "win_rate",
    "WinRate",
    "evaluate_condition",
    "Scoring",
    "SCORING",
    "score_prediction",
    "score_predictions",
    "summarize",
    "lower_is_better",
    "METRIC_LOWER_IS_BETTER",
    "METRIC_MEANINGS",
    "SUMMARY_COLUMNS",
    "metric_legend",
    "REPLICATE",
    "split_half",
    "condition_rng",
    "split_half_protocol",
    "calibrated_score",
    "calibrate",
    "calibrated_summary",
]
