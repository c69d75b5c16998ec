"""Issue 16: how sure is it? Edge identifiability, extrapolation flags, the shuffled-label null and the
bootstrap confidence of directed CLIPR."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import pytest

from lcd_core import LCDError
from lcd_core.clipr import clipr_directed, clipr_directed_from_data, identifiability
from lcd_core.clipr._identify import unresolved_directed, unresolved_paper
from lcd_core.clipr._result import CliprResult


def _skew_block_system(d, unperturbed, rng):
    """A Σ + Σ Aᵀ = −I with Σ = I: A = −I/2 + S, S skew and non-zero only among the unperturbed genes, so
    that the perturbation of each other gene j moves only j (Δl_j ∝ e_j). Exact structure: every edge
    between two unperturbed genes is set by the regulariser (only A_ij + A_ji is fixed), all others by the data."""
    S = np.zeros((d, d))
    u = np.asarray(unperturbed)
    B = rng.normal(size=(u.size, u.size))
    S[np.ix_(u, u)] = B - B.T
    A = -0.5 * np.eye(d) + S
    pert = np.setdiff1d(np.arange(d), u)
    delta_L = np.zeros((d, pert.size))
    delta_L[pert, np.arange(pert.size)] = rng.uniform(1, 3, pert.size)  # A Δl = −δ e_j: Δl = 2δ e_j
    return A, np.eye(d), delta_L, pert


@pytest.mark.parametrize("K", [4, 7, 8])
def test_identified_set_of_a_constructed_system_is_exact(K):
    d = 8
    rng = np.random.default_rng(K)
    unpert = np.sort(rng.permutation(d)[: d - K])
    A, Sigma, dL, pert = _skew_block_system(d, unpert, rng)
    means = np.concatenate([np.zeros((d, 1)), dL], axis=1)
    res = clipr_directed_from_data(None, [None, *pert.tolist()], Sigma=Sigma, means=means, ridge=1e-12,
                                   solver="dense")
    ident = identifiability(res)
    u = np.zeros(d, dtype=bool)
    u[unpert] = True
    both = np.outer(u, u) & ~np.eye(d, dtype=bool)
    assert ident.labels.shape == (d, d)
    assert (ident.labels[both] == "not identified").all()
    assert (ident.labels[~both] == "identified").all()
    np.testing.assert_allclose(ident.unresolved[both], 0.5, atol=1e-9)  # the direction, not the sum
    m = d - K
    assert ident.null_space_dim == m * (m - 1) // 2 and ident.rank == K
    assert np.isclose(ident.unresolved.sum(), ident.null_space_dim)
    if K >= d - 1:
        assert ident.counts()["identified"] == d * (d - 1)
    # the labels say the truth about the estimate: identified edges are exact, the others are not
    err = np.abs(res.effects - A.T)
    assert err[~both].max() < 1e-8
    if both.any():
        assert err[both].max() > 0.1
    assert "not identified" in ident.summary() and ident.condition_number >= 1


def test_directed_labels_do_not_depend_on_the_genes_units():
    """Rescaling one gene (its row and column of Σ, its row of every response) changes no label."""
    rng = np.random.default_rng(1)
    d, K = 7, 3
    M = rng.normal(size=(d, d))
    Sigma = M @ M.T + d * np.eye(d)
    means = np.concatenate([np.zeros((d, 1)), rng.normal(size=(d, K))], axis=1)
    tidx = [None, 0, 1, 2]
    base = identifiability(clipr_directed_from_data(None, tidx, Sigma=Sigma, means=means, solver="dense"))
    c = np.ones(d)
    c[5] = 1e-3  # gene 5 measured in other units (or rarely detected: a tiny variance)
    scaled = identifiability(clipr_directed_from_data(None, tidx, Sigma=Sigma * np.outer(c, c),
                                                      means=means * c[:, None], solver="dense"))
    np.testing.assert_allclose(scaled.unresolved, base.unresolved, atol=1e-8)
    assert (scaled.labels == base.labels).all()


def test_unresolved_share_matches_the_projection_on_a_random_system():
    """ρ_ij = ‖P_N e_ij‖² against the explicit null-space basis Q T Qᵀ Σ⁻¹ (T skew)."""
    rng = np.random.default_rng(0)
    d, K = 7, 3
    M = rng.normal(size=(d, d))
    Sigma = M @ M.T + d * np.eye(d)
    dL = rng.normal(size=(d, K))
    rho, info = unresolved_directed(Sigma, dL)
    W = np.linalg.inv(Sigma)
    U = np.linalg.svd(W @ dL)[0]
    Q = U[:, K:]
    m = d - K
    basis = []
    for a in range(m):
        for b in range(a + 1, m):
            T = np.zeros((m, m))
            T[a, b], T[b, a] = 1, -1
            basis.append((Q @ T @ Q.T @ W).ravel())
    P = np.linalg.qr(np.array(basis).T)[0]
    np.testing.assert_allclose(rho, (P**2).sum(1).reshape(d, d), atol=1e-10)
    assert info["null_space_dim"] == m * (m - 1) // 2


def test_paper_variant_edges_out_of_genes_outside_the_span_are_not_identified():
    d = 6
    L = np.zeros((d, 4))
    L[[0, 1, 2], [1, 2, 3]] = [1.0, 2.0, 3.0]  # limit responses span e_0, e_1, e_2
    rho, info = unresolved_paper(L)
    assert info["rank"] == 3 and info["null_space_dim"] == d * 3
    res = CliprResult(effects=np.zeros((d, d)), A=np.zeros((d, d)), b=np.zeros(d), c=np.zeros((d, 4)),
                      V=np.zeros((d, 4)), L=L, target_index=[None, 0, 1, 2], params={"variant": "paper"})
    ident = identifiability(res)
    assert (ident.labels[:3] == "identified").all() and (ident.labels[3:] == "not identified").all()
    assert "span of the limit responses" in ident.sentence("not identified")
    # K < d: its signs are not to be trusted (docs/benchmarks.md, "Signs of the paper variant"); K = d: no caveat
    assert "not to be trusted" in ident.caveat
    L_full = np.hstack([np.zeros((d, 1)), np.diag(np.arange(1.0, d + 1))])
    full = CliprResult(effects=np.zeros((d, d)), A=np.zeros((d, d)), b=np.zeros(d), c=np.zeros((d, d + 1)),
                       V=np.zeros((d, d + 1)), L=L_full, target_index=[None, *range(d)], params={"variant": "paper"})
    assert identifiability(full).caveat == ""


def test_exports_carry_the_identifiability_label(tmp_path):
    import networkx as nx
    import pandas as pd

    from lcd_core.tl import effects_long, write_effects_csv, write_graphml

    d = 5
    rng = np.random.default_rng(2)
    A, Sigma, dL, pert = _skew_block_system(d, [0, 1, 2], rng)
    res = clipr_directed_from_data(None, [None, *pert.tolist()], Sigma=Sigma,
                                   means=np.concatenate([np.zeros((d, 1)), dL], axis=1), solver="dense")
    ident = identifiability(res)
    genes = [f"g{i}" for i in range(d)]
    effects = A.T + 0.01  # every off-diagonal entry kept
    cols = {"identifiability": ident.labels}
    df = effects_long(effects, genes, columns=cols)
    row = df[(df.source == "g0") & (df.target == "g1")].iloc[0]
    assert row["identifiability"] == "not identified"
    assert df[(df.source == "g3") & (df.target == "g0")].iloc[0]["identifiability"] == "identified"
    csv = pd.read_csv(write_effects_csv(tmp_path / "e.csv", effects, genes, columns=cols))
    assert list(csv.columns) == ["source", "target", "effect", "identifiability"] and len(csv) == d * (d - 1)
    G = nx.read_graphml(write_graphml(tmp_path / "e.graphml", effects, genes, columns=cols))
    assert G.edges["g0", "g1"]["identifiability"] == "not identified"
    assert G.edges["g4", "g0"]["identifiability"] == "identified"


# -- extrapolation flags (item 4) ----------------------------------------------------------------------------
def test_extrapolation_notes_flag_unseen_genes_and_large_combinations():
    from lcd_core.model import extrapolation_notes

    notes = extrapolation_notes(["A", "A+B", "B+A+C", "A+Z", "ctrl"], {"A+Z": ["Z"]})
    assert set(notes) == {"A+B+C", "A+Z"}  # labels in our (sorted) convention
    assert "Z was never perturbed" in notes["A+Z"] and "mean of the trained perturbation embeddings" in notes["A+Z"]
    assert "combination of 3 genes" in notes["A+B+C"]
    assert extrapolation_notes(["A+B+C"], trained_order=3) == {}  # a screen with triples in training


def test_predict_flags_extrapolation_on_stderr_and_in_the_file(tmp_path):
    """`lcd predict` on the shipped demo run: a gene never perturbed in training and a triple are flagged on
    stderr, in obs and in uns['lcd_extrapolation']; a trained single is not."""
    import subprocess
    import sys
    from pathlib import Path

    import anndata as ad

    from lcd_core.model import LCD

    root = Path(__file__).resolve().parents[1]
    model = LCD.load(root / "assets" / "demo_run", device="cpu")
    trained = model.trained_genes
    never = next(g for g in model.pert_genes if g not in set(trained))
    triple = "+".join(sorted(trained[:3]))
    assert set(model.extrapolation([trained[0], never, triple])) == {never, triple}
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "pred.h5ad"
    proc = subprocess.run([sys.executable, "-m", "lcd_core.cli", "predict", str(root / "assets" / "demo_run"),
                           "--perturb", trained[0], "--perturb", never, "--perturb", triple, "--cells", "4",
                           "--device", "cpu", "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    flagged = [ln for ln in proc.stderr.splitlines() if ln.startswith("lcd predict: extrapolation: ")]
    assert len(flagged) == 2 and any(never in ln and "never perturbed" in ln for ln in flagged)
    assert any(triple in ln and "combination of 3 genes" in ln for ln in flagged)
    a = ad.read_h5ad(out)
    assert set(a.uns["lcd_extrapolation"]) == {never, triple}
    assert "never perturbed" in a.uns["lcd_extrapolation"][never]
    per_label = a.obs.groupby("perturbation", observed=True)["extrapolation"].all()
    assert not per_label[trained[0]] and per_label[never] and per_label[triple]


# -- bootstrap confidence and the shuffled-label null (items 2, 5) --------------------------------------------
def test_bootstrap_covers_and_null_is_weaker_on_a_small_linear_screen():
    """Fixed seed, d = 8, every gene perturbed: the 90 % intervals cover most true effects, sign-stable edges
    have the right sign, and the shuffled-label null's 99th percentile lies below the strongest true edges."""
    from lcd_core.clipr import bootstrap_directed, null_directed
    from lcd_core.simulation._linear import linear_sde

    d, n = 8, 400
    rng = np.random.default_rng(0)
    sde = linear_sde(d, expected_degree=2, rng=rng)
    C = np.zeros((d, d + 1))
    C[np.arange(d), np.arange(1, d + 1)] = sde.shifts
    means = -np.linalg.solve(sde.sde_matrix, sde.bias[:, None] + C)
    chol = np.linalg.cholesky(sde.cov)
    cells = [means[:, k] + rng.normal(size=(n, d)) @ chol.T for k in range(d + 1)]
    tidx = [None, *range(d)]
    boot = bootstrap_directed(cells, tidx, n_boot=60, rng=1)
    truth = sde.causal_matrix
    off = ~np.eye(d, dtype=bool)
    cover = ((truth >= boot["lower"]) & (truth <= boot["upper"]))[off].mean()
    assert 0.75 <= cover <= 1.0, cover
    stable = (boot["sign_stability"] >= 0.9) & off & (truth != 0)
    assert stable.sum() >= 5 and (np.sign(boot["effects"]) == np.sign(truth))[stable].mean() >= 0.95
    null = null_directed(cells, tidx, n_null=5, rng=2)
    assert null.shape == (5 * d * (d - 1),)
    q99 = np.percentile(null, 99)
    assert (np.abs(boot["effects"][off & (np.abs(truth) > 1)]) > q99).mean() > 0.5
    # a wrong interval (e.g. the sign flipped) must not cover
    assert ((truth >= -boot["upper"]) & (truth <= -boot["lower"]))[off & (np.abs(truth) > 1)].mean() < 0.2


