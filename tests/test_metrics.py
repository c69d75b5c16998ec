"""Metrics against independent implementations, and their behaviour on constructed cases."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import dcor
import numpy as np
import pandas as pd
import pytest
import scipy.stats as ss
import torch

from lcd_core.errors import ConfigError
from lcd_core.metrics import (
    de_recovery,
    energy_distance,
    evaluate_condition,
    lower_is_better,
    mmd,
    pearson_delta,
    rbf_length_scales,
    rmse,
    score_predictions,
    summarize,
    top_de_genes,
    wasserstein,
    win_rate,
)
from lcd_core.metrics import _distribution

torch.set_num_threads(1)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ---------------------------------------------------------------- independent reference implementations


def _mmd2_bruteforce(x, y):
    """Unbiased MMD² by explicit double loops over pairs (Gretton et al. 2012, eq. 3)."""
    scales = np.logspace(-2, 1, 10) * np.sqrt(x.shape[1])

    def k(a, b):
        sq = float(np.sum((a - b) ** 2))
        return np.mean([np.exp(-sq / (2 * s * s)) for s in scales])

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


def _energy_direct(x, y):
    """2E‖X−Y‖ − E‖X−X′‖ − E‖Y−Y′‖ with all pairs, via explicit broadcasting."""
    dist = lambda a, b: np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # noqa: E731
    return 2 * dist(x, y).mean() - dist(x, x).mean() - dist(y, y).mean()


# ---------------------------------------------------------------- agreement with references


def test_mmd_matches_bruteforce(rng):
    x = rng.normal(size=(25, 6))
    y = rng.normal(size=(18, 6)) * 1.3 + 0.4
    assert mmd(x, y) == pytest.approx(_mmd2_bruteforce(x, y), rel=1e-10, abs=1e-13)


@pytest.mark.parametrize("block_elements", [7, 130])
def test_mmd_blocks_match_single_block(rng, monkeypatch, block_elements):
    """Row-blocking (bounded memory) and the symmetric half-blocks must not change the value."""
    x, y = rng.normal(size=(40, 5)), rng.normal(size=(33, 5)) + 0.5
    full = mmd(x, y), energy_distance(x, y)
    assert full[1] == pytest.approx(_energy_direct(x, y), rel=1e-10)
    monkeypatch.setattr(_distribution, "_BLOCK_ELEMENTS", block_elements)
    assert mmd(x, y) == pytest.approx(full[0], rel=1e-12)
    assert energy_distance(x, y) == pytest.approx(full[1], rel=1e-12)


def test_length_scales():
    np.testing.assert_allclose(rbf_length_scales(100), np.logspace(-2, 1, 10) * 10.0)


def test_energy_matches_dcor_and_direct(rng):
    x = rng.normal(size=(30, 8))
    y = rng.normal(size=(45, 8)) + 0.7
    e = energy_distance(x, y)
    # dcor's default is the V-statistic with exponent 1: the same (not squared) quantity as ours
    assert e == pytest.approx(dcor.energy_distance(x, y), rel=1e-10)
    assert e == pytest.approx(_energy_direct(x, y), rel=1e-10)


def test_wasserstein_matches_scipy(rng):
    x = rng.gamma(1.0, size=(37, 9))
    y = rng.gamma(1.5, size=(52, 9))
    x[:10, 0] = 0.0  # ties and zeros, as in sparse log1p data
    y[:20, 0] = 0.0
    ref = np.mean([ss.wasserstein_distance(x[:, g], y[:, g]) for g in range(9)])
    assert wasserstein(x, y) == pytest.approx(ref, rel=1e-12)


def test_wasserstein_many_genes_blocks(rng):
    """More genes than one gene block, unequal sizes."""
    x, y = rng.normal(size=(11, 150)), rng.normal(size=(7, 150))
    ref = np.mean([ss.wasserstein_distance(x[:, g], y[:, g]) for g in range(150)])
    assert wasserstein(x, y) == pytest.approx(ref, rel=1e-12)


def test_means_match_scipy(rng):
    p, o, c = rng.normal(size=(3, 50))
    assert pearson_delta(p, o, c) == pytest.approx(ss.pearsonr(p - c, o - c).statistic, rel=1e-12)
    assert rmse(p, o) == pytest.approx(np.sqrt(((p - o) ** 2).mean()), rel=1e-12)
    assert np.isnan(pearson_delta(c, o, c))  # a prediction of "no change" has no defined correlation


def test_rank_sum_matches_mannwhitneyu(rng, monkeypatch):
    from lcd_core.metrics import _de

    monkeypatch.setattr(_de, "_GENE_BLOCK", 16)  # several gene blocks
    # integer-valued data: many ties, like sparse counts after log1p
    obs = np.log1p(rng.poisson(rng.uniform(0.2, 3, size=40), size=(60, 40)).astype(float))
    ctrl = np.log1p(rng.poisson(rng.uniform(0.2, 3, size=40), size=(80, 40)).astype(float))
    from lcd_core.metrics._de import _rank_sum_test

    u, p = _rank_sum_test(obs, ctrl)
    for g in range(40):
        ref = ss.mannwhitneyu(obs[:, g], ctrl[:, g], alternative="two-sided", method="asymptotic")
        assert u[g] == pytest.approx(ref.statistic)
        assert p[g] == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-300)
    # the ranking: by p, ties broken by |mean difference|, checked by sorting independently
    eff = np.abs(obs.mean(0) - ctrl.mean(0))
    ref_p = np.array([ss.mannwhitneyu(obs[:, g], ctrl[:, g]).pvalue for g in range(40)])
    expected = sorted(range(40), key=lambda g: (ref_p[g], -eff[g]))[:10]
    np.testing.assert_array_equal(top_de_genes(obs, ctrl, k=10), expected)


def test_de_ties_broken_by_effect(rng):
    """Huge shifts make every p-value underflow to 0; the order must then follow |effect|."""
    ctrl = rng.normal(size=(300, 5))
    obs = ctrl + np.array([40.0, 60.0, 0.0, 50.0, 0.0])
    assert list(top_de_genes(obs, ctrl, k=3)) == [1, 3, 0]


def test_de_recovery_matches_sklearn(rng):
    from sklearn.metrics import average_precision_score, roc_auc_score

    ctrl = rng.normal(size=(100, 30))
    shift = np.zeros(30)
    shift[:10] = np.linspace(1, 3, 10)
    obs = rng.normal(size=(100, 30)) + shift
    pred = ctrl.mean(0) + shift + rng.normal(scale=0.5, size=30)
    auroc, ap = de_recovery(obs, ctrl, pred, top=10)
    truth = np.zeros(30, bool)
    truth[top_de_genes(obs, ctrl, k=10)] = True
    score = np.abs(pred - ctrl.mean(0))
    assert auroc == pytest.approx(roc_auc_score(truth, score))
    assert ap == pytest.approx(average_precision_score(truth, score))
    assert auroc > 0.8


# ---------------------------------------------------------------- zero at identity, monotone in a shift


def test_zero_for_identical_sets(rng):
    x = rng.normal(size=(200, 10))
    # the Gram-matrix trick leaves ~sqrt(eps)·‖x‖ rounding in cross distances of equal points
    assert energy_distance(x, x) == pytest.approx(0.0, abs=1e-8)
    assert wasserstein(x, x) == 0.0
    assert rmse(x.mean(0), x.mean(0)) == 0.0
    # unbiased MMD² of a set with itself is −2(1 − mean off-diagonal k)/n: small, of order 1/n
    assert abs(mmd(x, x)) < 2.0 / 200


def test_mmd_near_zero_same_distribution(rng):
    vals = [mmd(rng.normal(size=(150, 5)), rng.normal(size=(150, 5))) for _ in range(5)]
    shifted = mmd(rng.normal(size=(150, 5)), rng.normal(size=(150, 5)) + 1.0)
    assert abs(np.mean(vals)) < 0.1 * shifted


def test_monotone_in_mean_shift(rng):
    x = rng.normal(size=(150, 8))
    y0 = rng.normal(size=(150, 8))
    for metric in (mmd, energy_distance, wasserstein):
        values = [metric(x, y0 + s) for s in (0.0, 0.5, 1.0, 2.0)]
        assert np.all(np.diff(values) > 0), (metric.__name__, values)
    rm = [rmse(x.mean(0), (y0 + s).mean(0)) for s in (0.5, 1.0, 2.0)]
    assert np.all(np.diff(rm) > 0)


# ---------------------------------------------------------------- evaluate_condition


def _toy_condition(rng, d=40, n=120):
    ctrl = rng.gamma(2.0, 0.5, size=(n, d))
    effect = np.zeros(d)
    effect[:8] = np.linspace(0.5, 2.0, 8)
    obs = rng.gamma(2.0, 0.5, size=(n, d)) + effect
    return ctrl, obs, effect


def test_evaluate_condition_keys_and_consistency(rng):
    ctrl, obs, effect = _toy_condition(rng)
    pred = rng.gamma(2.0, 0.5, size=(100, 40)) + 0.9 * effect
    train_mean = ctrl.mean(0) + 0.3
    res = evaluate_condition(pred, obs, ctrl, train_perturbed_mean=train_mean, de_recovery_top=8)
    base = ["mmd", "energy", "wasserstein", "rmse", "pearson_delta", "pearson_systema"]
    for k in base + [f"{b}_top20" for b in base] + ["de_auroc", "de_ap", "subsampled"]:
        assert k in res and isinstance(res[k], float)
    # the all-gene values equal the stand-alone public functions
    assert res["energy"] == pytest.approx(energy_distance(pred, obs))
    assert res["mmd"] == pytest.approx(mmd(pred, obs))
    assert res["wasserstein"] == pytest.approx(wasserstein(pred, obs))
    assert res["pearson_systema"] == pytest.approx(pearson_delta(pred.mean(0), obs.mean(0), train_mean))
    top = np.sort(top_de_genes(obs, ctrl, k=20))
    assert res["rmse_top20"] == pytest.approx(rmse(pred.mean(0)[top], obs.mean(0)[top]))
    assert res["energy_top20"] == pytest.approx(energy_distance(pred[:, top], obs[:, top]))
    assert res["de_auroc"] > 0.9
    assert res["subsampled"] == 0.0


def test_evaluate_condition_subsamples_deterministically(rng):
    ctrl, obs, effect = _toy_condition(rng, n=300)
    pred = obs + 0.1
    kw = dict(train_perturbed_mean=ctrl.mean(0), max_cells=100, seed=3)
    a = evaluate_condition(pred, obs, ctrl, **kw)
    b = evaluate_condition(pred, obs, ctrl, **kw)
    assert a.keys() == b.keys()
    np.testing.assert_array_equal(list(a.values()), list(b.values()))  # NaN == NaN here
    assert a["subsampled"] == 1.0 and a["n_pairwise_pred"] == 100.0 and a["n_obs"] == 300.0


@pytest.mark.parametrize("n_obs", [120, 300])  # 300: the observed side is sub-sampled for MMD/energy
def test_scoring_several_predictions_equals_scoring_each_alone(rng, n_obs):
    """score_predictions computes the observed side (DE test, sub-sample, its own kernel sums) once: each
    prediction's scores are those of evaluate_condition on it alone, whatever the other predictions are."""
    ctrl, obs, effect = _toy_condition(rng, n=n_obs)
    preds = {"near": rng.gamma(2.0, 0.5, size=(90, 40)) + effect, "none": rng.gamma(2.0, 0.5, size=(150, 40)),
             "half": rng.gamma(2.0, 0.5, size=(60, 40)) + 0.5 * effect}
    kw = dict(train_perturbed_mean=ctrl.mean(0) + 0.2, seed=5)
    from lcd_core.metrics import Scoring

    scoring = Scoring(max_cells=200)
    together = score_predictions(preds, obs, ctrl, scoring=scoring, **kw)
    assert list(together) == list(preds)
    for name, pred in preds.items():
        alone = evaluate_condition(pred, obs, ctrl, **scoring.kwargs_for(40), **kw)
        assert together[name].keys() == alone.keys()
        np.testing.assert_allclose(list(together[name].values()), list(alone.values()), rtol=1e-10, atol=1e-13)
        assert together[name]["subsampled"] == float(n_obs > 200)
    assert together["near"]["mmd"] < together["half"]["mmd"] < together["none"]["mmd"]


