"""Bad input: every problem is one clear line naming the problem and the fix, never a traceback."""

from __future__ import annotations

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lcd_core import KEYS
from lcd_core.data import read_screen, screen_from_anndata
from lcd_core.errors import LCDError, ScreenContentError, ScreenFormatError

GENES = ["A", "B", "C", "D"]


def make_adata(labels=None, *, seed=0) -> ad.AnnData:
    labels = labels or ["ctrl"] * 6 + ["A"] * 4 + ["B"] * 4 + ["A+B"] * 4
    x = np.random.default_rng(seed).poisson(3.0, size=(len(labels), len(GENES))).astype(np.float32)
    obs = pd.DataFrame({KEYS.PERT: pd.Categorical(labels), "batch": "b1", "n_counts": x.sum(1)},
                       index=[f"cell{i}" for i in range(len(labels))])
    return ad.AnnData(X=sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=GENES))


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    assert isinstance(exc_info.value, LCDError)
    return msg


def test_file_not_found(tmp_path):
    with pytest.raises(ScreenFormatError) as e:
        read_screen(tmp_path / "missing.h5ad")
    assert "file not found" in one_line(e)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.h5ad"
    p.write_bytes(b"")
    with pytest.raises(ScreenFormatError) as e:
        read_screen(p)
    assert "empty" in one_line(e)


def test_truncated_file(tmp_path):
    p = tmp_path / "full.h5ad"
    make_adata().write_h5ad(p)
    data = p.read_bytes()
    cut = tmp_path / "cut.h5ad"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ScreenFormatError) as e:
        read_screen(cut)
    assert "truncated or corrupt" in one_line(e) and "again" in one_line(e)


def test_corrupt_file(tmp_path):
    p = tmp_path / "full.h5ad"
    make_adata().write_h5ad(p)
    data = bytearray(p.read_bytes())
    data[8:4096] = b"\x00" * (4096 - 8)  # keep the signature, destroy the superblock and root objects
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(bytes(data))
    with pytest.raises(ScreenFormatError) as e:
        read_screen(bad)
    assert "truncated or corrupt" in one_line(e)


@pytest.mark.parametrize(
    ("content", "what"),
    [(b"cell,gene,count\n1,A,3\n", "CSV"), (b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "PNG")],
)
def test_not_h5ad(tmp_path, content, what):
    p = tmp_path / "renamed.h5ad"
    p.write_bytes(content)
    with pytest.raises(ScreenFormatError) as e:
        read_screen(p)
    msg = one_line(e)
    assert "not an .h5ad" in msg and what in msg


def test_hdf5_but_not_anndata(tmp_path):
    p = tmp_path / "plain.h5"
    with h5py.File(p, "w") as fh:
        fh["matrix"] = np.ones((3, 3))
    with pytest.raises(ScreenFormatError) as e:
        read_screen(p)
    assert "not AnnData" in one_line(e)


def test_missing_perturbation_column():
    a = make_adata()
    a.obs = a.obs.rename(columns={KEYS.PERT: "sgRNA_target"})
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(a)
    msg = one_line(e)
    assert "no perturbation column" in msg and "sgRNA_target" in msg and "batch" in msg
    assert "n_counts" not in msg  # numeric columns are not candidates
    assert "perturbation_key" in msg


def test_missing_explicit_column():
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(make_adata(), perturbation_key="guide")
    assert "'guide' is not in obs" in one_line(e)


def test_no_control_cells():
    a = make_adata(["A"] * 5 + ["B"] * 3 + ["NTC"] * 7)
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(a)
    msg = one_line(e)
    assert "no control cells" in msg and "'NTC' (7)" in msg and "control_label" in msg
    assert screen_from_anndata(a, control_label="NTC").n_cells[KEYS.CONTROL] == 7


def test_negative_values():
    a = make_adata()
    a.X = a.X.toarray()
    a.X[3, 1] = -2.0
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(a)
    msg = one_line(e)
    assert "1 negative" in msg and "cell3 / gene B" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_infinite(bad):
    a = make_adata()
    x = a.X.toarray()
    x[[2, 5, 7], [0, 3, 2]] = bad
    a.X = sp.csr_matrix(x)
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(a)
    msg = one_line(e)
    assert ("3 NaN" if np.isnan(bad) else "3 infinite") in msg
    assert "cell2 / gene A" in msg


def test_nan_in_counts_layer_is_located():
    a = make_adata()
    a.layers[KEYS.COUNTS] = a.X.copy()
    a.layers[KEYS.COUNTS].data[0] = np.nan
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(a)
    assert "layers['counts'] holds 1 NaN" in one_line(e)


def test_non_integer_counts_layer_that_looks_log_normalised():
    a = make_adata()
    a.layers[KEYS.COUNTS] = sp.csr_matrix(np.log1p(a.X.toarray()))
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(a)
    msg = one_line(e)
    assert "non-integer" in msg and "log-normalised" in msg and "no-measurement-model" in msg


def test_non_integer_values_where_counts_claimed():
    a = make_adata()
    a.X = a.X * 37.3  # not log-scale (max > 30): no log-normalised hint, ask for raw counts
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(a, layer="X")
    msg = one_line(e)
    assert "non-integer" in msg and "layer=" in msg


def test_unknown_layer():
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(make_adata(), layer="raw")
    assert "layer 'raw' not found" in one_line(e)