def test_bootstrap_over_an_ensemble_adds_the_spread_between_networks():
    """Two 'networks' that learned different weights for the same system: resamples drawn from both give
    wider intervals than from one, which cover both networks' estimates, and lower sign stability where
    they disagree."""
    from lcd_core.clipr import bootstrap_directed
    from lcd_core.simulation._linear import linear_sde

    d, n = 6, 400
    rng = np.random.default_rng(3)
    sde = linear_sde(d, expected_degree=2, rng=rng)

    def draw(A):
        C = np.zeros((d, d + 1))
        C[np.arange(d), np.arange(1, d + 1)] = sde.shifts
        means = -np.linalg.solve(A, sde.bias[:, None] + C)
        chol = np.linalg.cholesky(sde.cov)
        return [means[:, k] + rng.normal(size=(n, d)) @ chol.T for k in range(d + 1)]

    tidx = [None, *range(d)]
    other = sde.sde_matrix + np.diag(np.full(d - 1, 0.6), 1)  # a second network's drift: other off-diagonal terms
    own, member = draw(sde.sde_matrix), draw(other)
    alone = bootstrap_directed(own, tidx, n_boot=40, rng=1)
    pooled = bootstrap_directed(own, tidx, n_boot=40, rng=1, members=[member])
    off = ~np.eye(d, dtype=bool)
    width = lambda b: (b["upper"] - b["lower"])[off].mean()  # noqa: E731
    assert width(pooled) > 1.5 * width(alone)
    theirs = bootstrap_directed(member, tidx, n_boot=40, rng=1)["effects"]
    inside = lambda b, e: ((e >= b["lower"]) & (e <= b["upper"]))[off].mean()  # noqa: E731
    assert inside(pooled, theirs) > inside(alone, theirs) + 0.2
    disagree = off & (np.sign(theirs) != np.sign(alone["effects"]))
    assert disagree.any() and pooled["sign_stability"][disagree].mean() < alone["sign_stability"][disagree].mean()
    with pytest.raises(LCDError, match="same conditions"):
        bootstrap_directed(own, tidx, n_boot=4, members=[member[:-1]])


