"""The user-facing model on a tiny screen: shapes, save/load round trip, bad runs, bad arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lcd_core import ConfigError, RunError
from lcd_core.data import read_screen
from lcd_core.model import LCD, RunDir, train
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from tests.conftest import make_tiny_counts

    tmp = tmp_path_factory.mktemp("run")
    make_tiny_counts().write_h5ad(tmp / "tiny.h5ad")
    screen = read_screen(tmp / "tiny.h5ad")
    model = train(screen, tmp / "run", config=tiny_config(), device="cpu", heldout=["G00+G01"])
    return screen, model, tmp / "run"


def test_run_directory_is_complete_and_describes_the_training(trained):
    screen, model, run = trained
    cfg = RunDir(run).require_complete()
    assert cfg["genes"] == screen.genes
    assert cfg["heldout"] == ["G00+G01"]
    assert "G00+G01" not in cfg["train_conditions"] and "ctrl" in cfg["train_conditions"]
    assert cfg["data_hash"] == screen.data_hash
    assert cfg["config"]["stage2"]["steps"] == 300
    assert (run / "model.safetensors").is_file()


def test_predict_shapes_and_unseen_combination(trained):
    screen, model, run = trained
    pred = model.predict(["G00+G01", "G02"], n_cells=30, seed=1)
    assert set(pred.cells) == {"G00+G01", "G02"}
    for v in pred.cells.values():
        assert v.shape == (30, screen.adata.n_vars) and np.isfinite(v).all() and (v >= 0).all()
    adata = pred.to_anndata(model.genes)
    assert list(adata.var_names) == screen.genes
    assert adata.obs["perturbation"].value_counts().to_dict() == {"G00+G01": 30, "G02": 30}


def test_a_conditions_cells_do_not_depend_on_the_batch(trained):
    _, model, _ = trained
    a = model.predict(["G02"], n_cells=20, seed=3).cells["G02"]
    b = model.predict(["G00", "G02"], n_cells=20, seed=3).cells["G02"]
    np.testing.assert_array_equal(a, b)


def test_save_load_round_trip_gives_identical_predictions(trained):
    _, model, run = trained
    again = LCD.load(run, device="cpu")
    a = model.predict(["G01"], n_cells=16, seed=5).cells["G01"]
    b = again.predict(["G01"], n_cells=16, seed=5).cells["G01"]
    np.testing.assert_array_equal(a, b)


def test_unknown_gene_is_refused_with_close_matches(trained):
    _, model, _ = trained
    with pytest.raises(ConfigError, match="unknown gene 'G0O'.*did you mean"):
        model.predict(["G0O"], n_cells=5)


def test_gene_never_perturbed_uses_the_mean_embedding_and_is_flagged(trained):
    _, model, _ = trained
    pred = model.predict(["G07"], n_cells=5)
    assert pred.unseen == {"G07": ["G07"]}


def test_zero_cells_and_malformed_labels_are_refused(trained):
    _, model, _ = trained
    with pytest.raises(ConfigError, match="at least 1"):
        model.predict(["G01"], n_cells=0)
    with pytest.raises(ConfigError, match="malformed"):
        model.predict(["G01+"], n_cells=5)
    with pytest.raises(ConfigError, match="twice"):
        model.predict(["G01+G01"], n_cells=5)


def test_corrupt_weights_give_a_clear_error(trained, tmp_path):
    import shutil

    _, _, run = trained
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    data = bytearray((copy / "model.safetensors").read_bytes())
    data[100:200] = b"\0" * 100
    (copy / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(RunError, match="does not match"):
        LCD.load(copy, device="cpu")


def test_run_from_another_version_gives_a_clear_error(trained, tmp_path):
    import shutil

    _, _, run = trained
    copy = tmp_path / "old"
    shutil.copytree(run, copy)
    cfg = json.loads((copy / "config.json").read_text())
    cfg["run_format_version"] = 0
    (copy / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(RunError, match="format 0"):
        LCD.load(copy, device="cpu")


def test_a_missing_device_is_refused():
    from lcd_core._device import resolve_device

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="no usable CUDA"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")


def test_a_finished_run_drops_its_checkpoints(trained):
    """Checkpoints exist only while a training can resume (tests/test_cli.py loads them with
    weights_only=True mid-training); a finished run keeps the model alone."""
    _, _, run = trained
    assert (run / "COMPLETE").exists() and not (run / "checkpoints").exists()


def test_predicted_cells_of_a_training_condition_beat_control_cells(trained):
    """MMD to the observed cells: LCD's prediction of a training single must be closer than the
    observed control cells are (the model learned the perturbation, not only the baseline)."""
    from lcd_core.metrics import mmd

    screen, model, _ = trained
    for cond in ("G01", "G02", "G03"):
        obs = screen.log1p(cond)
        pred = model.predict([cond], n_cells=200, seed=0).cells[cond]
        ctrl = screen.log1p("ctrl")
        assert mmd(pred, obs) < mmd(ctrl, obs), cond


def test_the_demo_split_holds_out_every_listed_double():
    """Regression: a stored label 'B+A' must hold out the cells the screen calls 'A+B'."""
    from pathlib import Path

    from lcd_core.model import resolve_split

    screen = read_screen(Path(__file__).resolve().parents[1] / "assets" / "demo_screen.h5ad")
    split = resolve_split(screen)
    assert len(split["heldout"]) == len(screen.split["heldout"]) == 16
    assert not set(split["heldout"]) & set(split["train"])
    assert all(c in screen.combos for c in split["heldout"])
