"""Count recovery: the integer UMI counts behind ``log1p`` of per-cell-scaled counts (PRODUCT.md "Data in").

Many public screens ship only ``x = log1p(count × s_c)``, a per-cell scale ``s_c = target / total_c``
(scanpy's ``normalize_total`` with any ``target_sum``, then ``log1p``; CP10k, CPM). Then
``expm1(x) / s_c`` is the integer count, exactly, up to the float rounding of the file. The scale is
read from an obs totals column when the file has one that fits, else from each cell's smallest non-zero
value (a count of 1 in most cells; a cell whose smallest count is ``k`` > 1 shows fractions ``c / k``,
so divisors ``k`` = 2, 3, ... are tried until its values are integers). The recovery is accepted only
when ≥ 99.9 % of the non-zero values are integers within tolerance; otherwise the file stays
normalised, with the reason.

Convention (the one used everywhere here): ``counts = f⁻¹(x) × size_factor`` per cell, with ``f⁻¹`` =
``expm1`` (or the identity for scaled counts stored without the log), so the file's own space is
``x = f(counts / size_factor)``; for scanpy's ``normalize_total``, ``size_factor = total / target_sum``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

#: obs columns that may hold each cell's total count before scaling (the first present is tried)
TOTALS_KEYS: tuple[str, ...] = ("ncounts", "n_counts", "total_counts", "nCount_RNA")
#: a recovered value is an integer when ``|r − round(r)| ≤ ATOL + RTOL(dtype) · r``
ATOL: float = 1e-3
#: share of the non-zero values that must come out integer
MIN_FRACTION_INTEGER: float = 0.999
#: largest "smallest count of a cell" tried when a cell's values are fractions c / k
MAX_DIVISOR: int = 16
#: entries beyond each cell's smallest one needed before an all-integer result means anything
MIN_EVIDENCE: int = 100
#: cells checked by a backed (on-disk) read: recovery is then reported, not applied
BACKED_SAMPLE_CELLS: int = 5000
#: round target sums, snapped to when the estimate is this close (relative)
_NICE_TARGETS = (1e2, 1e3, 1e4, 1e5, 1e6)
_SNAP_EXACT, _SNAP_LOOSE = 1e-4, 0.02


@dataclass
class CountRecovery:
    """What count recovery found in a matrix of normalised values.

    Attributes
    ----------
    recovered
        The counts were recovered (≥ :data:`MIN_FRACTION_INTEGER` of non-zeros integer).
    reason
        Why not (empty when recovered).
    transform
        ``"log1p"`` (``x = log1p(count / size_factor)``) or ``"identity"`` (``x = count / size_factor``).
    method
        ``"obs_totals"`` (scale = obs totals / target) or ``"smallest_nonzero"`` (scale from each cell's
        smallest non-zero value).
    scale_source
        Human-readable: ``"obs['ncounts']"`` or ``"each cell's smallest non-zero value"``.
    totals_key
        The obs totals column consulted, or ``None``.
    target_sum
        The target of the scaling when known (exact, or ``target_approx`` when only estimated).
    target_approx
        ``target_sum`` is an estimate (the totals column is close to, not equal to, the totals used).
    totals_offset
        Median relative difference between the totals the file used and ``obs[totals_key]``
        (e.g. −0.006: the file's totals are 0.6 % lower), when estimated.
    totals_over_stored_genes
        The file's totals are the sums over its own genes (every cell's values sum to the target).
    fraction_integer
        Share of the non-zero values that are integers within tolerance after scaling.
    n_nonzero
        Non-zero values checked.
    n_cells_checked
        Cells checked (all, or a sample in backed mode).
    divisor_cells
        Cells whose smallest count was found to be > 1.
    size_factors
        ``(n_cells,)`` float64, ``counts = f⁻¹(x) × size_factors`` (``None`` unless recovered over all
        cells).
    """

    recovered: bool
    reason: str = ""
    transform: str | None = None
    method: str | None = None
    scale_source: str | None = None
    totals_key: str | None = None
    target_sum: float | None = None
    target_approx: bool = False
    totals_offset: float | None = None
    totals_over_stored_genes: bool = False
    fraction_integer: float = 0.0
    n_nonzero: int = 0
    n_cells_checked: int = 0
    divisor_cells: int = 0
    size_factors: np.ndarray | None = field(default=None, repr=False)

    def formula(self) -> str:
        """The file's convention in words, e.g. ``log1p(count / ncounts × 1e4)``."""
        if self.method == "obs_totals":
            total = self.totals_key
        elif self.totals_over_stored_genes:
            total = "total over the stored genes"
        else:
            total = "total"
        target = _fmt_target(self.target_sum) if self.target_sum else "s"
        if self.target_approx:
            target = f"≈{target}"
        inner = f"count / {total} × {target}"
        return f"log1p({inner})" if self.transform == "log1p" else inner

    def describe(self, lead: str = "recovered from") -> str:
        """One line for ``lcd inspect``: ``"recovered from .X = log1p(...), ...: 99.99 % of ..."``."""
        if not self.recovered:
            return f"not recoverable: {self.reason}"
        how = f"{lead} .X = {self.formula()}"
        if self.method == "smallest_nonzero":
            how += ", scale from each cell's smallest non-zero value"
            if self.divisor_cells:
                how += f" ({self.divisor_cells} cell(s) with smallest count > 1)"
            if self.totals_key and self.totals_offset is not None:
                how += (f"; the totals used are {abs(100 * self.totals_offset):.1f} % "
                        f"{'below' if self.totals_offset < 0 else 'above'} obs[{self.totals_key!r}]")
        pct = _fmt_pct(self.fraction_integer)
        return f"{how}: {pct} % of {self.n_nonzero:,} non-zeros integer within {ATOL:g}"

    def to_dict(self) -> dict:
        """Plain values (no size factors), for ``config.json`` and ``Screen.summary``."""
        return {
            "recovered": self.recovered, "reason": self.reason, "transform": self.transform, "method": self.method,
            "scale_source": self.scale_source, "totals_key": self.totals_key, "target_sum": self.target_sum,
            "target_approx": self.target_approx, "totals_offset": self.totals_offset,
            "totals_over_stored_genes": self.totals_over_stored_genes,
            "fraction_integer": self.fraction_integer, "n_nonzero": self.n_nonzero,
            "n_cells_checked": self.n_cells_checked, "divisor_cells": self.divisor_cells,
            "formula": self.formula() if self.recovered else None, "description": self.describe(),
        }


