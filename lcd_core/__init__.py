"""LCD Explorer's engine: latent causal diffusion (LCD) and CLIPR for Perturb-seq screens.

Subpackages, one concept each:

- :mod:`lcd_core.data`: reading and validating h5ad screens into a :class:`~lcd_core.data.Screen`
- :mod:`lcd_core.pp`: preprocessing (normalisation, QC, gene selection, splits)
- :mod:`lcd_core.simulation`: simulated screens with known causal truth
- :mod:`lcd_core.module`, :mod:`lcd_core.nn`, :mod:`lcd_core.train`: the model, its networks and its training loops
- :mod:`lcd_core.sampling`: samplers of the learned diffusion
- :mod:`lcd_core.clipr`: CLIPR (METHOD.md §4), paper and directed, and the cached read-out of a run
- :mod:`lcd_core.tl`: modules, enrichment, genetic interactions (and CLIPR's functions, re-exported)
- :mod:`lcd_core.metrics`, :mod:`lcd_core.baselines`: evaluation

The engine never imports streamlit.
"""

from __future__ import annotations

__version__ = "0.1.0"

from ._constants import KEYS, NORM_TARGET_SUM
from .errors import ConfigError, LCDError, RunError, ScreenContentError, ScreenFormatError

__all__ = [
    "KEYS",
    "NORM_TARGET_SUM",
    "LCDError",
    "ScreenFormatError",
    "ScreenContentError",
    "RunError",
    "ConfigError",
    "__version__",
]
