"""Prediction intervals (issue 16.3): the arithmetic against a known truth, the ensemble in a run directory,
and ``lcd predict --intervals``."""

from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pytest
from conftest import make_tiny_counts, tiny_config

from lcd_core import LCDError
from lcd_core.data import read_screen
from lcd_core.model import (LCD, Calibration, Ensemble, IntervalSources, calibration_from_fit, fit_ensemble,
                            interval_coverage, read_fit, shift_intervals, train)
from lcd_core.model._intervals import SCALE_FLOORS, conformal_quantile, interval_table


def _networks(rng, truth, *, M, tau, cell_sd, n):
    """M networks whose expected means scatter around ``truth`` by ``tau``; each draws n cells of sd cell_sd."""
    centres = truth + rng.normal(0.0, tau, (M, truth.size))
    cells = centres[:, None, :] + rng.normal(0.0, cell_sd, (M, n, truth.size))
    return cells.mean(1), cells.var(1, ddof=1) / n


@pytest.mark.parametrize("tau, cell_sd", [(0.3, 0.5), (0.0, 1.0), (0.2, 0.0001)])
def test_intervals_cover_the_truth_at_their_level(tau, cell_sd):
    # the networks scatter around the truth by tau (the model uncertainty the ensemble can see): the 90 %
    # interval around network 0 must cover the truth for ~90 % of genes, whichever term dominates
    rng = np.random.default_rng(0)
    truth = rng.normal(0.0, 1.0, 4000)
    means, variances = _networks(rng, truth, M=4, tau=tau, cell_sd=cell_sd, n=200)
    iv = interval_table(means, variances, np.zeros_like(truth), [f"g{i}" for i in range(truth.size)], n_cells=200,
                        level=0.9)
    covered = ((iv["shift_low"] <= truth) & (truth <= iv["shift_high"])).mean()
    # conservative (up to ~95 %) where the networks' spread dominates: the run's own network, the centre,
    # is one of the four that estimate it, so a far-off centre also widens its own interval
    assert 0.86 <= covered <= 0.97, covered
    # where the networks' spread dominates, Student's t with M - 1 = 3 degrees of freedom (a normal
    # quantile would be too narrow); where the cells' error does, nearly the normal one
    t = np.median(iv["t"])
    assert (t < 1.8) if tau == 0 else (t > 2.2), t


def test_intervals_without_model_spread_shrink_to_the_cells_error():
    # identical networks: tau is 0 and the interval is the finite-cell one alone
    rng = np.random.default_rng(1)
    cells = rng.normal(0.0, 1.0, (300, 50))
    mean, var = cells.mean(0), cells.var(0, ddof=1) / 300
    iv = interval_table(np.stack([mean] * 3), np.stack([var] * 3), np.zeros(50), [str(i) for i in range(50)],
                        n_cells=300)
    assert np.allclose(iv["sd_model"], 0.0)
    assert np.allclose(iv["shift_se"], np.sqrt(var))


def test_interval_coverage_counts_the_observation_noise():
    rng = np.random.default_rng(2)
    truth = rng.normal(0.0, 1.0, 2000)
    means, variances = _networks(rng, truth, M=4, tau=0.2, cell_sd=0.5, n=300)
    control = rng.normal(0.0, 0.5, (400, truth.size))
    iv = interval_table(means, variances, control.mean(0), [str(i) for i in range(truth.size)], n_cells=300)
    observed = truth + control.mean(0) + rng.normal(0.0, 3.0, (40, truth.size))  # few, noisy observed cells
    covered = interval_coverage(iv, observed, control)
    assert 0.85 <= covered.mean() <= 0.98, covered.mean()
    # ignoring the observation's own error would under-cover badly here
    naive = (np.abs(observed.mean(0) - control.mean(0) - iv["predicted_shift"]) <= iv["t"] * iv["shift_se"]).mean()
    assert naive < 0.7, naive
    assert interval_coverage(iv, observed, control, genes=np.arange(10)).shape == (10,)


