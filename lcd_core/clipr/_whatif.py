"""Linear what-if: the mean shift a soft intervention causes under CLIPR's linearised dynamics, and the
cells it predicts (METHOD §4; PRODUCT.md "in-silico knockdowns or activations")."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.linalg as sla

from .._constants import KEYS
from ..errors import ConfigError, LCDError

#: below this reciprocal condition number of A (√eps) a what-if is refused as singular
RCOND_MIN = float(np.sqrt(np.finfo(float).eps))


def whatif_shift(A: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Predicted stationary mean shift ``−A⁻¹ c`` of a drift shift c.

    The stationary mean of ``ds = (A s + b + c) dt + sqrt(2) dW`` is ``−A⁻¹ (b + c)``, so adding c moves
    it by ``−A⁻¹ c`` (knock-down of gene j: c = −strength · e_j; activation: +strength · e_j).

    Parameters
    ----------
    A
        ``(d, d)`` SDE drift matrix (rows = targets; the transpose of the reported effects).
    shift
        ``(d,)`` or ``(n, d)`` drift shifts c.

    Returns
    -------
    np.ndarray
        Same shape as ``shift``: predicted mean shifts.
    """
    A = np.asarray(A, dtype=float)
    c = np.asarray(shift, dtype=float)
    d = A.shape[0]
    if A.shape != (d, d) or c.shape[-1] != d or c.ndim > 2:
        raise ConfigError(f"A must be (d, d) and shift (d,) or (n, d); got {A.shape} and {c.shape}.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sla.LinAlgWarning)  # singularity is reported below, as an LCDError
            lu = sla.lu_factor(A, check_finite=True)
    except ValueError as err:
        raise LCDError(f"A contains NaN/inf: {err}") from None
    # A pivot test (|u_ii| <= eps·max|A|·d) passed the paper variant's A on the demo (pivots ~1e-11, 95 of
    # 144 singular values ~1e-9) and the what-if answered 1e11 standard deviations. LAPACK's reciprocal
    # condition estimate (O(d²) after the LU) sees it: below √eps the solve keeps fewer than half its digits.
    rcond = float(sla.lapack.dgecon(lu[0], float(np.abs(A).sum(0).max()), norm="1")[0]) if np.abs(A).max() > 0 else 0.0
    if not rcond > RCOND_MIN:
        raise LCDError(
            f"CLIPR's drift matrix A is singular (reciprocal condition number {rcond:.1e}), so the linearised "
            f"dynamics have no unique stationary mean and a what-if has no answer. The paper variant sets A to "
            f"zero outside the span of its limit responses (one per single-gene perturbation): it is singular "
            f"whenever fewer genes were perturbed than modelled. Use the directed variant.")
    out = -sla.lu_solve(lu, c.T if c.ndim == 2 else c)  # one LU, many shift vectors
    return out.T if c.ndim == 2 else out


def whatif_drift_shift(A: np.ndarray, genes: Sequence[str], interventions: Mapping[str, float],
                       sd: np.ndarray) -> np.ndarray:
    """Drift shift ``c`` of soft interventions, in state units.

    ``interventions`` maps a gene to a signed strength (negative = knock-down, positive = activation)
    in units of that gene's latent standard deviation: ``c_j = strength · sd_j · |A_jj|``, so that a gene
    without regulators would move its own mean by ``strength`` standard deviations.
    """
    index = {g: i for i, g in enumerate(genes)}
    c = np.zeros(len(genes))
    for g, s in interventions.items():
        if g not in index:
            raise ConfigError(f"gene {g!r} is not modelled by this run; the linear what-if covers modelled genes only")
        j = index[g]
        c[j] = float(s) * float(sd[j]) * max(abs(float(A[j, j])), 1e-8)
    return c


def whatif_cells(model, A: np.ndarray, interventions: Mapping[str, float], *, n_cells: int = 300,
                 seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cells of a linear what-if: the model's control latent states moved by ``−A⁻¹ c`` (METHOD §4,
    :func:`whatif_shift`), then through the model's measurement model.

    Returns
    -------
    shift
        ``(d,)`` predicted mean shift of the latent state.
    cells
        ``(n_cells, d)`` log1p CP10k.
    """
    if not interventions:
        raise ConfigError("choose at least one gene to knock down or activate")
    c = whatif_drift_shift(A, model.genes, interventions, model.sd)
    shift = whatif_shift(A, c)
    pred = model.predict([KEYS.CONTROL], n_cells=n_cells, seed=seed)
    latent = pred.latent[KEYS.CONTROL].astype(np.float64) + shift[None, :]
    return shift, model.decode(latent, seed=seed + 1)


#: a linear response beyond this many latent standard deviations is no state a cell could reach: it
#: comes from a nearly singular drift matrix (the paper variant when few genes were perturbed)
MAX_RESPONSE_SD = 100.0


def singular_response(shift: np.ndarray, sd: np.ndarray, *, max_sd: float = MAX_RESPONSE_SD) -> float | None:
    """The largest response of a what-if in latent standard deviations, ``max_j |shift_j| / sd_j``, when
    it is not finite or exceeds ``max_sd`` (the linearised dynamics are nearly singular and the what-if
    means nothing); ``None`` for a plausible response. ``shift``, ``sd``: ``(d,)`` latent units."""
    z = np.abs(np.asarray(shift, dtype=float)) / np.asarray(sd, dtype=float)
    if not np.all(np.isfinite(z)):
        return float("inf")
    return float(z.max()) if z.size and z.max() > max_sd else None
