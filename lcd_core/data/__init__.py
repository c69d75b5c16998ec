"""The data layer: reading, validating and writing Perturb-seq screens (``.h5ad``).

- :func:`read_screen` / :func:`screen_from_anndata`: a validated :class:`Screen` in our conventions
  (``obs["perturbation"]``: ``ctrl``, ``A``, ``A+B``), from ours, GEARS' or scPerturb's files.
- :func:`write_screen`: write a screen in any of those conventions.
- :func:`detect_convention`: which convention an obs table uses.
- :func:`recover_counts` / :class:`CountRecovery`: the integer counts behind log1p of per-cell-scaled
  counts (applied by :func:`read_screen`); :func:`to_file_space` writes generated counts back in a
  file's own convention.
- :func:`find_contexts` / :func:`subset_screen`: obs columns that split the cells into cell lines,
  cell types, datasets or batches, and selecting one.
- :func:`supported_pages`: which pages a screen supports before training, and why.
"""

from ._conventions import CONVENTIONS, Convention, canonical_label, detect_convention
from ._contexts import Context, check_pooling, contexts_in_file, find_contexts, subset_screen
from ._io import read_screen, screen_from_anndata, write_screen
from ._recovery import CountRecovery, file_space_record, recover_counts, to_file_space
from ._screen import Screen
from ._support import PageSupport, SupportReport, supported_pages

__all__ = [
    "Screen",
    "read_screen",
    "screen_from_anndata",
    "write_screen",
    "detect_convention",
    "canonical_label",
    "Convention",
    "CONVENTIONS",
    "CountRecovery",
    "recover_counts",
    "file_space_record",
    "to_file_space",
    "Context",
    "find_contexts",
    "subset_screen",
    "contexts_in_file",
    "check_pooling",
    "supported_pages",
    "SupportReport",
    "PageSupport",
]
