"""The reference embedding saved in a run directory: keyed by what made it, loaded instead of refitted,
placing new cells exactly as the freshly fitted one; the shipped runs carry theirs."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import tiny_config

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = {"demo_run": "demo_screen.h5ad", "norman_run": "norman2019_k562_subset.h5ad"}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished tiny run (its training saved a PCA embedding, tiny_config's choice) and its screen."""
    from lcd_core.data import read_screen
    from lcd_core.model import LCD, train
    from lcd_core.simulation import simulate_nonlinear

    d = tmp_path_factory.mktemp("emb")
    simulate_nonlinear(12, n_modules=2, n_singles=5, n_doubles=2, n_cells=40, seed=3).write_h5ad(d / "s.h5ad")
    screen = read_screen(d / "s.h5ad")
    train(screen, d / "run", config=tiny_config(), device="cpu")
    return LCD.load(d / "run"), screen


def test_training_saves_the_embedding_and_later_opens_load_it(tiny_run):
    from lcd_core.model import embedding_path, get_embedding

    model, screen = tiny_run
    path = embedding_path(model, screen, method="pca")
    assert path.is_file() and path.parent == Path(model.info["run"]) / "cache"
    log = [r for r in map(json.loads, (path.parents[1] / "log.jsonl").read_text().splitlines())
           if r.get("event") == "embedding"]
    assert log and log[0]["method"] == "pca"
    before = path.stat().st_mtime_ns
    emb = get_embedding(model, screen, method="pca")
    assert path.stat().st_mtime_ns == before  # read, not refitted and rewritten
    fresh = get_embedding(model, screen, method="pca", use_cache=False)
    X = screen.log1p(model.conditions[1])
    np.testing.assert_array_equal(emb.transform(X), fresh.transform(X))
    np.testing.assert_array_equal(emb.coords, fresh.coords)
    assert list(emb.labels) == list(fresh.labels)


def test_embedding_is_keyed_by_cells_and_version_so_a_stale_one_is_refitted(tiny_run):
    from lcd_core.model import embedding_path, get_embedding
    from lcd_core.tl._embedding import EMBEDDING_VERSION

    model, screen = tiny_run
    path = embedding_path(model, screen, method="pca")
    # other reference cells (fewer training conditions) or another method: another file
    fewer = type(model).__new__(type(model))
    fewer.__dict__.update(model.__dict__, conditions=model.conditions[:-1])
    assert embedding_path(fewer, screen, method="pca") != path
    assert embedding_path(model, screen, method="umap") != path
    # a file of an older algorithm under this name is refitted and replaced, not read
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays["meta"]))
    meta["params"]["version"] = EMBEDDING_VERSION - 1
    arrays["meta"] = np.array(json.dumps(meta))
    arrays["coords"] = arrays["coords"] + 100.0  # what a stale read would show
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.write_bytes(buf.getvalue())
    emb = get_embedding(model, screen, method="pca")
    assert emb.params["version"] == EMBEDDING_VERSION and np.abs(emb.coords).max() < 100
    with np.load(path, allow_pickle=False) as z:
        assert json.loads(str(z["meta"]))["params"]["version"] == EMBEDDING_VERSION
    # a corrupt file is refitted too
    path.write_bytes(b"not an npz")
    assert get_embedding(model, screen, method="pca").params["version"] == EMBEDDING_VERSION


@pytest.mark.parametrize("run", sorted(SHIPPED))
def test_shipped_runs_carry_a_current_umap_embedding_that_places_cells_near_their_own(run, tmp_path):
    from lcd_core import KEYS
    from lcd_core.data import read_screen
    from lcd_core.model import LCD, embedding_path
    from lcd_core.model._embedding import load_embedding, save_embedding
    from lcd_core.tl import reference_cells

    model = LCD.load(ROOT / "assets" / run)
    screen = read_screen(ROOT / "assets" / SHIPPED[run])
    path = embedding_path(model, screen, method="umap")
    assert path.is_file(), f"{path} missing or stale: regenerate it with 'lcd embed assets/{run}'"
    assert path.stat().st_size < 600_000
    emb = load_embedding(path)
    assert emb.method == "umap" and emb.coords.shape == (emb.params["n_cells"], 2)
    extent = np.ptp(emb.coords, axis=0).max()
    X, labels = reference_cells(screen, model.conditions)
    if len(X) == emb.params["n_cells"]:  # every cell is a reference cell: each lands beside its UMAP place
        placed = emb.transform(X)
        assert list(labels) == list(emb.labels)
        assert np.median(np.linalg.norm(placed - emb.coords, axis=1)) < 0.05 * extent
    # the measured cells of each condition land around that condition's reference cells
    for cond in [c for c in model.conditions if c != KEYS.CONTROL][:5]:
        centre = emb.coords[emb.labels == cond].mean(0)
        assert np.linalg.norm(emb.transform(screen.log1p(cond)).mean(0) - centre) < 0.1 * extent, cond
    # saved again and loaded, it places cells bit for bit as before
    assert save_embedding(tmp_path / "copy.npz", emb)
    again = load_embedding(tmp_path / "copy.npz")
    cells = screen.log1p(model.info.get("heldout", [])[0] if model.info.get("heldout") else KEYS.CONTROL)
    np.testing.assert_array_equal(again.transform(cells), emb.transform(cells))


@pytest.mark.slow
def test_fitted_umap_and_its_saved_copy_place_cells_identically(tmp_path):
    """The placement a page gets from a freshly fitted UMAP is the one it gets from the file (numba compile:
    slow)."""
    from lcd_core.model._embedding import load_embedding, save_embedding
    from lcd_core.tl import fit_reference_embedding

    rng = np.random.default_rng(0)
    centres = rng.normal(scale=4.0, size=(6, 20))
    labels = np.repeat([f"c{i}" for i in range(6)], 80)
    X = np.abs(centres[np.repeat(np.arange(6), 80)] + rng.normal(size=(480, 20)))
    emb = fit_reference_embedding(X, labels, method="umap", max_cells=400)
    assert save_embedding(tmp_path / "e.npz", emb)
    back = load_embedding(tmp_path / "e.npz")
    new = np.abs(centres[[0, 3]].repeat(50, 0) + rng.normal(size=(100, 20)))
    np.testing.assert_array_equal(back.transform(new), emb.transform(new))
    np.testing.assert_array_equal(back.coords, emb.coords)
    # new cells of a cluster land among that cluster's reference cells
    centre = emb.coords[emb.labels == "c3"].mean(0)
    assert np.linalg.norm(emb.transform(new[50:]).mean(0) - centre) < 0.1 * np.ptp(emb.coords, axis=0).max()
