"""Count recovery (issue 13, item 2): the integer counts behind log1p of per-cell-scaled counts.

Every file here is a real h5ad written and read through anndata: the Norman subset as distributed, and
scanpy normalisations of Papalexi's real integer counts (recoverable) or further transformed
(z-scored, per-gene scaled, noisy: not recoverable).
"""

from __future__ import annotations

import json
import warnings

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from lcd_core import KEYS
from lcd_core.data import file_space_record, read_screen, recover_counts, to_file_space
from lcd_core.pp import normalize_log1p

from conftest import make_tiny_counts

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="module")
def papalexi_raw(papalexi_h5ad):
    """Every 4th cell of Papalexi (5,183 cells x 299 genes), raw integer counts in .X."""
    a = ad.read_h5ad(papalexi_h5ad)
    return a[::4].copy()


def _write(adata, path):
    adata.write_h5ad(path)
    return path


def _normalised(raw, *, target_sum, log=True, totals_key=None, genes=None):
    import scanpy as sc

    a = raw.copy()
    if totals_key:
        a.obs[totals_key] = np.asarray(raw.X.sum(axis=1)).ravel()
    sc.pp.normalize_total(a, target_sum=target_sum)
    if log:
        sc.pp.log1p(a)
    return a[:, genes].copy() if genes is not None else a


def _dense(m):
    return m.toarray() if sp.issparse(m) else np.asarray(m)


# ------------------------------------------------------------------------------------------- real files


def test_norman_subset_as_distributed_recovers(norman_h5ad):
    screen = read_screen(norman_h5ad)
    rec = screen.recovery
    assert screen.is_counts and screen.recovered
    assert rec.method == "smallest_nonzero" and rec.transform == "log1p" and rec.totals_key == "ncounts"
    assert rec.fraction_integer >= 0.999 and rec.n_nonzero > 40_000
    # ncounts is close to, not exactly, the totals the file used (0.6 % off): the target is an estimate
    assert rec.target_sum == 1e4 and rec.target_approx and -0.02 < rec.totals_offset < 0
    y = screen.counts()
    assert np.array_equal(y, np.rint(y)) and y.min() == 0
    assert 100 < y.sum(1).mean() < 200  # README: ~150 UMIs per cell within these genes
    # the counts give back the file's values: X = log1p(counts / size_factor)
    x = _dense(ad.read_h5ad(norman_h5ad).X)
    sf = screen.adata.obs[KEYS.SIZE_FACTOR].to_numpy()
    np.testing.assert_allclose(np.log1p(y / sf[:, None]), x, atol=1e-4)
    # log1p() normalises the recovered counts as for any count screen (over the stored genes)
    np.testing.assert_allclose(screen.log1p("KLF1"), normalize_log1p(screen.counts("KLF1")), rtol=1e-6)
    text = screen.format_summary()
    assert "recovered from .X = log1p(count / total × ≈1e4)" in text and "100 % of 50,462 non-zeros" in text
    assert "no-measurement-model" not in text


def test_norman_without_recovery_keeps_the_old_mode(norman_h5ad):
    screen = read_screen(norman_h5ad, count_recovery=False)
    assert not screen.is_counts and not screen.recovered
    assert any("no-measurement-model" in p and "turned off" in p for p in screen.problems)
    np.testing.assert_allclose(screen.log1p("KLF1"), _dense(ad.read_h5ad(norman_h5ad).X)[screen.cell_indices("KLF1")],
                               rtol=1e-6)


def test_backed_read_reports_recovery_without_applying_it(norman_h5ad):
    screen = read_screen(norman_h5ad, backed=True)
    assert not screen.is_counts and screen.recovery.recovered
    assert "recoverable (checked on 3,375 cells)" in screen.format_summary()


# ------------------------------------------------------------------------------- scanpy normalisations


@pytest.mark.parametrize("target_sum", [1e4, 1e6, None])
def test_scanpy_normalize_total_log1p_recovers_exactly(papalexi_raw, tmp_path, target_sum):
    path = _write(_normalised(papalexi_raw, target_sum=target_sum), tmp_path / "norm.h5ad")
    screen = read_screen(path)
    rec = screen.recovery
    assert screen.is_counts and rec.method == "smallest_nonzero" and rec.transform == "log1p"
    assert rec.fraction_integer >= 0.999
    raw = _dense(papalexi_raw.X)
    assert np.array_equal(screen.counts(), raw)  # exactly the integers, every one
    # normalised over the stored genes: every cell sums to the target, which is then known
    assert rec.totals_over_stored_genes
    if target_sum is not None:
        assert rec.target_sum == target_sum and not rec.target_approx
    else:  # scanpy's default target: the median total
        assert rec.target_sum == pytest.approx(np.median(raw.sum(1)), rel=1e-5)


