"""Exports of causal effects and modules with provenance.

Tables are plain (header first) so that any reader opens them — ``pandas.read_csv``, R's ``read.csv``,
Excel — and their provenance goes to a JSON sidecar beside them (:func:`provenance_path`: ``effects.csv`` →
``effects.provenance.json``). GraphML carries it inside, as graph attributes.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError

#: fields every provenance record should carry (missing ones are written as null)
PROVENANCE_FIELDS = ("data_hash", "run", "variant", "lam", "seed", "version")


def _provenance(provenance: Mapping | None) -> dict:
    from .. import __version__

    prov = {k: None for k in PROVENANCE_FIELDS}
    prov["version"] = __version__
    prov.update(dict(provenance or {}))
    try:
        json.dumps(prov)
    except TypeError as err:
        raise ConfigError(f"provenance must be JSON-serialisable: {err}") from None
    return prov


def provenance_path(path: str | PathLike) -> Path:
    """The provenance sidecar of an exported file: ``dir/effects.csv`` → ``dir/effects.provenance.json``."""
    path = Path(path)
    return path.with_name(path.stem + ".provenance.json")


def provenance_json(provenance: Mapping | None) -> str:
    """The provenance record as the sidecar's text (every :data:`PROVENANCE_FIELDS` present)."""
    return _text(_provenance(provenance))


def _text(prov: dict) -> str:
    return json.dumps(prov, indent=2, sort_keys=True) + "\n"


def _write_sidecar(path: Path, prov: dict) -> Path:
    side = provenance_path(path)
    side.write_text(_text(prov), encoding="utf-8")
    return side