@pytest.mark.slow  # a CLIPR read-out of the demo plus 100 resamples (~30 s)
def test_lcd_clipr_confidence_and_null_on_the_shipped_demo_run(tmp_path):
    """`lcd clipr --confidence --null 3`: identifiability, interval, sign stability and null columns in the
    CSV, the counts on stdout, and the result cached in the run directory (a second call reads it)."""
    import json
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    root = Path(__file__).resolve().parents[1]
    shutil.copytree(root / "assets" / "demo_run", tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "lcd_core.cli", "clipr", str(tmp_path / "run"), "--confidence", "--n-boot", "10",
           "--null", "3", "--device", "cpu", "--out", str(tmp_path / "e.csv")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(tmp_path / "e.csv")
    assert list(df.columns) == ["source", "target", "effect", "identifiability", "lower90", "upper90",
                                "sign_stability", "exceeds_null99"]
    assert set(df["identifiability"]) <= {"identified", "partly identified", "not identified"}
    assert (df["lower90"] <= df["upper90"]).all() and df["sign_stability"].between(0, 1).all()
    assert "null: 3 label shuffles" in proc.stdout and "identifiability: response matrix rank 48" in proc.stdout
    n_exceed = int(proc.stdout.split("null: 3 label shuffles")[1].split("; ")[2].split(" of ")[0].replace(",", ""))
    assert n_exceed == int(df["exceeds_null99"].sum())
    prov = json.loads((tmp_path / "e.provenance.json").read_text())
    assert prov["confidence"]["n_null"] == 3 and prov["identifiability"]["rank"] == 48
    assert list((tmp_path / "run" / "cache").glob("clipr-confidence-*.npz"))
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert again.returncode == 0 and again.stdout == proc.stdout
    bad = subprocess.run([*cmd[:5], "--variant", "paper", "--confidence", "--out", str(tmp_path / "no.csv")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1 and "directed variant" in bad.stderr
    assert not (tmp_path / "no.csv").exists()
