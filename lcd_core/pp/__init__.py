"""Preprocessing: normalisation, quality control, gene selection and train/test splits.

- :func:`normalize_log1p`: the one definition of log1p CP10k.
- :func:`qc`, :func:`filter_conditions`: cell/gene QC with the papers' presets; conditions with enough cells.
- :func:`select_genes`: modelled genes by priority (targets, markers, dispersion);
  :func:`add_measured_targets`: keep the perturbed genes in a selection made elsewhere.
- :func:`split_combinations`, :func:`explicit_split`, :func:`fold_split`: the combination protocol;
  :func:`propose_heldout`: held-out doubles for a screen without a split, and why.
"""

from ._genes import add_measured_targets, select_genes
from ._normalize import normalize_log1p
from ._qc import QC_PRESETS, QCParams, cell_qc_metrics, filter_conditions, qc
from ._split import explicit_split, fold_split, propose_heldout, split_combinations

__all__ = [
    "normalize_log1p",
    "qc",
    "QCParams",
    "QC_PRESETS",
    "cell_qc_metrics",
    "filter_conditions",
    "select_genes",
    "add_measured_targets",
    "split_combinations",
    "explicit_split",
    "fold_split",
    "propose_heldout",
]
