"""CLIPR: causal linearisation via perturbation responses (METHOD.md §4), in the order of its section.

- :class:`CliprOptions` and the defaults :data:`CLIPR` (defined in :mod:`lcd_core._settings`, torch-free)
- :mod:`._result`: :class:`CliprResult`, either variant's output
- :mod:`._fixed_points`: limit responses, the drift's fixed points (the sampler's noise-free annealed flow)
- :mod:`._paper`: the paper's estimator, initial responses and the ridge solve
- :mod:`._directed`: [ours] directed CLIPR, Lyapunov + on-target equations
- :mod:`._identify`: :func:`identifiability`, which edges the data decide (unresolved share per edge)
- :mod:`._confidence`: :func:`clipr_confidence`, bootstrap intervals, sign stability, shuffled-label null
- :mod:`._whatif`: the linear what-if of a soft intervention
- :mod:`._readout`: :func:`get_clipr`, CLIPR of a trained run, cached in its run directory under a key that
  includes :data:`ALGORITHM_VERSION`
"""

from ._directed import clipr_directed, clipr_directed_from_data, interventional_inversion
from ._identify import LABELS as IDENTIFIABILITY_LABELS, Identifiability, identifiability, label_of
from ._fixed_points import convergence_warning, fixed_points, limit_responses
from .._settings import CLIPR, DIRECTED_SOURCES, REF_POINTS, VARIANTS, CliprOptions, clipr_options
from ._paper import clipr_from_drift, clipr_paper
from ._readout import ALGORITHM_VERSION, cache_key, get_clipr, single_gene_conditions
from ._result import CliprResult
from ._confidence import CliprConfidence, bootstrap_directed, cached_confidence, clipr_confidence, null_directed
from ._whatif import MAX_RESPONSE_SD, singular_response, whatif_cells, whatif_drift_shift, whatif_shift

__all__ = [
    "CliprOptions", "CLIPR", "clipr_options", "ALGORITHM_VERSION", "VARIANTS", "DIRECTED_SOURCES", "REF_POINTS",
    "cache_key", "CliprResult",
    "fixed_points", "limit_responses", "convergence_warning",
    "clipr_paper", "clipr_from_drift",
    "clipr_directed", "clipr_directed_from_data", "interventional_inversion",
    "whatif_shift", "whatif_drift_shift", "whatif_cells", "singular_response", "MAX_RESPONSE_SD",
    "get_clipr", "single_gene_conditions",
    "identifiability", "Identifiability", "IDENTIFIABILITY_LABELS", "label_of",
    "clipr_confidence", "cached_confidence", "CliprConfidence", "bootstrap_directed", "null_directed",
]
