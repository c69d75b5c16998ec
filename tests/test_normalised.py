"""The no-count mode on sparse data: a screen that holds only log1p CP10k values, trained without a
measurement model, must generate cells in the data's domain (≥ 0, exact zeros, all-zero genes stay 0,
zero fractions near the data's) and keep its zero-aware decoder across save and load."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from safetensors.torch import load_file, save_file

from lcd_core import KEYS
from lcd_core.data import read_screen
from lcd_core.errors import RunError
from lcd_core.model import LCD, train
from lcd_core.model._run import RunDir
from lcd_core.module import QuantileDecoder

from tests.conftest import tiny_config

GENES = [f"G{i:02d}" for i in range(16)]
ALL_ZERO = ["G14", "G15"]  # zero in every cell of every condition


def sparse_log1p_screen(seed: int = 0, n_cells: int = 80) -> ad.AnnData:
    """log1p CP10k of ~20 UMIs per cell over 16 genes (about 75 % zeros, two genes never detected),
    with no counts layer: the file a user with only normalised values has."""
    rng = np.random.default_rng(seed)
    base = np.r_[rng.uniform(0.2, 4.0, 14), 0.0, 0.0]
    X, labels = [], []
    for c in ["ctrl", "G00", "G01", "G02", "G00+G01"]:
        rate = base.copy()
        for g in ([] if c == "ctrl" else c.split("+")):
            rate[GENES.index(g)] *= 6.0
        counts = rng.poisson(rate / rate.sum() * 20 * rng.lognormal(0, 0.3, (n_cells, 1)))
        totals = np.maximum(counts.sum(1, keepdims=True), 1)
        X.append(np.log1p(counts / totals * 1e4))
        labels += [c] * n_cells
    obs = pd.DataFrame({KEYS.PERT: pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=np.concatenate(X).astype(np.float32), obs=obs, var=pd.DataFrame(index=GENES))


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("sparse") / "screen.h5ad"
    sparse_log1p_screen().write_h5ad(path)
    screen = read_screen(path, count_recovery=False)
    assert not screen.is_counts
    run = tmp_path_factory.mktemp("runs") / "nc"
    model = train(screen, run, config=tiny_config(), device="cpu", heldout=["G00+G01"])
    return screen, run, model


def test_generated_cells_stay_in_the_datas_domain(sparse_run):
    screen, _, model = sparse_run
    assert model.decoder is not None
    pred = model.predict(["ctrl", "G00", "G00+G01"], n_cells=400, seed=1)
    zero = [GENES.index(g) for g in ALL_ZERO]
    observed = screen.log1p()
    for label, cells in pred.cells.items():
        assert cells.min() >= 0.0, label
        assert np.all(cells[:, zero] == 0.0), label
        # no values between 0 and a count of one: the data has none
        assert cells[cells > 0].min() >= observed[observed > 0].min() - 1e-6, label
    # the undecoded stage-2 values are continuous; the decoder is what puts the zeros back
    assert (pred.latent["ctrl"] == 0).mean() < 0.01


def test_zero_fractions_are_near_the_datas(sparse_run):
    screen, _, model = sparse_run
    conds = ["ctrl", "G00", "G01", "G02"]
    pred = model.predict(conds, n_cells=400, seed=2)
    gen = np.concatenate([pred.cells[c] for c in conds])
    obs = np.concatenate([screen.log1p(c) for c in conds])
    detected = [i for i, g in enumerate(GENES) if g not in ALL_ZERO]
    assert abs((gen == 0).mean() - (obs == 0).mean()) < 0.05
    per_gene = np.abs((gen[:, detected] == 0).mean(0) - (obs[:, detected] == 0).mean(0))
    assert np.median(per_gene) < 0.1, per_gene


def test_the_decoder_survives_save_and_load(sparse_run):
    _, run, model = sparse_run
    meta = json.loads((run / "model.json").read_text())
    assert meta["has_decoder"] is True
    fitted = [r for r in RunDir(run).read_log() if r.get("event") == "decoder_fitted"]
    assert len(fitted) == 1 and fitted[0]["genes_zero_everywhere"] == len(ALL_ZERO)
    loaded = LCD.load(run, device="cpu")
    assert loaded.decoder is not None
    np.testing.assert_array_equal(loaded.decoder.generated_q, model.decoder.generated_q)
    a = model.predict(["G00+G01"], n_cells=50, seed=3).cells["G00+G01"]
    b = loaded.predict(["G00+G01"], n_cells=50, seed=3).cells["G00+G01"]
    np.testing.assert_array_equal(a, b)


def test_a_normalised_run_saved_before_the_decoder_still_loads(sparse_run, tmp_path):
    """Format 2 (no decoder tensors, no ``has_decoder``): loads, and returns stage 2's values as before."""
    import shutil

    _, run, model = sparse_run
    old = tmp_path / "old"
    shutil.copytree(run, old)
    tensors = {k: v for k, v in load_file(str(old / "model.safetensors")).items() if not k.startswith("decoder.")}
    save_file(tensors, str(old / "model.safetensors"))
    meta = json.loads((old / "model.json").read_text())
    meta.pop("has_decoder")
    meta["model_format_version"] = 2
    (old / "model.json").write_text(json.dumps(meta))
    RunDir(old).mark_complete()  # the weights changed: re-seal them
    loaded = LCD.load(old, device="cpu")
    assert loaded.decoder is None
    pred = loaded.predict(["G00"], n_cells=50, seed=4)
    np.testing.assert_allclose(pred.cells["G00"], pred.latent["G00"], rtol=1e-6)


