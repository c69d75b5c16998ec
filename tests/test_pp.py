"""Preprocessing: normalisation, QC presets, gene selection, split protocol."""

from __future__ import annotations

import itertools

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lcd_core import KEYS, NORM_TARGET_SUM
from lcd_core.data import screen_from_anndata
from lcd_core.errors import ConfigError
from lcd_core.pp import (
    QC_PRESETS,
    explicit_split,
    filter_conditions,
    fold_split,
    normalize_log1p,
    qc,
    select_genes,
    split_combinations,
)

# ------------------------------------------------------------------------------------- normalisation


def test_normalize_log1p_matches_formula_dense_and_sparse():
    rng = np.random.default_rng(0)
    y = rng.poisson(2.0, size=(30, 12)).astype(np.float64)
    y[4] = 0  # an empty cell stays 0 rather than NaN
    keep = y.copy()
    lib = y.sum(1, keepdims=True)
    expected = np.where(lib > 0, np.log1p(NORM_TARGET_SUM * y / np.where(lib > 0, lib, 1)), 0.0)
    dense = normalize_log1p(y)
    assert dense.dtype == np.float32 and isinstance(dense, np.ndarray)
    np.testing.assert_allclose(dense, expected, rtol=1e-6)
    np.testing.assert_array_equal(y, keep)  # input untouched
    csr = sp.csr_matrix(y)
    out = normalize_log1p(csr)
    assert sp.issparse(out) and out.format == "csr" and out.dtype == np.float32
    assert out.nnz == csr.nnz  # sparsity kept
    np.testing.assert_allclose(out.toarray(), expected, rtol=1e-6)
    np.testing.assert_array_equal(csr.toarray(), keep)
    np.testing.assert_allclose(normalize_log1p(sp.csc_matrix(y)).toarray(), expected, rtol=1e-6)
    np.testing.assert_allclose(np.expm1(normalize_log1p(y[:3], target_sum=100.0)).sum(1), 100.0, rtol=1e-5)


# ------------------------------------------------------------------------------------------------ QC

N_GENES_QC = 6500


def _qc_adata() -> tuple[ad.AnnData, dict[str, int]]:
    """250 good cells on genes 0..1999 (two of them mitochondrial) plus one cell per failure kind."""
    genes = ["MT-CO1", "MT-ND1"] + [f"G{i}" for i in range(2, N_GENES_QC)]
    rows, special = [], {}

    def cell(counts: dict[int, int]) -> np.ndarray:
        r = np.zeros(N_GENES_QC)
        r[list(counts)] = list(counts.values())
        return r

    for _ in range(250):
        rows.append(cell({g: 5 for g in range(2000)}))  # 2000 genes, 10,000 counts, 0.1 % mt

    def add(name: str, r: np.ndarray) -> None:
        special[name] = len(rows)
        rows.append(r)

    add("few_genes", cell({g: 1000 for g in range(2, 12)}))  # 10 genes: fails every preset
    add("total_5000", cell({g: 2 + (g % 2) for g in range(2, 2002)}))  # norman: total <= 7500
    add("mt_18", cell({0: 1097, 1: 1097, **{g: 5 for g in range(2, 2000)}}))  # norman (15 %) only
    add("mt_21", cell({0: 1328, 1: 1328, **{g: 5 for g in range(2, 2000)}}))  # norman, wessels (20 %)
    add("genes_6200", cell({g: 2 for g in range(2, 6202)}))  # norman: >= 6000 genes
    add("total_46000", cell({g: 23 for g in range(2, 2002)}))  # wessels: >= 40000 counts
    add("genes_1200", cell({g: 10 for g in range(2, 1202)}))  # wessels: <= 1500 genes
    x = np.vstack(rows)
    obs = pd.DataFrame({KEYS.PERT: ["ctrl"] * len(rows)}, index=[f"c{i}" for i in range(len(rows))])
    return ad.AnnData(X=sp.csr_matrix(x.astype(np.float32)), obs=obs, var=pd.DataFrame(index=genes)), special


