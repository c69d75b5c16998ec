"""CLIPR (paper and directed), fixed points and the what-if on exact affine drifts and finite samples."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import scipy.linalg as sla
import torch

from lcd_core.clipr import (clipr_directed, clipr_directed_from_data, clipr_from_drift, clipr_paper, fixed_points,
                            interventional_inversion, whatif_shift)
from lcd_core.errors import ConfigError, LCDError, RunError
from lcd_core.tl._recovery import causal_recovery, sign_auroc

torch.set_num_threads(1)
SIGMAS = np.geomspace(10, 0.01, 30)


def random_system(d, rng, out_edges=3.0):
    """METHOD §8 linear generator: ER graph, weights ±U(1, 3), A_causal = W − (max Re eig + 0.5) I,
    SDE matrix A = A_causalᵀ, b ~ U(−3, 3), Σ from A Σ + Σ Aᵀ = −I."""
    p = min(1.0, out_edges / (d - 1))
    W = (rng.random((d, d)) < p) * rng.choice([-1, 1], (d, d)) * rng.uniform(1, 3, (d, d))
    np.fill_diagonal(W, 0)
    Ac = W - (np.max(np.linalg.eigvals(W).real) + 0.5) * np.eye(d)
    A = Ac.T
    b = rng.uniform(-3, 3, d)
    Sigma = sla.solve_continuous_lyapunov(A, -np.eye(d))
    return A, b, 0.5 * (Sigma + Sigma.T)


def affine_score_fn(A, b, C, mu, sd, sig_min=0.01):
    """Exact affine drift f_q(s) = A s + b + c_q in state space, as a score_fn in standardised space.

    Above σ_min it returns the smoothed drift (M⁻¹ − (σ² − σ_min²) I)⁻¹ (x − m_q) (the Gaussian score
    at noise σ for a gradient field), which keeps m_q as fixed point and behaves like a real score net
    (magnitude ~1/σ²); at σ_min it is exact."""
    sd_t = torch.as_tensor(sd)
    M = torch.as_tensor(np.diag(sd) @ A @ np.diag(sd))  # drift matrix in standardised space
    means_state = -np.linalg.solve(A, b[:, None] + C)  # (d, K+1)
    m_std = torch.as_tensor(((means_state - mu[:, None]) / sd[:, None]).T)  # (K+1, d)
    Minv = torch.linalg.inv(M)
    d = len(b)

    def score_fn(x, sigma, cond):
        x = x.double()
        if sigma <= sig_min * (1 + 1e-12):
            Ms = M
        else:
            Ms = torch.linalg.inv(Minv - (sigma**2 - sig_min**2) * torch.eye(d, dtype=torch.float64))
        return (x - m_std[cond]) @ Ms.T

    return score_fn, means_state


def _exact_setup(d, K, rng, symmetric=False):
    A, b, Sigma = random_system(d, rng)
    if symmetric:
        A = -np.linalg.inv(Sigma)
    targets = rng.permutation(d)[:K]
    C = np.zeros((d, K + 1))
    C[targets, np.arange(1, K + 1)] = rng.choice([-1, 1], K) * rng.uniform(5, 15, K)
    mu = -np.linalg.solve(A, b) + rng.normal(0, 0.1, d)  # "control mean" of standardisation
    sd = rng.uniform(0.5, 2.0, d)
    return A, b, Sigma, C, targets, mu, sd


@pytest.mark.parametrize("symmetric", [False, True])
def test_paper_clipr_exact_affine(symmetric):
    rng = np.random.default_rng(0)
    d = 12
    A, b, Sigma, C, targets, mu, sd = _exact_setup(d, d, rng, symmetric=symmetric)
    score_fn, means = affine_score_fn(A, b, C, mu, sd)
    res = clipr_from_drift(
        score_fn, SIGMAS, mu, sd, [None] + list(targets), lam=1e-12, ref_point="origin", ref_sigma=SIGMAS[-1],
        schedule="fast", fixed_point_tol=1e-14, max_steps=400, dtype=torch.float64,
    )
    np.testing.assert_allclose(res.L, means, atol=1e-8)
    err = np.abs(res.A - A).max() / np.abs(A).max()
    assert err < 1e-6, err
    np.testing.assert_allclose(res.effects, res.A.T)
    np.testing.assert_allclose(res.b, b, atol=1e-5)
    np.testing.assert_allclose(res.c[:, 1:], C[:, 1:], atol=1e-4)
    # control_mean (the default) as reference point gives the same A under an exact affine drift
    res2 = clipr_from_drift(
        score_fn, SIGMAS, mu, sd, [None] + list(targets), lam=1e-12,
        ref_sigma=SIGMAS[-1], fixed_point_tol=1e-14, max_steps=400, dtype=torch.float64,
    )
    assert res2.params["ref_point"] == "control_mean"
    assert np.abs(res2.A - A).max() / np.abs(A).max() < 1e-6


def test_fixed_points_schedules_agree_and_stop_early():
    rng = np.random.default_rng(1)
    d = 8
    A, b, Sigma, C, targets, mu, sd = _exact_setup(d, 3, rng)
    score_fn, means = affine_score_fn(A, b, C, mu, sd)
    x0 = torch.zeros(4, d, dtype=torch.float64)
    xf, info = fixed_points(score_fn, SIGMAS, torch.arange(4), x0, schedule="fast", tol=1e-10)
    truth = ((means - mu[:, None]) / sd[:, None]).T
    assert np.abs(xf - truth).max() < 1e-7
    assert info["n_evals"] < 30 * 50  # the convergence test stopped levels early
    # reference step (shortened to 100 steps per level to keep the test fast): a blind count, no early stop
    xr, info_r = fixed_points(score_fn, SIGMAS, torch.arange(4), x0, schedule="reference", max_steps=100)
    assert info_r["n_evals"] == 30 * 100 + 1
    assert np.abs(xr - truth).max() < 1e-2  # agrees with the fast schedule to the shortened count's accuracy
    # denoiser steps (h = σ²): the same fixed points from at most 5 evaluations per level
    xd, info_d = fixed_points(score_fn, SIGMAS, torch.arange(4), x0, schedule="denoiser", tol=1e-10)
    assert np.abs(xd - truth).max() < 1e-7 and info_d["n_evals"] <= 30 * 5 + 1
    assert info_d["n_evals"] * 3 < info["n_evals"], (info_d["n_evals"], info["n_evals"])
    # a step too long for the drift is caught as a divergence, not returned
    with pytest.raises(RunError, match="diverged"):
        fixed_points(score_fn, SIGMAS, torch.arange(4), x0, schedule="denoiser", step_scale=1e4)


def test_fixed_points_run_the_samplers_noise_free_flow():
    """The reference schedule's limit responses are the reference sampler with its noise switched off
    (METHOD §4): one flow, lcd_core.sampling's, so a change to it moves both."""
    from lcd_core.sampling import annealed_langevin
    from lcd_core.sde import VESchedule

    rng = np.random.default_rng(4)
    d = 6
    A, b, Sigma, C, targets, mu, sd = _exact_setup(d, 3, rng)
    score_fn, _ = affine_score_fn(A, b, C, mu, sd)
    x0 = torch.as_tensor(rng.normal(size=(4, d)))
    xr, info = fixed_points(score_fn, SIGMAS, torch.arange(4), x0, schedule="reference", max_steps=20)
    sde = VESchedule(sigma_max=float(SIGMAS[0]), sigma_min=float(SIGMAS[-1]), n_levels=len(SIGMAS))
    np.testing.assert_allclose(sde.sigmas.numpy(), SIGMAS, rtol=1e-12)
    xs = annealed_langevin(score_fn, sde, x0, torch.arange(4), n_steps_per_level=20, noise=False)
    np.testing.assert_allclose(xr, xs.numpy(), rtol=1e-12, atol=1e-12)
    assert info["steps"] == [20] * len(SIGMAS) and info["n_evals"] == 20 * len(SIGMAS) + 1