def test_a_decoder_that_does_not_fit_the_run_is_refused(sparse_run, tmp_path):
    import shutil

    _, run, _ = sparse_run
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    tensors = load_file(str(bad / "model.safetensors"))
    tensors["decoder.zero_fraction"] = tensors["decoder.zero_fraction"][:3].contiguous()
    save_file(tensors, str(bad / "model.safetensors"))
    RunDir(bad).mark_complete()
    with pytest.raises(RunError, match="does not fit"):
        LCD.load(bad, device="cpu")


def test_quantile_decoder_matches_zero_fractions_and_is_monotone():
    rng = np.random.default_rng(0)
    observed = np.where(rng.random((2000, 3)) < [0.9, 0.5, 1.0], 0.0, rng.uniform(0.5, 3.0, (2000, 3)))
    generated = rng.normal(0.0, 1.0, (3000, 3))  # continuous, with negatives: what a diffusion generates
    dec = QuantileDecoder.fit(generated, observed)
    out = dec(rng.normal(0.0, 1.0, (5000, 3)))
    assert out.min() >= 0.0
    np.testing.assert_allclose((out == 0).mean(0), [0.9, 0.5, 1.0], atol=0.03)
    assert out[:, 0][out[:, 0] > 0].min() >= observed[:, 0][observed[:, 0] > 0].min() - 1e-6
    grid = np.linspace(-4, 4, 200)[:, None].repeat(3, 1)
    assert np.all(np.diff(dec(grid), axis=0) >= 0)
    again = QuantileDecoder.from_state_dict(dec.state_dict())
    np.testing.assert_array_equal(again(grid), dec(grid))


def test_set_guidance_refits_the_decoder(sparse_run, tmp_path):
    # the decoder is fitted on generated cells: a new weight needs a new one, and the run stays loadable
    import shutil

    from lcd_core.model import set_guidance

    screen, run, model = sparse_run
    copy = tmp_path / "nc"
    shutil.copytree(run, copy)
    set_guidance(copy, screen, 1.6)
    moved = LCD.load(copy, device="cpu")
    assert moved.guidance == 1.6 and moved.decoder is not None
    assert not np.array_equal(moved.decoder.generated_q, model.decoder.generated_q)
    cells = moved.predict(["G00+G01"], n_cells=200, seed=1).cells["G00+G01"]
    assert cells.min() >= 0.0 and np.all(cells[:, [GENES.index(g) for g in ALL_ZERO]] == 0.0)
