"""Fit check (validation split, best weights, fit.json) and replicate-calibrated scores, on cases whose
answer is known and on a tiny trained run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from lcd_core.data import read_screen
from lcd_core.metrics import (REPLICATE, calibrate, calibrated_score, calibrated_summary, condition_rng, split_half,
                              split_half_protocol)
from lcd_core.model import RunDir, fit_report, read_fit, train, validation_split
from lcd_core.model._fit import fit_condition, summary_sentence, verdict
from lcd_core.train import Stage2Config, fit_stage1, fit_stage2
from tests.conftest import make_tiny_counts, tiny_config


# -- calibrated scores -------------------------------------------------------------------------------
def test_calibrated_score_is_zero_at_the_baseline_one_at_the_replicate_either_direction():
    assert calibrated_score(0.7, 0.7, 0.9) == (0.0, "")
    assert calibrated_score(0.9, 0.7, 0.9) == (1.0, "")
    # lower is better (a distance): the same formula, no sign flip
    assert calibrated_score(1.5, 2.0, 1.0)[0] == pytest.approx(0.5)
    assert calibrated_score(3.0, 2.0, 1.0)[0] == pytest.approx(-1.0)  # worse than the baseline
    score, note = calibrated_score(0.5, 1.0, 1.0)
    assert np.isnan(score) and "r = b" in note
    score, note = calibrated_score(float("nan"), 1.0, 2.0)
    assert np.isnan(score) and "method" in note


def _population(rng, n, mean):
    return np.maximum(rng.normal(mean, 0.6, (n, mean.size)), 0.0)


def _half_table(seed=0, n_conditions=6):
    """Conditions drawn from known distributions; 'perfect' draws from the truth, 'additive' misses half
    the shift, 'pooled' predicts the control."""
    rng = np.random.default_rng(seed)
    d = 40
    base = rng.uniform(0.5, 3.0, d)
    control = _population(rng, 600, base)
    rows = []
    for k in range(n_conditions):
        shift = np.zeros(d)
        shift[rng.choice(d, 10, replace=False)] = rng.choice([-1.0, 1.0], 10) * rng.uniform(0.8, 1.5, 10)
        obs = _population(rng, 300, base + shift)
        preds = {"perfect": _population(rng, 2000, base + shift), "additive": _population(rng, 2000, base + shift / 2),
                 "pooled": _population(rng, 2000, base)}
        rows += split_half_protocol(preds, obs, control, train_perturbed_mean=base, condition=f"C{k}", seed=seed)
    return pd.DataFrame(rows)


def test_a_perfect_prediction_scores_about_one_and_the_baseline_zero():
    half = _half_table()
    summ = calibrated_summary(half).set_index(["metric", "method", "baseline"])
    for metric in ("rmse", "pearson_delta", "rmse_top20", "wasserstein", "mmd_top20"):
        assert summ.loc[(metric, "perfect", "additive"), "score"] == pytest.approx(1.0, abs=0.25), metric
        assert summ.loc[(metric, "additive", "additive"), "score"] == 0.0
        assert summ.loc[(metric, "pooled", "pooled"), "score"] == 0.0
        # half the shift is between "no shift" and the truth, on the right side of each
        assert 0.0 < summ.loc[(metric, "additive", "pooled"), "score"] < 1.0, metric
    per = calibrate(half)
    assert set(per["method"]) == {"perfect", "additive", "pooled"} and REPLICATE not in set(per["method"])


def test_the_replicate_half_itself_scores_exactly_one():
    rng = np.random.default_rng(3)
    obs, control = rng.poisson(3.0, (50, 8)).astype(float), rng.poisson(2.0, (80, 8)).astype(float)
    a, _ = split_half(len(obs), condition_rng(0, "X"))
    preds = {"copy": obs[a], "pooled": control, "additive": control + 0.1}
    half = pd.DataFrame(split_half_protocol(preds, obs, control, train_perturbed_mean=control.mean(0),
                                            condition="X", seed=0))
    per = calibrate(half)
    copy = per[(per["method"] == "copy") & per["score"].notna()]
    assert len(copy) and np.allclose(copy["score"], 1.0)


def test_a_condition_too_small_to_split_is_skipped_and_r_equal_b_gives_nan_with_reason():
    x = np.ones((3, 5))
    assert split_half_protocol({"a": x}, x, x, train_perturbed_mean=x[0], condition="c") == []
    half = pd.DataFrame([{"method": m, "condition": "c", "rmse": 0.5} for m in ("lcd", "additive", "pooled", REPLICATE)])
    per = calibrate(half)
    assert per["score"].isna().all() and per["note"].str.contains("r = b").all()
    assert not np.isinf(calibrated_summary(half)["score"]).any()


# -- fit numbers on constructed cases --------------------------------------------------------------------
def test_fit_condition_of_the_observed_cells_themselves_is_within_noise_and_control_is_not():
    rng = np.random.default_rng(0)
    d = 30
    base = rng.uniform(1.0, 3.0, d)
    shift = np.zeros(d)
    shift[:12] = np.linspace(-1.5, 1.5, 12)
    control, obs = _population(rng, 500, base), _population(rng, 400, base + shift)
    same = fit_condition(obs, obs, control, rng=np.random.default_rng(1))
    assert same["r"] == pytest.approx(1.0) and same["magnitude"] == pytest.approx(1.0)
    assert 0.9 < same["r_ceiling"] <= 1.0
    assert verdict(same)[0] == "within"
    shrunk = fit_condition(control + shift * 0.5, obs, control, rng=np.random.default_rng(1))
    status, why = verdict(shrunk)
    assert status == "outside" and "magnitude 0.5" in why
    # no effect: the top genes' split halves are noise (a large control set, so its mean adds none shared)
    big_control = _population(rng, 20000, base)
    null = fit_condition(big_control[:300], _population(rng, 100, base), big_control, rng=np.random.default_rng(1))
    assert verdict(null)[0] == "no_shift"
    entries = {"A": dict(same, status="within", why=""), "B": dict(shrunk, status="outside", why=why),
               "C": dict(null, status="no_shift", why="")}
    text = summary_sentence(entries)
    assert text.startswith("reproduces 1 of 2 training conditions within replicate noise; not this one: B (")
    assert "1 condition without a reproducible shift" in text


# -- validation split and the stage loops -------------------------------------------------------------
def test_validation_split_is_deterministic_disjoint_per_condition_and_can_be_off():
    n = {"ctrl": 100, "A": 40, "B": 7}
    v = validation_split(n, 0.1, seed=0)
    assert v == validation_split(n, 0.1, seed=0) != validation_split(n, 0.1, seed=1)
    assert [len(v[c]) for c in n] == [10, 4, 3]  # at least 3 cells
    assert v["A"] == validation_split({"A": 40}, 0.1, seed=0)["A"]  # independent of the other conditions
    assert all(len(set(v[c])) == len(v[c]) and max(v[c]) < n[c] for c in n)
    assert validation_split(n, 0.0, seed=0) == {c: [] for c in n}


def _counts(seed=0):
    return [make_tiny_counts(seed, conditions=["ctrl", "G00", "G01"])[i * 60:(i + 1) * 60].X for i in range(3)]


def _stage1_config():
    from lcd_core.train import Stage1Config

    return Stage1Config(generator="gaussian", n_samples=32, batch_size=16, steps=12, warmup=2, log_every=3)


def test_stage1_validation_is_logged_leaves_training_untouched_and_returns_the_best_weights():
    from lcd_core.module import unit_scale_from_counts
    from lcd_core.train._stage1 import validation_nll

    counts = _counts()
    train_part, val_part = [y[:50] for y in counts], [y[50:] for y in counts]
    u = unit_scale_from_counts(train_part[0])
    plain = fit_stage1(train_part, u, _stage1_config())
    res = fit_stage1(train_part, u, _stage1_config(), val_counts=val_part)
    # validation draws from its own generator: the training trajectory is the same
    assert [h["loss"] for h in res.history] == [h["loss"] for h in plain.history]
    vals = [h["val_loss"] for h in res.history]
    assert len(vals) == 4 and all(np.isfinite(vals))
    assert res.best["step"] == res.history[int(np.argmin(vals))]["step"]
    val_t = [torch.as_tensor(v, dtype=torch.float32) for v in val_part]
    now = validation_nll(res.noise, res.generators, val_t, 32, _stage1_config().seed + 1)
    assert now == pytest.approx(min(vals), rel=1e-5)
    # resumed after an interruption (max_seconds=0 stops after one step): the same validation history
    state = fit_stage1(train_part, u, _stage1_config(), val_counts=val_part, max_seconds=0).state_dict()
    while state["step"] < 12:
        state = fit_stage1(train_part, u, _stage1_config(), val_counts=val_part, state=state,
                           max_seconds=0).state_dict()
    assert [h["val_loss"] for h in state["history"]] == pytest.approx(vals, rel=1e-6)
    assert state["best"]["step"] == res.best["step"]


def test_stage2_validation_is_logged_leaves_training_untouched_and_returns_the_best_weights():
    from lcd_core.train._stage2 import validation_dsm

    rng = np.random.default_rng(0)
    x = [rng.normal(m, 1.0, (200, 6)).astype(np.float32) for m in (0.0, 1.0, -1.0)]
    val = [rng.normal(m, 1.0, (30, 6)).astype(np.float32) for m in (0.0, 1.0, -1.0)]
    pert = np.array([[0, 0], [1, 0], [0, 1]], dtype=np.float32)
    cfg = Stage2Config(hidden=16, n_layers=1, emb_dim=4, level_emb_dim=8, batch_size=64, steps=60, log_every=10)
    plain = fit_stage2(x, pert, cfg)
    res = fit_stage2(x, pert, cfg, val_x=val)
    assert [h["loss"] for h in res.history] == [h["loss"] for h in plain.history]
    vals = [h["val_loss"] for h in res.history]
    assert res.best_val_loss == min(vals) and res.best_step == res.history[int(np.argmin(vals))]["step"]
    v = torch.as_tensor(np.concatenate(val))
    cond = torch.repeat_interleave(torch.arange(3), 30)
    again = validation_dsm(res.net, v, cond, torch.as_tensor(pert), seed=cfg.seed + 1, batch_size=64)
    assert again == pytest.approx(res.best_val_loss, rel=1e-5)


# -- the driver: split in config.json, resume, fit.json --------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fit")
    make_tiny_counts().write_h5ad(tmp / "tiny.h5ad")
    screen = read_screen(tmp / "tiny.h5ad")
    model = train(screen, tmp / "run", config=tiny_config(), device="cpu", heldout=["G00+G01"])
    return screen, model, tmp / "run"


def test_a_trained_run_stores_its_validation_split_logs_validation_and_writes_fit_json(tiny_run):
    screen, model, run = tiny_run
    cfg = RunDir(run).read_config()
    assert cfg["config"]["val_fraction"] == 0.1
    cells = cfg["validation"]["cells"]
    assert cells == validation_split({c: int(screen.n_cells[c]) for c in cfg["train_conditions"]}, 0.1, 0)
    log = RunDir(run).read_log()
    for stage in ("stage1", "stage2"):
        vals = [r["val_loss"] for r in log if r.get("stage") == stage and "val_loss" in r]
        best = [r for r in log if r.get("event") == "best" and r["stage"] == stage]
        assert vals and best and best[0]["val_loss"] == pytest.approx(min(vals))
    fit = read_fit(run)
    assert set(fit["conditions"]) == {"G00", "G01", "G02", "G03"}  # the training conditions but control
    for entry in fit["conditions"].values():
        assert -1.0 <= entry["r"] <= 1.0 and entry["magnitude"] > 0
        assert 0.5 < entry["r_ceiling"] <= 1.0 and entry["n_validation"] == 6
        assert entry["status"] in ("within", "outside", "no_shift")
    s = fit["summary"]
    assert s["n_within"] + len(s["outside"]) + s["n_no_shift"] == 4
    assert s["sentence"].startswith(f"reproduces {s['n_within']} of {s['n_judged']} training conditions")
    # fit_report recomputes the same numbers (deterministic from the seed)
    again = fit_report(model, screen, conditions=cfg["train_conditions"], validation=cells, seed=0)
    assert again["conditions"]["G02"]["r"] == pytest.approx(fit["conditions"]["G02"]["r"])


def test_an_interrupted_training_resumes_with_its_stored_validation_split(tmp_path):
    make_tiny_counts().write_h5ad(tmp_path / "tiny.h5ad")
    screen = read_screen(tmp_path / "tiny.h5ad")
    cfg = tiny_config()
    cfg.stage1.steps, cfg.stage2.steps = 20, 100

    def stop_in_stage2(p):
        if p.stage == "stage2":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(screen, tmp_path / "run", config=cfg, device="cpu", heldout=["G00+G01"], progress=stop_in_stage2)
    run = RunDir(tmp_path / "run")
    assert (run.checkpoints / "stage1.pt").exists() and not run.is_complete()
    # the split is read back from config.json, not recomputed: a changed one is what the resume uses
    stored = run.read_config()
    stored["validation"]["cells"]["G02"] = [0, 1, 2]
    run.write_config(stored)
    n_log = len(run.read_log())
    train(screen, tmp_path / "run", config=cfg, device="cpu", heldout=["G00+G01"])
    assert run.is_complete()
    assert run.read_config()["validation"]["cells"]["G02"] == [0, 1, 2]
    assert not [r for r in run.read_log()[n_log:] if r.get("stage") == "stage1" and r["event"] == "progress"], \
        "stage 1 was redone"
    assert read_fit(run.path)["conditions"]["G02"]["n_validation"] == 3


def test_val_fraction_zero_trains_without_validation(tmp_path):
    make_tiny_counts().write_h5ad(tmp_path / "tiny.h5ad")
    cfg = tiny_config()
    cfg.val_fraction = 0.0
    cfg.stage1.steps, cfg.stage2.steps = 10, 50
    train(read_screen(tmp_path / "tiny.h5ad"), tmp_path / "run", config=cfg, device="cpu", heldout=["G00+G01"])
    run = RunDir(tmp_path / "run")
    assert not [r for r in run.read_log() if "val_loss" in r]
    assert "n_validation" not in read_fit(run.path)["conditions"]["G00"]


def test_a_run_without_fit_json_reads_as_none(tmp_path):
    assert read_fit(tmp_path) is None
    (tmp_path / "fit.json").write_text("{not json")
    assert read_fit(tmp_path) is None


def test_the_shipped_demo_run_has_a_fit_report():
    fit = read_fit("assets/demo_run")
    assert fit is not None and fit["summary"]["n_conditions"] == 80
    assert json.dumps(fit)  # plain JSON (no NaN)
