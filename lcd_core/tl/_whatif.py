"""Linear what-if: the mean shift an intervention causes under the linearised dynamics (METHOD §4)."""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg as sla

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