@pytest.mark.parametrize("totals_key", ["total_counts", "nCount_RNA"])
def test_totals_column_gives_the_scale_after_gene_selection(papalexi_raw, tmp_path, totals_key):
    """Normalised over all genes, then subset (as after HVG selection): the totals column fits exactly."""
    genes = papalexi_raw.var_names[::2]
    path = _write(_normalised(papalexi_raw, target_sum=1e4, totals_key=totals_key, genes=genes), tmp_path / "hvg.h5ad")
    screen = read_screen(path)
    rec = screen.recovery
    assert rec.method == "obs_totals" and rec.totals_key == totals_key and rec.target_sum == 1e4
    assert rec.fraction_integer >= 0.999 and not rec.totals_over_stored_genes
    assert np.array_equal(screen.counts(), _dense(papalexi_raw[:, genes].X))
    assert f"log1p(count / {totals_key} × 1e4)" in screen.format_summary()


def test_smallest_count_above_one_is_found_by_divisors(papalexi_raw, tmp_path):
    """Without a totals column, after selecting well-expressed genes many cells' smallest count is > 1:
    their values are fractions c / k until k is found."""
    genes = papalexi_raw.var_names[np.argsort(-_dense(papalexi_raw.X).mean(0))[:20]]
    raw = _dense(papalexi_raw[:, genes].X)
    mins = np.array([r[r > 0].min() if (r > 0).any() else 0 for r in raw])
    assert (mins >= 2).sum() > 100  # the case is there
    path = _write(_normalised(papalexi_raw, target_sum=1e4, genes=genes), tmp_path / "sub.h5ad")
    screen = read_screen(path)
    rec = screen.recovery
    assert rec.recovered and rec.divisor_cells > 100
    y = screen.counts()
    # cells whose counts share a common factor (all even, say) are indistinguishable from smaller counts
    # without a totals column; all others come back exactly
    exact = np.all(y == raw, axis=1)
    assert exact.mean() > 0.98
    ratio = raw[~exact].sum(1) / np.maximum(y[~exact].sum(1), 1)
    assert np.allclose(ratio, np.rint(ratio))


def test_scaled_counts_without_log_recover(papalexi_raw, tmp_path):
    path = _write(_normalised(papalexi_raw, target_sum=1e6, log=False), tmp_path / "cpm.h5ad")
    screen = read_screen(path)
    assert screen.recovery.transform == "identity" and screen.recovery.target_sum == 1e6
    assert np.array_equal(screen.counts(), _dense(papalexi_raw.X))


@pytest.mark.parametrize("damage, why", [
    ("zscore", "negative"),
    ("gene_scale", "integers within"),
    ("noise", "integers within"),
])
def test_not_recoverable_stays_normalised_with_the_reason(papalexi_raw, tmp_path, damage, why):
    import scanpy as sc

    a = _normalised(papalexi_raw, target_sum=1e4, totals_key="n_counts")
    if damage == "zscore":
        sc.pp.scale(a)
    elif damage == "gene_scale":
        sc.pp.scale(a, zero_center=False)
    else:
        a.X = a.X.copy()
        a.X.data = a.X.data + np.random.default_rng(0).uniform(0, 1e-2, a.X.nnz).astype(np.float32)
    path = _write(a, tmp_path / f"{damage}.h5ad")
    if damage == "zscore":  # negative values are refused outright, now with the reason recovery gives too
        with pytest.raises(Exception, match="negative"):
            read_screen(path)
        rec, counts = recover_counts(a.X, a.obs)
    else:
        screen = read_screen(path)
        assert not screen.is_counts and not screen.recovered
        rec, counts = screen.recovery, None
        assert any("counts not recovered" in p and why in p for p in screen.problems)
        assert "not recoverable" in screen.format_summary()
    assert not rec.recovered and why in rec.reason and counts is None
    assert rec.fraction_integer < 0.999


def test_too_little_evidence_is_not_called_counts():
    x = sp.csr_matrix(np.eye(50, 30, dtype=np.float32) * 0.37)  # one non-zero per cell: anything fits
    rec, counts = recover_counts(x)
    assert not rec.recovered and "too few" in rec.reason and counts is None


# ---------------------------------------------------------------------------------------- file space


def test_to_file_space_reproduces_the_files_convention(norman_h5ad):
    screen = read_screen(norman_h5ad)
    record = file_space_record(screen)
    y = screen.counts()
    x, sf = to_file_space(y, record, rng=0)
    assert x.shape == y.shape and x.dtype == np.float32 and np.all(x[y == 0] == 0) and x.min() >= 0
    # what the file stores and what we write agree in the per-cell scale (the part the genes don't fix)
    file_sums = np.expm1(_dense(ad.read_h5ad(norman_h5ad).X).astype(np.float64)).sum(1)
    ours = np.expm1(x.astype(np.float64)).sum(1)
    qs = [0.1, 0.25, 0.5, 0.75, 0.9]
    np.testing.assert_allclose(np.quantile(ours, qs), np.quantile(file_sums, qs), rtol=0.1)
    # the written cells are themselves exactly recoverable, with the same counts
    rec, back = recover_counts(sp.csr_matrix(x))
    assert rec.recovered and rec.fraction_integer >= 0.999
    assert (np.all(_dense(back) == y, axis=1)).mean() > 0.98


def test_file_space_record_is_none_for_count_files(tiny_h5ad):
    assert file_space_record(read_screen(tiny_h5ad)) is None


