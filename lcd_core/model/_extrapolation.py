"""Extrapolation flags of predictions (issue 16 item 4): which asked-for perturbations lie outside what the
model was trained on, and what the model does there, in one sentence each.

Two cases (METHOD.md §1: a condition is encoded e_T = Σ_{j∈T} e_j):

- a gene never perturbed in training has no learned embedding: the model uses the mean of the trained
  embeddings, so it predicts an average perturbation, not that gene's;
- a combination of more genes than any training condition had (more than two in every screen we train on)
  sums more embeddings than the network ever saw at once: the prediction is the model's additive
  extrapolation of its singles and pairs, untested against data.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..data._conventions import parse_label, targets_of

#: the largest combination that is not flagged as long as training had no larger one (issue 16: "more than two")
MAX_INTERPOLATED_ORDER = 2


def extrapolation_notes(labels: Iterable[str], unseen: Mapping[str, list[str]] | None = None, *,
                        trained_order: int = MAX_INTERPOLATED_ORDER) -> dict[str, str]:
    """One sentence per extrapolating perturbation; labels not in the result are within the training design.

    Parameters
    ----------
    labels
        Perturbation labels in our convention (``A``, ``A+B``, ``ctrl``).
    unseen
        label → genes of it never perturbed in training (:attr:`Prediction.unseen`, :meth:`LCD.multihot`).
    trained_order
        Largest number of genes in one training condition; combinations above ``max(2, trained_order)`` are flagged.

    Returns
    -------
    dict
        label → sentence(s) saying why it is an extrapolation and what the model does in that case.
    """
    unseen = dict(unseen or {})
    limit = max(MAX_INTERPOLATED_ORDER, int(trained_order))
    out = {}
    for raw in labels:
        label = parse_label(raw)
        parts = []
        new = unseen.get(label) or []
        if new:
            genes = ", ".join(new)
            whose = "this gene's" if len(new) == 1 else "these genes'"
            parts.append(f"{genes} {'was' if len(new) == 1 else 'were'} never perturbed in training: the model "
                         f"uses the mean of the trained perturbation embeddings, so it predicts an average "
                         f"perturbation, not {whose} own effect.")
        n = len(targets_of(label))
        if n > limit:
            parts.append(f"A combination of {n} genes, more than any training condition ({limit}): the model sums "
                         f"their embeddings beyond the combinations it learned from; untested against data.")
        if parts:
            out[label] = " ".join(parts)
    return out
