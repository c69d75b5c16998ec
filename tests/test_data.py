"""The data layer: conventions, round trips, the Screen API."""

from __future__ import annotations

import hashlib

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lcd_core import KEYS, NORM_TARGET_SUM
from lcd_core.data import Screen, canonical_label, detect_convention, read_screen, screen_from_anndata, write_screen
from lcd_core.errors import ConfigError, ScreenContentError, ScreenFormatError

GENES = ["A", "B", "C", "D", "E", "F"]


def make_adata(labels: list[str], genes: list[str] = GENES, *, seed: int = 0, key: str = KEYS.PERT,
               sparse: str | None = "csr") -> ad.AnnData:
    """Poisson counts, one label per cell (given in the file's own spelling)."""
    rng = np.random.default_rng(seed)
    x = rng.poisson(3.0, size=(len(labels), len(genes))).astype(np.float32)
    if sparse:
        x = sp.csr_matrix(x) if sparse == "csr" else sp.csc_matrix(x)
    obs = pd.DataFrame({key: pd.Categorical(labels)}, index=[f"cell{i}" for i in range(len(labels))])
    return ad.AnnData(X=x, obs=obs, var=pd.DataFrame(index=genes))


def ours(n: int = 10) -> list[str]:
    return ["ctrl"] * 2 * n + ["A"] * n + ["B"] * n + ["C"] * n + ["A+B"] * n + ["C+A"] * n


@pytest.fixture
def screen() -> Screen:
    a = make_adata(ours())
    a.uns[KEYS.TRUTH] = {"causal": np.arange(36, dtype=float).reshape(6, 6), "modules": np.array(["m1", "m2"])}
    return screen_from_anndata(a)


def test_canonical_labels_and_api(screen):
    assert screen.convention == "lcd"
    assert screen.conditions == ["ctrl", "A", "A+B", "A+C", "B", "C"]  # C+A sorted to A+C
    assert screen.singles == ["A", "B", "C"] and screen.combos == ["A+B", "A+C"]
    assert screen.n_cells.to_dict() == {"ctrl": 20, "A": 10, "A+B": 10, "A+C": 10, "B": 10, "C": 10}
    assert screen.targets("A+C") == ("A", "C") and screen.targets("ctrl") == ()
    idx = screen.cell_indices("A+C")
    assert (screen.adata.obs[KEYS.PERT].iloc[idx] == "A+C").all() and len(idx) == 10
    # the file's own spelling is kept beside the canonical one
    assert set(screen.adata.obs[KEYS.PERT + "_original"].iloc[idx]) == {"C+A"}
    assert screen.is_counts and screen.genes == GENES
    assert sp.issparse(screen.adata.X) and screen.adata.X.format == "csr"
    with pytest.raises(ConfigError, match="close matches"):
        screen.cell_indices("A+Q")


def test_counts_and_log1p(screen):
    y = screen.counts("B")
    assert y.dtype == np.float32 and y.shape == (10, 6)
    np.testing.assert_array_equal(y, screen.adata.X[screen.cell_indices("B")].toarray())
    x = screen.log1p("B")
    expected = np.log1p(NORM_TARGET_SUM * y / y.sum(1, keepdims=True))
    np.testing.assert_allclose(x, expected, rtol=1e-5)
    assert screen.counts().shape == (70, 6)


def test_subset_genes_normalises_over_subset(screen):
    sub = screen.subset_genes(["C", "A"])
    assert sub.genes == ["C", "A"] and sub.conditions == screen.conditions
    y = sub.counts("A")
    np.testing.assert_array_equal(y, screen.counts("A")[:, [2, 0]])
    np.testing.assert_allclose(sub.log1p("A"), np.log1p(NORM_TARGET_SUM * y / y.sum(1, keepdims=True)), rtol=1e-5)
    with pytest.raises(ConfigError, match="not in the screen"):
        screen.subset_genes(["A", "nope"])


@pytest.mark.parametrize("convention", ["lcd", "gears", "scperturb"])
def test_round_trip(tmp_path, screen, convention):
    path = write_screen(screen, tmp_path / f"s_{convention}.h5ad", convention=convention)
    back = read_screen(path)
    assert back.convention == convention
    assert back.conditions == screen.conditions
    for c in screen.conditions:
        np.testing.assert_array_equal(back.counts(c), screen.counts(c))
    np.testing.assert_array_equal(back.truth["causal"], screen.truth["causal"])
    assert back.truth["modules"] == ["m1", "m2"]
    assert back.path == str(path)


