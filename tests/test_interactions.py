"""Genetic-interaction scores and classes on constructed doubles (METHOD §6)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lcd_core.errors import ConfigError
from lcd_core.tl._interactions import (
    classify_interactions,
    distance_correlation,
    interaction_from_cells,
    interaction_scores,
)


def _dcov2_szekely(x, y):
    """dCov² by Székely et al.'s (2007) S1 + S2 − 2 S3 formula, independent of double centring."""
    ax = np.linalg.norm(x[:, None] - x[None], axis=-1)
    by = np.linalg.norm(y[:, None] - y[None], axis=-1)
    return (ax * by).mean() + ax.mean() * by.mean() - 2 * (ax.mean(1) * by.mean(1)).mean()


def test_distance_correlation_definition():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(80, 2))
    y = np.sin(x[:, :1]) + 0.2 * rng.normal(size=(80, 1))
    ref = np.sqrt(_dcov2_szekely(x, y) / np.sqrt(_dcov2_szekely(x, x) * _dcov2_szekely(y, y)))
    assert distance_correlation(x, y) == pytest.approx(ref, abs=1e-12)
    assert distance_correlation(x[:, 0], 3 * x[:, 0] - 1) == pytest.approx(1.0, abs=1e-12)
    assert distance_correlation(rng.normal(size=2000)[:400], rng.normal(size=400)) < 0.15


@pytest.mark.slow  # importing dcor compiles numba code: ~1 minute on a loaded CPU
def test_distance_correlation_matches_dcor():
    dcor = pytest.importorskip("dcor")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(150, 2))
    y = x[:, 0] ** 2 + 0.3 * rng.normal(size=150)
    assert distance_correlation(x, y) == pytest.approx(dcor.distance_correlation(x, y[:, None]), abs=1e-10)
    assert distance_correlation(x[:, 1], y) == pytest.approx(dcor.distance_correlation(x[:, 1], y), abs=1e-10)


def test_theil_sen_matches_sklearn_and_is_robust():
    from sklearn.linear_model import TheilSenRegressor

    rng = np.random.default_rng(1)
    a, b = rng.normal(size=100), rng.normal(size=100)
    y = 0.7 * a + 1.6 * b + 0.05 * rng.normal(size=100)
    y[:10] += 20  # outliers
    s = interaction_scores(a, b, y)
    ref = TheilSenRegressor(fit_intercept=False, max_subpopulation=10**6, tol=1e-10, random_state=0).fit(np.c_[a, b], y)
    np.testing.assert_allclose([s["c_a"], s["c_b"]], ref.coef_, atol=1e-4)
    assert abs(s["c_a"] - 0.7) < 0.05 and abs(s["c_b"] - 1.6) < 0.05


def _doubles(rng, G=400):
    a = rng.normal(size=G) * (rng.random(G) < 0.4)
    b = rng.normal(size=G) * (rng.random(G) < 0.4)
    noise = lambda: 0.05 * rng.normal(size=G)  # noqa: E731
    s = a + b
    new = rng.normal(size=G) * (rng.random(G) < 0.4)
    new -= new @ a / (a @ a) * a
    new -= new @ b / (b @ b) * b
    new *= 2.5 * np.linalg.norm(s) / np.linalg.norm(new)
    return {
        "additive": (a, b, s + noise()),
        "synergy": (a, b, 2 * s + noise()),
        "suppression": (a, b, 0.3 * s + noise()),
        "epistasis": (a, b, a + noise()),
        "neomorphism": (a, b, s + new + noise()),
    }


def test_classes_recognised():
    rng = np.random.default_rng(2)
    rows = {name: interaction_scores(*v) for name, v in _doubles(rng).items()}
    df = classify_interactions(pd.DataFrame(rows).T)
    assert df.attrs["thresholds"]["magnitude_high"] == 2.0
    for name in rows:
        assert df.loc[name, "class"] == name, (name, df.loc[name].to_dict())
    assert abs(rows["additive"]["magnitude"] - np.sqrt(2)) < 0.05
    # a redundant double: two near-identical singles and a double like them
    a = rng.normal(size=400)
    r = interaction_scores(a, a + 0.05 * rng.normal(size=400), a + 0.05 * rng.normal(size=400))
    assert classify_interactions(pd.DataFrame([r]))["class"].iloc[0] == "redundancy"
    q = classify_interactions(pd.DataFrame(rows).T, method="quantile", thresholds={"dcor_high": 0.99})
    assert q.attrs["thresholds"]["dcor_high"] == 0.99
    with pytest.raises(ConfigError, match="Unknown threshold"):
        classify_interactions(pd.DataFrame(rows).T, thresholds={"nope": 1})


def test_interaction_from_cells():
    rng = np.random.default_rng(3)
    G, n = 300, 400
    base = rng.gamma(2.0, 1.0, G) * 2
    base[:50] = 0.001  # lowly expressed: must be filtered out
    la = base * np.exp(0.8 * rng.normal(size=G) * (rng.random(G) < 0.3))
    lb = base * np.exp(0.8 * rng.normal(size=G) * (rng.random(G) < 0.3))
    lab = base * (la / base) * (lb / base)  # multiplicative in expression ≈ additive in log shifts
    draw = lambda lam: rng.poisson(lam * 20, size=(n, G))  # noqa: E731
    out = interaction_from_cells(draw(base), draw(la), draw(lb), draw(lab))
    assert not out["genes_used"][:50].any() and out["genes_used"][50:].mean() > 0.9
    assert out["dcor"] > 0.8 and 0.6 < out["c_a"] < 1.4 and 0.6 < out["c_b"] < 1.4
    with pytest.raises(ConfigError):
        interaction_from_cells(draw(base)[:, :2], draw(la)[:, :2], draw(lb)[:, :2], draw(lab)[:, :2], min_mean=1e9)
