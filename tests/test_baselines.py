"""Baselines: exact behaviour on constructed data, shapes, determinism."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

from lcd_core import KEYS
from lcd_core.baselines import (
    AdditiveBaseline,
    Baseline,
    ControlBaseline,
    LinearBaseline,
    PooledBaseline,
    make_baselines,
    parse_condition,
)
from lcd_core.errors import ConfigError

torch.set_num_threads(1)


def _cells_with_mean(rng, mean, n):
    """``n`` cells whose column means are exactly ``mean`` (centred noise)."""
    noise = rng.normal(scale=0.3, size=(n, mean.shape[0]))
    return mean + noise - noise.mean(0)


@pytest.fixture
def screen():
    rng = np.random.default_rng(7)
    d = 12
    genes = [f"G{i}" for i in range(d)]
    mu0 = rng.uniform(1, 2, size=d)
    shifts = {g: rng.normal(size=d) for g in ("G0", "G1", "G2")}
    cells = {KEYS.CONTROL: _cells_with_mean(rng, mu0, 50)}
    for g, s in shifts.items():
        cells[g] = _cells_with_mean(rng, mu0 + s, 40)
    # G3 is seen only inside combinations
    cells["G0+G3"] = _cells_with_mean(rng, mu0 + shifts["G0"] + 1.0, 30)
    cells["G1+G3"] = _cells_with_mean(rng, mu0 + shifts["G1"] + 3.0, 30)
    return cells, genes, mu0, shifts


def test_parse_condition():
    assert parse_condition("A") == ["A"]
    assert parse_condition(f"A{KEYS.COMBO_SEP}B") == ["A", "B"]
    with pytest.raises(ConfigError):
        parse_condition("A++B")


def test_additive_exact_sum(screen):
    cells, genes, mu0, shifts = screen
    model = AdditiveBaseline().fit(cells)
    np.testing.assert_allclose(model.predicted_shift("G0+G1"), shifts["G0"] + shifts["G1"], atol=1e-12)
    # G3 has no single: the average shift of the conditions containing it
    g3 = ((shifts["G0"] + 1.0) + (shifts["G1"] + 3.0)) / 2
    np.testing.assert_allclose(model.predicted_shift("G2+G3"), shifts["G2"] + g3, atol=1e-12)
    # cells are control cells plus that shift, exactly
    out = model.predict("G0+G1", 50, seed=1)
    ctrl = ControlBaseline().fit(cells).predict("G0+G1", 50, seed=1)
    np.testing.assert_allclose(out - ctrl, np.tile(shifts["G0"] + shifts["G1"], (50, 1)), atol=1e-12)
    # with all control cells used once, the mean shift is exact
    np.testing.assert_allclose(out.mean(0) - mu0, shifts["G0"] + shifts["G1"], atol=1e-12)
    # the control label gets unshifted control cells
    np.testing.assert_array_equal(model.predict(KEYS.CONTROL, 5, seed=0), ControlBaseline().fit(cells).predict(KEYS.CONTROL, 5, seed=0))


def test_pooled_draws_perturbed_cells(screen):
    cells, *_ = screen
    model = PooledBaseline().fit(cells)
    pooled = np.concatenate([x for k, x in cells.items() if k != KEYS.CONTROL])
    out = model.predict("G5", 20, seed=0)
    # every generated cell is one of the pooled training cells
    assert all(np.any(np.all(np.isclose(pooled, row), axis=1)) for row in out)


@pytest.mark.parametrize("name", ["control", "pooled", "additive", "linear"])
def test_shapes_and_determinism(screen, name):
    cells, genes, *_ = screen
    model = make_baselines()[name].fit(cells, var_names=genes)
    assert isinstance(model, Baseline) and model.name == name
    for cond, n in (("G0+G1", 30), ("G4", 200), (KEYS.CONTROL, 7)):
        a = model.predict(cond, n, seed=11)
        assert a.shape == (n, len(genes)) and a.dtype == np.float64
        np.testing.assert_array_equal(a, model.predict(cond, n, seed=11))
    assert not np.array_equal(model.predict("G0", 30, seed=1), model.predict("G0", 30, seed=2))


def test_unfitted_and_bad_input(screen):
    cells, genes, *_ = screen
    with pytest.raises(ConfigError, match="fit"):
        ControlBaseline().predict("G0", 3, seed=0)
    with pytest.raises(ConfigError, match="control"):
        AdditiveBaseline().fit({"G0": cells["G0"]})
    with pytest.raises(ConfigError, match="var_names"):
        LinearBaseline().fit(cells)


def _rank_k_screen(rng, d=80, k=4, n_train=50, n_test=20, center_train=True):
    """Pseudobulks generated exactly from Y_j = b + A C A_jᵀ: a rank-K model of the target gene's row.

    The linear baseline's gene embedding G (top-K PCs) then spans col(A), so G = A R and the model
    is exactly representable; with the training rows of A centred the row-mean intercept is b.
    """
    a = rng.normal(size=(d, k))
    targets = rng.permutation(d)[: n_train + n_test]
    tr, te = targets[:n_train], targets[n_train:]
    if center_train:
        a[tr] -= a[tr].mean(0)
    c = rng.normal(size=(k, k))
    b = rng.uniform(2, 3, size=d)
    genes = [f"g{i}" for i in range(d)]
    mean = lambda j: b + a @ c @ a[j]  # noqa: E731
    cells = {KEYS.CONTROL: _cells_with_mean(rng, b, 60)}
    for j in tr:
        cells[genes[j]] = _cells_with_mean(rng, mean(j), 40)
    return cells, genes, {genes[j]: mean(j) for j in te}, b, a, c


@pytest.mark.parametrize("intercept", ["perturbed_mean", "control"])
def test_linear_recovers_heldout_means(intercept):
    rng = np.random.default_rng(3)
    cells, genes, test_means, b, *_ = _rank_k_screen(rng)
    model = LinearBaseline(n_components=4, ridge=1e-8, intercept=intercept).fit(cells, var_names=genes)
    for g, true in test_means.items():
        np.testing.assert_allclose(model.predicted_mean(g), true, rtol=1e-5, atol=1e-5)
    # the generated cells carry that mean shift
    g = next(iter(test_means))
    out = model.predict(g, 60, seed=0)  # all 60 control cells once: the mean is exact
    np.testing.assert_allclose(out.mean(0), test_means[g], atol=1e-5)


def test_linear_default_settings_close_on_rank_k_data():
    """Paper defaults (K = 10, λ = 0.1) on rank-4 data with noise in the pseudobulks: still good."""
    rng = np.random.default_rng(5)
    cells, genes, test_means, b, *_ = _rank_k_screen(rng)
    for key, x in cells.items():
        if key != KEYS.CONTROL:
            cells[key] = x + rng.normal(scale=0.05, size=x.shape[1])  # pseudobulk noise
    model = LinearBaseline().fit(cells, var_names=genes)
    pred = np.stack([model.predicted_mean(g) - b for g in test_means])
    true = np.stack([t - b for t in test_means.values()])
    r2 = 1 - ((pred - true) ** 2).sum() / ((true - true.mean()) ** 2).sum()
    assert r2 > 0.95, r2


def test_linear_double_is_sum_of_embeddings():
    rng = np.random.default_rng(4)
    cells, genes, test_means, b, *_ = _rank_k_screen(rng)
    model = LinearBaseline(n_components=4, ridge=1e-8, intercept="control").fit(cells, var_names=genes)
    g1, g2 = list(test_means)[:2]
    # with the control intercept the model is linear in the embedding, so a double adds up
    expected = model.predicted_mean(g1) + model.predicted_mean(g2) - b
    np.testing.assert_allclose(model.predicted_mean(f"{g1}+{g2}"), expected, atol=1e-8)