# ------------------------------------------------------------------------------------------------ CLI

TINY = ["--set", "stage1.steps=30", "--set", "stage1.n_samples=64", "--set", "stage2.hidden=32",
        "--set", "stage2.emb_dim=8", "--set", "stage2.batch_size=128", "--set", "stage2.steps=60",
        "--set", "n_latent_samples=200", "--set", "min_cells=10", "--set", "embedding=pca", "--quiet"]


@pytest.fixture
def lcd(lcd_here):
    """``lcd ARGS`` in this process (conftest's ``lcd_here``); returns its stdout."""
    return lambda *args: lcd_here(*args).stdout


def test_inspect_says_how_counts_were_recovered(norman_h5ad, lcd):
    out = lcd("inspect", norman_h5ad)
    assert "counts:      recovered from .X = log1p(count / total × ≈1e4)" in out
    assert "0.6 % below obs['ncounts']" in out and "100 % of 50,462 non-zeros integer within 0.001" in out
    off = lcd("inspect", norman_h5ad, "--no-count-recovery")
    assert "NOT raw counts" in off and "count recovery turned off" in off


@pytest.fixture
def tiny_normalised(tmp_path):
    """The tiny count screen as a log1p CP10k file with whole-transcriptome-like totals in obs."""
    raw = make_tiny_counts(seed=3)
    rng = np.random.default_rng(0)
    panel = raw.X.sum(1)
    total = np.rint(panel * rng.uniform(20, 40, len(panel)))  # the genes are a small part of each cell
    a = raw.copy()
    a.obs["n_counts"] = total
    a.X = sp.csr_matrix(np.log1p(raw.X / total[:, None] * 1e4).astype(np.float32))
    return _write(a, tmp_path / "tiny_norm.h5ad"), raw


def test_train_on_recovered_counts_predicts_in_the_files_space(tiny_normalised, tmp_path, lcd):
    path, raw = tiny_normalised
    run = tmp_path / "run"
    lcd("train", path, "--out", run, *TINY, "--holdout-combos", "G00+G01")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["mode"] == "counts" and cfg["subset"] is None
    rec = cfg["count_recovery"]
    assert rec["method"] == "obs_totals" and rec["totals_key"] == "n_counts" and rec["target_sum"] == 1e4
    assert rec["formula"] == "log1p(count / n_counts × 1e4)" and len(rec["size_factor_per_count"]) == 201
    out = tmp_path / "pred.h5ad"
    printed = lcd("predict", run, "--perturb", "G00+G01", "--cells", "300", "--out", out)
    assert "the training file's own space, log1p(count / n_counts × 1e4)" in printed
    p = ad.read_h5ad(out)
    y, sf, x = _dense(p.layers["counts"]), p.obs["lcd_size_factor"].to_numpy(), _dense(p.X)
    np.testing.assert_allclose(x, np.log1p(y / sf[:, None]), rtol=1e-5, atol=1e-6)
    # the same per-cell convention as the file: total / panel sum drawn from the training cells' 20–40
    tot = sf * 1e4
    ratio = tot / y.sum(1)
    assert 19 < ratio.min() and ratio.max() < 41
    file_x = _dense(ad.read_h5ad(path).X)
    assert abs(np.median(x[x > 0]) - np.median(file_x[file_x > 0])) < 0.5
    assert "counts_note" not in p.uns["lcd_prediction"]
    lcd("predict", run, "--perturb", "G00+G01", "--cells", "300", "--anchored", "--out", tmp_path / "a.h5ad")
    anchored = ad.read_h5ad(tmp_path / "a.h5ad")
    assert "not sequencing depth" in anchored.uns["lcd_prediction"]["counts_note"]
    y, sf = _dense(anchored.layers["counts"]), anchored.obs["lcd_size_factor"].to_numpy()
    np.testing.assert_allclose(_dense(anchored.X), np.log1p(y / sf[:, None]), rtol=1e-5, atol=1e-6)
    ours = lcd("predict", run, "--perturb", "G00+G01", "--cells", "300", "--our-space", "--out", tmp_path / "o.h5ad")
    assert "log1p CP10k over the run's genes" in ours
    np.testing.assert_allclose(np.expm1(_dense(ad.read_h5ad(tmp_path / "o.h5ad").X)).sum(1), 1e4, rtol=1e-3)


def test_no_count_recovery_trains_normalised_and_evaluate_follows_the_run(tiny_normalised, tmp_path, lcd):
    path, _ = tiny_normalised
    run = tmp_path / "run"
    lcd("train", path, "--out", run, *TINY, "--holdout-combos", "G00+G01", "--no-count-recovery")
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["mode"] == "normalised" and cfg["count_recovery"] is None
    from lcd_core.cli import _follow_run

    # evaluate reads the screen as the run was trained: without recovery, in the file's own values
    assert _follow_run({"count_recovery": True, "subset": None}, str(run))["count_recovery"] is False
    report = tmp_path / "report"
    lcd("evaluate", run, "--data", path, "--cells", "50", "--out", report)
    assert (report / "summary.md").exists()