def _fmt_target(t: float) -> str:
    if t in _NICE_TARGETS:
        return f"1e{int(round(np.log10(t)))}"
    return f"{t:.6g}"


def _fmt_pct(f: float) -> str:
    # enough digits to tell 99.9 % from 99.99 % without printing 100 % for 99.9996 %
    s = f"{100 * f:.3f}".rstrip("0").rstrip(".")
    return "100" if f == 1.0 else ("99.999" if s == "100" else s)


# ------------------------------------------------------------------------------------------------ engine


def recover_counts(matrix: Any, obs: pd.DataFrame | None = None, *, vmax: float | None = None) -> tuple[CountRecovery, sp.csr_matrix | None]:
    """Recover integer counts from per-cell-scaled (and usually ``log1p``-ed) values.

    Parameters
    ----------
    matrix
        ``(n_cells, n_genes)`` non-negative, non-integer values, dense or scipy sparse (in memory).
    obs
        The cells' obs table; a totals column (:data:`TOTALS_KEYS`) is used when present.
    vmax
        The largest value, when known (spares a pass); decides whether ``log1p`` is tried.

    Returns
    -------
    (recovery, counts): the :class:`CountRecovery` and, when recovered, the ``(n_cells, n_genes)``
    float32 CSR matrix of integer counts (same sparsity as the input); ``None`` otherwise.
    """
    m = sp.csr_matrix(matrix, dtype=np.float64, copy=True)
    m.eliminate_zeros()
    m.sort_indices()
    dtype = np.dtype(getattr(matrix, "dtype", np.float64))
    eps = float(np.finfo(dtype if np.issubdtype(dtype, np.floating) else np.float64).eps)
    rtol = 16 * eps  # the file's float rounding, amplified by expm1 and the scale, grows with the value
    n = m.shape[0]
    if m.nnz and m.data.min() < 0:
        return CountRecovery(False, reason=f"values are negative in places (min {m.data.min():.3g}): centred, "
                                           "z-scored or regressed, so no per-cell scale can give counts",
                             n_nonzero=int(m.nnz), n_cells_checked=n), None
    vmax = float(m.data.max()) if vmax is None and m.nnz else (vmax or 0.0)
    totals, totals_key = _totals(obs, n)
    transforms = ["log1p", "identity"] if vmax < 30 else ["identity"]
    best: CountRecovery | None = None
    for transform in transforms:
        v = np.expm1(m.data) if transform == "log1p" else m.data.copy()
        rec, sf = _recover_one(v, m.indptr, n, totals=totals, totals_key=totals_key, rtol=rtol)
        rec.transform = transform
        if rec.recovered:
            rec.size_factors = sf
            counts = sp.csr_matrix((np.rint(v * np.repeat(sf, np.diff(m.indptr))).astype(np.float32),
                                    m.indices.copy(), m.indptr.copy()), shape=m.shape)
            if not rec.totals_over_stored_genes and rec.method == "smallest_nonzero":
                # every cell's values sum to one constant: normalised over these very genes
                sums = np.asarray(sp.csr_matrix((v, m.indices, m.indptr), shape=m.shape).sum(axis=1)).ravel()
                sums = sums[np.diff(m.indptr) > 0]
                if len(sums) > 1 and np.ptp(sums) <= 1e-4 * np.median(sums):
                    rec.totals_over_stored_genes = True
                    rec.target_sum, rec.target_approx = _snap(float(np.median(sums)), _SNAP_EXACT)
            return rec, counts
        if best is None or rec.fraction_integer > best.fraction_integer:
            best = rec
    assert best is not None
    return best, None


