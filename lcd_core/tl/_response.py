"""The reverse question: which perturbations move one gene most? (PRODUCT.md, Perturb)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .._constants import KEYS
from ..errors import ConfigError


def gene_response_table(
    gene: str,
    *,
    genes: Sequence[str],
    control: np.ndarray,
    predicted: Mapping[str, np.ndarray],
    observed: Mapping[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Conditions ranked by how far they move ``gene``'s mean expression from control.

    Parameters
    ----------
    gene
        The gene asked about (one of ``genes``).
    genes
        The ``G`` gene names of every cell array.
    control
        ``(n0, G)`` observed control cells, log1p CP10k: the reference of every shift.
    predicted
        condition → ``(n, G)`` generated cells, log1p CP10k.
    observed
        condition → ``(n, G)`` measured cells, log1p CP10k; conditions without cells get NaN.

    Returns
    -------
    One row per condition of ``predicted`` (control excluded), ranked by |predicted shift| (largest
    first): ``condition``, ``predicted_shift``, ``observed_shift`` (NaN where not measured),
    ``predicted_mean``, ``observed_mean``, ``n_observed`` (0 where not measured); log1p CP10k.
    ``attrs["control_mean"]``: the gene's control mean.
    """
    genes = [str(g) for g in genes]
    if gene not in genes:
        raise ConfigError(f"gene {gene!r} is not modelled; choose one of the run's {len(genes)} genes")
    j = genes.index(gene)
    control = np.asarray(control)
    if control.ndim != 2 or control.shape[1] != len(genes) or len(control) == 0:
        raise ConfigError(f"control must be (n >= 1, {len(genes)}) cells")
    observed = observed or {}
    base = float(control[:, j].astype(np.float64).mean())
    rows = []
    for cond, cells in predicted.items():
        if cond == KEYS.CONTROL:
            continue
        p = float(np.asarray(cells)[:, j].astype(np.float64).mean())
        obs = observed.get(cond)
        o = float(np.asarray(obs)[:, j].astype(np.float64).mean()) if obs is not None and len(obs) else float("nan")
        rows.append({"condition": cond, "predicted_shift": p - base, "observed_shift": o - base,
                     "predicted_mean": p, "observed_mean": o, "n_observed": 0 if obs is None else int(len(obs))})
    df = pd.DataFrame(rows, columns=["condition", "predicted_shift", "observed_shift", "predicted_mean",
                                     "observed_mean", "n_observed"])
    if len(df):
        df = df.iloc[np.argsort(-np.abs(df["predicted_shift"].to_numpy()), kind="stable")].reset_index(drop=True)
    df.attrs["control_mean"] = base
    df.attrs["gene"] = gene
    return df