def _pairs(rng, n_conditions, *, relative: float, absolute: float, genes: int = 20) -> Calibration:
    """Top-gene shifts of n conditions, predicted with an error of sd relative·|shift| + absolute."""
    pred = rng.normal(0.0, 1.5, (n_conditions, genes))
    obs = pred + rng.normal(0.0, 1.0, pred.shape) * (relative * np.abs(pred) + absolute)
    return Calibration(pred.ravel(), obs.ravel(), np.repeat(np.arange(n_conditions), genes))


@pytest.mark.parametrize("relative, absolute, floors", [(0.3, 0.01, (0.1, 0.3)), (0.0, 0.4, (3.0, float("inf")))])
def test_calibration_covers_new_conditions_and_picks_its_scale(relative, absolute, floors):
    # errors proportional to the shift want a relative scale (small f), constant errors a constant width
    rng = np.random.default_rng(4)
    train_cal, new = _pairs(rng, 80, relative=relative, absolute=absolute), _pairs(rng, 400, relative=relative,
                                                                                   absolute=absolute)
    assert train_cal.floor(0.9) in floors
    half, q, f = train_cal.half_width(new.predicted, 0.9)
    covered = (np.abs(new.observed - new.predicted) <= half).mean()
    assert 0.87 <= covered <= 0.93, covered
    # wider than the finite cells' interval alone would be, narrower at a lower level
    assert np.all(train_cal.half_width(new.predicted, 0.5)[0] <= half)


def test_conformal_quantile_is_the_rank_of_split_conformal_prediction():
    scores = np.arange(1.0, 20.0)  # n = 19: ceil(20 · 0.9) = 18th smallest
    assert conformal_quantile(scores, 0.9) == 18.0
    assert conformal_quantile(scores[:5], 0.9) == float("inf")  # too few to promise 90 %
    assert conformal_quantile([1.0, np.nan, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0], 0.5) == 6.0
    assert SCALE_FLOORS[-1] == float("inf")


def test_calibrated_intervals_without_an_ensemble():
    rng = np.random.default_rng(5)
    cal = _pairs(rng, 40, relative=0.2, absolute=0.05)
    mean, var = rng.normal(0, 1, 30), np.full(30, 1e-4)
    iv = interval_table(mean[None], var[None], np.zeros(30), [str(i) for i in range(30)], n_cells=400,
                        calibration=cal)
    assert iv.attrs["networks"] == 1 and iv.attrs["n_calibration"] == 800 and np.allclose(iv["sd_model"], 0)
    assert np.all(iv["calibrated"] > 0) and np.allclose(iv["half_width"] ** 2, (iv["t"] * iv["shift_se"]) ** 2 + iv["calibrated"] ** 2)


