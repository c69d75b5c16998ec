"""Anchored prediction [ours]: rate factors fitted on the measured singles, composed for combinations."""

from __future__ import annotations

import numpy as np
import pytest

from lcd_core import ConfigError, RunError
from lcd_core.model import LCD
from lcd_core.model._anchor import ANCHORS_FILE, Anchors, _fit_log_scale


@pytest.fixture(scope="module")
def trained(tiny_run):
    screen, run = tiny_run
    return screen, LCD.load(run, device="cpu"), run


def _centred_error(model, screen, label, anchored, seed):
    """|predicted − measured| log1p mean per gene, after removing the part shared by all genes (a difference in
    cell-to-cell spread that no mean correction can reach after library-size normalisation)."""
    diff = model.predict([label], 1000, seed=seed, anchored=anchored).cells[label].mean(0) - screen.log1p(label).mean(0)
    return np.abs(diff - diff.mean())


def test_training_writes_anchors_for_control_and_every_single(trained):
    screen, model, run = trained
    assert (run / ANCHORS_FILE).is_file()
    assert model.anchors.labels == ["ctrl", "G00", "G01", "G02", "G03"]
    assert model.anchors.log_scale.shape == (5, len(screen.genes))


def test_anchored_singles_reproduce_their_measured_means(trained):
    screen, model, _ = trained
    # seed 0 draws the latent states the factors were fitted on: what is left is the count draw's noise and
    # the fit's own error; another seed adds the generated cells' sampling error (this tiny model is far from
    # converged: its own composition is off by up to 0.4 log units on G00's target)
    for label in ["ctrl", "G00", "G02"]:
        fitted = _centred_error(model, screen, label, anchored=True, seed=0)
        # most genes land on their measured mean; a low-count gene can stay off by ~0.2 (the step's slope
        # ignores zeros turning into counts: README "Anchored prediction")
        assert np.median(fitted) < 0.05 and fitted.max() < 0.3, (label, fitted.round(2))
        anchored = _centred_error(model, screen, label, anchored=True, seed=3)
        raw = _centred_error(model, screen, label, anchored=False, seed=3)
        assert anchored.mean() < raw.mean(), (label, anchored.mean(), raw.mean())


def test_combination_factors_compose_from_the_singles(trained):
    _, model, _ = trained
    a = model.anchors
    rows = {lbl: a.log_scale[i] for i, lbl in enumerate(a.labels)}
    expected = rows["ctrl"] + (rows["G00"] - rows["ctrl"]) + (rows["G02"] - rows["ctrl"])
    np.testing.assert_allclose(a.for_label("G00+G02"), np.clip(expected, -6, 6), rtol=1e-6)
    # a gene never perturbed alone gets the control's factor only
    np.testing.assert_allclose(a.for_label("G07"), np.clip(rows["ctrl"], -6, 6))


def test_a_combination_is_lcds_own_mean_plus_the_composed_gaps(trained):
    screen, model, _ = trained
    a = model.anchors
    for label in ["G00", "G02"]:  # a single's gap: its measured mean minus LCD's own (as fitted, seed 0)
        own = model.predict([label], 1000, seed=0).cells[label].mean(0)
        gap = a.gap[a.labels.index(label)]
        assert np.median(np.abs(gap - (screen.log1p(label).mean(0) - own))) < 0.05
    # a held-out double, with gaps set by hand and every stored factor 1: composing the factors (version 6) would
    # leave LCD's own cells; the same latent states decoded with factors fitted on them must instead land on LCD's
    # own mean plus g_ctrl + (g_G00 − g_ctrl) + (g_G01 − g_ctrl), up to the count draws' noise and the fit's error
    # Read at guidance 1 (the composition does not depend on the weight; the fit's precision does: at the default
    # 1.3 this tiny run's worst gene misses by 0.16, docs/benchmarks.md "Guidance")
    label = "G00+G01"
    own = model.predict([label], 1000, seed=0, guidance=1.0).cells[label].mean(0)
    gap = np.zeros_like(a.gap)
    gap[a.labels.index("G00"), :4] = 0.5
    gap[a.labels.index("G01"), 2:6] = -0.3
    at_one = {k: v for k, v in a.settings.items() if k != "guidance"}
    saved, model.anchors = model.anchors, Anchors(a.labels, np.zeros_like(a.log_scale), gap, at_one)
    try:
        anchored = model.predict([label], 1000, seed=0, anchored=True, guidance=1.0).cells[label].mean(0)
    finally:
        model.anchors = saved
    wanted = np.maximum(own + np.r_[[0.5] * 2, [0.2] * 2, [-0.3] * 2, [0.0] * (len(own) - 6)], 0.0)
    diff = anchored - wanted
    err = np.abs(diff - diff.mean())  # centred, as for the singles above
    assert np.median(err) < 0.05 and err.max() < 0.15, err.round(2)


def test_a_target_no_library_holds_keeps_its_pattern_with_the_coupled_step():
    """A composed target can ask for more than a cell's library holds (every gene up by up to 1.5 log units,
    two of them dominant). The per-gene step, which lets each gene move the normaliser alone, then inverts
    the asked pattern; the coupled step (the combination's fit) spreads the shortfall and keeps it."""
    import torch

    from lcd_core.pp import normalize_log1p

    rng = np.random.default_rng(0)
    n, d = 400, 12
    rate = torch.as_tensor(np.tile([60.0, 40.0] + [3.0] * (d - 2), (n, 1)) * rng.gamma(20, 1 / 20, (n, 1)))
    keep = torch.ones(n, d, dtype=torch.bool)

    def mean_of(log_scale):
        scaled = rate * torch.as_tensor(np.exp(log_scale))
        return normalize_log1p(torch.poisson(scaled, generator=torch.Generator().manual_seed(1)).double().numpy()).mean(0)

    own = mean_of(np.zeros(d))
    asked = np.r_[[1.5, 1.5], np.linspace(0.2, 1.5, d - 2)]
    corr = {}
    for coupled in (False, True):
        fitted = _fit_log_scale(rate, keep, own + asked, np.zeros(d), iters=5, seed=0, coupled=coupled)
        corr[coupled] = np.corrcoef(mean_of(fitted) - own, asked)[0, 1]
    assert corr[True] > 0.5 and corr[False] < 0.0, corr


def test_anchored_without_anchors_is_refused(trained):
    _, model, run = trained
    bare = LCD.load(run, device="cpu")
    bare.anchors = None
    with pytest.raises(ConfigError, match="no anchors"):
        bare.predict(["G00"], 10, anchored=True)


def test_corrupt_or_foreign_anchor_files(trained, tmp_path):
    _, model, _ = trained
    model.anchors.save(tmp_path)
    loaded = Anchors.load(tmp_path)
    np.testing.assert_array_equal(loaded.log_scale, model.anchors.log_scale)
    (tmp_path / ANCHORS_FILE).write_bytes(b"not a safetensors file")
    with pytest.raises(RunError, match="corrupt"):
        Anchors.load(tmp_path)
    assert Anchors.load(tmp_path / "absent") is None