def test_newton_fixed_points_on_exact_affine_and_nonlinear_drifts():
    rng = np.random.default_rng(2)
    d = 10
    A, b, Sigma, C, targets, mu, sd = _exact_setup(d, 5, rng)
    score_fn, means = affine_score_fn(A, b, C, mu, sd)
    truth = ((means - mu[:, None]) / sd[:, None]).T
    x0 = torch.zeros(6, d, dtype=torch.float64)
    xn, info = fixed_points(score_fn, SIGMAS, torch.arange(6), x0, schedule="newton", tol=1e-10)
    # drifts that differ by a shift share their Jacobian: the chord step is Newton's, exact in one step
    assert np.abs(xn - truth).max() < 1e-6 and info["converged"].all()
    assert info["n_evals"] <= 2 + 4 + 1, info["n_evals"]
    xf, info_f = fixed_points(score_fn, SIGMAS, torch.arange(6), x0, schedule="fast", tol=1e-10)
    assert info["n_evals"] * 20 < info_f["n_evals"]

    # a saturating drift with condition-specific curvature: f_q(x) = M tanh(x) − x/2 + c_q, divided by
    # 1 + σ² like a score (same roots at every σ, so both schedules look for the same points); the shared
    # Jacobian is only approximate
    M = torch.as_tensor(rng.normal(0, 0.12, (d, d)))  # M − I/2 stable: a drift with stable roots
    c = torch.as_tensor(rng.normal(0, 1.0, (8, d)) * np.linspace(0.2, 3, 8)[:, None])

    def tanh_fn(x, sigma, cond):
        x = x.double()
        return (torch.tanh(x) @ M.T - 0.5 * x + c[cond]) / (1 + sigma**2)

    xs, info = fixed_points(tanh_fn, SIGMAS, torch.arange(8), torch.zeros(8, d), schedule="newton", tol=1e-6)
    resid = tanh_fn(torch.as_tensor(xs), 0.01, torch.arange(8)).abs().amax(1)
    assert info["converged"].all() and float(resid.max()) < 1e-4, (info, resid)
    solved_by_chord = [q for q in range(8) if str(q) not in info["fallback"]]
    # the smallest shifts stay where the shared Jacobian is right: the chord alone solves them; the largest
    # go to the annealed flow (measured: 0, 2, 3 by the chord)
    assert solved_by_chord[0] == 0 and len(solved_by_chord) >= 3 and info["fallback"], info["fallback"]


