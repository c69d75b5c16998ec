"""The auto preset: sized to the screen's genes on a CPU, the standard preset on a GPU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lcd_core import ConfigError
from lcd_core.model import get_preset
from lcd_core.model._presets import auto_preset


def test_auto_on_a_cpu_is_the_demo_preset_with_steps_sized_to_the_genes():
    small, real, wide = (auto_preset(g, 30) for g in (144, 500, 5000))
    demo = get_preset("demo")
    assert small.preset == "auto" and small.stage2.hidden == demo.stage2.hidden
    assert small.stage2.steps == 5000  # the demo screen keeps the demo preset's measured budget
    assert 2000 <= real.stage2.steps < 5000  # a 500-gene screen: fewer steps of a costlier network
    assert wide.stage2.steps == 2000  # the floor
    assert auto_preset(500, 3).stage1.conditions_per_step == 3
    # one time budget for both stages: a cheaper stage 1 leaves stage 2 more steps
    assert auto_preset(500, 3).stage2.steps > real.stage2.steps


def test_auto_on_a_gpu_is_the_standard_preset():
    cfg = auto_preset(1000, 150, device="cuda:0", seed=4)
    assert cfg.preset == "auto" and cfg.stage2.steps == get_preset("standard").stage2.steps
    assert cfg.seed == cfg.stage1.seed == cfg.stage2.seed == 4


def test_auto_needs_the_screen():
    with pytest.raises(ConfigError, match="sized to a screen"):
        get_preset("auto")


def test_lcd_train_defaults_to_auto(tiny_h5ad, tmp_path):
    out = subprocess.run([sys.executable, "-m", "lcd_core.cli", "train", str(tiny_h5ad), "--out", str(tmp_path / "r"),
                          "--dry-run", "--device", "cpu"], capture_output=True, text=True, check=True)
    cfg = json.loads(out.stdout)
    assert cfg["preset"] == "auto" and cfg["stage2"]["steps"] == 5000


def test_new_runs_precondition_like_edm_and_old_records_read_back_as_ve():
    from lcd_core.model import TrainConfig

    for name in ("demo", "standard"):
        assert get_preset(name).stage2.preconditioning == "edm"
    assert get_preset("paper").stage2.preconditioning == "ve"  # METHOD.md as written
    assert auto_preset(500, 30).stage2.preconditioning == "edm"
    cfg = get_preset("demo")
    assert TrainConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = cfg.to_dict()
    del old["stage2"]["preconditioning"]  # a run's config.json from before the setting existed
    assert TrainConfig.from_dict(old).stage2.preconditioning == "ve"
    with pytest.raises(ConfigError, match="preconditioning"):
        TrainConfig.from_dict(dict(old, stage2=dict(old["stage2"], preconditioning="edm2")))


def test_new_runs_measure_genes_within_conditions_and_old_records_read_back_as_sigma_all():
    from lcd_core.model import TrainConfig

    for name in ("demo", "standard"):
        assert get_preset(name).stage2.scale == "within_median"
    assert get_preset("paper").stage2.scale == "all"  # METHOD.md's σ_all
    assert auto_preset(500, 30).stage2.scale == "within_median"
    old = get_preset("demo").to_dict()
    del old["stage2"]["scale"]  # a run's config.json from before the setting existed
    assert TrainConfig.from_dict(old).stage2.scale == "all"
    with pytest.raises(ConfigError, match="scale must be one of"):
        TrainConfig.from_dict(dict(old, stage2=dict(old["stage2"], scale="median")))