def test_duplicated_gene_names():
    a = make_adata()
    a.var_names = ["A", "B", "A", "B"]
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(a)
    msg = one_line(e)
    assert "2 duplicated gene name(s)" in msg and "A, B" in msg and "var_names_make_unique" in msg


def test_unmeasured_targets_warn_or_raise():
    labels = ["ctrl"] * 4 + ["A"] * 2 + ["KLF1"] * 2 + ["A+CEBPA"] * 2
    s = screen_from_anndata(make_adata(labels))
    assert len(s.problems) == 1 and "CEBPA, KLF1" in s.problems[0]
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(make_adata(labels), strict=True)
    msg = one_line(e)
    assert "not among the measured genes" in msg and "strict=False" in msg


def test_conditions_below_min_cells():
    labels = ["ctrl"] * 10 + ["A"] * 5 + ["B"] * 2 + ["A+B"] * 1
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(make_adata(labels), min_cells=3)
    msg = one_line(e)
    assert "A+B (1), B (2)" in msg and "drop_small=True" in msg
    s = screen_from_anndata(make_adata(labels), min_cells=3, drop_small=True)
    assert s.conditions == ["ctrl", "A"] and s.adata.n_obs == 15
    assert any("dropped 2 condition" in p for p in s.problems)
    assert s.summary()["values"]["max"] == s.counts().max()  # stats recomputed after dropping


def test_unlabelled_cells_are_dropped_and_reported():
    a = make_adata()
    a.obs[KEYS.PERT] = a.obs[KEYS.PERT].astype(object)
    a.obs.iloc[[0, 1], a.obs.columns.get_loc(KEYS.PERT)] = np.nan
    s = screen_from_anndata(a)
    assert s.adata.n_obs == a.n_obs - 2
    assert any("2 cell(s) without a label" in p for p in s.problems)


def test_empty_screen():
    a = make_adata()[:, []].copy()
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(a)
    assert "nothing to load" in one_line(e)


def test_gene_key_missing():
    with pytest.raises(ScreenContentError) as e:
        screen_from_anndata(make_adata(), gene_key="gene_symbols")
    assert "'gene_symbols' is not in var" in one_line(e)


# -- screens without signal: read (so `lcd inspect` can show them), then listed and refused ---------------
def _no_signal(case: str, *, normalised: bool = False) -> ad.AnnData:
    """make_adata with one kind of missing signal; ``normalised``: the values are log-normalised (no
    counts anywhere), so "zero" means zero values in ``.X``."""
    a = make_adata()
    x = a.X.toarray()
    if normalised:
        x = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)
    if case == "all_zero":
        x[:] = 0
    elif case == "zero_condition":
        x[np.asarray(a.obs[KEYS.PERT] == "B")] = 0
    elif case == "constant_genes":
        x[:] = np.array([2.0, 0.0, 5.0, 1.0])  # every gene one value in every cell
    a.X = sp.csr_matrix(x)
    return a


NO_SIGNAL = {"all_zero": "every value in .X is zero", "zero_condition": "B (4 cells)",
             "constant_genes": "every gene is constant"}


@pytest.mark.parametrize("normalised", [False, True], ids=["counts", "log-normalised"])
@pytest.mark.parametrize("case", list(NO_SIGNAL))
@pytest.mark.parametrize("backed", [False, True], ids=["memory", "backed"])
def test_screens_without_signal_are_refused(tmp_path, case, normalised, backed):
    from lcd_core.data._validate import check_signal, signal_problems

    path = tmp_path / f"{case}.h5ad"
    _no_signal(case, normalised=normalised).write_h5ad(path)
    screen = read_screen(path, backed=backed)
    # all zero, or one value per gene, is whole numbers, read as counts either way; a zero condition among
    # log-normalised values exercises the no-counts path (zero values in .X)
    assert screen.is_counts is not (normalised and case == "zero_condition")
    problems = signal_problems(screen)
    assert len(problems) == 1 and NO_SIGNAL[case] in problems[0], problems
    with pytest.raises(ScreenContentError) as e:
        check_signal(screen)
    assert "no signal" in one_line(e) and NO_SIGNAL[case] in one_line(e)


@pytest.mark.parametrize("backed", [False, True], ids=["memory", "backed"])
def test_screens_with_signal_pass_the_signal_check(tmp_path, backed):
    """Some all-zero cells (not a whole condition) and some constant genes are normal."""
    from lcd_core.data._validate import check_signal, signal_problems

    a = make_adata()
    x = a.X.toarray()
    x[[0, 7, 11]] = 0  # a control cell, an A cell and a B cell
    x[:, 1] = 0  # an unexpressed gene
    x[:, 2] = 3  # a gene at one value
    a.X = sp.csr_matrix(x)
    a.write_h5ad(tmp_path / "ok.h5ad")
    screen = read_screen(tmp_path / "ok.h5ad", backed=backed)
    assert signal_problems(screen) == []
    check_signal(screen)
    # the counts layer is what is checked, not .X
    a.layers[KEYS.COUNTS] = sp.csr_matrix(np.zeros(a.shape, dtype=np.float32))
    a.write_h5ad(tmp_path / "zero_layer.h5ad")
    problems = signal_problems(read_screen(tmp_path / "zero_layer.h5ad", backed=backed))
    assert len(problems) == 1 and f"every value in layers['{KEYS.COUNTS}'] is zero" in problems[0]
