"""Rate calibration [ours] (lcd_core.model._calibration): one factor per gene on the count model's Poisson rate,
fitted after stage 2 so that generated training conditions are as bright as the measured ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lcd_core import ConfigError
from lcd_core.data import read_screen
from lcd_core.model import LCD, RunDir, TrainConfig, get_preset, refit, train
from lcd_core.model._anchor import MAX_LOG_SCALE
from lcd_core.model._calibration import fit_rate_calibration
from lcd_core.module import ZIPNoise
from lcd_core.pp import normalize_log1p
from tests.conftest import tiny_config

TRAINING = ["ctrl", "G00", "G01", "G02", "G03"]


@pytest.fixture(scope="module")
def trained(tiny_run):
    assert tiny_config().rate_calibration  # trained with every new run's default
    return tiny_run


def _own_cells(model, n=2000, seed=5):
    """The model's own generated training conditions, uncalibrated: ``(counts, log1p CP10k)`` per label."""
    with torch.no_grad():
        model.noise.log_calibration.zero_()
    pred = model.predict(TRAINING, n, seed=seed)
    return {c: pred.counts[c] for c in TRAINING}, {c: pred.cells[c] for c in TRAINING}


def test_the_calibration_recovers_a_known_error_of_the_rates(trained):
    """Truth: cells the model itself generates are 'measured'; then some genes' unit scale is made wrong by a
    known factor. The calibration must find its inverse on those genes and leave the others alike, although
    CP10k couples every gene through the library (and so leaves a factor common to all genes free)."""
    _, run = trained
    model = LCD.load(run, device="cpu")
    counts, cells = _own_cells(model)
    wrong = np.zeros(model.n_genes)
    wrong[:3], wrong[3:5] = np.log(2.0), np.log(0.5)  # 2x too bright, 2x too dim
    with torch.no_grad():
        model.noise.unit_scale.mul_(torch.as_tensor(np.exp(wrong), dtype=model.noise.unit_scale.dtype))
    found = fit_rate_calibration(model, counts, seed=1)["log_factor"]
    common = np.median(found)  # the direction log1p CP10k does not see
    np.testing.assert_allclose(found - common, -wrong, atol=0.1)
    assert abs(common) < 0.2
    # it is set on the count model: the generated means match the measured ones again, gene by gene
    np.testing.assert_array_equal(model.noise.log_calibration.numpy(), found.astype(np.float32))
    pred = model.predict(TRAINING, 2000, seed=7)
    gen = np.mean([pred.cells[c].mean(0) for c in TRAINING], axis=0)
    target = np.mean([x.mean(0) for x in cells.values()], axis=0)
    assert np.abs(gen - target).max() < 0.05


def test_one_factor_per_gene_cannot_learn_a_conditions_shift(trained):
    """A measured change that only one condition has is not absorbed: the factor meets the gene's mean over
    the conditions, so the calibrated model keeps its own shift and misses that condition's."""
    _, run = trained
    model = LCD.load(run, device="cpu")
    counts, _ = _own_cells(model)
    counts["G02"] = counts["G02"].copy()
    counts["G02"][:, 6] *= 3  # a change the model does not have, in one condition of five
    measured = {c: np.asarray(normalize_log1p(y)).mean(0) for c, y in counts.items()}
    found = fit_rate_calibration(model, counts, seed=1)["log_factor"]
    pred = model.predict(TRAINING, 2000, seed=7)
    gap = {c: pred.cells[c].mean(0)[6] - measured[c][6] for c in TRAINING}
    assert abs(np.mean(list(gap.values()))) < 0.05  # the mean over conditions is met ...
    assert gap["G02"] < -0.3 and all(0 < gap[c] < 0.3 for c in TRAINING if c != "G02")  # ... G02's change is not
    others = np.delete(found - np.median(found), 6)
    assert found[6] - np.median(found) > 0.1 and np.abs(others).max() < 0.1


def test_training_calibrates_and_the_run_keeps_it(trained):
    _, run = trained
    model = LCD.load(run, device="cpu")
    factors = model.noise.log_calibration.numpy()
    assert np.any(factors != 0) and np.abs(factors).max() <= MAX_LOG_SCALE
    events = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    calibrated = [e for e in events if e.get("event") == "rate_calibrated"]
    assert len(calibrated) == 1 and calibrated[0]["median_abs_log_factor"] > 0
    # the generated cells go through it: with the factors zeroed the same seed gives other cells
    with_it = model.predict(["G02"], 200, seed=3).cells["G02"]
    with torch.no_grad():
        model.noise.log_calibration.zero_()
    assert not np.array_equal(with_it, model.predict(["G02"], 200, seed=3).cells["G02"])


