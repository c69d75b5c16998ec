"""The embedded demo screen: a SIMULATED nonlinear count screen with known truth, its fixed held-out
split, and a GMT file of its true modules (PRODUCT.md: the app opens on it)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import anndata as ad
import numpy as np

from .._constants import KEYS
from ._nonlinear import simulate_nonlinear

#: (module name, gene-name prefix, description) of the demo's six modules; names are synthetic
DEMO_MODULES: tuple[tuple[str, str, str], ...] = (
    ("SIM_CELL_CYCLE", "CCYL", "simulated cell-cycle-like module"),
    ("SIM_RIBOSOME", "RIBO", "simulated ribosome-biogenesis-like module"),
    ("SIM_STRESS", "STRS", "simulated stress-response-like module"),
    ("SIM_INTERFERON", "IFNR", "simulated interferon-response-like module"),
    ("SIM_METABOLISM", "MTAB", "simulated metabolism-like module"),
    ("SIM_ERYTHROID", "ERYD", "simulated erythroid-differentiation-like module"),
)
#: genes per demo module (6 x 24 = 144 genes)
DEMO_MODULE_SIZE = 24
#: held-out and tuning doubles of the fixed demo split
DEMO_N_HELDOUT, DEMO_N_TUNING = 16, 4


def _demo_gene_names() -> list[str]:
    return [f"{prefix}{k + 1:02d}" for _, prefix, _ in DEMO_MODULES for k in range(DEMO_MODULE_SIZE)]


def make_demo_screen(seed: int = 0, *, store_latent: bool = False) -> ad.AnnData:
    """Build the demo screen (deterministic in ``seed``; a few seconds on one core).

    144 synthetic genes in 6 modules (24 each), a nonlinear count screen
    (:func:`~lcd_core.simulation.simulate_nonlinear`): control (1000 cells), 48 singles and 48
    doubles (200 cells each, 85 % of doubles within a module). A fixed split of the doubles is stored
    in ``uns[KEYS.SPLIT]``: ``heldout`` (16 labels) and ``tuning`` (4 labels); every gene of a
    held-out double has its single in training.

    To keep the shipped file small (~4 MB instead of ~20 MB) the counts are stored once, in ``.X``,
    and the cells' latent states are left out by default (the truth keeps their per-condition mean
    and standard deviation); ``store_latent=True`` regenerates them bit for bit.

    Parameters
    ----------
    seed
        Seed of the whole screen, split included; the shipped file is ``seed=0``.
    store_latent
        Also return each cell's latent state in ``obsm["latent"]`` (float32).

    Returns
    -------
    AnnData of 20,200 cells x 144 genes: ``.X`` UMI counts (float32 whole numbers),
    ``obs[KEYS.PERT]``, ``uns[KEYS.SIMULATED]``, ``uns[KEYS.TRUTH]``, ``uns[KEYS.SPLIT]``
    (and ``obsm["latent"]`` when asked).
    """
    genes = _demo_gene_names()
    adata = simulate_nonlinear(
        len(genes),
        n_modules=len(DEMO_MODULES),
        n_singles=48,
        n_doubles=48,
        n_cells=200,
        n_control_cells=1000,
        within_module_fraction=0.85,
        gene_names=genes,
        module_names=[name for name, _, _ in DEMO_MODULES],
        counts=True,
        sparse=False,
        store_latent=store_latent,
        counts_layer=False,
        seed=seed,
    )
    conditions = [str(c) for c in adata.uns[KEYS.TRUTH]["conditions"]]
    singles = {c for c in conditions if c != KEYS.CONTROL and KEYS.COMBO_SEP not in c}
    doubles = [c for c in conditions if KEYS.COMBO_SEP in c]
    # the split has its own stream so that it never changes the simulated cells
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    order = rng.permutation(len(doubles))
    heldout = sorted(doubles[i] for i in order[:DEMO_N_HELDOUT])
    tuning = sorted(doubles[i] for i in order[DEMO_N_HELDOUT:DEMO_N_HELDOUT + DEMO_N_TUNING])
    assert all(set(c.split(KEYS.COMBO_SEP)) <= singles for c in heldout + tuning)
    adata.uns[KEYS.SPLIT] = {"heldout": np.array(heldout, dtype=object), "tuning": np.array(tuning, dtype=object)}
    adata.uns[KEYS.SIMULATED] = (
        "LCD Explorer DEMO screen, SIMULATED (lcd_core.simulation.make_demo_screen, seed="
        f"{seed}); gene and module names are synthetic. " + adata.uns[KEYS.SIMULATED]
    )
    return adata


def write_demo_screen(path: str | os.PathLike, *, seed: int = 0) -> Path:
    """Write :func:`make_demo_screen` to ``path`` (gzip-compressed h5ad), atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    adata = make_demo_screen(seed)
    # write beside the target and rename, so a killed run never leaves a truncated demo file
    fd, tmp = tempfile.mkstemp(suffix=".h5ad", dir=path.parent)
    os.close(fd)
    try:
        adata.write_h5ad(tmp, compression="gzip")
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the asset must be readable by everyone
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def demo_screen_path() -> Path:
    """Path of the shipped demo screen (``assets/demo_screen.h5ad``); regenerated if missing."""
    path = Path(__file__).resolve().parents[2] / "assets" / "demo_screen.h5ad"
    if not path.exists():
        write_demo_screen(path, seed=0)
    return path


def write_demo_gmt(path: str | os.PathLike) -> Path:
    """Write the demo's true modules as a GMT file: one tab-separated line ``name, description,
    genes...`` per module."""
    path = Path(path)
    genes = _demo_gene_names()
    lines = []
    for m, (name, _, description) in enumerate(DEMO_MODULES):
        members = genes[m * DEMO_MODULE_SIZE:(m + 1) * DEMO_MODULE_SIZE]
        lines.append("\t".join([name, f"{description} (LCD Explorer demo, SIMULATED)", *members]))
    path.write_text("\n".join(lines) + "\n")
    return path
