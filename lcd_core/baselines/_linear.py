"""The linear baseline of Ahlmann-Eltze, Huber & Anders (Nature Methods 2025).

"Deep-learning-based gene perturbation effect prediction does not yet outperform simple linear
baselines" models the pseudobulk expression of perturbations as

    Y ≈ G W Pᵀ + b

- Y (d × q): mean log1p expression of each training perturbation (columns);
- G (d × K): gene embedding, the top-K principal components of the training data with genes as rows;
- P (q × K): perturbation embedding, the row of G of each perturbation's target gene;
- W (K × K): fitted by ridge least squares; b (d,): an intercept.

Our reading, written from the published description (not from their code):

- PCA is an SVD of Y − b (perturbations' pseudobulks centred on the intercept, genes as rows);
  G = U_K S_K, the genes' scores. Centring on the intercept makes the fitted term G W Pᵀ describe
  exactly the part of Y that the intercept does not.
- Ridge with the same penalty λ on both sides, the closed form they give:
  W = (GᵀG + λI)⁻¹ Gᵀ (Y − b) P (PᵀP + λI)⁻¹.
- b = the row means of Y (their choice, ``intercept="perturbed_mean"``) or the control mean
  (``intercept="control"``).
- A combination's embedding is the sum of its genes' rows of G (as requested by METHOD.md §7); a
  target gene that is not a modelled gene has no row in G and gets a zero embedding (logged).
- Defaults K = 10 and λ = 0.1 follow the paper.
Cells are control cells shifted by the predicted mean shift ``ŷ_T − mean(control)``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from .._constants import KEYS
from ..errors import ConfigError
from ._base import _FittedBaseline, parse_condition, sample_rows

logger = logging.getLogger(__name__)


def _fit_linear(
    y: np.ndarray, targets: list[list[int]], intercept: np.ndarray, n_components: int, ridge: float
) -> tuple[np.ndarray, np.ndarray]:
    """Fit G and W of Y ≈ G W Pᵀ + b.

    Parameters
    ----------
    y
        ``(d, q)`` pseudobulk log1p CP10k of the training perturbations.
    targets
        For each of the q columns, the gene (row) indices of its targets (may be empty).
    intercept
        ``(d,)`` b.
    n_components
        K (capped at the rank available, min(d, q)).
    ridge
        λ ≥ 0.

    Returns
    -------
    ``(G (d, K), W (K, K))``.
    """
    yc = y - intercept[:, None]
    u, s, _ = np.linalg.svd(yc, full_matrices=False)
    k = min(n_components, s.shape[0])
    g = u[:, :k] * s[None, :k]  # gene scores (PCA with genes as observations)
    p = _embed(g, targets)  # (q, K)
    eye = np.eye(k)
    left = np.linalg.solve(g.T @ g + ridge * eye, g.T @ yc)  # (K, q)
    w = np.linalg.solve((p.T @ p + ridge * eye).T, (left @ p).T).T  # right-multiply by (PᵀP + λI)⁻¹
    return g, w


def _embed(g: np.ndarray, targets: list[list[int]]) -> np.ndarray:
    """``(len(targets), K)`` perturbation embeddings: sums of the target genes' rows of G."""
    p = np.zeros((len(targets), g.shape[1]))
    for i, idx in enumerate(targets):
        if idx:
            p[i] = g[idx].sum(0)
    return p


class LinearBaseline(_FittedBaseline):
    """Linear baseline Y ≈ G W Pᵀ + b of Ahlmann-Eltze, Huber & Anders (2025).

    Parameters
    ----------
    n_components
        K, the number of principal components (gene-embedding dimension).
    ridge
        λ, the ridge penalty of the least-squares fit of W.
    intercept
        ``"perturbed_mean"``: b = the mean over training perturbations (the paper);
        ``"control"``: b = the control mean.

    Notes
    -----
    Needs ``var_names`` in :meth:`fit` to find each perturbation's target gene among the columns.
    """

    name = "linear"

    def __init__(
        self,
        n_components: int = 10,
        ridge: float = 0.1,
        intercept: Literal["perturbed_mean", "control"] = "perturbed_mean",
    ) -> None:
        super().__init__()
        if n_components < 1:
            raise ConfigError(f"n_components must be positive; got {n_components}.")
        if ridge < 0:
            raise ConfigError(f"ridge must be non-negative; got {ridge}.")
        if intercept not in ("perturbed_mean", "control"):
            raise ConfigError(f"intercept must be 'perturbed_mean' or 'control'; got {intercept!r}.")
        self.n_components = n_components
        self.ridge = ridge
        self.intercept = intercept

    def _targets(self, condition: str) -> list[int]:
        idx = []
        for gene in parse_condition(condition):
            if gene in self._gene_index:
                idx.append(self._gene_index[gene])
            else:
                logger.warning("Target %r of %r is not a modelled gene; the linear baseline embeds it as 0.", gene, condition)
        return idx

    def fit(
        self,
        cells_by_condition: Mapping[str, np.ndarray],
        control_label: str = KEYS.CONTROL,
        *,
        var_names: Sequence[str] | None = None,
    ) -> LinearBaseline:
        """Fit G, W and b on the training pseudobulks; see :class:`~lcd_core.baselines.Baseline`."""
        cells = self._fit_common(cells_by_condition, control_label)
        if var_names is None:
            raise ConfigError("The linear baseline needs the gene names: call `.fit(cells, var_names=adata.var_names)`.")
        var_names = [str(v) for v in var_names]
        if len(var_names) != self.n_genes:
            raise ConfigError(f"var_names has {len(var_names)} names for {self.n_genes} genes.")
        self._gene_index = {g: i for i, g in enumerate(var_names)}
        labels = [label for label in cells if label != control_label]
        if not labels:
            raise ConfigError("The linear baseline needs at least one perturbed training condition.")
        y = np.stack([cells[label].mean(0) for label in labels], axis=1)  # (d, q)
        self._ctrl_mean = self._control.mean(0)
        self._b = y.mean(1) if self.intercept == "perturbed_mean" else self._ctrl_mean.copy()
        self._g, self._w = _fit_linear(y, [self._targets(lab) for lab in labels], self._b, self.n_components, self.ridge)
        return self

    def predicted_mean(self, condition: str) -> np.ndarray:
        """``(d,)`` predicted pseudobulk ``b + G W p_T`` (log1p CP10k); the control mean for control."""
        if self._control is None:
            raise ConfigError("The 'linear' baseline is not fitted; call `.fit(cells_by_condition, var_names=...)` first.")
        if condition == self.control_label:
            return self._ctrl_mean.copy()
        p = _embed(self._g, [self._targets(condition)])[0]
        return self._b + self._g @ (self._w @ p)

    def predict(self, condition: str, n_cells: int, *, seed: int | np.random.Generator = 0) -> np.ndarray:
        """``(n_cells, d)`` control cells shifted by the predicted mean shift."""
        rng = self._start_predict(n_cells, seed)
        shift = self.predicted_mean(condition) - self._ctrl_mean
        return sample_rows(self._control, n_cells, rng) + shift[None, :]
