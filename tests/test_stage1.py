"""Stage 1 (METHOD.md §2): deconvolving count noise beats naive per-cell and moment estimators.

The screen is simulated with known truth: Gaussian latent states with condition-specific means and a
shared, strongly correlated covariance, pushed through the ZIP model with known u and π.
"""

from __future__ import annotations

import io
import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest
import torch

from lcd_core.module._noise import naive_latent_inverse, naive_latent_moments
from lcd_core.errors import ConfigError
from lcd_core.train._stage1 import Stage1Config, Stage1Result, fit_stage1, standardize

torch.set_num_threads(1)


def _screen(seed: int = 0, d: int = 30, K: int = 4, n: int = 300):
    rng = np.random.default_rng(seed)
    means = np.tile(rng.uniform(0.5, 2.5, d), (K, 1))
    for k in range(1, K):  # each perturbation shifts 5 genes by ±1.5
        genes = rng.choice(d, 5, replace=False)
        means[k, genes] += rng.choice([-1.5, 1.5], 5)
    loadings = rng.normal(size=(d, 3)) * 0.5  # 3 factors: strong off-diagonal structure
    cov = loadings @ loadings.T + 0.1 * np.eye(d)
    u, pi = rng.uniform(2.0, 6.0, d), rng.uniform(0.05, 0.3, d)
    chol = np.linalg.cholesky(cov)
    counts = []
    for k in range(K):
        s = means[k] + rng.normal(size=(n, d)) @ chol.T
        rate = u * np.logaddexp(0.0, s)
        counts.append((rng.poisson(rate) * (rng.random(rate.shape) >= pi)).astype(np.float64))
    return means, cov, u, pi, counts


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _best_naive_errors(counts, u, pi, means, cov):
    """Per condition, the smallest error over the naive estimators (favours the baseline).

    Candidates: per-cell inversion s = softplus⁻¹(max(y, ε)/u) for ε ∈ {0.1, 0.5, 1} (sample mean and
    covariance), and the ZIP-corrected moment estimator given the TRUE π (``naive_latent_moments``).
    """
    mean_err, cov_err = [], []
    for k, y in enumerate(counts):
        cands = [naive_latent_inverse(y, u, eps) for eps in (0.1, 0.5, 1.0)]
        cands_m = [s.mean(0) for s in cands]
        cands_c = [np.cov(s, rowvar=False) for s in cands]
        m, c = naive_latent_moments(y, u, pi)
        mean_err.append(min(_rel(x, means[k]) for x in [*cands_m, m]))
        cov_err.append(min(_rel(x, cov) for x in [*cands_c, c]))
    return np.array(mean_err), np.array(cov_err)


def _stage1_errors(result, means, cov):
    lat = result.sample_latents(20_000, seed=1)
    mean_err = np.array([_rel(s.mean(0), means[k]) for k, s in enumerate(lat)])
    cov_err = np.array([_rel(np.cov(s, rowvar=False), cov) for s in lat])
    return mean_err, cov_err


_FAST = dict(n_samples=500, batch_size=64, temps=(1.0, 2.0), lr=3e-3, warmup=30, log_every=50)


@pytest.mark.parametrize(
    ("generator", "steps", "arch"),
    [
        # π starts far from the truth (0.05 vs U(0.05, 0.3)): it must be learned
        ("gaussian", 400, dict(dropout_init=0.05)),
        # a slimmer METHOD-shaped MLP so that the test fits the time budget on a loaded 2-core CPU
        ("mlp", 400, dict(width=32, n_blocks=2, gene_hidden=64, n_gene_blocks=1)),
    ],
)
def test_stage1_beats_naive_and_recovers_dropout(generator, steps, arch):
    means, cov, u, pi, counts = _screen()
    config = Stage1Config(generator=generator, steps=steps, seed=0, **_FAST, **arch)
    result = fit_stage1(counts, u, config)
    assert result.step == steps and result.done
    s1_mean, s1_cov = _stage1_errors(result, means, cov)
    nv_mean, nv_cov = _best_naive_errors(counts, u, pi, means, cov)
    print(f"\n[{generator}] rel. error of latent means  stage1 {np.round(s1_mean, 3)}  best naive {np.round(nv_mean, 3)}")
    print(f"[{generator}] rel. error of latent covs   stage1 {np.round(s1_cov, 3)}  best naive {np.round(nv_cov, 3)}")
    pi_hat = result.noise.dropout.detach().numpy()
    print(f"[{generator}] dropout: mean |pi_hat - pi| = {np.abs(pi_hat - pi).mean():.4f}")
    assert (s1_mean < nv_mean).all()
    assert (s1_cov < nv_cov).all()
    assert np.abs(pi_hat - pi).mean() < 0.03
    assert np.corrcoef(pi_hat, pi)[0, 1] > 0.8
    assert [h["step"] for h in result.history] == list(range(50, steps + 1, 50))