def test_fixed_points_divergence_raises():
    def bad(x, sigma, cond):
        return torch.where(cond[:, None] == 2, x * 1e3 + 1.0, -x)

    with pytest.raises(RunError, match=r"diverged for conditions .*KLF1"):
        fixed_points(bad, SIGMAS, torch.arange(3), torch.zeros(3, 4), names=["ctrl", "A", "KLF1"])

    def nan_fn(x, sigma, cond):
        return x * float("nan")

    with pytest.raises(RunError, match="diverged"):
        clipr_from_drift(nan_fn, SIGMAS, np.zeros(4), np.ones(4), [None, 0, 1, 2])


def test_clipr_validation():
    with pytest.raises(ConfigError, match="at least 2"):
        clipr_from_drift(lambda x, s, c: -x, SIGMAS, np.zeros(4), np.ones(4), [None, 1])
    rng = np.random.default_rng(2)
    d = 6
    L = rng.normal(size=(d, 4))  # K + 1 = 4 < d: rank-deficient
    V = rng.normal(size=(d, 4))
    with pytest.raises(LCDError, match="span only 4 of 6"):
        clipr_paper(V, L, lam=0.0)
    A, b, c, info = clipr_paper(V, L, lam=1e-4)
    assert info["rank"] == 4 and "span only" in info["warnings"][0]
    with pytest.raises(RunError):
        clipr_paper(V * np.nan, L)
    # the warning is recorded in the result of clipr_from_drift too
    A0, b0, S0, C, targets, mu, sd = _exact_setup(d, 3, rng)
    score_fn, _ = affine_score_fn(A0, b0, C, mu, sd)
    with pytest.warns(UserWarning, match="span only"):
        res = clipr_from_drift(score_fn, SIGMAS, mu, sd, [None] + list(targets), dtype=torch.float64)
    assert any("span only" in w for w in res.warnings)


