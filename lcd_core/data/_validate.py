"""Checks that turn a bad screen into a one-line error naming the problem and the fix.

Every check works on sparse, dense and backed (on-disk) matrices in chunks, so a 100k-cell x 30k-gene
file is checked without ever densifying it.

(Over 400 lines on purpose: every refusal policy of a screen lives here, so one file answers "why was my
file refused?".)

Policy (decided here, documented in :func:`lcd_core.data.read_screen`):

- file not found / empty / not HDF5 / truncated or corrupt → :class:`ScreenFormatError`;
- missing perturbation column, no control cells, negative / NaN / infinite values, duplicated gene
  names, non-integer values in what is claimed to be counts → :class:`ScreenContentError`;
- non-integer values in ``.X`` with no counts layer → accepted, flagged (log-normalised file);
- target genes not measured → a warning in ``Screen.problems`` (CRISPRa targets may be unmeasured),
  an error with ``strict=True``;
- conditions below ``min_cells`` → error naming them, or dropped with ``drop_small=True``;
- no signal (every value zero, a condition whose cells are all zero, every gene constant) → listed by
  :func:`signal_problems`, refused by :func:`check_signal` where a screen is used for training or opened
  in the app (``read_screen`` itself still returns it, so ``lcd inspect`` can show what it holds).
"""

from __future__ import annotations

from dataclasses import dataclass
import os
from pathlib import Path
from typing import Any, Iterator

import h5py
import numpy as np
import pandas as pd
import scipy.sparse as sp

from .._constants import KEYS
from ..errors import ScreenContentError, ScreenFormatError

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
#: values read per chunk (~64 MiB of float32): bounds the extra memory of every check
_CHUNK = 1 << 24


def _sniff(head: bytes) -> str:
    """A short guess of what a non-HDF5 file is, for the error message."""
    if head.startswith(b"\x89PNG"):
        return "a PNG image"
    if head.startswith(b"\xff\xd8\xff"):
        return "a JPEG image"
    if head.startswith(b"PK\x03\x04"):
        return "a ZIP archive (a zarr store or .xlsx?)"
    if head.startswith(b"\x1f\x8b"):
        return "a gzip file (decompress it first)"
    if head.startswith(b"%PDF"):
        return "a PDF"
    if head.startswith(b"\x80") or head.startswith(b"PAR1"):
        return "a pickle or parquet file"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "a binary file of unknown type"
    first = text.splitlines()[0] if text.splitlines() else ""
    if "," in first or "\t" in first:
        return "a text table (CSV/TSV)"
    return "a text file"


def check_file(path: str | os.PathLike) -> Path:
    """Check that ``path`` is a non-empty HDF5 file before handing it to anndata.

    Raises
    ------
    ScreenFormatError
        Not found, a directory, empty, or not HDF5 (the message guesses what it is).
    """
    p = Path(path).expanduser()
    if not p.exists():
        rel = "" if p.is_absolute() else f" (relative to {os.getcwd()!r})"
        raise ScreenFormatError(f"file not found: {str(p)!r}{rel}; check the path")
    if p.is_dir():
        raise ScreenFormatError(
            f"{str(p)!r} is a directory, not an .h5ad file; a zarr store must be converted with "
            "anndata.read_zarr(...).write_h5ad(...)"
        )
    size = p.stat().st_size
    if size == 0:
        raise ScreenFormatError(f"{str(p)!r} is empty (0 bytes); the download or copy did not finish: fetch it again")
    with open(p, "rb") as fh:
        head = fh.read(512)
    if not head.startswith(_HDF5_MAGIC):
        raise ScreenFormatError(
            f"{str(p)!r} is not an .h5ad (HDF5) file: it looks like {_sniff(head)}; convert it to AnnData and "
            "save it with adata.write_h5ad(...)"
        )
    return p


