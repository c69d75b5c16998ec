"""The data layer: reading, validating and writing Perturb-seq screens (``.h5ad``).

- :func:`read_screen` / :func:`screen_from_anndata`: a validated :class:`Screen` in our conventions
  (``obs["perturbation"]``: ``ctrl``, ``A``, ``A+B``), from ours, GEARS' or scPerturb's files.
- :func:`write_screen`: write a screen in any of those conventions.
- :func:`detect_convention`: which convention an obs table uses.
"""

from ._conventions import CONVENTIONS, Convention, canonical_label, detect_convention
from ._io import read_screen, screen_from_anndata, write_screen
from ._screen import Screen

__all__ = [
    "Screen",
    "read_screen",
    "screen_from_anndata",
    "write_screen",
    "detect_convention",
    "canonical_label",
    "Convention",
    "CONVENTIONS",
]