def test_runs_from_before_the_calibration_load_uncalibrated(trained, tmp_path):
    _, run = trained
    tensors = load_file(str(run / "model.safetensors"))
    assert "noise.log_calibration" in tensors
    old = tmp_path / "old"
    old.mkdir()
    for f in run.iterdir():
        if f.is_file():
            (old / f.name).write_bytes(f.read_bytes())
    save_file({k: v for k, v in tensors.items() if k != "noise.log_calibration"}, str(old / "model.safetensors"),
              metadata={"format": "pt"})
    RunDir(old).mark_complete()  # what the older version's training recorded for its weights
    model = LCD.load(old, device="cpu")
    assert torch.count_nonzero(model.noise.log_calibration) == 0
    # their config records read back without it, the presets have it (METHOD's paper preset: not)
    assert TrainConfig.from_dict({}).rate_calibration is False
    assert get_preset("demo").rate_calibration and get_preset("standard").rate_calibration
    assert not get_preset("paper").rate_calibration
    # a state without the buffer (stage-1 checkpoints of an older version) fills in ρ = 1
    noise = ZIPNoise(np.ones(4))
    state = {k: v for k, v in noise.state_dict().items() if k != "log_calibration"}
    noise.load_state_dict(state)
    assert torch.count_nonzero(noise.log_calibration) == 0


def test_cli_switches_the_calibration_off_and_on(trained, tmp_path, lcd_here):
    screen, run = trained
    copy = tmp_path / "run"
    import shutil

    shutil.copytree(run, copy)
    off = lcd_here("fit", copy, "--data", screen.path, "--rate-calibration", "off", "--quiet")
    assert "rate calibration off" in off.stdout and "guidance 1.3" in off.stdout
    model = LCD.load(copy, device="cpu")
    assert torch.count_nonzero(model.noise.log_calibration) == 0
    assert json.loads((copy / "config.json").read_text())["config"]["rate_calibration"] is False
    on = lcd_here("fit", copy, "--data", screen.path, "--rate-calibration", "on", "--quiet")
    assert "rate calibration on" in on.stdout and "the rate calibration" in on.stdout
    np.testing.assert_array_equal(LCD.load(copy, device="cpu").noise.log_calibration.numpy(),
                                  LCD.load(run, device="cpu").noise.log_calibration.numpy())  # as training made it
    # a guidance change keeps the run's setting and fits the factors again at the new weight
    refit(copy, screen, guidance=1.0)
    moved = LCD.load(copy, device="cpu")
    assert moved.guidance == 1.0 and torch.count_nonzero(moved.noise.log_calibration) > 0
    assert not np.array_equal(moved.noise.log_calibration.numpy(), LCD.load(run).noise.log_calibration.numpy())


def test_a_run_without_a_count_model_refuses_it(tmp_path, lcd_here):
    from tests.test_normalised import sparse_log1p_screen

    sparse_log1p_screen().write_h5ad(tmp_path / "s.h5ad")
    screen = read_screen(tmp_path / "s.h5ad", count_recovery=False)
    run = tmp_path / "run"
    train(screen, run, config=tiny_config(), device="cpu", heldout=["G00+G01"])
    before = (run / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="acts on the count model"):
        refit(run, screen, rate_calibration=True)
    bad = lcd_here("fit", run, "--data", screen.path, "--no-count-recovery", "--rate-calibration", "on", check=False)
    assert bad.returncode != 0 and "acts on the count model" in bad.stderr
    assert (run / "model.safetensors").read_bytes() == before


def test_the_likelihood_reads_the_calibrated_rate():
    """ρ enters the rate everywhere the count model is read: the elementwise formula, the cell × sample matrix of
    stage 1, and the draws."""
    noise = ZIPNoise(np.array([2.0, 5.0, 1.0]), dropout_init=0.1)
    with torch.no_grad():
        noise.log_calibration.copy_(torch.log(torch.tensor([1.0, 3.0, 0.5])))
    s = torch.tensor([[0.3, -1.0, 2.0], [1.5, 0.2, -0.4]])
    y = torch.tensor([[1.0, 0.0, 4.0], [3.0, 2.0, 0.0]])
    expected = torch.tensor([2.0, 15.0, 0.5]) * torch.nn.functional.softplus(s)
    torch.testing.assert_close(noise.rate(s), expected)
    torch.testing.assert_close(noise.log_rate(s), torch.log(expected))
    torch.testing.assert_close(torch.diagonal(noise.log_likelihood_matrix(y, s)), noise.log_likelihood(y, s))
    draws = noise.sample_counts(s.repeat(20000, 1), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws.mean(0), (0.9 * expected).repeat(20000, 1).mean(0), rtol=0.03, atol=0.02)