@pytest.mark.parametrize("K", [8, 15, 16])
@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_directed_exact(K, solver):
    rng = np.random.default_rng(3)
    d = 16
    A, b, Sigma, C, targets, mu, sd = _exact_setup(d, K, rng)
    means = -np.linalg.solve(A, b[:, None] + C)
    dL = means[:, 1:] - means[:, :1]
    A_hat, info = clipr_directed(Sigma, dL, targets, solver=solver, ridge=1e-12, tol=1e-13, return_info=True)
    assert info["lyapunov_residual"] < 1e-8 and info["on_target_residual"] < 1e-8, info
    err = np.abs(A_hat - A).max() / np.abs(A).max()
    if K >= d - 1:
        assert err < 1e-6, (err, info)  # identified: the directed A itself
    else:
        # not identified: the error must lie in the predicted null space S Σ⁻¹, S skew, S Σ⁻¹ Δl_q = 0
        S = (A_hat - A) @ Sigma
        assert np.abs(S + S.T).max() < 1e-8 and np.abs((A_hat - A) @ dL).max() < 1e-8
        assert causal_recovery(A_hat.T, A.T)["sign_auroc"] > 0.9
        # both solvers return the same (minimum-norm) member of the solution set
        other = clipr_directed(Sigma, dL, targets, solver="dense" if solver == "cg" else "cg", ridge=1e-12, tol=1e-13)
        assert np.abs(other - A_hat).max() / np.abs(A_hat).max() < 1e-5
    # with no perturbations the minimum-norm solution is the symmetric −Σ⁻¹/2
    A0 = clipr_directed(Sigma, np.zeros((d, 0)), [], solver=solver, ridge=1e-12, tol=1e-13)
    assert np.abs(A0 + 0.5 * np.linalg.inv(Sigma)).max() / np.abs(A0).max() < 1e-5


def test_directed_null_space_dimension():
    """The stated identification result: null space dimension (d − K)(d − K − 1)/2."""
    rng = np.random.default_rng(7)
    d = 7
    A, b, Sigma, C, targets, mu, sd = _exact_setup(d, d, rng)
    means = -np.linalg.solve(A, b[:, None] + C)
    dL = means[:, 1:] - means[:, :1]
    I = np.eye(d)
    Kn = np.kron(I, Sigma)
    Ma = Kn + Kn[np.arange(d * d).reshape(d, d).T.ravel()]
    for K in range(0, d + 1):
        mask = np.ones((d, K), dtype=bool)
        mask[targets[:K], np.arange(K)] = False
        M = np.vstack([Ma, np.kron(I, dL[:, :K].T)[mask.ravel()]]) if K else Ma
        null = d * d - np.linalg.matrix_rank(M, tol=1e-9)
        assert null == (d - K) * (d - K - 1) // 2, (K, null)


def test_interventional_inversion_exact():
    rng = np.random.default_rng(4)
    d = 20
    A, b, Sigma, C, targets, mu, sd = _exact_setup(d, d, rng)
    means = -np.linalg.solve(A, b[:, None] + C)
    dL = means[:, 1:] - means[:, :1]
    A_unit = interventional_inversion(dL, targets)
    np.testing.assert_allclose(A_unit, A / -np.diag(A)[:, None], atol=1e-9)
    np.testing.assert_allclose(interventional_inversion(dL, targets, Sigma=Sigma), A, atol=1e-8)
    with pytest.raises(LCDError, match="singular"):
        dL2 = dL.copy()
        dL2[:, 1] = dL2[:, 0]
        interventional_inversion(dL2, targets)


