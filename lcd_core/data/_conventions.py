"""Perturbation-label conventions: detect which one a file uses and translate it to ours.

Three conventions are in common use for Perturb-seq screens:

============  ===============  ==========  ===========  ===================
name          obs column       control     single       combination
============  ===============  ==========  ===========  ===================
``lcd``       ``perturbation`` ``ctrl``    ``A``        ``A+B``
``gears``     ``condition``    ``ctrl``    ``A+ctrl``   ``A+B``
``scperturb`` ``perturbation`` ``control`` ``A``        ``A_B``
============  ===============  ==========  ===========  ===================

Ours (``lcd``) is canonical: genes of a combination are sorted, so ``A+B`` and ``B+A`` are one label.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
import re
from typing import Iterable

import numpy as np
import pandas as pd

from .._constants import KEYS
from ..errors import ConfigError, ScreenContentError

#: convention names accepted by :func:`write_screen` and reported by :attr:`Screen.convention`
CONVENTIONS = ("lcd", "gears", "scperturb")

#: obs columns tried, in order, when no ``perturbation_key`` is given
_KEY_CANDIDATES = (KEYS.PERT, "condition", "perturbation_name", "target_gene", "gene")
#: control labels recognised without a ``control_label`` flag (exact match, in this order)
_CONTROL_CANDIDATES = (KEYS.CONTROL, "control", "non-targeting", "non_targeting", "NT", "nontargeting")
#: var columns tried, in order, for gene symbols when var_names are Ensembl IDs
_SYMBOL_COLUMNS = ("gene_symbols", "gene_symbol", "gene_name", "gene_names", "symbol", "feature_name", "gene")
_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")
#: the original label column is kept under this name when the canonical one overwrites it
ORIGINAL_SUFFIX = "_original"


@dataclass(frozen=True)
class Convention:
    """How a file spells its perturbation labels.

    Attributes
    ----------
    name
        ``"lcd"``, ``"gears"``, ``"scperturb"`` or ``"explicit"`` (any flag was given).
    key
        obs column holding the labels.
    control_label
        Label of control cells.
    combo_sep
        Separator of the genes of a combination.
    """

    name: str
    key: str
    control_label: str
    combo_sep: str


def label_columns(obs: pd.DataFrame) -> list[str]:
    """Names of the string or categorical obs columns: the candidates for a perturbation column."""
    out = []
    for col in obs.columns:
        dtype = obs[col].dtype
        if isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(dtype) or dtype == object:
            out.append(str(col))
    return out


def detect_convention(
    obs: pd.DataFrame,
    *,
    perturbation_key: str | None = None,
    control_label: str | None = None,
    combo_sep: str | None = None,
) -> Convention:
    """Find the perturbation column, control label and combination separator of a screen.

    Explicit arguments win; whatever is left ``None`` is detected. The result is named ``"explicit"``
    when any argument was given.

    Raises
    ------
    ScreenContentError
        No perturbation column (the message lists the candidate columns) or no control cells (the
        message lists the most frequent labels).
    """
    explicit = any(v is not None for v in (perturbation_key, control_label, combo_sep))
    candidates = label_columns(obs)
    if perturbation_key is None:
        found = [k for k in _KEY_CANDIDATES if k in obs.columns and k in candidates]
        if not found:
            raise ScreenContentError(
                f"no perturbation column: none of {list(_KEY_CANDIDATES)} is in obs; candidate (text) "
                f"columns are {candidates[:20] or 'none'}; pass perturbation_key=<column> "
                "(CLI: --perturbation-key)"
            )
        key = found[0]
    else:
        if perturbation_key not in obs.columns:
            raise ScreenContentError(
                f"perturbation column {perturbation_key!r} is not in obs; candidate (text) columns are "
                f"{candidates[:20] or 'none'}; pass one of them as perturbation_key"
            )
        key = perturbation_key
    labels = obs[key].dropna().astype(str).str.strip()
    counts = Counter(labels)
    if control_label is None:
        control_label = next((c for c in _CONTROL_CANDIDATES if c in counts), None)
    if control_label is None or counts.get(control_label, 0) == 0:
        common = ", ".join(f"{lab!r} ({n})" for lab, n in counts.most_common(8))
        what = f"label {control_label!r}" if control_label is not None else f"any of {list(_CONTROL_CANDIDATES)}"
        raise ScreenContentError(
            f"no control cells: obs[{key!r}] has no {what}; most frequent labels: {common or 'none'}; "
            "pass control_label=<label of control cells> (CLI: --control-label)"
        )
    uniq = list(counts)
    gears_like = key == "condition" or any(
        lab.endswith("+" + KEYS.CONTROL) or lab.startswith(KEYS.CONTROL + "+") for lab in uniq
    )
    if combo_sep is None:
        # "ctrl" marks ours or GEARS, both "+"-joined: then "_" inside a label is part of a gene name
        if gears_like or control_label == KEYS.CONTROL or any(KEYS.COMBO_SEP in lab for lab in uniq):
            combo_sep = KEYS.COMBO_SEP
        elif control_label == "control" or any("_" in lab for lab in uniq):
            combo_sep = "_"
        else:
            combo_sep = KEYS.COMBO_SEP
    if explicit:
        name = "explicit"
    elif gears_like and combo_sep == KEYS.COMBO_SEP:
        name = "gears"
    elif combo_sep == "_" or control_label == "control":
        name = "scperturb"
    else:
        name = "lcd"
    return Convention(name=name, key=key, control_label=control_label, combo_sep=combo_sep)


def _segment(tokens: list[str], genes: set[str]) -> list[str] | None:
    """Split ``tokens`` (a label cut at every separator) into runs that each name a known gene.

    Needed for scPerturb labels, whose separator ``_`` may also occur inside a gene name. Returns the
    genes when exactly one segmentation exists, else ``None``.
    """
    n = len(tokens)
    # ways[i] = list of segmentations of tokens[i:], capped at 2 (only uniqueness matters)
    ways: list[list[list[str]]] = [[] for _ in range(n + 1)]
    ways[n] = [[]]
    for i in range(n - 1, -1, -1):
        for j in range(i + 1, n + 1):
            word = "_".join(tokens[i:j])
            if word in genes:
                for rest in ways[j]:
                    ways[i].append([word, *rest])
                    if len(ways[i]) > 1:
                        break
            if len(ways[i]) > 1:
                break
    return ways[0][0] if len(ways[0]) == 1 else None


def canonical_label(label: str, conv: Convention, genes: set[str] | frozenset[str] = frozenset()) -> str:
    """Translate one label to ours: ``ctrl``, ``A`` or ``A+B`` with the genes sorted.

    ``genes`` (the measured gene symbols) lets an ``_``-separated label be split correctly when a gene
    name itself contains ``_``.
    """
    label = str(label).strip()
    if label == conv.control_label:
        return KEYS.CONTROL
    if conv.combo_sep == "_" and label not in genes and "_" in label:
        parts = _segment(label.split("_"), set(genes)) or label.split("_")
    elif conv.combo_sep == "_" and label in genes:
        parts = [label]
    else:
        parts = label.split(conv.combo_sep)
    controls = {conv.control_label, KEYS.CONTROL}
    targets = sorted({p.strip() for p in parts if p.strip() and p.strip() not in controls})
    return KEYS.COMBO_SEP.join(targets) if targets else KEYS.CONTROL


def canonical_labels(raw: pd.Series, conv: Convention, genes: Iterable[str] = ()) -> pd.Series:
    """Vectorised :func:`canonical_label`: translates each distinct label once.

    Returns a categorical Series (same index); missing labels stay missing.
    """
    gene_set = frozenset(genes)
    as_str = raw.astype("object").where(raw.notna(), None)
    uniq = pd.unique(as_str.dropna().astype(str))
    mapping = {u: canonical_label(u, conv, gene_set) for u in uniq}
    out = as_str.map(lambda v: mapping.get(str(v)) if v is not None else None)
    return out.astype("category")


def targets_of(condition: str) -> tuple[str, ...]:
    """Target genes of a canonical label; ``()`` for control."""
    if condition == KEYS.CONTROL:
        return ()
    return tuple(condition.split(KEYS.COMBO_SEP))


def parse_label(label: str) -> str:
    """A user-typed perturbation (``" B + A "``) as a canonical label (``A+B``); control stays ``ctrl``.

    Raises
    ------
    ConfigError
        An empty gene (``A+``), or a gene named twice (``A+A``).
    """
    label = str(label).strip()
    if label == KEYS.CONTROL:
        return label
    parts = [p.strip() for p in label.split(KEYS.COMBO_SEP)]
    if any(not p for p in parts):
        raise ConfigError(f"malformed perturbation {label!r}: expected genes joined by '{KEYS.COMBO_SEP}', e.g. A+B")
    if len(set(parts)) != len(parts):
        raise ConfigError(f"perturbation {label!r} names a gene twice")
    return KEYS.COMBO_SEP.join(sorted(parts))


def to_convention(condition: str, convention: str) -> str:
    """Spell a canonical label in another convention (inverse of :func:`canonical_label`)."""
    targets = targets_of(condition)
    if convention == "lcd":
        return condition
    if convention == "gears":
        if not targets:
            return KEYS.CONTROL
        return KEYS.COMBO_SEP.join(targets) if len(targets) > 1 else f"{targets[0]}+{KEYS.CONTROL}"
    if convention == "scperturb":
        return "_".join(targets) if targets else "control"
    raise ConfigError(f"unknown convention {convention!r}; use one of {list(CONVENTIONS)}")


def looks_ensembl(names: Iterable[str]) -> bool:
    """True when most names look like Ensembl gene IDs (``ENSG00000123456``)."""
    names = [str(n) for n in names]
    if not names:
        return False
    return np.mean([bool(_ENSEMBL.match(n)) for n in names]) > 0.5


def resolve_gene_names(var: pd.DataFrame, var_names: pd.Index, gene_key: str | None) -> tuple[pd.Index, str | None]:
    """Gene symbols for the screen: ``var[gene_key]``, or auto-detected when var_names are Ensembl IDs.

    Returns
    -------
    names
        The symbols, one per gene (not yet checked for duplicates).
    used
        The var column they came from, or ``None`` for var_names.
    """
    if gene_key is not None:
        if gene_key not in var.columns:
            raise ScreenContentError(
                f"gene symbol column {gene_key!r} is not in var; var columns are {list(map(str, var.columns))[:20]}; "
                "pass one of them as gene_key, or leave it out to use var_names"
            )
        return pd.Index(var[gene_key].astype(str).str.strip(), name=None), gene_key
    if looks_ensembl(var_names[:2000]):
        for col in _SYMBOL_COLUMNS:
            if col in var.columns:
                return pd.Index(var[col].astype(str).str.strip(), name=None), col
    return pd.Index(var_names.astype(str), name=None), None
