"""The result of CLIPR, either variant (METHOD §4)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CliprResult:
    """Result of CLIPR (paper or directed variant).

    Attributes
    ----------
    effects
        ``(d, d)`` Âᵀ: entry ``[i, j]`` = direct effect of gene i on gene j (rows = SOURCES).
    A
        ``(d, d)`` SDE drift matrix Â (rows = targets), ``f(s) ≈ Â s + b + c_q``.
    b
        ``(d,)`` b̂ = −Â l_ctrl.
    c
        ``(d, K+1)`` ĉ_q = −Â (l_q − l_ctrl), column 0 the control (zero).
    V, L
        ``(d, K+1)`` initial and limit responses in state space (``V`` is ``None`` for directed CLIPR).
    target_index
        Target gene of each column (``None`` for the control).
    params
        The call's parameters (λ, reference point and level, schedule, variant, ...).
    warnings
        Human-readable warnings raised while estimating (rank deficiency, unconverged flows).
    info
        Diagnostics (fixed-point info, singular values of L, solver residuals).
    """

    effects: np.ndarray
    A: np.ndarray
    b: np.ndarray
    c: np.ndarray
    V: np.ndarray | None
    L: np.ndarray
    target_index: list
    params: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)
    info: dict = field(default_factory=dict)