def _totals(obs: pd.DataFrame | None, n: int) -> tuple[np.ndarray | None, str | None]:
    if obs is None:
        return None, None
    for key in TOTALS_KEYS:
        if key in obs.columns:
            t = pd.to_numeric(obs[key], errors="coerce").to_numpy(dtype=np.float64)
            if len(t) == n and np.all(np.isfinite(t)) and np.all(t > 0):
                return t, key
    return None, None


def _snap(t: float, tol: float) -> tuple[float, bool]:
    """(target, approximate): a round target when ``t`` is within ``tol`` of one."""
    for nice in _NICE_TARGETS:
        if abs(t - nice) <= tol * nice:
            return nice, tol > _SNAP_EXACT
    return float(f"{t:.6g}"), tol > _SNAP_EXACT


def _probe(nnz: int, size: int = 200_000) -> np.ndarray:
    """Indices of up to ``size`` values spread over all of them (a cheap first test of a target)."""
    return np.arange(nnz) if nnz <= size else np.linspace(0, nnz - 1, size).astype(np.int64)


def _integer(v: np.ndarray, sf_per_entry: np.ndarray, rtol: float) -> np.ndarray:
    r = v * sf_per_entry
    return np.abs(r - np.rint(r)) <= ATOL + rtol * r


def _recover_one(v: np.ndarray, indptr: np.ndarray, n: int, *, totals: np.ndarray | None,
                 totals_key: str | None, rtol: float) -> tuple[CountRecovery, np.ndarray]:
    """Both methods on the non-zero values ``v`` (after the inverse transform) of a CSR matrix."""
    nnz_row = np.diff(indptr)
    nonempty = nnz_row > 0
    rows = np.repeat(np.arange(n), nnz_row)
    nnz = int(v.size)
    base = CountRecovery(False, n_nonzero=nnz, n_cells_checked=n, totals_key=totals_key)
    if nnz == 0:
        base.reason = "the matrix has no non-zero values"
        return base, np.ones(n)
    evidence = nnz - int(nonempty.sum())
    if evidence < MIN_EVIDENCE:
        base.reason = (f"too few non-zero values to tell ({evidence} beyond each cell's smallest; "
                       f"{MIN_EVIDENCE} needed)")
        return base, np.ones(n)
    vmin = np.full(n, np.nan)
    vmin[nonempty] = np.minimum.reduceat(v, indptr[:-1][nonempty])

    # 1. the obs totals column: total × value = target × count, so the per-cell products total × smallest
    #    value are integer multiples of the target; their median (an actual cell's) is target × k
    target_est = None
    if totals is not None:
        t_med = float(np.quantile((totals * vmin)[nonempty], 0.5, method="lower"))
        probe = _probe(nnz)
        for d in range(1, MAX_DIVISOR + 1):
            target = t_med / d
            c = np.rint(v[probe] * totals[rows[probe]] / target)
            pos = c >= 1
            if pos.any():  # refine on every probed value, then prefer a round target
                target = float(np.median(totals[rows[probe]][pos] * v[probe][pos] / c[pos]))
            target, _ = _snap(target, _SNAP_EXACT)
            if _integer(v[probe], (totals / target)[rows[probe]], rtol).mean() >= MIN_FRACTION_INTEGER:
                sf = totals / target
                frac = float(_integer(v, sf[rows], rtol).mean())
                if frac >= MIN_FRACTION_INTEGER:
                    return CountRecovery(True, method="obs_totals", scale_source=f"obs[{totals_key!r}]",
                                         totals_key=totals_key, target_sum=target, fraction_integer=frac,
                                         n_nonzero=nnz, n_cells_checked=n), sf
                break
        target_est = t_med  # the totals are close but not exact (e.g. counted over other genes)

    # 2. each cell's smallest non-zero value is k counts: the smallest k that makes the cell's values
    #    integers (k = 1 in most cells; the "gcd" of its values)
    k = np.ones(n)
    sf = np.where(nonempty, 1.0 / np.where(nonempty, vmin, 1.0), 1.0)
    ok = _integer(v, sf[rows], rtol)
    n_ok = np.bincount(rows, weights=ok, minlength=n)
    bad = np.flatnonzero(n_ok < nnz_row)
    if len(bad):
        # the rows with a non-integer value: try every divisor, keep the first with most integer values
        sel = np.concatenate([np.arange(indptr[i], indptr[i + 1]) for i in bad])
        local_rows = np.repeat(np.arange(len(bad)), nnz_row[bad])
        best_k, best_ok = k[bad].copy(), n_ok[bad].copy()
        for d in range(2, MAX_DIVISOR + 1):
            ok_d = _integer(v[sel], (d / vmin[bad])[local_rows], rtol)
            cnt = np.bincount(local_rows, weights=ok_d, minlength=len(bad))
            better = cnt > best_ok
            best_k[better], best_ok[better] = d, cnt[better]
        k[bad] = best_k
        sf[bad] = best_k / vmin[bad]
    if target_est is not None:
        # a multiple of the smallest k is as integer (a cell with one value, or all even): near-fitting
        # totals say which one, when they say it clearly
        ratio = vmin * totals / target_est
        hint = np.rint(ratio)
        clear = nonempty & (np.abs(ratio - hint) < 0.1) & (hint > k) & (hint <= MAX_DIVISOR) & (hint % k == 0)
        k[clear] = hint[clear]
        sf[clear] = hint[clear] / vmin[clear]
    ok = _integer(v, sf[rows], rtol)
    frac = float(ok.mean())
    rec = CountRecovery(frac >= MIN_FRACTION_INTEGER, method="smallest_nonzero",
                        scale_source="each cell's smallest non-zero value", totals_key=totals_key,
                        fraction_integer=frac, n_nonzero=nnz, n_cells_checked=n,
                        divisor_cells=int((k[nonempty] > 1).sum()))
    if totals is not None:
        implied = (totals / sf)[nonempty]  # the target, if the totals column were the totals used
        t_med = float(np.median(implied))
        target, approx = _snap(t_med, _SNAP_LOOSE)
        rec.target_sum, rec.target_approx = target, approx
        # the file's totals are size_factor × target; compare with the column
        rec.totals_offset = float(np.median(sf[nonempty] * target / totals[nonempty]) - 1.0)
    if not rec.recovered:
        rec.reason = (f"after the best per-cell scale only {_fmt_pct(frac)} % of {nnz:,} non-zeros are integers "
                      f"within {ATOL:g} ({100 * MIN_FRACTION_INTEGER:g} % needed): not "
                      "per-cell-scaled counts nor their log1p (per-gene scaling, batch correction, "
                      "regression or added noise?)")
        if totals is not None:
            rec.reason += f"; obs[{totals_key!r}] did not fit either"
    return rec, sf


