"""Screens that mix contexts (issue 13, item 7): cell lines, cell types, datasets vs replicates and
batches; ``--subset key=value`` selects one; training refuses to pool cell lines silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from lcd_core import KEYS
from lcd_core.data import check_pooling, find_contexts, read_screen, screen_from_anndata, subset_screen
from lcd_core.errors import ConfigError

from conftest import make_tiny_counts, tiny_config


def _mixed(seed: int = 0, log: bool = False) -> ad.AnnData:
    """Two cell lines of the tiny screen (the second with other base rates), three replicates each."""
    a, b = make_tiny_counts(seed=seed), make_tiny_counts(seed=seed + 1)
    a.obs["cell_type"], b.obs["cell_type"] = "K562", "U87"
    both = ad.concat([a, b], index_unique="-")
    both.obs["cell_type"] = both.obs["cell_type"].astype("category")
    both.obs["bio_rep"] = pd.Categorical(np.tile(["rep1", "rep2", "rep3"], both.n_obs // 3))
    if log:
        total = both.X.sum(1) * 30.0
        both.obs["n_counts"] = total
        both.X = sp.csr_matrix(np.log1p(both.X / total[:, None] * 1e4).astype(np.float32))
    return both


def test_find_contexts_is_conservative():
    rng = np.random.default_rng(0)
    n = 600
    obs = pd.DataFrame({
        "cell_type": pd.Categorical(rng.choice(["K562", "RPE1", "HepG2"], n)),
        "CellLine": pd.Categorical(["A"] * n),                               # one value: no split
        "batch_id": rng.choice(["b1", "b2"], n).astype(object),              # object dtype, suffix _id
        "gem_group": rng.integers(1, 5, n),                                  # integer codes
        "donor": pd.Categorical(rng.choice([f"d{i}" for i in range(80)], n)),  # too many values
        "dataset": pd.Categorical(["big"] * (n - 5) + ["tiny"] * 5),         # one value with 5 cells
        "sample": rng.normal(size=n),                                        # a measurement
        "guide_batch_group": pd.Categorical(rng.choice(["x", "y"], n)),      # name not a context
    })
    found = {c.key: c for c in find_contexts(obs)}
    assert set(found) == {"cell_type", "batch_id", "gem_group"}
    assert found["cell_type"].kind == "biological" and found["cell_type"].noun == "cell types"
    assert found["batch_id"].kind == "replicate" and found["gem_group"].kind == "replicate"
    assert list(find_contexts(obs))[0].key == "cell_type"  # biological ones first
    assert sum(found["cell_type"].counts.values()) == n


def test_papalexi_replicates_are_reported_as_pooled(papalexi_h5ad):
    screen = read_screen(papalexi_h5ad)
    (ctx,) = screen.contexts
    assert ctx.key == "bio_rep" and ctx.kind == "replicate" and len(ctx.counts) == 3
    msg = next(p for p in screen.problems if "bio_rep" in p)
    assert "splits the cells into 3 replicates (rep_1: 9,428" in msg
    assert "training pools them" in msg and "check for batch effects" in msg and "--subset bio_rep=rep_1" in msg
    check_pooling(screen.contexts)  # replicates never block training
    rep2 = read_screen(papalexi_h5ad, subset="bio_rep=rep_2")
    assert rep2.adata.n_obs == 6001 and rep2.subset == {"bio_rep": "rep_2"} and rep2.contexts == []
    assert not any("bio_rep" in p for p in rep2.problems)


def test_norman_subset_has_one_context(norman_h5ad):
    screen = read_screen(norman_h5ad)  # dataset, cell_type, treatment: one value each
    assert screen.contexts == []


def test_cell_types_are_a_problem_and_subset_selects_one():
    screen = screen_from_anndata(_mixed())
    keys = [c.key for c in screen.contexts]
    assert keys == ["cell_type", "bio_rep"]
    msg = next(p for p in screen.problems if "cell_type" in p)
    assert "splits the cells into 2 cell types (K562: 360, U87: 360)" in msg
    assert "never pool them silently: pass --subset cell_type=K562" in msg
    with pytest.raises(ConfigError, match="training would pool them; pass --subset cell_type=K562.*--pool-contexts"):
        check_pooling(screen.contexts)
    check_pooling(screen.contexts, pool=True)

    one = screen_from_anndata(_mixed(), subset="cell_type=u87")  # case-insensitive when unambiguous
    assert one.subset == {"cell_type": "U87"} and one.adata.n_obs == 360
    assert set(one.adata.obs["cell_type"]) == {"U87"} and [c.key for c in one.contexts] == ["bio_rep"]
    check_pooling(one.contexts)
    same = subset_screen(screen, {"cell_type": "U87"})
    assert same.subset == one.subset and same.conditions == one.conditions
    np.testing.assert_array_equal(same.counts("G00"), one.counts("G00"))
    assert not any("cell_type" in p for p in same.problems) and any("bio_rep" in p for p in same.problems)


@pytest.mark.parametrize("spec, needle", [
    ("cell_type=HeLa", "no cells with that value; obs['cell_type'] holds K562 (360), U87 (360)"),
    ("tissue=liver", "no obs column 'tissue'; context columns: cell_type, bio_rep"),
    ("cell_type", "--subset takes key=value"),
])
def test_bad_subset_names_the_choices(spec, needle):
    with pytest.raises(ConfigError) as e:
        screen_from_anndata(_mixed(), subset=spec)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_subset_of_recovered_counts_keeps_their_size_factors():
    screen = screen_from_anndata(_mixed(log=True))
    assert screen.recovered
    one = subset_screen(screen, "cell_type=K562")
    direct = screen_from_anndata(_mixed(log=True), subset="cell_type=K562")
    assert one.recovered and direct.recovered
    np.testing.assert_array_equal(one.counts(), direct.counts())
    np.testing.assert_allclose(one.adata.obs[KEYS.SIZE_FACTOR], direct.adata.obs[KEYS.SIZE_FACTOR])
    assert len(one.recovery.size_factors) == one.adata.n_obs


def test_run_records_its_subset_and_evaluate_follows_it(tmp_path):
    from lcd_core.cli import _follow_run
    from lcd_core.model import train

    path = tmp_path / "mixed.h5ad"
    _mixed().write_h5ad(path)
    screen = read_screen(path, subset="cell_type=K562")
    run = tmp_path / "run"
    train(screen, run, config=tiny_config(), heldout=["G00+G01"])
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["subset"] == {"cell_type": "K562"} and cfg["count_recovery"] is None
    assert _follow_run({"subset": None}, str(run))["subset"] == {"cell_type": "K562"}
    with pytest.raises(ConfigError, match="trained on --subset cell_type=K562"):
        _follow_run({"subset": ["cell_type=U87"]}, str(run))


LCD = [sys.executable, "-m", "lcd_core.cli"]


def lcd(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return subprocess.run([*LCD, *map(str, args)], capture_output=True, text=True, env=env, timeout=300)


def test_cli_inspect_and_train_refuse_to_pool_cell_types(tmp_path, capsys):
    from lcd_core.cli import main

    path = tmp_path / "mixed.h5ad"
    _mixed().write_h5ad(path)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "obs['cell_type'] splits the cells into 2 cell types" in out and "obs['bio_rep']" in out
    assert main(["inspect", str(path), "--subset", "cell_type=K562"]) == 0
    assert "subset:      cell_type=K562 (360 cells)" in capsys.readouterr().out
    dry = ["train", str(path), "--out", str(tmp_path / "r"), "--dry-run"]
    assert main([*dry, "--pool-contexts"]) == 0 and main([*dry, "--subset", "cell_type=U87"]) == 0
    capsys.readouterr()
    assert main([*dry, "--subset", "cell_type=HeLa"]) == 2
    assert "holds K562 (360), U87 (360)" in capsys.readouterr().err
    # the real process: one line on stderr, exit 2, nothing written
    refused = lcd("train", path, "--out", tmp_path / "r", "--preset", "demo")
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1 and "Traceback" not in refused.stderr
    assert "training would pool them; pass --subset cell_type=K562" in lines[0] and "--pool-contexts" in lines[0]
    assert not (tmp_path / "r").exists()