def test_resume_matches_uninterrupted_run():
    _, _, u, _, counts = _screen(d=10, n=60)
    config = Stage1Config(generator="mlp", width=16, n_blocks=1, gene_hidden=16, n_gene_blocks=1,
                          n_samples=64, batch_size=16, steps=6, warmup=2, log_every=1, seed=3)
    full = fit_stage1(counts, u, config)

    # interrupt after each of the first two steps (max_seconds=0 stops after one step), round-trip the
    # state through torch.save / torch.load(weights_only=True) as the integrator will, then finish
    state = None
    for _ in range(2):
        part = fit_stage1(counts, u, config, state=state, max_seconds=0.0)
        buf = io.BytesIO()
        torch.save(part.state_dict(), buf)
        buf.seek(0)
        state = torch.load(buf, weights_only=True)
    assert state["step"] == 2
    resumed = fit_stage1(counts, u, config, state=state)
    assert resumed.step == 6
    assert [h["step"] for h in resumed.history] == [h["step"] for h in full.history]
    assert [h["loss"] for h in resumed.history] == [h["loss"] for h in full.history]  # bit-identical on CPU
    for (name, a), (_, b) in zip(full.generators.state_dict().items(), resumed.generators.state_dict().items()):
        assert torch.equal(a, b), name
    assert torch.equal(full.noise.dropout_logit, resumed.noise.dropout_logit)
    # rebuilt from the saved state alone (no data): same samples as the live result
    rebuilt = Stage1Result.from_state_dict(full.state_dict())
    assert rebuilt.step == 6 and rebuilt.config == config
    for a, b in zip(full.sample_latents(7, seed=5), rebuilt.sample_latents(7, seed=5)):
        np.testing.assert_array_equal(a, b)


def test_progress_callback_and_subset_of_conditions():
    _, _, u, _, counts = _screen(d=8, n=40)
    calls = []
    config = Stage1Config(generator="gaussian", n_samples=32, batch_size=8, steps=4, warmup=1, log_every=2,
                          conditions_per_step=2)
    result = fit_stage1(counts, u, config, progress=lambda p: calls.append((p.step, p.total, p.loss)))
    assert [c[:2] for c in calls] == [(2, 4), (4, 4)]
    assert all(np.isfinite(c[2]) for c in calls)
    lat = result.sample_latents(5, seed=0)
    assert len(lat) == 4 and all(x.shape == (5, 8) and x.dtype == np.float32 for x in lat)