# ------------------------------------------------------------------------------------------------ file space


def file_space_record(screen: Any, conditions: list[str] | None = None, *, n_quantiles: int = 201) -> dict | None:
    """What ``to_file_space`` needs to write generated counts in the screen's own convention.

    Each cell's ``size_factor / (its count over the screen's genes)`` is the part of the scale the genes
    do not determine (for the Norman subset: the whole-transcriptome total over the 500-gene total); its
    empirical distribution over the cells of ``conditions`` is kept as ``n_quantiles`` quantiles.

    Returns
    -------
    A JSON-ready dict (the recovery's facts plus ``size_factor_per_count``), or ``None`` for a screen
    whose counts were not recovered.
    """
    from .._constants import KEYS

    rec = getattr(screen, "recovery", None)
    if rec is None or not rec.recovered or KEYS.SIZE_FACTOR not in screen.adata.obs:
        return None
    conds = conditions if conditions is not None else screen.conditions
    ratios = []
    for c in conds:
        idx = screen.cell_indices(c)
        panel = screen.counts(c).sum(axis=1, dtype=np.float64)
        sf = screen.adata.obs[KEYS.SIZE_FACTOR].to_numpy(dtype=np.float64)[idx]
        keep = panel > 0
        ratios.append(sf[keep] / panel[keep])
    q = np.concatenate(ratios) if ratios else np.ones(1)
    out = rec.to_dict()
    out["size_factor_per_count"] = np.quantile(q, np.linspace(0, 1, n_quantiles)).tolist()
    return out