def _sample_screen(A, b, Sigma, C, n, rng):
    chol = np.linalg.cholesky(Sigma)
    means = -np.linalg.solve(A, b[:, None] + C)
    return [means[:, k] + rng.normal(size=(n, len(b))) @ chol.T for k in range(C.shape[1])]


def test_directed_finite_sample_recovery():
    rng = np.random.default_rng(5)
    d, n = 20, 200
    A, b, Sigma, C, targets, mu, sd = _exact_setup(d, d, rng)
    cells = _sample_screen(A, b, Sigma, C, n, rng)
    res = clipr_directed_from_data(cells, [None] + list(targets))
    truth = A.T  # effects: rows = sources
    rec = causal_recovery(res.effects, truth)
    assert rec["sign_auroc"] > 0.95 and rec["pearson"] > 0.9, rec
    # the symmetric estimate (K = 0) and wrong conventions must score clearly worse
    sym = clipr_directed_from_data(cells[:1], [None]).effects
    assert sign_auroc(sym, truth) < rec["sign_auroc"] - 0.03
    assert sign_auroc(res.A, truth) < 0.85  # transposed (rows = targets): fails
    assert sign_auroc(-res.effects, truth) < 0.2  # wrong sign: fails
    inv = clipr_directed_from_data(cells, [None] + list(targets), method="inversion")
    assert causal_recovery(inv.effects, truth)["sign_auroc"] > 0.95


def test_whatif_shift_matches_mean_shift():
    rng = np.random.default_rng(6)
    d = 10
    A, b, Sigma, C, targets, mu, sd = _exact_setup(d, 4, rng)
    means = -np.linalg.solve(A, b[:, None] + C)
    pred = whatif_shift(A, C[:, 1:].T)
    np.testing.assert_allclose(pred, (means[:, 1:] - means[:, :1]).T, atol=1e-10)
    np.testing.assert_allclose(whatif_shift(A, C[:, 1]), pred[0])
    with pytest.raises(LCDError, match="singular"):
        whatif_shift(np.zeros((3, 3)), np.ones(3))


# -- when the fixed-point flows' convergence is worth a warning ----------------------------------------
def test_convergence_warning_only_where_the_result_depends_on_it():
    from lcd_core.clipr import convergence_warning

    rng = np.random.default_rng(3)
    d = 8
    A, b, Sigma, C, targets, mu, sd = _exact_setup(d, 3, rng)
    score_fn, _ = affine_score_fn(A, b, C, mu, sd)
    x0 = torch.zeros(4, d, dtype=torch.float64)
    names = ["ctrl", "GATA1", "KLF1", "SPI1"]
    # converged flows, and a blind step count (the reference schedule defines its own limit): no warning
    _, info = fixed_points(score_fn, SIGMAS, torch.arange(4), x0, schedule="fast", tol=1e-10)
    assert info["converged"].all() and convergence_warning(info, names) is None
    _, info = fixed_points(score_fn, SIGMAS, torch.arange(4), x0, schedule="reference", max_steps=2)
    assert info["tol"] == 0 and convergence_warning(info, names) is None
    # the whole schedule ran but the tolerance is below what float32 resolves: its end point is the result
    _, info = fixed_points(score_fn, SIGMAS, torch.arange(4), x0, schedule="denoiser", tol=1e-12,
                           dtype=torch.float32)
    assert not info["converged"].all() and info["full_schedule"] and convergence_warning(info, names) is None
    # cut short: the end point depends on where the flows stopped; named by symbol, with what to do
    _, info = fixed_points(score_fn, SIGMAS, torch.arange(4), x0, schedule="fast", max_steps=1, tol=1e-10)
    assert not info["converged"].any() and not info["full_schedule"]
    msg = convergence_warning(info, names)
    assert msg and "4 condition(s) (ctrl, GATA1, KLF1, SPI1)" in msg and "drop max_steps" in msg, msg
    # a root finder that did not reach its tolerance (its end point is defined by it): the info of such a run
    info = {**info, "schedule": "newton", "tol": 1e-4, "steps": [100], "steps_per_level": 100, "full_schedule": True,
            "converged": np.array([True, False, True, True])}
    msg = convergence_warning(info, names)
    assert msg and "1 condition(s) (GATA1)" in msg and "chord-Newton" in msg and "schedule='denoiser'" in msg, msg


