"""The :class:`Screen`: a validated, canonicalised Perturb-seq screen around an AnnData."""

from __future__ import annotations

from functools import cached_property
import hashlib
import os
from typing import Any, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._constants import KEYS
from ._conventions import parse_label
from ..errors import ConfigError, ScreenContentError, ScreenFormatError
from ._conventions import targets_of
from ._validate import ValueStats


def _plain(obj: Any) -> Any:
    """uns content as plain Python containers: string arrays become lists, dicts stay dicts."""
    if isinstance(obj, dict) or hasattr(obj, "items") and not isinstance(obj, (pd.DataFrame, pd.Series)):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.ndarray) and obj.dtype.kind in ("U", "S", "O"):
        return [_plain(v) for v in obj.tolist()]
    if isinstance(obj, bytes):
        return obj.decode()
    return obj


class Screen:
    """A Perturb-seq screen, checked and translated to our conventions.

    Build one with :func:`~lcd_core.data.read_screen` or :func:`~lcd_core.data.screen_from_anndata`,
    not directly.

    Attributes
    ----------
    adata
        The canonicalised AnnData: ``obs[KEYS.PERT]`` holds ``ctrl`` / ``A`` / ``A+B`` (genes of a
        combination sorted), the file's own label column is kept, ``var_names`` are unique gene
        symbols, raw counts (when present) stay where they were (``.X`` or ``layers[KEYS.COUNTS]``)
        and sparse CSR when the source was sparse. In backed mode ``.X`` stays on disk.
    path
        File the screen was read from, or ``None``.
    convention
        ``"lcd"``, ``"gears"``, ``"scperturb"`` or ``"explicit"``.
    is_counts
        True when raw non-negative integer counts were found (``.X`` or ``layers[KEYS.COUNTS]``) or
        recovered exactly from normalised values (then in ``layers[KEYS.COUNTS]``, see ``recovery``).
        False for other normalised files, which are accepted but never treated as counts.
    recovery
        The :class:`~lcd_core.data.CountRecovery` tried on a normalised ``.X`` (how the counts were
        recovered, or why not), or ``None`` when the file held counts.
    subset
        ``{obs column: value}`` of the context selected at reading (``subset=``), or ``None``.
    problems
        Non-fatal warnings found while reading (unmeasured targets, dropped conditions, ...).

    Examples
    --------
    >>> screen = read_screen("norman.h5ad")           # doctest: +SKIP
    >>> screen.conditions[:3], screen.is_counts      # doctest: +SKIP
    (['ctrl', 'AHR', 'AHR+FEV'], True)
    >>> y = screen.counts("AHR+FEV")                  # doctest: +SKIP
    """

    def __init__(
        self,
        adata: Any,
        *,
        path: str | None,
        convention: str,
        counts_where: str | None,
        stats: ValueStats,
        problems: list[str],
        file_stat: tuple[int, int] | None = None,
        recovery: Any = None,
        subset: dict[str, str] | None = None,
    ) -> None:
        self.adata = adata
        self.path = path
        self.convention = convention
        #: "X", a layer name, or None when the file holds no raw counts
        self._counts_where = counts_where
        self._stats = stats
        self.problems = list(problems)
        #: (size, mtime_ns) of the file when read: data_hash hashes the file lazily, if it is unchanged
        self._file_stat = file_stat
        self.recovery = recovery
        self.subset = dict(subset) if subset else None

    # ------------------------------------------------------------------ labels and conditions

    @property
    def is_counts(self) -> bool:
        return self._counts_where is not None

    @property
    def recovered(self) -> bool:
        """The counts were recovered from normalised values (and are in ``layers[KEYS.COUNTS]``)."""
        return self.recovery is not None and self.recovery.recovered and self._counts_where == KEYS.COUNTS

    @property
    def contexts(self) -> list:
        """obs columns that split the cells into contexts (:func:`~lcd_core.data.find_contexts`)."""
        from ._contexts import find_contexts

        return find_contexts(self.adata.obs)

    @property
    def genes(self) -> list[str]:
        """Gene symbols, in the order of the matrix columns."""
        return self.adata.var_names.tolist()

    @cached_property
    def _index(self) -> dict[str, np.ndarray]:
        # one stable sort of the integer codes instead of one boolean mask per condition
        labels = pd.Categorical(self.adata.obs[KEYS.PERT])
        codes = labels.codes
        order = np.argsort(codes, kind="stable")
        bounds = np.searchsorted(codes[order], np.arange(len(labels.categories) + 1))
        return {
            str(cat): order[bounds[i] : bounds[i + 1]]
            for i, cat in enumerate(labels.categories)
            if bounds[i + 1] > bounds[i]
        }

    @property
    def conditions(self) -> list[str]:
        """Canonical labels: control first, then the others sorted."""
        return [KEYS.CONTROL] + sorted(c for c in self._index if c != KEYS.CONTROL)

    @property
    def singles(self) -> list[str]:
        return [c for c in self.conditions if len(targets_of(c)) == 1]

    @property
    def combos(self) -> list[str]:
        """Conditions with two or more targets."""
        return [c for c in self.conditions if len(targets_of(c)) > 1]

    @property
    def n_cells(self) -> pd.Series:
        """Cells per condition (index: :attr:`conditions`)."""
        return pd.Series({c: len(self._index[c]) for c in self.conditions}, name="n_cells", dtype=int)

    def targets(self, condition: str) -> tuple[str, ...]:
        """Target genes of a condition; ``()`` for control."""
        self._check_condition(condition)
        return targets_of(condition)

    def cell_indices(self, condition: str) -> np.ndarray:
        """Row indices (sorted, int64) of the cells of ``condition``."""
        self._check_condition(condition)
        return self._index[condition]

    def _check_condition(self, condition: str) -> None:
        if condition not in self._index:
            import difflib

            close = difflib.get_close_matches(str(condition), list(self._index), n=5)
            raise ConfigError(
                f"unknown condition {condition!r}; close matches: {close or 'none'} "
                f"(labels are canonical: 'ctrl', 'A', 'A+B' with genes sorted)"
            )

    # ------------------------------------------------------------------ matrices

    def _rows(self, m: Any, condition: str | None) -> Any:
        if condition is None:
            return m if (sp.issparse(m) or isinstance(m, np.ndarray)) else m[:]
        return m[self.cell_indices(condition)]

    def _counts_matrix(self) -> Any:
        return self.adata.X if self._counts_where == "X" else self.adata.layers[self._counts_where]

    def counts(self, condition: str | None = None) -> np.ndarray:
        """Raw counts of one condition (or all cells), dense.

        ``condition=None`` densifies every cell: on large screens ask per condition.

        Returns
        -------
        (n_cells_in_condition, n_genes) float32 UMI counts.

        Raises
        ------
        ScreenContentError
            The screen holds no raw counts (log-normalised file).
        """
        if not self.is_counts:
            raise ScreenContentError(
                "this screen holds no raw counts (its values look normalised), so counts() is unavailable; "
                "use log1p() and train in the no-measurement-model mode, or load a file with raw UMI counts"
            )
        m = self._rows(self._counts_matrix(), condition)
        return (m.toarray() if sp.issparse(m) else np.asarray(m)).astype(np.float32, copy=False)

    def log1p(self, condition: str | None = None) -> np.ndarray:
        """log1p CP10k expression of one condition (or all cells), dense.

        Counts are normalised over this screen's genes with :func:`lcd_core.pp.normalize_log1p`; a
        screen without counts returns its stored (already normalised) values.

        Returns
        -------
        (n_cells_in_condition, n_genes) float32.
        """
        if self.is_counts:
            from ..pp._normalize import normalize_log1p

            m = normalize_log1p(self._rows(self._counts_matrix(), condition))
        else:
            m = self._rows(self.adata.X, condition)
        return (m.toarray() if sp.issparse(m) else np.asarray(m)).astype(np.float32, copy=False)

    def subset_genes(self, genes: Sequence[str]) -> Screen:
        """A new in-memory screen restricted to ``genes`` (in that order)."""
        genes = list(genes)
        known = set(self.adata.var_names)
        missing = [g for g in genes if g not in known]
        if missing:
            raise ConfigError(f"{len(missing)} gene(s) not in the screen: {missing[:10]}; pick from screen.genes")
        if len(set(genes)) != len(genes):
            raise ConfigError("subset_genes got duplicated gene names; pass each gene once")
        sub = self.adata[:, genes]
        sub = sub.to_memory() if getattr(sub, "isbacked", False) else sub.copy()
        from ._validate import value_stats

        m = sub.X if self._counts_where in (None, "X") else sub.layers[self._counts_where]
        return Screen(
            sub,
            path=self.path,
            convention=self.convention,
            counts_where=self._counts_where,
            stats=value_stats(m),
            problems=self.problems,
            recovery=self.recovery,
            subset=self.subset,
        )

    # ------------------------------------------------------------------ provenance

    @property
    def truth(self) -> dict | None:
        """The simulated truth stored in ``uns[KEYS.TRUTH]``, or ``None``."""
        t = self.adata.uns.get(KEYS.TRUTH)
        return None if t is None else _plain(t)

    @property
    def split(self) -> dict | None:
        """The split stored in ``uns[KEYS.SPLIT]`` (string arrays as lists, labels canonical: a stored
        ``B+A`` reads as ``A+B`` like the cells' own labels), or ``None``."""
        s = self.adata.uns.get(KEYS.SPLIT)
        if s is None:
            return None
        return {k: [parse_label(v) for v in val] if isinstance(val, list) else val for k, val in _plain(s).items()}

    @cached_property
    def data_hash(self) -> str:
        """sha256 hex of the file's bytes (read from a path) or of the content (labels, genes, values)."""
        if self._file_stat is not None and self.path is not None:
            # hashed on first use, not at read time: `lcd inspect` on a large file never pays for it
            try:
                now = os.stat(self.path)
            except OSError:
                raise ScreenFormatError(f"{self.path!r} is gone since it was read; read it again") from None
            if (now.st_size, now.st_mtime_ns) != self._file_stat:
                raise ScreenFormatError(f"{self.path!r} changed on disk since it was read; read it again")
            h = hashlib.sha256()
            with open(self.path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
            return h.hexdigest()
        h = hashlib.sha256()
        h.update(repr(tuple(self.adata.shape)).encode())
        h.update("\n".join(self.genes).encode())
        h.update("\n".join(self.adata.obs[KEYS.PERT].astype(str)).encode())
        m = self._counts_matrix() if self.is_counts else self.adata.X
        if not (sp.issparse(m) or isinstance(m, np.ndarray)):
            m = m[:]
        if sp.issparse(m):
            m = m.tocsr()
            m.sort_indices()
            for part in (m.indptr, m.indices, m.data):
                h.update(np.ascontiguousarray(part).tobytes())
        else:
            h.update(np.ascontiguousarray(m).tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ summaries

    def summary(self) -> dict:
        """Facts about the screen as plain Python values (what ``lcd inspect`` prints)."""
        n = self.n_cells
        others = n.drop(KEYS.CONTROL)
        st = self._stats
        n_obs, n_var = int(self.adata.n_obs), int(self.adata.n_vars)
        sim = self.adata.uns.get(KEYS.SIMULATED)
        return {
            "file": self.path,
            "n_cells": n_obs,
            "n_genes": n_var,
            "n_conditions": len(n),
            "n_control_cells": int(n[KEYS.CONTROL]),
            "n_singles": len(self.singles),
            "n_combos": len(self.combos),
            "cells_per_condition": {
                "min": int(others.min()) if len(others) else None,
                "median": float(others.median()) if len(others) else None,
                "max": int(others.max()) if len(others) else None,
                "smallest": {str(k): int(v) for k, v in others.sort_values().head(5).items()},
            },
            "control_fraction": float(n[KEYS.CONTROL] / n_obs) if n_obs else 0.0,
            "values": {
                "source": "recovered from .X" if self.recovered
                else (".X" if self._counts_where == "X" else f"layers[{self._counts_where!r}]")
                if self.is_counts
                else ".X",
                "is_counts": self.is_counts,
                "integer": bool(st.is_integer),
                "max": float(st.vmax),
                "mean_per_cell": float(st.total / n_obs) if n_obs else 0.0,
                "fraction_zero": float(st.fraction_zero),
            },
            "convention": self.convention,
            "simulated": sim is not None,
            "simulated_note": (str(sim) if not isinstance(sim, dict) else str(sim.get("note", sim))) if sim is not None else None,
            "truth_present": KEYS.TRUTH in self.adata.uns,
            "split_present": KEYS.SPLIT in self.adata.uns,
            "backed": bool(getattr(self.adata, "isbacked", False)),
            "count_recovery": self.recovery.to_dict() if self.recovery is not None else None,
            "subset": self.subset,
            "contexts": [{"key": c.key, "kind": c.kind, "counts": c.counts} for c in self.contexts],
            "problems": list(self.problems),
        }

    def format_summary(self) -> str:
        """:meth:`summary` as readable lines."""
        s = self.summary()
        cpc, v = s["cells_per_condition"], s["values"]
        smallest = ", ".join(f"{k} ({n})" for k, n in cpc["smallest"].items()) or "-"
        lines = [
            f"file:        {s['file'] or '(in memory)'}",
            f"cells:       {s['n_cells']:,}   genes: {s['n_genes']:,}",
            f"conditions:  {s['n_conditions']} = 1 control + {s['n_singles']} singles + {s['n_combos']} combinations",
            f"control:     {s['n_control_cells']:,} cells ({100 * s['control_fraction']:.1f} %)",
        ]
        if cpc["min"] is not None:
            lines.append(
                f"cells/cond.: min {cpc['min']}, median {cpc['median']:g}, max {cpc['max']}; smallest: {smallest}"
            )
        rec = self.recovery
        if self.recovered:
            lines.append(f"counts:      {rec.describe()}")
            lines.append(
                f"             max {v['max']:g}, mean {v['mean_per_cell']:.1f} UMIs/cell, "
                f"{100 * v['fraction_zero']:.1f} % zeros; trained with the count model"
            )
        elif v["is_counts"]:
            lines.append(
                f"counts:      raw integer counts in {v['source']}; max {v['max']:g}, "
                f"mean {v['mean_per_cell']:.1f} UMIs/cell, {100 * v['fraction_zero']:.1f} % zeros"
            )
        else:
            lines.append(
                f"values:      NOT raw counts (non-integer, max {v['max']:.3g}; looks log-normalised), "
                f"{100 * v['fraction_zero']:.1f} % zeros: use the no-measurement-model mode"
            )
            if rec is not None and rec.recovered:  # backed read: checked on a sample, not applied
                lines.append(f"counts:      {rec.describe(f'recoverable (checked on {rec.n_cells_checked:,} cells) from')}; "
                             "read without --backed to use them")
            elif rec is not None:
                lines.append(f"counts:      {rec.describe()}")
        if self.subset:
            lines.append("subset:      " + ", ".join(f"{k}={val}" for k, val in self.subset.items())
                         + f" ({s['n_cells']:,} cells)")
        lines.append(f"convention:  {s['convention']}")
        sim = f"yes ({s['simulated_note']})" if s["simulated"] else "no"
        lines.append(f"simulated:   {sim}; truth: {'yes' if s['truth_present'] else 'no'}; "
                     f"split: {'yes' if s['split_present'] else 'no'}")
        if s["problems"]:
            lines.append(f"problems ({len(s['problems'])}):")
            lines.extend(f"  - {p}" for p in s["problems"])
        else:
            lines.append("problems:    none found")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Screen({self.adata.n_obs} cells x {self.adata.n_vars} genes, {len(self.conditions)} conditions, "
            f"convention={self.convention!r}, is_counts={self.is_counts})"
        )
