"""Tools on a trained model's output: CLIPR (paper and directed), the linear what-if, functional
modules, enrichment, genetic interactions, recovery scores and exports (METHOD.md §4–6)."""

from ._clipr import CliprResult, clipr_from_drift, clipr_paper, limit_responses
from ._directed import clipr_directed, clipr_directed_from_data, interventional_inversion
from ._embedding import ReferenceEmbedding, fit_reference_embedding, reference_cells
from ._enrichment import bh_adjust, enrich_modules, read_gmt
from ._export import effects_long, provenance_json, provenance_path, write_effects_csv, write_graphml, write_modules_tsv
from ._explore import (baseline_predictions, compare_methods, double_interaction, fit_baselines,
                       gene_shift_table, whatif_cells, whatif_drift_shift)
from ._fixed_points import fixed_points
from ._interactions import DEFAULT_THRESHOLDS, classify_interactions, distance_correlation, interaction_from_cells, interaction_scores
from ._modules import UNASSIGNED, ModuleResult, find_modules
from ._recovery import causal_recovery, sign_auroc, sign_macro_f1
from ._whatif import whatif_shift

__all__ = [
    "CliprResult", "clipr_paper", "clipr_from_drift", "limit_responses",
    "clipr_directed", "clipr_directed_from_data", "interventional_inversion",
    "fixed_points", "whatif_shift",
    "ModuleResult", "find_modules",
    "read_gmt", "enrich_modules", "bh_adjust",
    "interaction_scores", "classify_interactions", "DEFAULT_THRESHOLDS", "interaction_from_cells", "distance_correlation",
    "effects_long", "write_effects_csv", "write_modules_tsv", "write_graphml", "provenance_path", "provenance_json",
    "sign_auroc", "sign_macro_f1", "causal_recovery", "UNASSIGNED",
    "ReferenceEmbedding", "fit_reference_embedding", "reference_cells",
    "whatif_drift_shift", "whatif_cells", "gene_shift_table", "double_interaction", "fit_baselines",
    "compare_methods", "baseline_predictions",
]
