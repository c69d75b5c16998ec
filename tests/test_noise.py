"""The ZIP measurement model (METHOD.md §1) and its matrix-form likelihood (METHOD.md §2 notes)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

from lcd_core.module._generator import tempered_evidence_loss
from lcd_core.module._noise import ZIPNoise, estimate_dropout, naive_latent_moments, unit_scale_from_counts

torch.set_num_threads(1)


def _noise64(d: int, seed: int = 0) -> ZIPNoise:
    rng = np.random.default_rng(seed)
    noise = ZIPNoise(rng.uniform(1.0, 8.0, d)).double()
    with torch.no_grad():
        noise.dropout_logit.copy_(torch.as_tensor(rng.normal(-1.5, 1.5, d)))
    return noise


def _hard_inputs(B: int, M: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    y = rng.poisson(rng.uniform(0.0, 5.0, (B, d))).astype(np.float64)
    y[rng.random((B, d)) < 0.3] = 0.0  # many zeros
    y[0, :5] = [500.0, 1e4, 3e4, 0.0, 1.0]  # large counts
    s = rng.normal(0.0, 4.0, (M, d))
    s[0, :6] = [-60.0, -30.0, -16.0, -14.0, 25.0, 80.0]  # deep in both softplus tails
    s[1, :] = -40.0
    return torch.as_tensor(y), torch.as_tensor(s)


def test_matrix_form_equals_elementwise_reference():
    noise = _noise64(40)
    y, s = _hard_inputs(9, 13, 40)
    mat = noise.log_likelihood_matrix(y, s)
    ref = noise.log_likelihood(y[:, None, :], s[None, :, :])  # builds B × M × d: fine at this size
    assert mat.shape == (9, 13)
    assert torch.isfinite(mat).all()
    np.testing.assert_allclose(mat.detach().numpy(), ref.detach().numpy(), rtol=1e-8, atol=0)


def test_matrix_form_batched_leading_dims():
    noise = _noise64(12)
    y, s = _hard_inputs(3 * 5, 3 * 7, 12, seed=1)
    y, s = y.reshape(3, 5, 12), s.reshape(3, 7, 12)
    mat = noise.log_likelihood_matrix(y, s)
    for k in range(3):
        np.testing.assert_allclose(mat[k].detach().numpy(), noise.log_likelihood_matrix(y[k], s[k]).detach().numpy(), rtol=1e-12)


def test_matrix_form_gradients_match_reference():
    noise = _noise64(20, seed=2)
    y, s0 = _hard_inputs(6, 8, 20, seed=2)
    weights = torch.as_tensor(np.random.default_rng(3).normal(size=(6, 8)))
    grads = []
    for form in ("matrix", "reference"):
        noise.zero_grad()
        s = s0.clone().requires_grad_(True)
        ll = noise.log_likelihood_matrix(y, s) if form == "matrix" else noise.log_likelihood(y[:, None], s[None])
        (weights * ll).sum().backward()
        grads.append((s.grad.clone(), noise.dropout_logit.grad.clone()))
    (gs_m, gl_m), (gs_r, gl_r) = grads
    assert torch.isfinite(gs_m).all() and torch.isfinite(gl_m).all()
    np.testing.assert_allclose(gs_m.numpy(), gs_r.numpy(), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(gl_m.numpy(), gl_r.numpy(), rtol=1e-8, atol=1e-10)


def test_float32_stays_finite_in_tails():
    noise = ZIPNoise(np.full(4, 3.0))
    y = torch.tensor([[0.0, 2.0, 0.0, 7.0]])
    s = torch.tensor([[-200.0, -100.0, 50.0, 90.0]], requires_grad=True)
    ll = noise.log_likelihood_matrix(y, s)
    ll.sum().backward()
    assert torch.isfinite(ll).all() and torch.isfinite(s.grad).all()


def test_unit_scale_hand_example():
    y = np.array([[0, 2, 0], [4, 2, 0], [2, 2, 0], [2, 2, 0]], dtype=float)
    # gene 0: E y = 2, Var y = 2 -> (2 + 4)/2 - 1 = 2; gene 1: Var 0 -> (0 + 4)/2 - 1 = 1; gene 2: zero mean -> 1
    np.testing.assert_allclose(unit_scale_from_counts(y), [2.0, 1.0, 1.0])
    # below 1 is clipped: Var 0, mean 0.5 -> 0.5 - 1 < 1
    np.testing.assert_allclose(unit_scale_from_counts(np.array([[0.5], [0.5]])), [1.0])


def test_unit_scale_recovers_zip_rate():
    # for y ~ ZIP(rate λ, dropout π): (Var + E²)/E - 1 = λ exactly in expectation
    rng = np.random.default_rng(0)
    lam, pi = np.array([3.0, 10.0]), np.array([0.2, 0.5])
    y = rng.poisson(lam, (200_000, 2)) * (rng.random((200_000, 2)) >= pi)
    np.testing.assert_allclose(unit_scale_from_counts(y), lam, rtol=0.02)


def test_sample_counts_statistics():
    noise = ZIPNoise(np.array([2.0, 5.0, 1.0]))
    with torch.no_grad():
        noise.dropout_logit.copy_(torch.logit(torch.tensor([0.1, 0.4, 0.0001])))
    s = torch.tensor([[0.5, 1.0, -1.0]]).expand(200_000, 3)
    y = noise.sample_counts(s, torch.Generator().manual_seed(0)).numpy()
    rate = noise.rate(s[0]).detach().numpy()
    pi = noise.dropout.detach().numpy()
    assert (y >= 0).all() and np.array_equal(y, np.round(y))
    np.testing.assert_allclose(y.mean(0), (1 - pi) * rate, rtol=0.01)
    np.testing.assert_allclose((y == 0).mean(0), pi + (1 - pi) * np.exp(-rate), atol=0.004)
    np.testing.assert_allclose(y.var(0), (1 - pi) * rate * (1 + pi * rate), rtol=0.02)


def test_decode_is_log1p_cp10k_of_the_count_draw():
    """LCD.decode, the one decoding of latent states to expression: ZIP counts, then log1p CP10k."""
    from lcd_core.model import LCD
    from lcd_core.module import ScoreNet

    model = LCD(genes=list("abcd"), pert_genes=list("abcd"), conditions=["ctrl"], mu=np.zeros(4), sd=np.ones(4),
                net=ScoreNet(4, 4, hidden=8, emb_dim=4, level_emb_dim=8), noise=ZIPNoise(np.ones(4)))
    s = np.array([[3.0, 1.0, 0.0, 2.0], [-80.0, -80.0, -80.0, -80.0]])  # 2nd cell: no counts
    x = model.decode(s, seed=0)
    y = model.decode_counts(s, seed=0)  # same draw
    assert x.dtype == np.float32 and y[0].sum() > 0 and y[1].sum() == 0
    np.testing.assert_allclose(np.expm1(x[0]).sum(), 1e4, rtol=1e-5)
    np.testing.assert_allclose(x[0], np.log1p(y[0] / y[0].sum() * 1e4), rtol=1e-5)
    assert (x[1] == 0).all()


def test_naive_latent_moments_recover_truth_with_many_cells():
    rng = np.random.default_rng(0)
    d = 5
    u, pi = rng.uniform(5, 10, d), rng.uniform(0.05, 0.2, d)
    mean = rng.uniform(1, 3, d)
    a = rng.normal(size=(d, d)) * 0.2
    cov = a @ a.T
    s = mean + rng.normal(size=(200_000, d)) @ np.linalg.cholesky(cov).T
    y = rng.poisson(u * np.logaddexp(0, s)) * (rng.random(s.shape) >= pi)
    m_hat, c_hat = naive_latent_moments(y, u, pi)
    # delta method: exact up to curvature terms, small at this spread
    assert np.linalg.norm(m_hat - mean) / np.linalg.norm(mean) < 0.02
    assert np.linalg.norm(c_hat - cov) / np.linalg.norm(cov) < 0.15


def test_tempered_evidence_loss_values():
    ll = torch.log(torch.tensor([[0.2, 0.4, 0.6], [1.0, 1.0, 1.0]], dtype=torch.float64))
    out = tempered_evidence_loss(ll, temps=(1.0, 1e6))
    # T = 1: −log mean_m p; T → ∞: −mean_m log p
    want_1 = -np.mean([np.log(0.4), 0.0])
    want_inf = -np.mean([np.mean(np.log([0.2, 0.4, 0.6])), 0.0])
    assert out.components["nll_T1"] == pytest.approx(want_1, rel=1e-10)
    assert out.components["nll_T1e+06"] == pytest.approx(want_inf, rel=1e-5)
    assert out.loss.item() == pytest.approx((want_1 + want_inf) / 2, rel=1e-5)


def test_estimate_dropout_from_zero_fractions():
    rng = np.random.default_rng(1)
    d, K, n = 40, 5, 400
    u, pi = rng.uniform(2, 6, d), rng.uniform(0.05, 0.4, d)
    counts = []
    for _ in range(K):
        s = rng.uniform(0.0, 2.5, d) + rng.normal(size=(n, d)) * 0.6  # latent variation widens E e^{-r}
        counts.append(rng.poisson(u * np.logaddexp(0, s)) * (rng.random((n, d)) >= pi))
    pi_hat = estimate_dropout(counts, u)
    # the naive "constant rate" zero-fraction estimate ignores latent variation and is biased upwards
    assert np.abs(pi_hat - pi).mean() < 0.025 < np.abs(0.05 - pi).mean()
    assert np.corrcoef(pi_hat, pi)[0, 1] > 0.9


def test_naive_latent_moments_diagonal_matches_full():
    rng = np.random.default_rng(2)
    y = rng.poisson(3.0, (50, 6)) * (rng.random((50, 6)) > 0.1)
    u, pi = rng.uniform(1, 4, 6), rng.uniform(0, 0.3, 6)
    m_full, c_full = naive_latent_moments(y, u, pi)
    m_diag, v_diag = naive_latent_moments(y, u, pi, diagonal=True)
    np.testing.assert_allclose(m_diag, m_full)
    np.testing.assert_allclose(v_diag, np.diag(c_full))