def test_shipped_demo_run_paper_clipr_warns_only_when_cut_short():
    """The default path on the shipped demo run: every flow ends above tol 1e-6 (relative steps 4e-6 –
    3e-5) yet the effects equal the reference schedule's to 0.2 %: no warning. Cut to one step per level
    (effects 8 % off): a warning naming the genes by symbol."""
    import warnings
    from pathlib import Path

    from lcd_core.model import LCD, get_clipr
    from lcd_core.clipr import single_gene_conditions

    run = Path(__file__).resolve().parents[1] / "assets" / "demo_run"
    if not (run / "COMPLETE").exists():
        pytest.skip("no shipped demo run")
    model = LCD.load(run, device="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        full = get_clipr(model, variant="paper", use_cache=False)
    assert not full.info["fixed_points"]["converged"].all()  # the tolerance is not reached...
    assert not [w for w in full.warnings if "converged" in w]  # ...and that is not worth a warning
    assert not [w for w in caught if "converged" in str(w.message)]
    cut = get_clipr(model, variant="paper", use_cache=False, max_steps=1)
    notes = [w for w in cut.warnings if "not converged" in w]
    first = single_gene_conditions(model)[0][0]
    assert len(notes) == 1 and f"ctrl, {first}," in notes[0] and "gene 0" not in notes[0], notes


def test_edge_precision_recall_at_a_threshold():
    """The Causal graph page's precision / recall: estimated edges |e| > threshold against true edges,
    off the diagonal."""
    from lcd_core.tl import edge_precision_recall

    truth = np.array([[-1.0, 0.8, 0.0, 0.0],
                      [0.0, -1.0, -0.6, 0.0],
                      [0.0, 0.0, -1.0, 0.0],
                      [0.3, 0.0, 0.0, -1.0]])  # 3 true edges
    est = np.array([[-5.0, 0.9, 0.05, 0.0],
                    [0.0, -5.0, -0.2, 0.7],
                    [0.0, 0.0, -5.0, 0.0],
                    [0.0, 0.0, 0.0, -5.0]])  # the diagonal never counts
    pr = edge_precision_recall(est, truth, threshold=0.1)
    assert pr == {"precision": 2 / 3, "recall": 2 / 3, "tp": 2, "n_estimated": 3, "n_true": 3}
    strict = edge_precision_recall(est, truth, threshold=0.8)
    assert (strict["precision"], strict["recall"]) == (1.0, 1 / 3)
    none = edge_precision_recall(est, truth, threshold=10.0)
    assert (none["precision"], none["recall"], none["n_estimated"]) == (0.0, 0.0, 0)
    with pytest.raises(LCDError):
        edge_precision_recall(est[:3, :3], truth, threshold=0.1)


def test_singular_response_flags_only_implausible_what_ifs():
    from lcd_core.tl import singular_response

    sd = np.array([0.5, 1.0, 2.0])
    assert singular_response(np.array([10.0, -50.0, 100.0]), sd) is None  # at most 50 sd
    assert singular_response(np.array([0.0, -150.0, 1.0]), sd) == 150.0
    assert singular_response(np.array([0.0, np.nan, 1.0]), sd) == np.inf
    assert singular_response(np.array([0.0, 20.0, 0.0]), sd, max_sd=10.0) == 20.0
