"""The one place that defines the conventions every other module uses.

Everything that names an AnnData slot, a label or a unit lives here, so a change of convention is a
one-line change (scvi-tools' ``REGISTRY_KEYS`` pattern).
"""

from __future__ import annotations

from typing import NamedTuple


class _Keys(NamedTuple):
    #: obs column holding the canonical perturbation label (``ctrl``, ``A``, ``A+B``)
    PERT: str = "perturbation"
    #: the canonical control label
    CONTROL: str = "ctrl"
    #: separator of genes in a combination label (``KLF1+CEBPA``)
    COMBO_SEP: str = "+"
    #: layer holding raw UMI counts when ``.X`` holds something else
    COUNTS: str = "counts"
    #: ``uns`` key holding the truth of a simulated screen
    TRUTH: str = "lcd_truth"
    #: ``uns`` key holding the held-out split shipped with a screen (e.g. the demo)
    SPLIT: str = "lcd_split"
    #: ``uns`` key marking a file as simulated, with a human-readable note
    SIMULATED: str = "lcd_simulated"
    #: ``uns`` flag; ``False`` declares ``.X`` to hold latent / normalised values that may be negative
    #: (the simulated linear-Gaussian screens of the paper's no-measurement-model protocol)
    IS_COUNTS: str = "lcd_is_counts"
    #: ``uns`` keys where preprocessing records what it removed
    QC: str = "lcd_qc"
    CONDITION_FILTER: str = "lcd_condition_filter"
    #: obs column of a screen whose counts were recovered from normalised values: ``counts =
    #: expm1(X) × size_factor`` per cell (lcd_core.data._recovery)
    SIZE_FACTOR: str = "lcd_size_factor"


KEYS = _Keys()

#: library size that counts are scaled to before ``log1p`` ("log1p CP10k")
NORM_TARGET_SUM: float = 1e4
