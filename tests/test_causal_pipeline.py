"""CLIPR end to end on a trained model: simulate a linear screen → train LCD → CLIPR → compare with the
true causal matrix (METHOD.md §4, §8). Small (d = 20) but real. The thresholds are issue 4's targets, not
values recorded from a run: where this fast configuration misses them the test is marked with the
measured reason (strict, so it fails once they are met)."""

from __future__ import annotations

import numpy as np
import pytest

from lcd_core import KEYS, ConfigError
from lcd_core.data import screen_from_anndata
from lcd_core.model import apply_overrides, get_clipr, get_preset, train
from lcd_core.simulation import simulate_linear
from lcd_core.tl import causal_recovery


#: issue 4's targets (Erdős–Rényi, K = d, 200 cells per condition): paper sign-AUROC ≥ 0.9, directed
#: sign-AUROC ≥ 0.98 and Pearson ≥ 0.9, directed ≥ paper
#: the module's fixture trains a model (~90 s on 2 cores): slow, like every test that trains for minutes
pytestmark = pytest.mark.slow

PAPER_AUROC, DIRECTED_AUROC, DIRECTED_PEARSON = 0.9, 0.98, 0.9

#: why the trained model misses the targets here (measured on this seed): d = 20 and 1000 steps of a 256-wide
#: net keep the test fast; directed 0.919 / r 0.79, fixed points 0.89 / 0.73, paper 0.71. The equations meet
#: them on the same cells (source="data": 1.000 / 0.986, asserted below) and the benchmark's training
#: (3000 steps, 2 × 1024, d = 100) meets them on every seed (docs/benchmarks.md: directed 0.9991–0.9994 /
#: r 0.905–0.910, paper 0.951–0.966): the gap is this test's short training, not the math
UNDERTRAINED = ("d = 20, 1000 training steps of a 256-wide net (kept fast): measured directed 0.919 / r 0.79, "
                "fixed points 0.89 / 0.73, paper 0.71 on this seed; the benchmark's training meets the targets")


@pytest.fixture(scope="module")
def linear_run(tmp_path_factory):
    screen = screen_from_anndata(simulate_linear(20, n_cells=200, graph="er", counts=False, seed=3))
    cfg = apply_overrides(get_preset("demo", seed=0), ["stage2.hidden=256", "stage2.emb_dim=64",
                                                       "stage2.batch_size=1024", "stage2.steps=1000"])
    model = train(screen, tmp_path_factory.mktemp("lin") / "run", config=cfg, device="cpu")
    return screen, model


@pytest.fixture(scope="module")
def recovery(linear_run):
    """Recovery of the true matrix by each variant / source (sign-AUROC, Pearson, ...)."""
    screen, model = linear_run
    truth = np.asarray(screen.truth["causal_matrix"], dtype=float)
    results = {"directed": get_clipr(model, variant="directed"), "paper": get_clipr(model, variant="paper"),
               "fixed_points": get_clipr(model, variant="directed", source="fixed_points", use_cache=False),
               "data": get_clipr(model, variant="directed", source="data", screen=screen, use_cache=False)}
    scores = {k: causal_recovery(r.effects, truth) for k, r in results.items()}
    scores["transposed"] = causal_recovery(results["directed"].effects.T, truth)
    return results, scores


def test_directed_clipr_equations_meet_the_targets_on_the_measured_cells(recovery):
    """The directed equations on the screen's own means and covariance (source="data")."""
    _, scores = recovery
    rec = scores["data"]
    assert rec["sign_auroc"] >= DIRECTED_AUROC and rec["pearson"] >= DIRECTED_PEARSON, rec


def test_directed_beats_paper_and_a_transposed_estimate(recovery):
    _, scores = recovery
    # directed ≥ paper (a target at every K), for the model's cells and its fixed points alike
    assert scores["directed"]["sign_auroc"] >= scores["paper"]["sign_auroc"], scores
    assert scores["fixed_points"]["sign_auroc"] >= scores["paper"]["sign_auroc"], scores
    # the same estimate transposed (sources and targets swapped) scores clearly worse: rows are sources
    assert scores["transposed"]["sign_auroc"] < scores["directed"]["sign_auroc"] - 0.05, scores