def test_standardize():
    rng = np.random.default_rng(0)
    lat = [rng.normal(1.0, 2.0, (100, 3)), rng.normal(3.0, 1.0, (50, 3))]
    lat[0][:, 2] = 5.0
    lat[1][:, 2] = 5.0  # constant gene: σ = 0 must not divide by zero
    x, mu, sd = standardize(lat, control_index=0)
    np.testing.assert_allclose(mu, lat[0].mean(0))
    pooled = np.concatenate(lat)
    np.testing.assert_allclose(sd[:2], pooled.std(0)[:2])
    assert sd[2] == 1.0
    np.testing.assert_allclose(x[0].mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(np.concatenate(x)[:, :2].std(0), 1.0)
    np.testing.assert_allclose(x[1], (lat[1] - mu) / sd)


def test_standardize_within_conditions():
    # gene 0 moves between conditions (σ_all mostly the shift), gene 1 does not: in "within" units both have
    # unit pooled within-condition variance, and gene 0's shift is large in them
    rng = np.random.default_rng(1)
    lat = [rng.normal([0.0, 0.0], [0.5, 2.0], (4000, 2)), rng.normal([6.0, 0.0], [1.5, 2.0], (4000, 2))]
    x, mu, sd = standardize(lat, control_index=0, scale="within")
    np.testing.assert_allclose(sd, np.sqrt([(0.25 + 2.25) / 2, 4.0]), rtol=0.03)
    np.testing.assert_allclose(np.mean([xi.var(0) for xi in x], 0), 1.0, rtol=1e-9)
    _, _, sd_all = standardize(lat, control_index=0)
    assert sd_all[0] > 2.5 * sd[0] and abs(sd_all[1] / sd[1] - 1) < 0.03
    with pytest.raises(ConfigError, match="scale must be one of all, within"):
        standardize(lat, scale="sideways")


def test_standardize_within_median():
    # three genes, all moved by the second condition (σ_all / σ_within ≈ 3.2, 2.2 and 1.1): "within_median"
    # keeps "within"'s units relative to each other and gives the median gene its σ_all, so a screen whose
    # perturbations move most genes is not spread over several σ_all in stage 2's units
    rng = np.random.default_rng(2)
    lat = [rng.normal([0.0, 0.0, 0.0], 1.0, (20_000, 3)), rng.normal([6.0, 4.0, 1.0], 1.0, (20_000, 3))]
    _, _, sd_all = standardize(lat, scale="all")
    _, _, sd_within = standardize(lat, scale="within")
    x, _, sd = standardize(lat, scale="within_median")
    ratio = sd_all / sd_within
    assert ratio[0] > 3 and ratio[1] > 2 and ratio[2] < 1.2
    np.testing.assert_allclose(sd / sd_within, ratio[1], rtol=1e-12)  # one factor for every gene
    np.testing.assert_allclose(sd[1], sd_all[1], rtol=1e-12)  # the median gene keeps METHOD's unit
    assert np.concatenate(x)[:, 1].std() == pytest.approx(1.0, rel=1e-6)
    # a screen whose perturbations move few genes (median ratio 1) gets "within"'s units unchanged
    few = [rng.normal([0.0, 0.0, 0.0], 1.0, (20_000, 3)), rng.normal([6.0, 0.0, 0.0], 1.0, (20_000, 3))]
    np.testing.assert_allclose(standardize(few, scale="within_median")[2], standardize(few, scale="within")[2],
                               rtol=0.02)


def test_config_validation():
    with pytest.raises(ConfigError):
        Stage1Config(generator="vae")
    with pytest.raises(ConfigError):
        Stage1Config(temps=(0.0,))
    with pytest.raises(ConfigError):
        Stage1Config(conditions_per_step=0)
    assert Stage1Config(temps=[1, 5]).temps == (1.0, 5.0)


@pytest.mark.parametrize("kind", ["gaussian", "mlp"])
def test_warm_start_is_exact_gaussian(kind):
    from lcd_core.module._generator import StackedGenerators

    rng = np.random.default_rng(0)
    d, K = 6, 2
    means = rng.normal(size=(K, d))
    a = rng.normal(size=(K, d, d))
    covs = a @ np.swapaxes(a, 1, 2)
    torch.manual_seed(0)
    gen = StackedGenerators(K, d, kind=kind, latent_dim=8, width=8, n_blocks=2, gene_hidden=16, n_gene_blocks=1).double()
    gen.init_from_moments(means, covs)
    with torch.no_grad():
        s = gen.sample(200_000, torch.Generator().manual_seed(0)).numpy()
    for k in range(K):
        assert _rel(s[k].mean(0), means[k]) < 0.02
        assert _rel(np.cov(s[k], rowvar=False), covs[k]) < 0.02
    # forward on a subset of conditions uses those conditions' weights
    z = torch.randn(1, 5, 8, dtype=torch.float64)
    with torch.no_grad():
        np.testing.assert_allclose(gen(z, torch.tensor([1]))[0].numpy(), gen(z.expand(2, 5, 8))[1].numpy())


def test_sharded_stage1_with_the_serial_map():
    """The sharded algorithm (what the Ray backend runs, here with a serial ``map``): each shard is exactly
    ``fit_stage1`` on its conditions, and the shared dropout is the cell-weighted mean probability."""
    import pickle

    from lcd_core.train import fit_stage1_sharded
    from lcd_core.train._sharded import Shard

    _, _, u, _, counts = _screen(d=8, K=4, n=40)
    counts[3] = counts[3][:20]  # unequal cells per shard: the average is weighted by cells
    config = Stage1Config(generator="gaussian", n_samples=32, batch_size=8, steps=6, warmup=1, log_every=3)
    calls, seen = [], []

    def serial(fn, items):
        calls.append(len(items))
        return [fn(item) for item in items]

    sharded = fit_stage1_sharded(counts, u, config, map_fn=serial, n_shards=2,
                                 progress=lambda p: seen.append(p.record))
    assert calls == [2] and sharded.done and sharded.bounds == [(0, 2), (2, 4)]
    parts = [fit_stage1(counts[:2], u, config), fit_stage1(counts[2:], u, config)]
    # generators: shard i is the one-piece fit of its conditions (drawn with seed + i)
    for got, want in zip(sharded.sample_latents(7, seed=0), parts[0].sample_latents(7, seed=0)
                         + parts[1].sample_latents(7, seed=1)):
        np.testing.assert_array_equal(got, want)
    # dropout: cell-weighted mean of the shards' probabilities
    w = np.array([sum(len(y) for y in counts[:2]), sum(len(y) for y in counts[2:])], dtype=float)
    pi = (w[0] * parts[0].noise.dropout.detach().double() + w[1] * parts[1].noise.dropout.detach().double()) / w.sum()
    torch.testing.assert_close(sharded.noise.dropout.detach().double(), pi, atol=1e-6, rtol=0)
    # progress: shard 0's records, then the merged record of the round
    assert [r.get("shard") for r in seen] == [0, 0, None] and seen[-1]["shards"] == 2
    assert seen[-1]["dropout_spread"] == pytest.approx(float((torch.stack(
        [p.noise.dropout.detach().double() for p in parts]) - pi).abs().max()), abs=1e-6)
    # one shard is plain stage 1 (up to the logit round trip)
    one = fit_stage1_sharded(counts, u, config, n_shards=1)
    torch.testing.assert_close(one.noise.dropout_logit, fit_stage1(counts, u, config).noise.dropout_logit,
                               atol=1e-4, rtol=0)
    # resumable in rounds; a shard that travels to another process leaves its progress callback behind
    half = fit_stage1_sharded(counts, u, config, n_shards=2, max_seconds=0.0)
    assert not half.done
    again = fit_stage1_sharded(counts, u, config, n_shards=2, state=half.state_dict())
    assert again.done and len(again.history) == 2
    shard = Shard(counts[:1], u, {}, "cpu", None, None, progress=print)
    assert pickle.loads(pickle.dumps(shard)).progress is None and shard.progress is print
