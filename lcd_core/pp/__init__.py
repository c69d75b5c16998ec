"""Preprocessing: normalisation, quality control, gene selection and train/test splits.

- :func:`normalize_log1p`: the one definition of log1p CP10k.
- :func:`qc`, :func:`filter_conditions`: cell/gene QC with the papers' presets; conditions with enough cells.
- :func:`select_genes`: modelled genes by priority (targets, markers, dispersion).
- :func:`split_combinations`, :func:`explicit_split`, :func:`fold_split`: the combination protocol.
"""

from ._genes import select_genes
from ._normalize import normalize_log1p
from ._qc import QC_PRESETS, QCParams, cell_qc_metrics, filter_conditions, qc
from ._split import explicit_split, fold_split, split_combinations

__all__ = [
    "normalize_log1p",
    "qc",
    "QCParams",
    "QC_PRESETS",
    "cell_qc_metrics",
    "filter_conditions",
    "select_genes",
    "split_combinations",
    "explicit_split",
    "fold_split",
]
