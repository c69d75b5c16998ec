"""Exports of causal effects and modules with provenance (CSV/TSV comment header, GraphML + sidecar)."""

from __future__ import annotations

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


def _header(prov: dict) -> str:
    return "# lcd_core provenance: " + json.dumps(prov, sort_keys=True) + "\n"


def effects_long(
    effects: np.ndarray, genes: Sequence[str], *, threshold: float = 0.0, include_diagonal: bool = False
) -> pd.DataFrame:
    """Effect matrix (rows = sources) as a long table ``source, target, effect``.

    Keeps entries with |effect| > ``threshold``, sorted by |effect| (largest first).
    """
    E = np.asarray(effects, dtype=float)
    genes = np.asarray(list(genes), dtype=object)
    if E.shape != (genes.size, genes.size):
        raise ConfigError(f"effects {E.shape} do not match {genes.size} genes.")
    keep = np.abs(E) > threshold
    if not include_diagonal:
        np.fill_diagonal(keep, False)
    i, j = np.nonzero(keep)
    df = pd.DataFrame({"source": genes[i], "target": genes[j], "effect": E[i, j]})
    return df.iloc[np.argsort(-np.abs(df["effect"].to_numpy()), kind="stable")].reset_index(drop=True)


def write_effects_csv(
    path: str | PathLike, effects: np.ndarray, genes: Sequence[str], *, provenance: Mapping | None = None,
    threshold: float = 0.0,
) -> Path:
    """Write :func:`effects_long` as CSV, first line ``# lcd_core provenance: {json}``
    (read back with ``pandas.read_csv(path, comment="#")``)."""
    path = Path(path)
    df = effects_long(effects, genes, threshold=threshold)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(_header(_provenance(provenance)))
        df.to_csv(fh, index=False)
    return path


def write_modules_tsv(
    path: str | PathLike, modules, *, enrichment: pd.DataFrame | None = None, provenance: Mapping | None = None,
    n_terms: int = 3,
) -> Path:
    """Write ``gene, module, is_hub, top_terms`` (TSV) of a :class:`ModuleResult`, with the provenance
    comment line; ``top_terms`` are the module's first ``n_terms`` enriched terms (``;``-joined)."""
    path = Path(path)
    terms = {}
    if enrichment is not None and len(enrichment):
        for m, sub in enrichment.groupby("module", sort=False):
            terms[m] = ";".join(sub["term"].astype(str).head(n_terms))
    hubs = {g for hs in modules.hubs.values() for g in hs}
    df = pd.DataFrame({
        "gene": modules.genes,
        "module": modules.labels,
        "is_hub": [g in hubs for g in modules.genes],
        "top_terms": [terms.get(m, "") for m in modules.labels],
    })
    prov = _provenance(provenance)
    prov["modules"] = dict(modules.params)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(_header(prov))
        df.to_csv(fh, sep="\t", index=False)
    return path


def write_graphml(
    path: str | PathLike, effects: np.ndarray, genes: Sequence[str], *, threshold: float = 0.0,
    provenance: Mapping | None = None, modules=None,
) -> tuple[Path, Path]:
    """Write the thresholded effect graph (edges source → target, attributes ``effect``, ``weight`` =
    |effect|, ``sign``; node attribute ``module`` when given) as GraphML, with the provenance as graph
    attributes and as a JSON sidecar ``<path>.json``. Returns both paths."""
    import networkx as nx

    path = Path(path)
    df = effects_long(effects, genes, threshold=threshold)
    G = nx.DiGraph()
    labels = dict(zip(modules.genes, modules.labels)) if modules is not None else {}
    for g in genes:
        G.add_node(str(g), module=str(labels.get(g, "")))
    for s, t, e in df.itertuples(index=False):
        G.add_edge(str(s), str(t), effect=float(e), weight=abs(float(e)), sign=int(np.sign(e)))
    prov = _provenance(provenance)
    prov["threshold"] = threshold
    G.graph.update({k: json.dumps(v) for k, v in prov.items()})  # GraphML holds scalars: store JSON text
    nx.write_graphml(G, path)
    side = path.with_name(path.name + ".json")
    side.write_text(json.dumps(prov, indent=2, sort_keys=True), encoding="utf-8")
    return path, side