def to_file_space(counts: np.ndarray, record: dict, *, rng: Any = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generated counts → the file's own space (the convention its ``.X`` used).

    Each generated cell gets a size factor = (its count over the genes) × a ratio drawn from the
    training cells' empirical distribution (:func:`file_space_record`), then ``x = log1p(count /
    size_factor)`` (or ``count / size_factor`` for a file stored without the log).

    Parameters
    ----------
    counts
        ``(n_cells, n_genes)`` counts over the run's genes.
    record
        The run's ``config.json["count_recovery"]``.
    rng
        Seed or Generator for the ratios.

    Returns
    -------
    (x, size_factors): ``(n_cells, n_genes)`` float32 values and the ``(n_cells,)`` size factors used.
    """
    rng = np.random.default_rng(rng)
    y = np.asarray(counts, dtype=np.float64)
    quant = np.asarray(record["size_factor_per_count"], dtype=np.float64)
    ratio = np.interp(rng.uniform(size=y.shape[0]), np.linspace(0, 1, len(quant)), quant)
    sf = ratio * y.sum(axis=1)
    scaled = np.divide(y, sf[:, None], out=np.zeros_like(y), where=sf[:, None] > 0)
    x = np.log1p(scaled) if record.get("transform", "log1p") == "log1p" else scaled
    return x.astype(np.float32), sf
