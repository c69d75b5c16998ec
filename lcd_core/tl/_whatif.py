"""Linear what-if: the mean shift an intervention causes under the linearised dynamics (METHOD §4)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg as sla

from ..errors import ConfigError, LCDError


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
    if np.min(np.abs(np.diag(lu[0]))) <= np.finfo(float).eps * np.abs(A).max() * d:
        raise LCDError("A is singular: the linearised dynamics have no unique stationary mean.")
    out = -sla.lu_solve(lu, c.T if c.ndim == 2 else c)  # one LU, many shift vectors
    return out.T if c.ndim == 2 else out
