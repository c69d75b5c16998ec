"""Guidance [ours]: a perturbation's score pushed away from the control's (lcd_core.sampling.guided), as a
run setting (`lcd train --set guidance=W`) and a per-call override (`lcd predict/evaluate --guidance W`).
The exact Gaussian case is in test_sampling.py; here, a trained model."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest

from lcd_core import ConfigError
from lcd_core.data import read_screen
from lcd_core.model import LCD, TrainConfig, evaluate_run, train
from tests.conftest import make_tiny_counts, tiny_config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guidance")
    make_tiny_counts().write_h5ad(tmp / "tiny.h5ad")
    screen = read_screen(tmp / "tiny.h5ad")
    cfg = tiny_config()
    assert cfg.guidance == TrainConfig().guidance == 1.0  # the paper's sampling unless asked
    cfg.guidance = 1.3  # what `lcd train --set guidance=1.3` sets
    train(screen, tmp / "run", config=cfg, device="cpu", heldout=["G00+G01"])
    return screen, tmp / "run"


def _shift(model, label, weight):
    control = model.sample_standardised("ctrl", 1000, seed=0).mean(0)
    return np.linalg.norm(model.sample_standardised(label, 1000, seed=0, guidance=weight).mean(0) - control)


def test_guidance_scales_each_learned_shift_and_leaves_control_alone(trained):
    _, run = trained
    model = LCD.load(run, device="cpu")
    # the run's weight is recorded by training and its anchors are fitted on cells drawn at it
    assert model.guidance == 1.3 and model.anchors.guidance == 1.3
    for label in ("G00", "G01", "G00+G01"):  # singles and the held-out double
        plain = _shift(model, label, 1.0)
        for weight in (0.5, 1.5):
            assert abs(_shift(model, label, weight) / plain - weight) < 0.1, (label, weight)
    np.testing.assert_array_equal(model.sample_standardised("ctrl", 20, seed=1, guidance=1.5),
                                  model.sample_standardised("ctrl", 20, seed=1))


def test_the_run_setting_is_the_default_and_anchors_follow_it(trained):
    screen, run = trained
    model = LCD.load(run, device="cpu")
    explicit = model.predict(["G00"], 50, seed=2, guidance=1.0)
    assert explicit.params["guidance"] == 1.0 and model.predict(["G00"], 5).params["guidance"] == 1.3
    model.info["guidance"] = 1.0  # what `lcd train` records by default
    implicit = model.predict(["G00"], 50, seed=2)
    np.testing.assert_array_equal(implicit.cells["G00"], explicit.cells["G00"])
    # the anchors were fitted on cells at weight 1.3: anchored cells at 1 would not reproduce the singles
    with pytest.raises(ConfigError, match="fitted on cells generated at guidance 1.3"):
        model.predict(["G00"], 10, anchored=True)
    table = evaluate_run(model, screen, n_cells=60)  # refits them at the run's weight (not saved)
    assert model.anchors.guidance == 1.0 and "lcd_anchored" in set(table["method"])
    assert LCD.load(run, device="cpu").anchors.guidance == 1.3
    model.info.pop("guidance")  # a run from before guidance: weight 1, as it was evaluated
    assert model.guidance == 1.0


def test_cli_guidance(trained, tmp_path, lcd_here):
    screen, run = trained
    out = tmp_path / "p.h5ad"
    lcd_here("predict", run, "--perturb", "G00", "--cells", "30", "--guidance", "1.5", "--out", out)
    assert json.loads(ad.read_h5ad(out).uns["lcd_prediction"]["params_json"])["guidance"] == 1.5
    bad = lcd_here("predict", run, "--perturb", "G00", "--cells", "30", "--guidance", "0", "--out", out, check=False)
    assert bad.returncode != 0 and "guidance must be a positive number" in bad.stderr
    refused = lcd_here("train", screen.path, "--out", tmp_path / "r", "--set", "guidance=-1", check=False)
    assert refused.returncode != 0 and "guidance must be a positive number" in refused.stderr
    assert not (tmp_path / "r").exists()
    report = tmp_path / "report"
    lcd_here("evaluate", run, "--data", screen.path, "--cells", "40", "--guidance", "1.5", "--out", report)
    assert json.loads((report / "provenance.json").read_text())["guidance"] == 1.5
    assert "- guidance: 1.5" in (report / "summary.md").read_text()