def test_written_spellings(tmp_path, screen):
    g = ad.read_h5ad(write_screen(screen, tmp_path / "g.h5ad", convention="gears"))
    assert set(g.obs["condition"]) == {"ctrl", "A+ctrl", "B+ctrl", "C+ctrl", "A+B", "A+C"}
    assert KEYS.PERT not in g.obs
    s = ad.read_h5ad(write_screen(screen, tmp_path / "s.h5ad", convention="scperturb"))
    assert set(s.obs[KEYS.PERT]) == {"control", "A", "B", "C", "A_B", "A_C"}
    with pytest.raises(ConfigError, match="unknown convention"):
        write_screen(screen, tmp_path / "x.h5ad", convention="seurat")


def test_detect_gears_by_hand():
    labels = ["ctrl"] * 4 + ["A+ctrl"] * 3 + ["ctrl+B"] * 3 + ["B+A"] * 3
    s = screen_from_anndata(make_adata(labels, key="condition"))
    assert s.convention == "gears"
    assert s.conditions == ["ctrl", "A", "A+B", "B"]
    assert "condition" in s.adata.obs  # original column kept


def test_detect_scperturb_with_underscore_genes():
    genes = ["A", "B_1", "C", "D"]
    labels = ["control"] * 4 + ["A"] * 2 + ["B_1"] * 2 + ["A_B_1"] * 2 + ["C_A"] * 2
    s = screen_from_anndata(make_adata(labels, genes))
    assert s.convention == "scperturb"
    assert s.conditions == ["ctrl", "A", "A+B_1", "A+C", "B_1"]
    conv = detect_convention(pd.DataFrame({KEYS.PERT: labels}))
    assert (conv.control_label, conv.combo_sep) == ("control", "_")
    assert canonical_label("B_1_A", conv, set(genes)) == "A+B_1"


def test_underscore_genes_in_our_convention():
    genes = ["A", "B_1", "C"]
    s = screen_from_anndata(make_adata(["ctrl"] * 3 + ["B_1"] * 2 + ["X_2"] * 2, genes))
    assert s.convention == "lcd" and s.conditions == ["ctrl", "B_1", "X_2"]  # X_2 unmeasured, not split


def test_from_backed_anndata(tmp_path, screen):
    path = write_screen(screen, tmp_path / "b.h5ad")
    s = screen_from_anndata(ad.read_h5ad(path, backed="r"))
    np.testing.assert_array_equal(s.counts("A+B"), screen.counts("A+B"))


def test_explicit_keys_override_detection():
    labels = ["NT"] * 4 + ["A"] * 2 + ["B;A"] * 2
    a = make_adata(labels, key="guide_target")
    # a decoy in our own convention that detection would pick first
    a.obs[KEYS.PERT] = pd.Categorical(["ctrl"] * 8)
    s = screen_from_anndata(a, perturbation_key="guide_target", control_label="NT", combo_sep=";")
    assert s.convention == "explicit"
    assert s.conditions == ["ctrl", "A", "A+B"]
    assert s.n_cells["A+B"] == 2
    assert (s.adata.obs[KEYS.PERT + "_original"] == "ctrl").all()  # the decoy column is kept aside


def test_gene_symbols_from_var_column():
    ens = [f"ENSG{i:011d}" for i in range(6)]
    a = make_adata(ours(3), ens)
    a.var["gene_symbols"] = GENES
    a.var["gene_name"] = [g.lower() for g in GENES]
    s = screen_from_anndata(a)
    assert s.genes == GENES and s.problems == []  # targets found among symbols
    assert s.adata.var["var_names_original"].tolist() == ens
    s2 = screen_from_anndata(a, gene_key="gene_name")
    assert s2.genes == [g.lower() for g in GENES]
    assert any("not among the measured genes" in p for p in s2.problems)