@pytest.mark.parametrize(
    ("preset", "removed"),
    [
        (None, {"few_genes"}),
        ("norman2019", {"few_genes", "total_5000", "mt_18", "mt_21", "genes_6200"}),
        ("replogle2022_k562_essential", {"few_genes"}),
        ("wessels2023", {"few_genes", "mt_21", "total_46000", "genes_1200"}),
    ],
)
def test_qc_presets_remove_what_they_should(preset, removed):
    adata, special = _qc_adata()
    out = qc(adata, preset=preset)
    kept = set(out.obs_names)
    for name, row in special.items():
        assert (adata.obs_names[row] not in kept) == (name in removed), name
    assert out.n_obs == adata.n_obs - len(removed)
    # genes 2000.. are seen only in special cells (< 200 cells) and go; the 2000 shared genes stay
    assert out.var_names.tolist() == adata.var_names[:2000].tolist()
    rec = out.uns["lcd_qc"]
    assert rec["n_cells_before"] == adata.n_obs and rec["n_cells_after"] == out.n_obs
    assert rec["n_genes_after"] == 2000 and len(rec["genes_removed"]) == 1000  # capped list
    assert rec["cells_removed"]["min_genes"] == (2 if preset == "wessels2023" else 1)  # + genes_1200


def test_qc_overrides_and_errors():
    adata, special = _qc_adata()
    out = qc(adata, preset="norman2019", max_pct_mt=50.0, min_cells=1)
    assert adata.obs_names[special["mt_18"]] in set(out.obs_names)
    assert out.uns["lcd_qc"]["params"]["max_pct_mt"] == 50.0
    assert out.n_vars == N_GENES_QC - 2 * 0 - (N_GENES_QC - 2002)  # genes seen in >= 1 kept cell
    assert QC_PRESETS["wessels2023"].max_counts == 40000
    with pytest.raises(ConfigError, match="unknown QC preset"):
        qc(adata, preset="norman")
    with pytest.raises(ConfigError, match="unknown QC parameter"):
        qc(adata, min_gene=3)


def test_qc_keeps_rarely_detected_targets():
    adata, _ = _qc_adata()
    adata.obs[KEYS.PERT] = ["ctrl"] * (adata.n_obs - 1) + ["G3000"]
    assert "G3000" in qc(adata).var_names
    assert "G3000" not in qc(adata, keep_targets=False).var_names


def test_filter_conditions():
    labels = ["ctrl"] * 50 + ["A"] * 120 + ["B"] * 99 + ["A+B"] * 100
    adata = ad.AnnData(X=np.ones((len(labels), 2), dtype=np.float32), obs=pd.DataFrame({KEYS.PERT: pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))]))
    out = filter_conditions(adata, min_cells=100)
    assert sorted(out.obs[KEYS.PERT].cat.categories) == ["A", "A+B", "ctrl"]  # control kept despite 50 cells
    assert out.uns["lcd_condition_filter"]["dropped"] == {"B": 99}


# ------------------------------------------------------------------------------------ gene selection


def _selection_screen(with_combo: bool = True):
    """20 genes; singles A (G0), B (G1), C (G2) raise G10/G11/G12 and all raise G13; the held-out
    combination A+B raises G19 strongly (it must not influence the choice)."""
    rng = np.random.default_rng(1)
    genes = ["A", "B", "C"] + [f"G{i}" for i in range(3, 20)]
    effects = {"ctrl": {}, "A": {10: 8, 13: 6}, "B": {11: 8, 13: 6}, "C": {12: 8, 13: 6}}
    if with_combo:
        effects["A+B"] = {19: 30}
    blocks, labels = [], []
    for cond, eff in effects.items():
        n = 150 if cond == "ctrl" else 80
        mu = np.full(len(genes), 5.0)
        mu[15:18] = [2.0, 20.0, 60.0]  # unequal means give the dispersion ranking something to order
        for g, fold in eff.items():
            mu[g] *= fold
        blocks.append(rng.poisson(mu, size=(n, len(genes))))
        labels += [cond] * n
    a = ad.AnnData(X=sp.csr_matrix(np.vstack(blocks).astype(np.float32)),
                   obs=pd.DataFrame({KEYS.PERT: labels}, index=[f"c{i}" for i in range(len(labels))]),
                   var=pd.DataFrame(index=genes))
    return screen_from_anndata(a)