def open_h5ad(path: Path, *, backed: bool) -> Any:
    """Open a checked file with anndata, turning any failure into a :class:`ScreenFormatError`."""
    import anndata as ad

    try:
        with h5py.File(path, "r") as fh:
            keys = set(fh.keys())
    except Exception as exc:  # h5py raises OSError with many different texts for damaged files
        raise ScreenFormatError(
            f"{str(path)!r} is truncated or corrupt (HDF5 could not open it: {str(exc).splitlines()[0][:120]}); "
            "fetch or copy the file again"
        ) from None
    if "obs" not in keys or "var" not in keys:
        raise ScreenFormatError(
            f"{str(path)!r} is HDF5 but not AnnData (top-level groups: {sorted(keys)[:10]}); save the screen "
            "with anndata's write_h5ad"
        )
    try:
        return ad.read_h5ad(path, backed="r" if backed else None)
    except Exception as exc:
        msg = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ScreenFormatError(
            f"{str(path)!r} is truncated or corrupt (anndata could not read it: {msg}); fetch or copy the file again"
        ) from None


# --------------------------------------------------------------------------------------------- values


@dataclass
class ValueStats:
    """Summary of a matrix's values, computed in chunks.

    Attributes
    ----------
    shape
        (n_cells, n_genes).
    n_stored
        Entries visited: nnz for sparse, n_cells*n_genes for dense.
    n_nonzero
        Entries that are non-zero (explicit zeros of a sparse matrix do not count).
    n_nan, n_inf, n_negative
        Entries of each kind.
    vmin, vmax
        Extremes over finite entries (implicit zeros of a sparse matrix included).
    is_integer
        All finite entries are whole numbers.
    example_noninteger
        One non-integer value, for messages.
    total
        Sum of all finite entries (float64): total UMIs for counts.
    """

    shape: tuple[int, int]
    n_stored: int = 0
    n_nonzero: int = 0
    n_nan: int = 0
    n_inf: int = 0
    n_negative: int = 0
    vmin: float = np.inf
    vmax: float = -np.inf
    is_integer: bool = True
    example_noninteger: float | None = None
    total: float = 0.0

    @property
    def fraction_zero(self) -> float:
        n = self.shape[0] * self.shape[1]
        return 1.0 - self.n_nonzero / n if n else 0.0

    @property
    def looks_log_normalised(self) -> bool:
        """Non-integer, non-negative and small: log1p of library-size-normalised counts."""
        return (not self.is_integer) and self.n_negative == 0 and 0 < self.vmax < 30


def _parts(m: Any) -> tuple[str, Any]:
    """('sparse', (data, indices, indptr, is_csr)) or ('dense', array-like), for any matrix we accept."""
    if sp.issparse(m):
        if m.format not in ("csr", "csc"):
            m = m.tocsr()
        return "sparse", (m.data, m.indices, m.indptr, m.format == "csr")
    group = getattr(m, "group", None)  # anndata backed sparse dataset
    if group is not None and "data" in group:
        return "sparse", (group["data"], group["indices"], group["indptr"], getattr(m, "format", "csr") == "csr")
    return "dense", m


