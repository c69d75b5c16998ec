"""Over-representation of gene sets in modules (METHOD §5): hypergeometric test, BH across all tests."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from os import PathLike

import numpy as np
import pandas as pd
from scipy.stats import hypergeom

from ..errors import ConfigError
from ._modules import UNASSIGNED


def read_gmt(path: str | PathLike, *, genes: Sequence[str] | None = None) -> dict[str, list[str]]:
    """Read a GMT file: one gene set per line, ``name<TAB>description<TAB>gene1<TAB>gene2...``.

    Parameters
    ----------
    path
        Local GMT file (nothing is downloaded).
    genes
        Optional modelled genes: genes of the sets not among them are dropped with one warning that
        lists some of them, and sets left empty are dropped.

    Returns
    -------
    dict
        Set name → list of genes (duplicates removed, order kept).

    Raises
    ------
    ConfigError
        Unreadable file, malformed lines (fewer than 3 tab-separated fields, empty name), duplicated
        set names, or no set sharing a gene with ``genes``.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"Cannot read GMT file {path}: {err}") from None
    sets: dict[str, list[str]] = {}
    bad, dups = [], []
    for no, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        fields = line.rstrip("\r\n").split("\t")
        name = fields[0].strip()
        members = [g.strip() for g in fields[2:] if g.strip()]
        if len(fields) < 3 or not name or not members:
            bad.append(no)
            continue
        if name in sets:
            dups.append(name)
        sets[name] = list(dict.fromkeys(members))
    if bad:
        raise ConfigError(
            f"Malformed GMT file {path}: line(s) {', '.join(map(str, bad[:20]))}"
            f"{' ...' if len(bad) > 20 else ''} do not have 'name<TAB>description<TAB>gene...' with at least one gene."
        )
    if dups:
        raise ConfigError(f"GMT file {path} repeats gene-set name(s): {', '.join(sorted(set(dups))[:10])}.")
    if not sets:
        raise ConfigError(f"GMT file {path} contains no gene sets.")
    if genes is not None:
        sets = _restrict(sets, genes, source=str(path))
    return sets


def _restrict(sets: dict[str, list[str]], genes: Sequence[str], source: str = "gene sets") -> dict[str, list[str]]:
    universe = set(genes)
    unknown = sorted({g for members in sets.values() for g in members} - universe)
    out = {k: [g for g in v if g in universe] for k, v in sets.items()}
    out = {k: v for k, v in out.items() if v}
    if not out:
        raise ConfigError(
            f"No gene of {source} is among the {len(universe)} modelled genes (e.g. "
            f"{', '.join(unknown[:5])}): check the identifiers (symbols vs Ensembl IDs, species)."
        )
    if unknown:
        warnings.warn(
            f"{len(unknown)} gene(s) of {source} are not modelled and were ignored "
            f"(e.g. {', '.join(unknown[:10])}); {len(sets) - len(out)} set(s) left empty were dropped.",
            stacklevel=3,
        )
    return out


def enrich_modules(
    labels: Sequence[str],
    genes: Sequence[str],
    gene_sets: dict[str, list[str]],
    *,
    q_max: float = 0.01,
    top: int = 5,
    min_overlap: int = 1,
) -> pd.DataFrame:
    """Over-representation test of every gene set in every module (METHOD §5).

    p = P(X ≥ k), X ~ Hypergeometric(M = modelled genes, n = set ∩ modelled, N = module size);
    odds ratio of the 2 × 2 table (Haldane–Anscombe +0.5 when a cell is 0); Benjamini–Hochberg over
    all module × set pairs (pairs with no overlap have p = 1 and still count as tests).

    Parameters
    ----------
    labels
        ``(d,)`` module label per gene; ``"unassigned"`` genes are background only.
    genes
        ``(d,)`` modelled genes (the background).
    gene_sets
        Name → genes (e.g. from :func:`read_gmt`).
    q_max
        Report tests with BH q < q_max.
    top
        Per module, at most this many terms, by odds ratio.
    min_overlap
        Report only terms with at least this many module genes in the set.

    Returns
    -------
    pandas.DataFrame
        Columns ``module, term, overlap, module_size, set_size, background, odds_ratio, p, q, genes``,
        sorted by module then odds ratio; ``attrs['n_tests']`` the number of tests corrected for.
    """
    labels = np.asarray(list(labels), dtype=object)
    genes = np.asarray(list(genes), dtype=object)
    if labels.size != genes.size:
        raise ConfigError(f"{labels.size} labels for {genes.size} genes.")
    if not gene_sets:
        raise ConfigError("No gene sets given.")
    sets = _restrict(gene_sets, genes.tolist())
    M = genes.size
    modules = [m for m in dict.fromkeys(labels.tolist()) if m != UNASSIGNED]
    rows = []
    for m in modules:
        members = set(genes[labels == m].tolist())
        N = len(members)
        for term, sg in sets.items():
            hit = sorted(members.intersection(sg))
            rows.append((m, term, len(hit), N, len(sg), M, ";".join(hit)))
    cols = ["module", "term", "overlap", "module_size", "set_size", "background", "genes"]
    df = pd.DataFrame(rows, columns=cols)
    if df.empty:
        df = df.assign(odds_ratio=[], p=[], q=[])
        df.attrs["n_tests"] = 0
        return df
    k, N, n = df["overlap"].to_numpy(), df["module_size"].to_numpy(), df["set_size"].to_numpy()
    df["p"] = hypergeom.sf(k - 1, M, n, N)
    df["odds_ratio"] = _odds_ratio(k, N, n, M)
    df["q"] = bh_adjust(df["p"].to_numpy())
    n_tests = len(df)
    df = df[(df["q"] < q_max) & (df["overlap"] >= min_overlap)]
    df = df.sort_values(["module", "odds_ratio", "p"], ascending=[True, False, True])
    df = df.groupby("module", sort=False).head(top).reset_index(drop=True)
    df = df[["module", "term", "overlap", "module_size", "set_size", "background", "odds_ratio", "p", "q", "genes"]]
    df.attrs["n_tests"] = n_tests
    return df


def _odds_ratio(k, N, n, M):
    a, b, c = k.astype(float), (N - k).astype(float), (n - k).astype(float)
    dd = (M - N - n + k).astype(float)
    zero = (a == 0) | (b == 0) | (c == 0) | (dd == 0)
    a, b, c, dd = (x + 0.5 * zero for x in (a, b, c, dd))  # Haldane–Anscombe correction
    return (a * dd) / (b * c)


def bh_adjust(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg q-values: q_(i) = min_{j ≥ i} p_(j) · m / j, capped at 1."""
    p = np.asarray(p, dtype=float)
    m = p.size
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out