def test_log_normalised_file_is_flagged_not_counts(screen):
    a = screen.adata.copy()
    a.X = sp.csr_matrix(screen.log1p())
    s = screen_from_anndata(a, count_recovery=False)  # recovery on: tests/test_recovery.py
    assert not s.is_counts
    assert any("no-measurement-model" in p for p in s.problems)
    with pytest.raises(ScreenContentError, match="no raw counts"):
        s.counts("A")
    np.testing.assert_allclose(s.log1p("A"), screen.log1p("A"), rtol=1e-6)
    assert "NOT raw counts" in s.format_summary()


def test_counts_layer_preferred(screen):
    a = screen.adata.copy()
    a.layers[KEYS.COUNTS] = a.X.copy()
    a.X = sp.csr_matrix(screen.log1p())
    s = screen_from_anndata(a)
    assert s.is_counts
    np.testing.assert_array_equal(s.counts("C"), screen.counts("C"))
    np.testing.assert_allclose(s.log1p("C"), screen.log1p("C"), rtol=1e-6)
    assert s.summary()["values"]["source"] == "layers['counts']"


def test_csc_and_dense_sources():
    csc = screen_from_anndata(make_adata(ours(3), sparse="csc"))
    assert csc.adata.X.format == "csr"
    dense = screen_from_anndata(make_adata(ours(3), sparse=None))
    assert isinstance(dense.adata.X, np.ndarray)
    np.testing.assert_array_equal(dense.counts("A"), csc.counts("A"))


def test_data_hash(tmp_path, screen):
    path = write_screen(screen, tmp_path / "h.h5ad")
    assert read_screen(path).data_hash == hashlib.sha256(path.read_bytes()).hexdigest()
    stale = read_screen(path)
    write_screen(screen, path, convention="gears")  # the file changes before the hash is asked for
    with pytest.raises(ScreenFormatError, match="changed on disk"):
        stale.data_hash
    same = screen_from_anndata(make_adata(ours()))
    assert same.data_hash == screen.data_hash  # content hash: uns does not enter, values do
    other = make_adata(ours())
    other.X[0, 0] += 1
    assert screen_from_anndata(other).data_hash != screen.data_hash


def test_summary(screen):
    s = screen.summary()
    assert s["n_cells"] == 70 and s["n_genes"] == 6
    assert (s["n_singles"], s["n_combos"], s["n_control_cells"]) == (3, 2, 20)
    assert s["control_fraction"] == pytest.approx(20 / 70)
    assert s["cells_per_condition"]["min"] == 10
    dense = screen.counts()
    assert s["values"]["integer"] and s["values"]["max"] == dense.max()
    assert s["values"]["mean_per_cell"] == pytest.approx(dense.sum(1).mean())
    assert s["values"]["fraction_zero"] == pytest.approx((dense == 0).mean())
    assert s["truth_present"] and not s["split_present"] and not s["simulated"]
    text = screen.format_summary()
    for fragment in ("cells:       70", "1 control + 3 singles + 2 combinations", "convention:  lcd", "truth: yes"):
        assert fragment in text


def test_split_and_simulated_flags_preserved(tmp_path, screen):
    a = screen.adata.copy()
    a.uns[KEYS.SPLIT] = {"train": np.array(["ctrl", "A", "B", "C"]), "test": np.array(["A+B", "A+C"])}
    a.uns[KEYS.SIMULATED] = "simulated demo screen"
    back = read_screen(write_screen(a, tmp_path / "s.h5ad", convention="gears"))
    assert back.split == {"train": ["ctrl", "A", "B", "C"], "test": ["A+B", "A+C"]}
    s = back.summary()
    assert s["simulated"] and s["split_present"] and "simulated demo screen" in back.format_summary()


def test_backed_read_matches_memory(tmp_path, screen):
    path = write_screen(screen, tmp_path / "b.h5ad")
    backed = read_screen(path, backed=True)
    assert backed.summary()["backed"]
    for c in ("ctrl", "A+C"):
        np.testing.assert_array_equal(backed.counts(c), screen.counts(c))
    np.testing.assert_allclose(backed.log1p("B"), screen.log1p("B"))
    assert backed.summary()["values"] == screen.summary()["values"]
    sub = backed.subset_genes(["B", "A"])
    np.testing.assert_array_equal(sub.counts("A"), screen.counts("A")[:, [1, 0]])