@pytest.mark.xfail(reason=UNDERTRAINED, strict=True)
@pytest.mark.parametrize("which", ["directed", "fixed_points"])
def test_trained_directed_clipr_meets_the_targets(recovery, which):
    _, scores = recovery
    rec = scores[which]
    assert rec["sign_auroc"] >= DIRECTED_AUROC and rec["pearson"] >= DIRECTED_PEARSON, rec


@pytest.mark.xfail(reason=UNDERTRAINED, strict=True)
def test_trained_paper_clipr_meets_the_target(recovery):
    _, scores = recovery
    assert scores["paper"]["sign_auroc"] >= PAPER_AUROC, scores["paper"]


def test_directed_clipr_sources_and_refusals(linear_run, recovery):
    """METHOD §4 offers Σ and the limit responses from the model (generated cells, fixed points of the
    drift) or from the measured cells; hostile choices are refused."""
    screen, model = linear_run
    results, _ = recovery
    fixed, data = results["fixed_points"], results["data"]
    assert "fixed_points" in fixed.info and fixed.params["source"] == "fixed_points"
    # the measured means are the data's own: the limit responses equal the condition means
    np.testing.assert_allclose(data.L[:, 0], screen.log1p(KEYS.CONTROL).mean(0), rtol=1e-6)
    with pytest.raises(ConfigError, match="needs the training screen"):
        get_clipr(model, variant="directed", source="data", use_cache=False)
    with pytest.raises(ConfigError, match="directed variant takes"):
        get_clipr(model, variant="paper", source="data", use_cache=False)
    with pytest.raises(ConfigError, match="directed variant takes"):
        get_clipr(model, variant="directed", source="nonsense", use_cache=False)


def test_clipr_results_are_cached_in_the_run(linear_run):
    _, model = linear_run
    first = get_clipr(model, variant="paper")
    again = get_clipr(model, variant="paper")
    assert "cache" in again.info
    np.testing.assert_array_equal(first.effects, again.effects)
    assert again.params == first.params


def test_clipr_cache_is_keyed_by_the_algorithm_version(linear_run, monkeypatch):
    """A new version of the read-out (lcd_core.clipr.ALGORITHM_VERSION, bumped by hand) does not read the
    results of the old one: it computes and caches beside them; the old version finds its own again."""
    import lcd_core.clipr._readout as readout

    _, model = linear_run
    old = get_clipr(model, variant="paper")
    cache_dir = readout._cache_path(model, readout.clipr_options(variant="paper")).parent
    files = set(cache_dir.glob("*.npz"))
    assert "cache" in get_clipr(model, variant="paper").info
    monkeypatch.setattr(readout, "ALGORITHM_VERSION", readout.ALGORITHM_VERSION + 1)
    new = get_clipr(model, variant="paper")
    assert "cache" not in new.info and new.params["algorithm"] == old.params["algorithm"] + 1
    added = set(cache_dir.glob("*.npz")) - files
    assert len(added) == 1 and "cache" in get_clipr(model, variant="paper").info
    monkeypatch.undo()
    assert "cache" in get_clipr(model, variant="paper").info  # the old version's file is still its own


def test_clipr_needs_two_single_gene_perturbations(tmp_path):
    screen = screen_from_anndata(simulate_linear(8, n_perturbed=1, n_cells=50, counts=False, seed=0))
    cfg = apply_overrides(get_preset("demo"), ["stage2.hidden=32", "stage2.emb_dim=8", "stage2.steps=5",
                                               "stage2.batch_size=64"])
    model = train(screen, tmp_path / "run", config=cfg, device="cpu")
    with pytest.raises(ConfigError, match="at least 2 single-gene"):
        get_clipr(model)
