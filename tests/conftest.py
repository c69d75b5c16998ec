"""Shared fixtures: tiny screens and a tiny training configuration (nanoGPT's 'train in seconds' config)."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from lcd_core import KEYS

torch.set_num_threads(1)
# the app's server takes its torch threads from this (app_ui.state.share_cores): keep the test process's one
os.environ.setdefault("LCD_APP_THREADS", "1")


def make_tiny_counts(seed: int = 0, n_genes: int = 12, n_cells: int = 60,
                     conditions: list[str] | None = None) -> ad.AnnData:
    """A small count screen in our convention: control, 4 singles, 1 double (or ``conditions``, labels
    of genes G00, G01, ...); each perturbation lifts its target gene's rate so conditions are
    distinguishable."""
    rng = np.random.default_rng(seed)
    genes = [f"G{i:02d}" for i in range(n_genes)]
    conditions = conditions or ["ctrl", "G00", "G01", "G02", "G03", "G00+G01"]
    base = rng.uniform(2, 20, n_genes)
    X, labels = [], []
    for c in conditions:
        rate = base.copy()
        for g in ([] if c == "ctrl" else c.split("+")):
            rate[genes.index(g)] *= 4.0
        X.append(rng.poisson(rate * rng.lognormal(0, 0.2, (n_cells, 1))))
        labels += [c] * n_cells
    obs = pd.DataFrame({KEYS.PERT: pd.Categorical(labels)}, index=[f"c{i}" for i in range(len(labels))])
    return ad.AnnData(X=np.concatenate(X).astype(np.float32), obs=obs, var=pd.DataFrame(index=genes))


@pytest.fixture
def tiny_h5ad(tmp_path):
    path = tmp_path / "tiny.h5ad"
    make_tiny_counts().write_h5ad(path)
    return path


def tiny_config(seed: int = 0):
    """Both stages in a few seconds on one CPU thread."""
    from lcd_core.model import get_preset

    cfg = get_preset("demo", seed=seed)
    cfg.stage1.steps, cfg.stage1.warmup, cfg.stage1.n_samples, cfg.stage1.log_every = 100, 5, 64, 10
    cfg.stage2.hidden, cfg.stage2.emb_dim, cfg.stage2.batch_size = 32, 8, 128
    cfg.stage2.steps, cfg.stage2.log_every = 300, 50
    cfg.n_latent_samples = 200
    cfg.min_cells = 10
    cfg.checkpoint_seconds = 1.0
    cfg.embedding = "pca"  # the saved-embedding path without umap's numba compile
    return cfg


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """``(screen, run path)``: the tiny count screen and one run trained on it with :func:`tiny_config` and
    G00+G01 held out, shared by the tests that only read it (copy the run before changing it)."""
    from lcd_core.data import read_screen
    from lcd_core.model import train

    tmp = tmp_path_factory.mktemp("tiny_run")
    make_tiny_counts().write_h5ad(tmp / "tiny.h5ad")
    screen = read_screen(tmp / "tiny.h5ad")
    train(screen, tmp / "run", config=tiny_config(), device="cpu", heldout=["G00+G01"])
    return screen, tmp / "run"


#: the real screens (../shared/data beside the checkout; LCD_SHARED_DATA overrides)
SHARED_DATA = Path(os.environ.get("LCD_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def shared_file(name: str) -> Path:
    """A real screen of ../shared/data, or skip the test (a clone of the project alone lacks them)."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{name} not found in {SHARED_DATA} (the real screens of ../shared/data; set LCD_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def norman_h5ad() -> Path:
    return shared_file("norman2019_k562_subset.h5ad")


@pytest.fixture(scope="session")
def papalexi_h5ad() -> Path:
    return shared_file("papalexi2021_thp1_subset.h5ad")


@pytest.fixture
def lcd_here(capsys):
    """``lcd ARGS`` in this process: the real parser and commands without a new interpreter, whose torch
    import costs ~3 s a call on these CPUs. Returns a :class:`subprocess.CompletedProcess` (``returncode``,
    ``stdout``, ``stderr``), like the subprocess tests, and raises when ``check`` and the command failed.
    The process boundary itself (entry point, signals, exit status of a real process) is tested in
    test_cli.py with real subprocesses."""
    import subprocess

    from lcd_core.cli import main

    def call(*args, check: bool = True) -> subprocess.CompletedProcess:
        argv = [str(a) for a in args]
        capsys.readouterr()
        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's usage errors
            rc = e.code if isinstance(e.code, int) else 2
        out = capsys.readouterr()
        if check and rc != 0:
            raise AssertionError(f"lcd {' '.join(argv)} failed ({rc}):\n{out.err}")
        return subprocess.CompletedProcess(["lcd", *argv], rc, out.out, out.err)

    return call
