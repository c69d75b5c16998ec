"""Contexts: obs columns that split a screen's cells into cell lines, cell types, datasets, batches...

A file can hold several experiments (PerturBench's development file: the Norman K562 cells beside
CRISPRi cells of three glioblastoma lines). Pooling them would give one control distribution for four
cell lines. Detection is deliberately conservative: a column counts only when its name says what it is
(``cell_line``, ``cell_type``, ``dataset``, ``batch``, ``replicate``, ...), it is categorical (or a small
integer code such as ``gem_group``), and it has 2–:data:`MAX_VALUES` values with at least
:data:`MIN_CELLS` cells each. Conditioning on the context is out of scope: one is selected
(:func:`subset_mask`, ``--subset key=value``) or, for replicates and batches, they are pooled knowingly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
import os
import re
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError

#: normalised column name → (kind, plural noun). "biological": never pooled silently (training refuses);
#: "replicate": pooled by default, as replicates and batches of one experiment usually are
_NAMES: dict[str, tuple[str, str]] = {
    "cellline": ("biological", "cell lines"),
    "celltype": ("biological", "cell types"),
    "dataset": ("biological", "datasets"),
    "treatment": ("biological", "treatments"),
    "batch": ("replicate", "batches"),
    "replicate": ("replicate", "replicates"),
    "biologicalreplicate": ("replicate", "replicates"),
    "rep": ("replicate", "replicates"),
    "biorep": ("replicate", "replicates"),
    "techrep": ("replicate", "replicates"),
    "donor": ("replicate", "donors"),
    "sample": ("replicate", "samples"),
    "gemgroup": ("replicate", "GEM groups"),
    "origident": ("replicate", "samples"),
}
_SUFFIXES = ("id", "name", "label")
#: most values a context column may have (more: an identifier, not a context)
MAX_VALUES: int = 50
#: cells a value needs to count as a context
MIN_CELLS: int = 20


@dataclass(frozen=True)
class Context:
    """An obs column that splits the cells into contexts.

    Attributes
    ----------
    key
        The obs column.
    kind
        ``"biological"`` (cell lines, cell types, datasets, treatments: never pooled silently) or
        ``"replicate"`` (replicates, batches, donors, samples: pooled, with a check advised).
    noun
        What the values are, plural (``"cell types"``).
    counts
        value → number of cells, largest first.
    """

    key: str
    kind: str
    noun: str
    counts: dict[str, int]

    def _listing(self, n: int = 6) -> str:
        items = list(self.counts.items())
        text = ", ".join(f"{v}: {c:,}" for v, c in items[:n])
        return text + (f", ... ({len(items) - n} more)" if len(items) > n else "")

    def example(self) -> str:
        """``key=value`` of the largest context."""
        return f"{self.key}={next(iter(self.counts))}"

    def problem(self) -> str:
        """One line for ``Screen.problems`` / ``lcd inspect``."""
        head = f"obs[{self.key!r}] splits the cells into {len(self.counts)} {self.noun} ({self._listing()})"
        if self.kind == "biological":
            return (f"{head}; never pool them silently: pass --subset {self.example()} to use one "
                    "(training refuses to pool them without --pool-contexts)")
        return (f"{head}; training pools them, as usual for {self.noun}: check for batch effects "
                f"(or pass --subset {self.example()})")


def _normalised(name: str) -> str:
    s = re.sub(r"[^a-z0-9]", "", str(name).lower())
    for suffix in _SUFFIXES:
        if s.endswith(suffix) and s[: -len(suffix)] in _NAMES:
            return s[: -len(suffix)]
    return s


def find_contexts(obs: pd.DataFrame, *, min_cells: int = MIN_CELLS, max_values: int = MAX_VALUES) -> list[Context]:
    """obs columns that split the cells into more than one context (see the module docstring).

    Parameters
    ----------
    obs
        A cells' obs table.
    min_cells, max_values
        A column qualifies with 2..``max_values`` values, at least two of them with ``min_cells``
        cells, and those covering ≥ 95 % of the cells.

    Returns
    -------
    The contexts found, biological ones first, in column order otherwise.
    """
    found = []
    n = len(obs)
    for key in obs.columns:
        meaning = _NAMES.get(_normalised(key))
        if meaning is None:
            continue
        col = obs[key]
        dtype = col.dtype
        if not (isinstance(dtype, pd.CategoricalDtype) or pd.api.types.is_object_dtype(dtype)
                or pd.api.types.is_string_dtype(dtype) or pd.api.types.is_bool_dtype(dtype)
                or pd.api.types.is_integer_dtype(dtype)):
            continue  # a float column is a measurement, not a label
        counts = col.astype(str).where(col.notna()).value_counts()
        counts = counts[counts > 0]
        if not 2 <= len(counts) <= max_values:
            continue
        major = counts[counts >= min_cells]
        if len(major) < 2 or major.sum() < 0.95 * n:
            continue
        found.append(Context(key=str(key), kind=meaning[0], noun=meaning[1],
                             counts={str(v): int(c) for v, c in counts.items()}))
    return sorted(found, key=lambda c: c.kind != "biological")


def parse_subset(spec: str | Mapping | Sequence[str] | None) -> dict[str, str]:
    """``"key=value"`` (or several, or a mapping) → ``{key: value}``; ``None`` → ``{}``."""
    if spec is None:
        return {}
    if isinstance(spec, Mapping):
        return {str(k): str(v) for k, v in spec.items()}
    items = [spec] if isinstance(spec, str) else list(spec)
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"--subset takes key=value (an obs column and one of its values), got {item!r}")
        out[key.strip()] = value.strip()
    return out


def subset_mask(obs: pd.DataFrame, subset: str | Mapping | Sequence[str] | None) -> tuple[np.ndarray, dict[str, str]]:
    """Cells of ``obs`` in the selected context(s).

    A value matches exactly or, failing that, case-insensitively when only one value does so.

    Returns
    -------
    (mask, resolved): ``(n_cells,)`` bool and ``{key: value}`` as spelled in the file.

    Raises
    ------
    ConfigError
        An unknown column or value, with the choices.
    """
    wanted = parse_subset(subset)
    mask = np.ones(len(obs), dtype=bool)
    resolved = {}
    for key, value in wanted.items():
        if key not in obs.columns:
            ctx = [c.key for c in find_contexts(obs)]
            raise ConfigError(f"--subset {key}={value}: no obs column {key!r}; context columns: "
                              f"{', '.join(ctx) or 'none found'} (all columns: {', '.join(map(str, obs.columns[:20]))})")
        col = obs[key].astype(str).where(obs[key].notna())
        counts = col.value_counts()
        if value not in counts.index:
            close = [v for v in counts.index if v.lower() == value.lower()]
            if len(close) != 1:
                choices = ", ".join(f"{v} ({c:,})" for v, c in counts.head(20).items())
                raise ConfigError(f"--subset {key}={value}: no cells with that value; obs[{key!r}] holds {choices}"
                                  + (", ..." if len(counts) > 20 else ""))
            value = close[0]
        mask &= (col == value).to_numpy()
        resolved[key] = value
    return mask, resolved


def contexts_in_file(path: str | os.PathLike, *, subset: Any = None) -> list[Context]:
    """:func:`find_contexts` of an ``.h5ad`` file's obs (only obs is read), after ``subset``."""
    import anndata as ad
    import h5py

    from ._validate import check_file

    p = check_file(path)
    with h5py.File(p, "r") as fh:
        obs = ad.io.read_elem(fh["obs"])
    mask, _ = subset_mask(obs, subset)
    return find_contexts(obs.loc[mask])


