"""The public entry point the CLI calls (``lcd simulate --kind ...``)."""

from __future__ import annotations

from typing import Literal

import anndata as ad

from ..errors import ConfigError
from ._demo import DEMO_MODULE_SIZE, DEMO_MODULES, make_demo_screen
from ._linear import simulate_linear
from ._nonlinear import simulate_nonlinear


def simulate(
    kind: Literal["demo", "linear", "nonlinear"],
    *,
    n_genes: int | None = None,
    seed: int = 0,
    **kwargs,
) -> ad.AnnData:
    """Simulate a screen with known truth.

    Parameters
    ----------
    kind
        ``"demo"``: the embedded demo screen (:func:`make_demo_screen`; ``n_genes`` must be ``None``
        or 144). ``"linear"``: the paper's linear generator (:func:`simulate_linear`; default 100
        genes, all perturbed; here ZIP counts by default, ``counts=False`` gives latent states,
        which are negative in places and need the no-measurement-model mode). ``"nonlinear"``: the
        nonlinear count generator (:func:`simulate_nonlinear`; default 100 genes; by default
        modules of ~24 genes, ``d // 3`` singles and as many doubles).
    n_genes
        Number of genes.
    seed
        Seed.
    **kwargs
        Passed on to the generator.

    Returns
    -------
    The simulated AnnData (see the generator's docstring for its slots).
    """
    if n_genes is not None and int(n_genes) < 2:
        raise ConfigError(f"--genes must be at least 2, got {n_genes}")
    if kind == "demo":
        demo_d = len(DEMO_MODULES) * DEMO_MODULE_SIZE
        if n_genes not in (None, demo_d) or kwargs:
            raise ConfigError(f"the demo screen is fixed ({demo_d} genes); only --seed can change it")
        return make_demo_screen(seed)
    if kind == "linear":
        kwargs.setdefault("counts", True)  # latent-only screens are opt-in (they carry uns[KEYS.IS_COUNTS]=False)
        return simulate_linear(100 if n_genes is None else int(n_genes), seed=seed, **kwargs)
    if kind == "nonlinear":
        d = 100 if n_genes is None else int(n_genes)
        if d < 4:
            raise ConfigError(f"the nonlinear generator needs at least 4 genes, got {d}")
        n_singles = kwargs.pop("n_singles", max(2, d // 3))
        max_doubles = n_singles * (n_singles - 1) // 2
        kwargs.setdefault("n_modules", max(1, min(d // 2, round(d / 24))))
        kwargs.setdefault("n_doubles", min(n_singles, max_doubles))
        return simulate_nonlinear(d, n_singles=n_singles, seed=seed, **kwargs)
    raise ConfigError(f"unknown kind {kind!r}; choose 'demo', 'linear' or 'nonlinear'")