def test_evaluate_condition_better_prediction_scores_better(rng):
    ctrl, obs, effect = _toy_condition(rng)
    good = rng.gamma(2.0, 0.5, size=(120, 40)) + effect
    bad = rng.gamma(2.0, 0.5, size=(120, 40))  # no change
    kw = dict(train_perturbed_mean=ctrl.mean(0), de_recovery_top=8)
    g, b = evaluate_condition(good, obs, ctrl, **kw), evaluate_condition(bad, obs, ctrl, **kw)
    for k in ("mmd", "energy", "wasserstein", "rmse", "mmd_top20", "rmse_top20"):
        assert g[k] < b[k], k
    for k in ("pearson_delta", "de_auroc"):
        assert g[k] > b[k], k


def test_evaluate_condition_validates(rng):
    ctrl, obs, _ = _toy_condition(rng)
    with pytest.raises(ConfigError):
        evaluate_condition(obs[:, :5], obs, ctrl, train_perturbed_mean=ctrl.mean(0))
    with pytest.raises(ConfigError):
        evaluate_condition(obs, obs, ctrl, train_perturbed_mean=ctrl.mean(0)[:3])
    bad = obs.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ConfigError):
        evaluate_condition(bad, obs, ctrl, train_perturbed_mean=ctrl.mean(0))


