"""Which edges the data decide: identifiability of each CLIPR edge from the structure of the system solved.

Both estimators solve linear equations in A whose solution set is a + N for a null space N; the solver's
ridge picks the minimum-norm member, so the component of A in N is set by the regulariser, not by the data.
Per entry we report the *unresolved share*

    ρ_ij = ‖P_N e_ij‖²  ∈ [0, 1]

(P_N the orthogonal projector onto N in the Frobenius metric of A). Read as: under the ridge's own prior,
A ~ N(0, τ² I), and equations that hold exactly, Var(A_ij | equations) = ρ_ij τ²; so ρ = 0 means the data fix
the entry, ρ = 1 that they say nothing about it. Σ_ij ρ_ij = dim N.

- **directed** (:mod:`._directed`): N = {Q T Qᵀ Σ⁻¹ : T skew}, Q an orthonormal basis of span(Σ⁻¹ ΔL)^⊥,
  dim N = m(m − 1)/2 with m = d − rank(ΔL). When the perturbation responses are unit vectors and Σ = I,
  N is the skew part of the block of the m unperturbed genes: each edge between two unperturbed genes has
  ρ = 1/2 (A_ij + A_ji is fixed by the Lyapunov equation, the direction A_ij − A_ji is not) and every other
  edge ρ = 0. In general N spreads over all entries; an edge out of gene j is exactly identified when
  e_j ∈ span(ΔL) (all of j's targets perturbed).
- **paper** (:mod:`._paper`): Â = −V Lcᵀ(Lc Lcᵀ + λI)⁻¹ is decided only on span(Lc) (Lc = L − s⁰) and set
  to zero outside it: N = {X P⊥}, so every edge out of gene j has ρ = ‖P⊥ e_j‖², the part of e_j outside
  the span of the limit responses.

The directed variant's ρ is computed in standardised units (each gene in its own within-condition standard
deviation: the metric of A's entries Ã_ij = A_ij sd_j / sd_i), so that a gene's units do not decide its
labels, and an edge between two genes that were both left unperturbed is *not identified* whatever its ρ:
no perturbation equation concerns it. Labels (:data:`LABELS`), on the scale of the unresolved standard
deviation √ρ: *identified* when √ρ ≤ 0.1 (ρ ≤ :data:`IDENTIFIED_MAX`); *not identified* when √ρ is closer to
that of an edge whose direction is unknown (√(1/2)) than to 0, i.e. ρ ≥ 1/8 (:data:`NOT_IDENTIFIED_MIN`);
*partly identified* in between.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ConfigError
from ._result import CliprResult

#: the three labels, from best to worst
LABELS = ("identified", "partly identified", "not identified")
#: ρ at or below which an edge is identified (unresolved sd ≤ 10 % of the prior's)
IDENTIFIED_MAX = 0.01
#: ρ at or above which an edge is not identified (√ρ nearer √(1/2), the direction-unknown case, than 0)
NOT_IDENTIFIED_MIN = 0.125
#: one sentence per label and variant: what the estimate of such an edge rests on (for pages and reports)
SENTENCES = {
    ("directed", "identified"): "The perturbations and the covariance determine this edge.",
    ("directed", "partly identified"): "The data constrain this edge only partly; the rest is the solver's "
                                       "minimum-norm choice.",
    ("directed", "not identified"): "Neither gene's perturbation pins this edge down: its direction is set by "
                                    "the regulariser, not by the data (perturb one of the two genes).",
    ("paper", "identified"): "The source gene lies in the span of the limit responses: the data determine "
                             "this edge under the affine model.",
    ("paper", "partly identified"): "The source gene lies only partly in the span of the limit responses; "
                                    "the rest of the edge is set to zero by the ridge.",
    ("paper", "not identified"): "The source gene lies (mostly) outside the span of the limit responses: the "
                                 "ridge sets this edge towards zero whatever the data (perturb more genes).",
}
#: what the paper variant's labels do not say (issue 16 item 6, docs/benchmarks.md "Signs of the paper variant"):
#: with K < d perturbed genes its ridge solve books a target's own restoring force against the edge into it
PAPER_SIGN_CAVEAT = ("The paper variant's signs are not to be trusted on nonlinear count screens with fewer "
                     "perturbed genes than genes: on the demo its edges from perturbed genes to the others have "
                     "the wrong sign more often than not (sign-AUROC 0.19; 0.38 overall, below the 0.5 of no "
                     "information), while the drift itself and the directed variant get them right; use the "
                     "directed variant.")
#: above this d the directed computation (d² m² memory in chunks, d² m² work) is skipped
_MAX_D = 600


@dataclass
class Identifiability:
    """Identifiability of every edge of a CLIPR result (see the module docstring for the definitions).

    Attributes
    ----------
    labels
        ``(d, d)`` str, one of :data:`LABELS`; rows = SOURCES, like ``CliprResult.effects``.
    unresolved
        ``(d, d)`` ρ ∈ [0, 1], rows = sources: the share of an entry's prior variance the equations leave open.
    rank
        Rank of the response matrix (directed: Σ⁻¹ΔL with unit columns; paper: L − s⁰).
    singular_values
        Its singular values, descending.
    condition_number
        Largest over smallest non-zero singular value.
    null_space_dim
        dim N (directed m(m − 1)/2; paper d·(d − rank)).
    variant
        ``"directed"`` or ``"paper"``.
    """

    labels: np.ndarray
    unresolved: np.ndarray
    rank: int
    singular_values: np.ndarray
    condition_number: float
    null_space_dim: int
    variant: str
    params: dict = field(default_factory=dict)

    def counts(self, *, include_diagonal: bool = False) -> dict[str, int]:
        """Number of edges per label (off-diagonal unless ``include_diagonal``)."""
        keep = np.ones(self.labels.shape, dtype=bool)
        if not include_diagonal:
            np.fill_diagonal(keep, False)
        return {lab: int(((self.labels == lab) & keep).sum()) for lab in LABELS}

    @property
    def caveat(self) -> str:
        """A sentence on what the labels do not cover (the paper variant's signs when K < d; else empty)."""
        d = self.labels.shape[0]
        return PAPER_SIGN_CAVEAT if self.variant == "paper" and self.rank < d else ""

    def sentence(self, label: str) -> str:
        """One sentence on what an edge with ``label`` rests on, for this variant."""
        return SENTENCES[(self.variant, label)]

    def summary(self) -> str:
        """One line: rank, condition number and the edge counts per label."""
        c = self.counts()
        d = self.labels.shape[0]
        return (f"response matrix rank {self.rank} of {d} (condition number {self.condition_number:.3g}); edges: "
                + ", ".join(f"{n:,} {lab}" for lab, n in c.items()))


def label_of(unresolved: np.ndarray) -> np.ndarray:
    """:data:`LABELS` of an array of unresolved shares ρ (same shape)."""
    rho = np.asarray(unresolved, dtype=float)
    out = np.full(rho.shape, LABELS[1], dtype=object)
    out[rho <= IDENTIFIED_MAX] = LABELS[0]
    out[rho >= NOT_IDENTIFIED_MIN] = LABELS[2]
    return out


def _spectrum(M: np.ndarray, rel_tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, int, float]:
    """Left singular vectors, singular values, rank and condition number (of the non-zero part) of M."""
    U, s, _ = np.linalg.svd(M, full_matrices=True)
    r = int((s > s[0] * rel_tol).sum()) if s.size and s[0] > 0 else 0
    cond = float(s[0] / s[r - 1]) if r else float("inf")
    return U, s, r, cond


def unresolved_directed(Sigma: np.ndarray, delta_L: np.ndarray, *, chunk: int = 64) -> tuple[np.ndarray, dict]:
    """ρ of every entry of the directed drift matrix A (rows = targets, the solver's orientation).

    With F(T) = Q T (WQ)ᵀ (W = Σ⁻¹, T skew), F*F(T) = (T B + B T)/2 with B = (WQ)ᵀ WQ, diagonal in B's
    eigenbasis (eigenvalues λ); so ρ_ij = ⟨F* e_ij, (F*F)⁻¹ F* e_ij⟩ = Σ_ab (q_ia p_jb − p_ja q_ib)² / (2(λ_a + λ_b))
    with q = Q U and p = W Q U (U the eigenvectors): O(d² m²) work, in chunks of ``chunk`` rows.

    Parameters
    ----------
    Sigma
        ``(d, d)`` within-condition covariance (positive definite).
    delta_L
        ``(d, K)`` limit-response shifts of the single-gene conditions (columns of any scale).

    Returns
    -------
    rho
        ``(d, d)`` unresolved shares of A's entries (rows = targets).
    info
        ``rank``, ``singular_values``, ``condition_number`` of Σ⁻¹ΔL (unit columns), ``null_space_dim``.
    """
    S = np.asarray(Sigma, dtype=float)
    D = np.asarray(delta_L, dtype=float)
    d = S.shape[0]
    if D.ndim == 1:
        D = D[:, None]
    if d > _MAX_D:
        raise ConfigError(f"edge identifiability is computed up to d = {_MAX_D} genes (d = {d}: d² m² work)")
    W = np.linalg.inv(0.5 * (S + S.T))
    W = 0.5 * (W + W.T)
    norms = np.linalg.norm(D, axis=0)
    D = D[:, norms > 0] / norms[norms > 0]
    if D.shape[1]:
        U, s, r, cond = _spectrum(W @ D)
        Q = U[:, r:]
    else:
        s, r, cond, Q = np.zeros(0), 0, float("inf"), np.eye(d)
    m = Q.shape[1]
    info = {"rank": r, "singular_values": s, "condition_number": cond, "null_space_dim": m * (m - 1) // 2}
    if m < 2:
        return np.zeros((d, d)), info
    WQ = W @ Q
    lam, V = np.linalg.eigh(WQ.T @ WQ)
    q, p = Q @ V, WQ @ V
    H = 1.0 / (2.0 * (lam[:, None] + lam[None, :]))
    # (q_ia p_jb − p_ja q_ib)² expanded: 2 Σ H q_ia² p_jb² − 2 Σ H (q_ia p_ja)(q_ib p_jb)
    rho = 2.0 * (q**2) @ H @ (p**2).T
    pp = (p[:, :, None] * p[:, None, :]).reshape(d, m * m)
    for i0 in range(0, d, chunk):
        qq = (q[i0:i0 + chunk, :, None] * q[i0:i0 + chunk, None, :] * H).reshape(-1, m * m)
        rho[i0:i0 + chunk] -= 2.0 * qq @ pp.T
    return np.clip(rho, 0.0, 1.0), info


def unresolved_paper(L: np.ndarray, ref: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """ρ of every entry of the paper variant's A (rows = targets): ρ_ij = ‖P⊥ e_j‖² for every i, P⊥ the
    projector onto the orthogonal complement of span(L − s⁰).

    Parameters
    ----------
    L
        ``(d, K+1)`` limit responses, column 0 the control.
    ref
        ``(d,)`` reference point s⁰ (``None``: the origin, the paper's).
    """
    Lc = np.asarray(L, dtype=float)
    if ref is not None:
        Lc = Lc - np.asarray(ref, dtype=float)[:, None]
    d = Lc.shape[0]
    U, s, r, cond = _spectrum(Lc)
    outside = 1.0 - (U[:, :r] ** 2).sum(1)  # ‖P⊥ e_j‖²
    rho = np.broadcast_to(np.clip(outside, 0.0, 1.0)[None, :], (d, d)).copy()
    return rho, {"rank": r, "singular_values": s, "condition_number": cond, "null_space_dim": d * (d - r)}


def identifiability(result: CliprResult) -> Identifiability:
    """Label every edge of a CLIPR result identified / partly identified / not identified.

    Parameters
    ----------
    result
        A :class:`CliprResult` of either variant (from :func:`get_clipr`, :func:`clipr_directed_from_data` or
        :func:`clipr_from_drift`). The directed variant needs ``result.info["Sigma"]`` (kept by the solver and
        by the run's cache); the paper variant reads ``result.L`` and ``result.info["ref"]``.

    Returns
    -------
    Identifiability
        ``labels`` and ``unresolved`` with rows = sources (like ``result.effects``), the response matrix's
        rank, singular values and condition number.
    """
    variant = result.params.get("variant", "directed" if result.V is None else "paper")
    targets = [t for t in result.target_index[1:] if t is not None]
    if variant == "directed":
        Sigma = result.info.get("Sigma")
        if Sigma is None:
            raise ConfigError("this directed CLIPR result carries no covariance Σ (a cache written before "
                              "identifiability was kept); recompute it with get_clipr(..., use_cache=False)")
        single = [k for k in range(1, len(result.target_index)) if result.target_index[k] is not None]
        # in every gene's own standard deviations (Σ → its correlation matrix, Δl → Δl / sd): the labels then
        # do not depend on the genes' units. In raw units the Frobenius metric counts an edge of a gene with a
        # tiny variance as resolved because its whole null-space component is tiny (on Papalexi the
        # "identified" edges were those of rarely detected genes); the null space maps exactly, as the
        # homogeneous equations are invariant under s → s / sd
        Sigma = np.asarray(Sigma, dtype=float)
        sd = np.sqrt(np.clip(np.diag(Sigma), 1e-300, None))
        rho_A, info = unresolved_directed(Sigma / np.outer(sd, sd),
                                          (result.L[:, single] - result.L[:, :1]) / sd[:, None])
    elif variant == "paper":
        ref = result.info.get("ref")
        rho_A, info = unresolved_paper(result.L, None if ref is None else np.asarray(ref))
    else:
        raise ConfigError(f"unknown CLIPR variant {variant!r}")
    rho = rho_A.T.copy()  # effects orientation: rows = sources
    labels = label_of(rho)
    if variant == "directed":
        # an edge between two genes neither of which was perturbed: no equation speaks of its direction (with
        # Σ = I its ρ is exactly 1/2); in standardised units a correlated Σ can lower its ρ below 1/8 through
        # the covariance alone, which the label must not read as the perturbations deciding it
        free = np.ones(rho.shape[0], dtype=bool)
        free[list(set(targets))] = False
        pair = np.outer(free, free)
        np.fill_diagonal(pair, False)
        labels[pair] = LABELS[2]
    return Identifiability(labels=labels, unresolved=rho, rank=info["rank"],
                           singular_values=info["singular_values"], condition_number=info["condition_number"],
                           null_space_dim=info["null_space_dim"], variant=variant,
                           params={"n_perturbed": len(set(targets)), "identified_max": IDENTIFIED_MAX,
                                   "not_identified_min": NOT_IDENTIFIED_MIN})