def effects_long(
    effects: np.ndarray, genes: Sequence[str], *, threshold: float = 0.0, include_diagonal: bool = False,
    columns: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Effect matrix (rows = sources) as a long table ``source, target, effect[, columns...]``.

    Keeps entries with |effect| > ``threshold``, sorted by |effect| (largest first). ``columns``: more
    ``(d, d)`` per-edge arrays in the same orientation, one column each (e.g. ``identifiability`` labels
    from :func:`lcd_core.clipr.identifiability`, the interval and sign stability of
    :func:`lcd_core.clipr.clipr_confidence`).
    """
    E = np.asarray(effects, dtype=float)
    genes = np.asarray(list(genes), dtype=object)
    if E.shape != (genes.size, genes.size):
        raise ConfigError(f"effects {E.shape} do not match {genes.size} genes.")
    extra = {str(k): np.asarray(v) for k, v in (columns or {}).items()}
    for name, v in extra.items():
        if v.shape != E.shape:
            raise ConfigError(f"column {name!r} has shape {v.shape}; the effects are {E.shape}.")
        if name in ("source", "target", "effect"):
            raise ConfigError(f"column name {name!r} is taken.")
    keep = np.abs(E) > threshold
    if not include_diagonal:
        np.fill_diagonal(keep, False)
    i, j = np.nonzero(keep)
    df = pd.DataFrame({"source": genes[i], "target": genes[j], "effect": E[i, j],
                       **{name: v[i, j] for name, v in extra.items()}})
    return df.iloc[np.argsort(-np.abs(df["effect"].to_numpy()), kind="stable")].reset_index(drop=True)


def write_effects_csv(
    path: str | PathLike, effects: np.ndarray, genes: Sequence[str], *, provenance: Mapping | None = None,
    threshold: float = 0.0, columns: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write :func:`effects_long` as a plain CSV (header ``source,target,effect`` and one column per entry
    of ``columns``) and its provenance to the sidecar :func:`provenance_path` (``effects.provenance.json``).
    Returns the CSV's path."""
    path = Path(path)
    prov = _provenance(provenance)
    prov["threshold"] = threshold
    effects_long(effects, genes, threshold=threshold, columns=columns).to_csv(path, index=False)
    _write_sidecar(path, prov)
    return path


def _modules_frame(modules, enrichment: pd.DataFrame | None, n_terms: int) -> pd.DataFrame:
    terms = {}
    if enrichment is not None and len(enrichment):
        for m, sub in enrichment.groupby("module", sort=False):
            terms[m] = ";".join(sub["term"].astype(str).head(n_terms))
    hubs = {g for hs in modules.hubs.values() for g in hs}
    return pd.DataFrame({
        "gene": modules.genes,
        "module": modules.labels,
        "is_hub": [g in hubs for g in modules.genes],
        "top_terms": [terms.get(m, "") for m in modules.labels],
    })


def write_modules_tsv(
    path: str | PathLike, modules, *, enrichment: pd.DataFrame | None = None, provenance: Mapping | None = None,
    n_terms: int = 3,
) -> Path:
    """Write ``gene, module, is_hub, top_terms`` (plain TSV) of a :class:`ModuleResult`, and its provenance
    (with the clustering's parameters) to the sidecar :func:`provenance_path`; ``top_terms`` are the
    module's first ``n_terms`` enriched terms (``;``-joined). Returns the TSV's path."""
    path = Path(path)
    prov = _provenance(provenance)
    prov["modules"] = dict(modules.params)
    _modules_frame(modules, enrichment, n_terms).to_csv(path, sep="\t", index=False)
    _write_sidecar(path, prov)
    return path


def _effects_graph(effects: np.ndarray, genes: Sequence[str], *, threshold: float, provenance: Mapping | None,
                   modules, columns: Mapping[str, np.ndarray] | None):
    import networkx as nx

    df = effects_long(effects, genes, threshold=threshold, columns=columns)
    G = nx.DiGraph()
    labels = dict(zip(modules.genes, modules.labels)) if modules is not None else {}
    for g in genes:
        G.add_node(str(g), module=str(labels.get(g, "")))
    names = list(df.columns[3:])
    for row in df.itertuples(index=False):
        s, t, e = row[:3]
        attrs = {n: (v.item() if isinstance(v, np.generic) else v) for n, v in zip(names, row[3:])}
        G.add_edge(str(s), str(t), effect=float(e), weight=abs(float(e)), sign=int(np.sign(e)), **attrs)
    prov = _provenance(provenance)
    prov["threshold"] = threshold
    G.graph.update({k: json.dumps(v) for k, v in prov.items()})  # GraphML holds scalars: store JSON text
    return G


def write_graphml(
    path: str | PathLike, effects: np.ndarray, genes: Sequence[str], *, threshold: float = 0.0,
    provenance: Mapping | None = None, modules=None, columns: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Write the thresholded effect graph (edges source → target, attributes ``effect``, ``weight`` =
    |effect|, ``sign`` and one per entry of ``columns``, e.g. ``identifiability``; node attribute ``module``
    when given) as GraphML, with the provenance as graph
    attributes (JSON text each: GraphML holds scalars), read by any GraphML reader with the graph. No
    sidecar: the file carries its own provenance. Returns the path."""
    import networkx as nx

    path = Path(path)
    nx.write_graphml(_effects_graph(effects, genes, threshold=threshold, provenance=provenance, modules=modules,
                                    columns=columns), path)
    return path


def graphml_bytes(effects: np.ndarray, genes: Sequence[str], *, threshold: float = 0.0,
                  provenance: Mapping | None = None, modules=None,
                  columns: Mapping[str, np.ndarray] | None = None) -> bytes:
    """:func:`write_graphml`'s file as bytes (a download button's payload)."""
    import networkx as nx

    buf = io.BytesIO()
    nx.write_graphml(_effects_graph(effects, genes, threshold=threshold, provenance=provenance, modules=modules,
                                    columns=columns), buf)
    return buf.getvalue()


def module_downloads(modules, effects: np.ndarray, genes: Sequence[str], *, enrichment: pd.DataFrame | None = None,
                     provenance: Mapping | None = None, edge_quantile: float = 0.9,
                     n_terms: int = 3) -> dict[str, bytes]:
    """The Modules page's downloads, the files the CLI writes, as bytes: ``modules.tsv``
    (:func:`write_modules_tsv`), ``effects.csv`` (every edge), ``effects.graphml`` (edges above the
    ``edge_quantile`` of |effect|, module per node) and ``modules.provenance.json``."""
    E = np.asarray(effects, dtype=float)
    off = ~np.eye(E.shape[0], dtype=bool)
    thr = float(np.quantile(np.abs(E[off]), edge_quantile)) if off.any() else 0.0
    prov = _provenance(provenance)
    prov["modules"] = dict(modules.params)
    return {
        "modules.tsv": _modules_frame(modules, enrichment, n_terms).to_csv(sep="\t", index=False).encode(),
        "effects.csv": effects_long(E, genes).to_csv(index=False).encode(),
        "effects.graphml": graphml_bytes(E, genes, threshold=thr, provenance=provenance, modules=modules),
        "modules.provenance.json": _text(prov).encode(),
    }