# ---------------------------------------------------------------- win rate and summary


def test_win_rate_always_better():
    rng = np.random.default_rng(0)
    b = rng.uniform(1, 2, size=20)
    a = b - rng.uniform(0.1, 0.5, size=20)  # always lower
    wr = win_rate(a, b, lower_is_better=True)
    assert wr.win_rate == 100.0 and wr.n == 20
    # exact one-sided signed-rank p with all 20 differences negative: 1 / 2^20
    assert wr.p_value == pytest.approx(0.5**20, rel=1e-6)
    # for a higher-is-better metric the same scores mean A always loses
    wr2 = win_rate(a, b, lower_is_better=False)
    assert wr2.win_rate == 0.0 and wr2.p_value > 0.99


def test_win_rate_ties_and_nan():
    a = np.array([1.0, 2.0, np.nan, 3.0])
    b = np.array([1.0, 3.0, 0.0, 3.0])
    wr = win_rate(a, b, lower_is_better=True)
    assert wr.n == 3 and wr.win_rate == pytest.approx(100 / 3) and wr.tie_rate == pytest.approx(200 / 3)
    assert np.isnan(win_rate(b[:2], b[:2], lower_is_better=True).p_value)


def test_summarize():
    rng = np.random.default_rng(0)
    conds = [f"c{i}" for i in range(12)]
    rows = []
    for c in conds:
        base = rng.uniform(1, 2)
        rows.append({"method": "lcd", "condition": c, "mmd": base, "pearson_delta": 0.9, "n_obs": 5.0})
        rows.append({"method": "control", "condition": c, "mmd": base + 1, "pearson_delta": 0.1, "n_obs": 5.0})
    df = pd.DataFrame(rows)
    out = summarize(df, reference_method="lcd")
    assert set(out["metric"]) == {"mmd", "pearson_delta"}  # n_obs is not a metric
    r = out[(out.metric == "mmd") & (out.method == "control")].iloc[0]
    assert r.win_rate == 100.0 and r.p_value < 1e-3 and r.lower_is_better
    r = out[(out.metric == "pearson_delta") & (out.method == "control")].iloc[0]
    assert r.win_rate == 100.0 and r.p_value < 1e-3 and not r.lower_is_better
    r = out[(out.metric == "mmd") & (out.method == "lcd")].iloc[0]
    lcd_vals = df[df.method == "lcd"]["mmd"].to_numpy()
    assert r["mean"] == pytest.approx(lcd_vals.mean())
    assert r["sem"] == pytest.approx(ss.sem(lcd_vals))
    assert np.isnan(r.win_rate)
    with pytest.raises(ConfigError):
        summarize(df, reference_method="nope")


def test_lower_is_better_names():
    assert lower_is_better("mmd_top20") is True
    assert lower_is_better("pearson_systema_top50") is False
    assert lower_is_better("de_ap") is False
    assert lower_is_better("subsampled") is None