def check_pooling(contexts: list[Context], *, pool: bool = False) -> None:
    """Refuse to train across biological contexts unless ``pool`` (``--pool-contexts``) says so.

    Raises
    ------
    ConfigError
        Naming the column, its values and the two ways out.
    """
    if pool:
        return
    for c in contexts:
        if c.kind == "biological":
            raise ConfigError(f"obs[{c.key!r}] splits the cells into {len(c.counts)} {c.noun} ({c._listing(4)}): "
                              f"training would pool them; pass --subset {c.example()} to train on one, or "
                              "--pool-contexts to pool them on purpose")


def subset_screen(screen: Any, subset: str | Mapping | Sequence[str]) -> Any:
    """A new in-memory :class:`~lcd_core.data.Screen` holding the cells of one context.

    Equivalent to reading with ``read_screen(..., subset=...)`` except that nothing is read or
    re-validated again: recovered counts and their size factors are sliced with the cells.

    Raises
    ------
    ConfigError
        An unknown column or value (with the choices).
    ScreenContentError
        The context has no control cells.
    """
    from .._constants import KEYS
    from ..errors import ScreenContentError
    from ._screen import Screen
    from ._validate import value_stats

    mask, chosen = subset_mask(screen.adata.obs, subset)
    labels = screen.adata.obs[KEYS.PERT].astype(str).to_numpy()
    if not (labels[mask] == KEYS.CONTROL).any():
        raise ScreenContentError(f"--subset {', '.join(f'{k}={v}' for k, v in chosen.items())} keeps "
                                 f"{int(mask.sum()):,} cells but no control cells; choose a context with controls")
    sub = screen.adata[mask]
    sub = sub.to_memory() if getattr(sub, "isbacked", False) else sub.copy()
    sub.obs[KEYS.PERT] = sub.obs[KEYS.PERT].astype(str).astype("category")
    where = screen._counts_where
    recovery = screen.recovery
    if recovery is not None and recovery.size_factors is not None:
        from dataclasses import replace

        recovery = replace(recovery, size_factors=np.asarray(recovery.size_factors)[mask])
    keys = set(chosen)
    # the context problems are those of the cells kept; the other problems stand
    stale = {c.problem() for c in screen.contexts}
    problems = [p for p in screen.problems if p not in stale] + [c.problem() for c in find_contexts(sub.obs)]
    m = sub.X if where in (None, "X") else sub.layers[where]
    return Screen(sub, path=screen.path, convention=screen.convention, counts_where=where,
                  stats=value_stats(m), problems=problems, recovery=recovery,
                  subset={**(screen.subset or {}), **chosen} if keys else screen.subset)
