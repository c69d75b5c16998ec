"""Benchmark: the saved reference embedding of the shipped runs against fitting it, and its placement of
new cells against umap-learn's own ``transform``.

For each shipped run (assets/demo_run, assets/norman_run), on this machine:
- the saved file: size, time to load it, time to place 300 cells;
- a fresh fit with the same parameters by umap-learn's own neighbour search (the first one in the process
  includes numba's compile), and how well each reference picture keeps PC-space neighbours: the saved one
  (exact neighbours handed to umap-learn) and this one;
- placement: the held-out conditions' measured cells (never reference cells) placed by our kNN placement and
  by umap-learn's ``transform``, both against that fresh fit's reference coordinates, as the median distance between the two placements
  and between the two centroids per condition, in % of the embedding's extent; and the share of cells whose
  nearest reference condition centroid is the same under both; and, as a quality measure of each, neighbour
  preservation: the share of a cell's 15 nearest reference cells in PC space that are among its 15 nearest
  reference cells in the picture (1 = the picture keeps every neighbour).

    .venv/bin/python benchmarks/bench_embedding.py

Writes ``benchmarks/results/embedding.json`` and prints a table. Not part of the tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RUNS = {"demo_run": "demo_screen.h5ad", "norman_run": "norman2019_k562_subset.h5ad"}


def main() -> None:
    from lcd_core.data import read_screen
    from lcd_core.model import LCD, embedding_path, heldout_conditions
    from lcd_core.model._embedding import EMBEDDING_PARAMS, load_embedding
    from lcd_core.tl import reference_cells
    from lcd_core.tl._embedding import _stratified

    res: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}"}
    for run, data in RUNS.items():
        model = LCD.load(ROOT / "assets" / run, device="cpu")
        screen = read_screen(ROOT / "assets" / data)
        path = embedding_path(model, screen, method="umap")
        t0 = time.monotonic()
        emb = load_embedding(path)
        t_load = time.monotonic() - t0
        held = heldout_conditions(model, screen)
        X300 = screen.log1p(held[0] if held else model.conditions[1])[:300]
        t0 = time.monotonic()
        emb.transform(X300)
        t_place = time.monotonic() - t0

        # the same UMAP, fitted again here to compare placements with umap-learn's transform
        import umap

        X, labels = reference_cells(screen, model.conditions)
        rng = np.random.default_rng(EMBEDDING_PARAMS["rng"])
        seed = int(rng.integers(0, 2**31 - 1))
        keep = _stratified(np.asarray(labels, dtype=object), EMBEDDING_PARAMS["max_cells"], rng)
        Z = emb.pcs(X[keep])
        t0 = time.monotonic()
        um = umap.UMAP(n_neighbors=emb.params["n_neighbors"], min_dist=emb.params["min_dist"], n_components=2,
                       random_state=seed, n_epochs=200, low_memory=True, n_jobs=1, verbose=False)
        coords = um.fit_transform(Z)
        t_fit = time.monotonic() - t0
        same_fit = bool(np.allclose(coords, emb.coords, atol=1e-4))
        saved = emb
        # placements are compared inside umap-learn's own picture: ours placed against its coordinates
        emb = dataclasses.replace(saved, coords=np.asarray(coords, dtype=np.float32))
        extent = float(np.ptp(emb.coords, axis=0).max())
        cents = {c: emb.coords[emb.labels == c].mean(0) for c in dict.fromkeys(emb.labels.tolist())}
        names, C = list(cents), np.stack(list(cents.values()))
        cell_d, cent_d, agree, n = [], [], 0, 0
        keep_ours, keep_theirs = [], []
        ref_pcs = emb._ref_pcs.astype(np.float64)

        def knn(P, R, k=15):
            d2 = (P**2).sum(1)[:, None] + (R**2).sum(1)[None] - 2 * P @ R.T
            return np.argpartition(d2, k, axis=1)[:, :k]

        def preserved(pcs, xy, ref_xy=None):
            ref_xy = emb.coords if ref_xy is None else ref_xy
            a, b = knn(pcs.astype(np.float64), ref_pcs), knn(np.asarray(xy, np.float64), ref_xy.astype(np.float64))
            return [len(set(x) & set(y)) / a.shape[1] for x, y in zip(a, b)]

        # the reference pictures themselves: the saved fit (exact neighbours handed to umap-learn) and
        # umap-learn's own neighbour search; a reference cell counts itself among both neighbour sets
        ref_saved = float(np.mean(preserved(ref_pcs, saved.coords, saved.coords)))
        ref_umap = float(np.mean(preserved(ref_pcs, coords, np.asarray(coords))))
        for c in held:
            Zc = emb.pcs(screen.log1p(c))
            ours = emb.transform(screen.log1p(c))
            theirs = np.asarray(um.transform(Zc), dtype=np.float64)
            cell_d.append(np.linalg.norm(ours - theirs, axis=1))
            cent_d.append(np.linalg.norm(ours.mean(0) - theirs.mean(0)))
            nearest = lambda P: np.argmin(((P[:, None, :] - C[None]) ** 2).sum(-1), axis=1)  # noqa: E731
            agree += int((nearest(ours) == nearest(theirs)).sum())
            keep_ours += preserved(Zc, ours)
            keep_theirs += preserved(Zc, theirs)
            n += len(ours)
        res[run] = {
            "file": path.name, "file_kB": round(path.stat().st_size / 1e3, 1), "reference_cells": emb.params["n_cells"],
            "load_s": round(t_load, 4), "place_300_cells_s": round(t_place, 4), "umap_fit_s": round(t_fit, 1),
            "saved_fit_equals_umap_own_search": same_fit,
            "reference_neighbour_preservation_saved": round(ref_saved, 3),
            "reference_neighbour_preservation_umap_own_search": round(ref_umap, 3), "heldout_conditions": len(held), "heldout_cells": n,
            "median_cell_distance_pct_extent": round(100 * float(np.median(np.concatenate(cell_d))) / extent, 2) if n else None,
            "median_centroid_distance_pct_extent": round(100 * float(np.median(cent_d)) / extent, 2) if n else None,
            "same_nearest_condition_pct": round(100 * agree / n, 1) if n else None,
            "neighbour_preservation_ours": round(float(np.mean(keep_ours)), 3) if n else None,
            "neighbour_preservation_umap_transform": round(float(np.mean(keep_theirs)), 3) if n else None,
        }
    out = HERE / "results" / "embedding.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