def test_select_genes_priority():
    screen = _selection_screen()
    chosen = select_genes(screen, n_genes=7, n_markers=2)
    assert chosen[:3] == ["A", "B", "C"]  # targeted genes first
    assert chosen[3] == "G13"  # a marker of all three singles
    assert set(chosen[4:7]) == {"G10", "G11", "G12"}
    assert select_genes(screen, n_genes=4, n_markers=2) == ["A", "B", "C", "G13"]
    full = select_genes(screen, n_genes=20, n_markers=2)
    assert sorted(full) == sorted(screen.genes) and len(set(full)) == 20
    assert len(select_genes(screen, n_genes=500, n_markers=2)) == 20


def test_select_genes_uses_training_singles_only():
    with_combo = _selection_screen(with_combo=True)
    without = _selection_screen(with_combo=False)
    # the held-out combination's cells (huge G19 effect) change nothing
    assert select_genes(with_combo, n_genes=15, n_markers=2) == select_genes(without.adata, n_genes=15, n_markers=2)
    # holding out single C: its marker G12 is no longer chosen before the dispersion fill
    chosen = select_genes(with_combo, n_genes=6, n_markers=2, train_conditions=["ctrl", "A", "B"])
    assert chosen[:4] == ["A", "B", "C", "G13"] and set(chosen[4:]) == {"G10", "G11"}
    with pytest.raises(ConfigError, match="not in the screen"):
        select_genes(with_combo, train_conditions=["ctrl", "Q"])


# --------------------------------------------------------------------------------------------- split


def _split_screen():
    singles = list("ABCDEFGH")
    combos = [f"{a}+{b}" for a, b in itertools.combinations(singles, 2)] + ["A+Z", "B+Y"]
    labels = ["ctrl"] * 3 + singles + combos
    a = ad.AnnData(X=np.ones((len(labels), 3), dtype=np.float32),
                   obs=pd.DataFrame({KEYS.PERT: labels}, index=[f"c{i}" for i in range(len(labels))]),
                   var=pd.DataFrame(index=["A", "B", "C"]))
    return screen_from_anndata(a)


def test_split_protocol_invariants():
    screen = _split_screen()
    split = split_combinations(screen, n_tuning=5, n_folds=4, seed=3)
    train, tuning, folds = split["train"], split["tuning"], split["folds"]
    assert set(screen.singles) | {"ctrl"} <= set(train)
    assert {"A+Z", "B+Y"} <= set(train)  # Z, Y have no single: never tested
    assert len(tuning) == 5 and len(folds) == 4
    tested = [c for f in folds for c in f]
    assert len(tested) == len(set(tested)) == 28 - 5  # folds disjoint
    assert set(tested) | set(tuning) == {c for c in screen.combos if "Z" not in c and "Y" not in c}
    assert not set(tested) & set(tuning) and not set(tested) & set(train)
    assert max(map(len, folds)) - min(map(len, folds)) <= 1
    for c in tested + tuning:
        assert all(g in train for g in screen.targets(c))
    assert split_combinations(screen, n_tuning=5, n_folds=4, seed=3) == split
    assert split_combinations(screen, n_tuning=5, n_folds=4, seed=4)["tuning"] != tuning
    f = fold_split(split, 1)
    assert f["test"] == folds[1] and set(f["train"]) == set(train) | set(tested) - set(folds[1])
    with pytest.raises(ConfigError, match="lower n_tuning"):
        split_combinations(screen)  # 28 testable < 20 + 10


def test_explicit_split():
    screen = _split_screen()
    split = explicit_split(screen, ["B+A", "C+ctrl", "D+E"])
    assert split["folds"] == [["A+B", "C", "D+E"]] and split["test"] == ["A+B", "C", "D+E"]
    assert fold_split(split, 0)["test"] == split["test"]
    assert set(split["train"]) == set(screen.conditions) - {"A+B", "C", "D+E"}
    with pytest.raises(ConfigError, match="close matches") as e:
        explicit_split(screen, ["A+Q"])
    assert "A+" in str(e.value)
    with pytest.raises(ConfigError, match="control"):
        explicit_split(screen, ["ctrl"])
    with pytest.raises(ConfigError, match="no held-out"):
        explicit_split(screen, [])