def _chunks(m: Any) -> Iterator[np.ndarray]:
    """Stored values of ``m`` as 1-D chunks of at most ~``_CHUNK`` entries."""
    kind, parts = _parts(m)
    if kind == "sparse":
        data = parts[0]
        for i in range(0, data.shape[0], _CHUNK):
            yield np.asarray(data[i : i + _CHUNK])
    else:
        n, d = parts.shape
        step = max(1, _CHUNK // max(d, 1))
        for i in range(0, n, step):
            yield np.asarray(parts[i : i + step]).ravel()


def value_stats(m: Any) -> ValueStats:
    """Chunked :class:`ValueStats` of a dense, sparse or backed matrix."""
    stats = ValueStats(shape=tuple(int(s) for s in m.shape))
    integer_dtype = np.issubdtype(np.dtype(m.dtype), np.integer) or np.dtype(m.dtype) == bool
    for chunk in _chunks(m):
        stats.n_stored += chunk.size
        if chunk.size == 0:
            continue
        stats.n_nonzero += int(np.count_nonzero(chunk))
        finite = chunk
        if not integer_dtype:
            ok = np.isfinite(chunk)
            if not ok.all():  # rare: count only then
                stats.n_nan += int(np.isnan(chunk).sum())
                stats.n_inf += int(np.isinf(chunk).sum())
                finite = chunk[ok]
        if finite.size:
            lo = float(finite.min())
            if lo < 0:
                stats.n_negative += int((finite < 0).sum())
            stats.vmin = min(stats.vmin, lo)
            stats.vmax = max(stats.vmax, float(finite.max()))
            stats.total += float(finite.sum(dtype=np.float64))
            if not integer_dtype and stats.is_integer:
                frac = finite != np.rint(finite)
                if frac.any():
                    stats.is_integer = False
                    stats.example_noninteger = float(finite[np.argmax(frac)])
    if stats.n_stored < stats.shape[0] * stats.shape[1]:  # implicit zeros of a sparse matrix
        stats.vmin, stats.vmax = min(stats.vmin, 0.0), max(stats.vmax, 0.0)
    if stats.vmin == np.inf:
        stats.vmin = stats.vmax = 0.0
    return stats


def _locate(m: Any, predicate: Any, limit: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of up to ``limit`` entries where ``predicate(values)`` holds (the rare error path)."""
    kind, parts = _parts(m)
    rows: list[int] = []
    cols: list[int] = []
    if kind == "sparse":
        data, indices, indptr, is_csr = parts
        indptr = np.asarray(indptr[:])
        for i in range(0, data.shape[0], _CHUNK):
            hit = np.flatnonzero(predicate(np.asarray(data[i : i + _CHUNK]))) + i
            for h in hit[: limit - len(rows)]:
                major = int(np.searchsorted(indptr, h, side="right") - 1)
                minor = int(indices[int(h)])
                rows.append(major if is_csr else minor)
                cols.append(minor if is_csr else major)
            if len(rows) >= limit:
                break
    else:
        n, d = parts.shape
        step = max(1, _CHUNK // max(d, 1))
        for i in range(0, n, step):
            r, c = np.nonzero(predicate(np.asarray(parts[i : i + step])))
            rows.extend((r[: limit - len(rows)] + i).tolist())
            cols.extend(c[: limit - len(cols)].tolist())
            if len(rows) >= limit:
                break
    return np.asarray(rows, dtype=int), np.asarray(cols, dtype=int)


def check_values(m: Any, *, where: str, claimed_counts: bool, genes: pd.Index, cells: pd.Index,
                 allow_negative: bool = False) -> ValueStats:
    """Refuse NaN, infinite and negative values; refuse non-integers where counts are claimed.

    Parameters
    ----------
    m
        (n_cells, n_genes) matrix, dense, sparse or backed.
    where
        Name of the matrix for messages (``".X"``, ``"layers['counts']"``).
    claimed_counts
        The matrix is declared to hold raw counts (a counts layer, or ``layer=`` given): non-integer
        values are then an error instead of a flag.
    genes, cells
        Names used to say where bad values are.
    allow_negative
        The file declares latent (not count, not normalised) values (``uns[KEYS.IS_COUNTS] = False``).

    Returns
    -------
    The matrix's :class:`ValueStats`.
    """
    stats = value_stats(m)

    def _where(pred: Any) -> str:
        r, c = _locate(m, pred)
        pairs = ", ".join(f"cell {cells[i]!s} / gene {genes[j]!s}" for i, j in zip(r[:3], c[:3]))
        return f"first at {pairs}" if pairs else ""

    if stats.n_nan or stats.n_inf:
        kinds = " and ".join(
            f"{n} {name}" for n, name in ((stats.n_nan, "NaN"), (stats.n_inf, "infinite")) if n
        )
        raise ScreenContentError(
            f"{where} holds {kinds} value(s) ({_where(lambda v: ~np.isfinite(v))}); expression must be finite: "
            "fix or drop those cells/genes before loading"
        )
    if stats.n_negative and not allow_negative:
        raise ScreenContentError(
            f"{where} holds {stats.n_negative} negative value(s) (min {stats.vmin:.4g}; {_where(lambda v: v < 0)}); "
            "it looks scaled or centred: provide raw UMI counts (or log-normalised, non-negative values)"
        )
    if claimed_counts and not stats.is_integer:
        hint = (
            f"; it looks log-normalised (max {stats.vmax:.3g}): remove that layer to load the file in the "
            "no-measurement-model mode (stage 2 directly on normalised values)"
            if stats.looks_log_normalised
            else "; point layer= at the raw UMI counts"
        )
        raise ScreenContentError(
            f"{where} is supposed to hold raw counts but has non-integer values "
            f"(e.g. {stats.example_noninteger:.4g}){hint}"
        )
    return stats


def check_unique_genes(names: pd.Index, source: str) -> None:
    """Refuse duplicated gene names, listing a few."""
    dup = names[names.duplicated()].unique()
    if len(dup):
        raise ScreenContentError(
            f"{len(dup)} duplicated gene name(s) in {source} (e.g. {', '.join(map(str, dup[:5]))}); make them unique "
            "(adata.var_names_make_unique()) or pass gene_key=<a var column with unique symbols>"
        )


def check_targets(conditions: list[str], genes: pd.Index, *, strict: bool) -> list[str]:
    """Targets not among the measured genes: a warning (returned), or an error with ``strict``."""
    measured = set(genes)
    targets = sorted({t for c in conditions if c != KEYS.CONTROL for t in c.split(KEYS.COMBO_SEP)})
    missing = [t for t in targets if t not in measured]
    if not missing:
        return []
    msg = (
        f"{len(missing)} of {len(targets)} target gene(s) are not among the measured genes "
        f"({', '.join(missing[:10])}{', ...' if len(missing) > 10 else ''})"
    )
    if strict:
        raise ScreenContentError(
            msg + "; check gene_key (symbols vs Ensembl IDs), or pass strict=False to allow it (CRISPRa targets "
            "may be unmeasured)"
        )
    return [msg + "; fine for CRISPRa targets, otherwise check gene_key"]


def check_min_cells(n_cells: pd.Series, *, min_cells: int, drop_small: bool) -> tuple[list[str], list[str]]:
    """Conditions with fewer than ``min_cells`` cells.

    Returns
    -------
    drop
        Conditions to drop (only with ``drop_small``).
    problems
        Warnings to record.
    """
    small = n_cells[n_cells < min_cells].sort_values()
    if small.empty:
        return [], []
    listing = ", ".join(f"{c} ({n})" for c, n in small.head(10).items()) + (", ..." if len(small) > 10 else "")
    if KEYS.CONTROL in small.index:
        raise ScreenContentError(
            f"only {int(small[KEYS.CONTROL])} control cell(s), fewer than min_cells={min_cells}; lower min_cells"
        )
    if not drop_small:
        raise ScreenContentError(
            f"{len(small)} condition(s) have fewer than min_cells={min_cells} cells: {listing}; pass drop_small=True "
            "to drop them (CLI: --drop-small) or lower min_cells"
        )
    return list(small.index), [f"dropped {len(small)} condition(s) with fewer than {min_cells} cells: {listing}"]


# --------------------------------------------------------------------------------------------- signal


def _row_blocks(m: Any) -> Iterator[Any]:
    """``m`` in blocks of consecutive cells (dense arrays or scipy sparse), ~``_CHUNK`` entries each;
    works on in-memory and backed matrices alike."""
    n, d = m.shape
    step = max(1, _CHUNK // max(d, 1))
    for i in range(0, n, step):
        block = m[i : i + step]
        yield block if sp.issparse(block) else np.asarray(block)


def _dense(x: Any) -> np.ndarray:
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=np.float64).ravel()


def signal_problems(screen: Any) -> list[str]:
    """Why a screen carries no signal to learn from: one line each, ``[]`` when it has some.

    Checked on the values the screen is modelled from: the raw counts, or ``.X`` of a log-normalised
    file (where "zero" means zero values in ``.X``). Three cases, each one line:

    - every value is zero (reported alone: it implies the other two);
    - every cell of some condition is all zero (those conditions are named);
    - every gene is constant across all cells (nothing varies, so there is nothing to fit).

    A few zero cells, or some constant genes among varying ones, are normal and not reported.
    Chunked like the other checks, so backed (on-disk) screens are not densified.

    Parameters
    ----------
    screen
        A :class:`~lcd_core.data.Screen`.
    """
    where = screen._counts_where or "X"
    m = screen.adata.X if where == "X" else screen.adata.layers[where]
    label = ".X" if where == "X" else f"layers[{where!r}]"
    n, d = (int(s) for s in m.shape)
    row_abs = np.empty(n, dtype=np.float64)  # per cell: sum of |value| (zero iff the cell is all zero)
    gmin = np.full(d, np.inf)
    gmax = np.full(d, -np.inf)
    start = 0
    for block in _row_blocks(m):
        k = block.shape[0]
        if sp.issparse(block):  # min / max of a sparse block count its implicit zeros
            row_abs[start : start + k] = np.asarray(abs(block).sum(axis=1), dtype=np.float64).ravel()
            gmin = np.minimum(gmin, _dense(block.min(axis=0)))
            gmax = np.maximum(gmax, _dense(block.max(axis=0)))
        else:
            row_abs[start : start + k] = np.abs(block).sum(axis=1, dtype=np.float64)
            gmin = np.minimum(gmin, block.min(axis=0))
            gmax = np.maximum(gmax, block.max(axis=0))
        start += k
    if not (row_abs > 0).any():
        return [f"every value in {label} is zero ({n:,} cells x {d:,} genes): the screen carries no expression "
                "signal; check that the file holds the expression (the counts layer, layer=) and was not blanked "
                "on export"]
    problems = []
    labels = pd.Categorical(screen.adata.obs[KEYS.PERT])
    n_cells = np.bincount(labels.codes, minlength=len(labels.categories))
    n_live = np.bincount(labels.codes, weights=row_abs > 0, minlength=len(labels.categories))
    dead = [(str(c), int(n_cells[i])) for i, c in enumerate(labels.categories) if n_cells[i] and not n_live[i]]
    if dead:
        listing = ", ".join(f"{c} ({k} cells)" for c, k in dead[:10]) + (", ..." if len(dead) > 10 else "")
        problems.append(f"{len(dead)} condition(s) have only zero values in every cell ({listing}): they carry no "
                        f"signal; drop those cells or fix the export that blanked them")
    if np.array_equal(gmin, gmax):
        shown = ", ".join(f"{screen.adata.var_names[j]} = {gmin[j]:g}" for j in range(min(d, 3)))
        problems.append(f"every gene is constant across all cells ({d:,} genes; {shown}{', ...' if d > 3 else ''}): "
                        "there is no variation to learn; check that the right layer was read (layer=)")
    return problems


def check_signal(screen: Any) -> None:
    """Refuse a screen without signal (:func:`signal_problems`) with one line; what ``lcd train``, the
    app's upload and ``lcd inspect`` (after listing the problems) call.

    Raises
    ------
    ScreenContentError
        The first problem found (and how many more there are).
    """
    problems = signal_problems(screen)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s): see lcd inspect)" if len(problems) > 1 else ""
        raise ScreenContentError(f"the screen carries no signal to learn from: {problems[0]}{more}")
