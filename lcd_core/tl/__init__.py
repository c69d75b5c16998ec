"""Tools on a trained model's output: functional modules, enrichment, genetic interactions, recovery
scores and exports (METHOD.md §5–6), and CLIPR's array-level functions re-exported from
:mod:`lcd_core.clipr` (their home, METHOD.md §4), where scripts and the pages find them."""

from ..clipr import (CliprResult, clipr_directed, clipr_directed_from_data, clipr_from_drift, clipr_paper,
                     fixed_points, interventional_inversion, limit_responses, whatif_cells, whatif_drift_shift,
                     singular_response, whatif_shift)
from ._embedding import ReferenceEmbedding, fit_reference_embedding, reference_cells
from ._enrichment import bh_adjust, enrich_modules, read_gmt
from ._export import (effects_long, graphml_bytes, module_downloads, provenance_json, provenance_path, write_effects_csv,
                      write_graphml, write_modules_tsv)
from ._explore import baseline_predictions, compare_methods, double_interaction, fit_baselines, gene_shift_table
from ._gi import interaction_map, interaction_shifts
from ._graph_view import READABLE_EDGES, edge_counts, readable_gene, top_k_threshold
from ._interactions import (DEFAULT_THRESHOLDS, INTERACTION_CLASSES, INTERACTION_COLUMNS, classify_interactions,
                            distance_correlation, interaction_from_cells, interaction_scores)
from ._modules import UNASSIGNED, ModuleResult, find_modules, module_agreement, module_names, module_table, truth_gene_sets
from ._response import gene_response_table
from ._recovery import causal_recovery, edge_precision_recall, sign_auroc, sign_macro_f1

__all__ = [
    "READABLE_EDGES",
    "edge_counts",
    "readable_gene",
    "top_k_threshold",
    "CliprResult", "clipr_paper", "clipr_from_drift", "limit_responses",
    "clipr_directed", "clipr_directed_from_data", "interventional_inversion",
    "fixed_points", "whatif_shift",
    "ModuleResult", "find_modules", "module_names", "module_table", "module_agreement", "truth_gene_sets",
    "read_gmt", "enrich_modules", "bh_adjust",
    "interaction_scores", "classify_interactions", "DEFAULT_THRESHOLDS", "interaction_from_cells", "distance_correlation",
    "INTERACTION_COLUMNS", "INTERACTION_CLASSES", "interaction_shifts", "interaction_map", "gene_response_table",
    "effects_long", "write_effects_csv", "write_modules_tsv", "write_graphml", "graphml_bytes", "module_downloads", "provenance_path", "provenance_json",
    "sign_auroc", "sign_macro_f1", "causal_recovery", "edge_precision_recall", "UNASSIGNED",
    "ReferenceEmbedding", "fit_reference_embedding", "reference_cells",
    "whatif_drift_shift", "whatif_cells", "singular_response", "gene_shift_table", "double_interaction", "fit_baselines",
    "compare_methods", "baseline_predictions",
]