def test_bad_input_is_refused():
    with pytest.raises(LCDError, match="M ≥ 2 without calibration"):
        interval_table(np.zeros((1, 3)), np.zeros((1, 3)), np.zeros(3), list("abc"), n_cells=10)
    assert calibration_from_fit(None) is None and calibration_from_fit({"conditions": {"A": {"r": 1.0}}}) is None
    iv = interval_table(np.zeros((2, 3)), np.ones((2, 3)), np.zeros(3), list("abc"), n_cells=10)
    with pytest.raises(LCDError, match="observed"):
        interval_coverage(iv, np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(LCDError, match="observed"):
        interval_coverage(iv, np.zeros((5, 4)), np.zeros((5, 4)))


@pytest.fixture(scope="module")
def ensemble_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ens")
    make_tiny_counts().write_h5ad(tmp / "tiny.h5ad")
    screen = read_screen(tmp / "tiny.h5ad")
    train(screen, tmp / "run", config=tiny_config(), heldout=["G00+G01"])
    return tmp, screen


def test_ensemble_is_saved_loaded_and_checked(ensemble_run):
    tmp, screen = ensemble_run
    run = tmp / "run"
    model = LCD.load(run)
    assert Ensemble.load(run, model) is None
    cal = calibration_from_fit(read_fit(run))  # `lcd train` keeps each training condition's top-20 shifts
    assert cal is not None and len(cal) == 12 * 4 and len(np.unique(cal.groups)) == 4  # top 20 of 12 genes: all
    ens = fit_ensemble(run, screen, members=2)
    assert ens.seeds == [1000, 2000]
    back = Ensemble.load(run, model)
    assert len(back) == 2 and back.seeds == ens.seeds
    for a, b in zip(ens.nets, back.nets):  # float16 on disk
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert np.allclose(va.float().numpy(), vb.float().numpy(), rtol=2e-3, atol=1e-4), k
    models = back.models(model)
    assert models[0] is model and all(m.net is not model.net for m in models[1:])
    # the members learned the same screen: on average they lift each single's target (rate x4: +1.1 to +1.7
    # observed), and they differ (the model uncertainty the intervals add)
    ctrl = screen.log1p("ctrl").mean(0)
    for single in ("G02", "G03"):
        iv = shift_intervals(models, single, ctrl, n_cells=300)
        g = list(model.genes).index(single)
        assert iv.loc[g, "ensemble_shift"] > 0.4 and iv.loc[g, "sd_model"] > 0 and iv.attrs["networks"] == 3
    assert np.all(iv["shift_low"] <= iv["predicted_shift"]) and np.all(iv["predicted_shift"] <= iv["shift_high"])
    # other data, and a corrupt file, are refused with how to rebuild
    with pytest.raises(LCDError, match="other data"):
        fit_ensemble(run, read_screen(_other_screen(tmp)), members=1)
    meta = json.loads((run / "ensemble.json").read_text())
    (run / "ensemble.json").write_text(json.dumps(dict(meta, data_hash="x")))
    with pytest.raises(LCDError, match="lcd ensemble"):
        Ensemble.load(run, model)
    (run / "ensemble.json").write_text("{not json")
    with pytest.raises(LCDError, match="corrupt"):
        Ensemble.load(run, model)
    (run / "ensemble.json").write_text(json.dumps(meta))
    assert len(Ensemble.load(run, model)) == 2


def _other_screen(tmp):
    path = tmp / "other.h5ad"
    make_tiny_counts(seed=5).write_h5ad(path)
    return path


def test_cli_predict_writes_intervals_and_refuses_without_ensemble(ensemble_run, lcd_here):
    tmp, screen = ensemble_run
    run = tmp / "run"
    out = tmp / "pred.h5ad"
    cmd = ["predict", run, "--perturb", "G00+G01", "--perturb", "G02", "--cells", "100", "--intervals", "--out", out]
    if not (run / "ensemble.json").exists():
        fit_ensemble(run, screen, members=2)
    lcd_here(*cmd)
    a = ad.read_h5ad(out)
    for label in ("G00+G01", "G02"):
        low, high = a.var[f"{label}_shift_low"].to_numpy(), a.var[f"{label}_shift_high"].to_numpy()
        assert np.all(low <= high) and np.all(np.isfinite(low))
        assert np.all(low <= a.var[f"{label}_shift"].to_numpy())
    assert a.uns["lcd_intervals"]["networks"] == 3 and a.uns["lcd_intervals"]["level"] == 0.9
    assert a.uns["lcd_intervals"]["n_calibration"] == 48 and "training conditions" in a.uns["lcd_intervals"]["covers"]
    # without an ensemble and without a calibrated fit check: a clear refusal, no file written
    (run / "ensemble.json").rename(run / "ensemble.json.bak")
    (run / "fit.json").rename(run / "fit.json.bak")
    try:
        out2 = tmp / "pred2.h5ad"
        done = lcd_here(*cmd[:-1], out2, check=False)
        assert done.returncode != 0 and "lcd ensemble" in done.stderr and not out2.exists()
        bad = lcd_here(*cmd[:-1], out2, "--level", "1.5", check=False)
        assert bad.returncode != 0 and "--level" in bad.stderr
    finally:
        (run / "ensemble.json.bak").rename(run / "ensemble.json")
        (run / "fit.json.bak").rename(run / "fit.json")


def test_crossfit_ensemble_calibrates_unseen_combinations(tmp_path, monkeypatch, lcd_here):
    # four doubles, one held out by the run: the three it trains on are dealt to two members, each of which
    # must learn without its fold and be scored on it; unseen conditions then get that calibration
    import lcd_core.model._ensemble as ensemble_module

    doubles = ["G00+G01", "G02+G03", "G00+G02", "G01+G03"]
    make_tiny_counts(conditions=["ctrl", "G00", "G01", "G02", "G03", *doubles]).write_h5ad(tmp_path / "s.h5ad")
    screen = read_screen(tmp_path / "s.h5ad")
    run = tmp_path / "run"
    train(screen, run, config=tiny_config(), heldout=["G00+G01"])
    model = LCD.load(run)
    index = {g: i for i, g in enumerate(model.pert_genes)}
    seen, real = [], ensemble_module.fit_stage2

    def recording(x, pert, *a, **kw):  # the real fit, recording which conditions each member learned from
        seen.append({tuple(np.flatnonzero(row)) for row in pert})
        return real(x, pert, *a, **kw)

    monkeypatch.setattr(ensemble_module, "fit_stage2", recording)
    ens = fit_ensemble(run, screen, members=2)
    folds = ens.folds
    assert sorted(c for f in folds for c in f) == sorted(doubles[1:]) and all(folds)
    for fold, learned in zip(folds, seen):
        left_out = {tuple(sorted(index[g] for g in c.split("+"))) for c in fold}
        assert not left_out & learned  # the fold's combinations never reached the member
        assert {(index[g],) for g in ("G00", "G01", "G02", "G03")} <= learned and () in learned
    back = Ensemble.load(run, model)
    assert back.folds == folds
    scored = back.info["crossfit"]["conditions"]
    assert {c: e["member"] for c, e in scored.items()} == {c: k + 1 for k, f in enumerate(folds) for c in f}
    held = back.heldout_calibration()
    assert held.held_out and len(held) == 3 * 12 and len(np.unique(held.groups)) == 3
    src = IntervalSources.of(model, back, read_fit(run))
    assert src.calibration_for("G00+G01") is src.heldout and src.calibration_for("G02+G03") is src.calibration
    assert src.calibration_for("G03") is src.calibration and not src.calibration.held_out
    assert "cross-fitted" in src.covers() and "training conditions" in src.covers()
    # the CLI writes which calibration each perturbation's intervals used
    out = tmp_path / "pred.h5ad"
    lcd_here("predict", run, "--perturb", "G00+G01", "--perturb", "G02", "--cells", "50", "--intervals", "--out", out)
    used = ad.read_h5ad(out).uns["lcd_intervals"]
    assert "cross-fitted" in used["calibrated_on"]["G00+G01"] and "training" in used["calibrated_on"]["G02"]
    assert used["n_calibration_heldout"] == 36
    # without the cross-fit: plain seed members, unseen combinations fall back on the training calibration
    plain = fit_ensemble(run, screen, members=2, crossfit=False)
    assert plain.folds == [[], []] and plain.heldout_calibration() is None
    assert IntervalSources.of(model, plain, read_fit(run)).calibration_for("G00+G01") is not None
    # same seeds, other networks: CLIPR's cached confidence over the ensemble must not be reused
    from lcd_core.clipr._confidence import _conf_params

    keys = [_conf_params(10, 0.9, 0, 0, e.models(model)[1:]) for e in (back, Ensemble.load(run, model))]
    assert keys[0]["ensemble_seeds"] == keys[1]["ensemble_seeds"] and keys[0] != keys[1]
