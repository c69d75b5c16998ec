"""Which pages a screen supports before any training, and why (PRODUCT.md, "The app").

Home asks this of an uploaded screen so that a user learns up front, not after eight minutes of
training, that CLIPR needs perturbed genes among the modelled genes, that Benchmark needs doubles whose
singles were measured, and so on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .._constants import KEYS
from ._conventions import targets_of

#: CLIPR needs at least this many single-gene perturbations of modelled genes (lcd_core.model.get_clipr)
MIN_CLIPR_SINGLES = 2
#: the order pages are listed in
PAGES = ("perturb", "causal_graph", "modules", "whatif", "benchmark", "interactions")
#: how each page is named to a user
PAGE_TITLES = {"perturb": "Perturb", "causal_graph": "Causal graph", "modules": "Modules",
               "whatif": "Linear what-if", "benchmark": "Benchmark (held-out doubles)",
               "interactions": "Genetic interactions"}


@dataclass(frozen=True)
class PageSupport:
    """Whether one page works on a screen: ``supported`` and a one-sentence ``why``."""

    page: str
    supported: bool
    why: str

    @property
    def title(self) -> str:
        return PAGE_TITLES[self.page]


@dataclass
class SupportReport:
    """What a screen supports (:func:`supported_pages`).

    Attributes
    ----------
    pages
        page key (:data:`PAGES`) → :class:`PageSupport`.
    targets
        Every gene perturbed in the screen, sorted.
    modelled_targets
        Targets among the modelled genes (``genes``).
    unmeasured_targets
        Targets the file does not measure at all (normal for CRISPRa; nothing can keep them).
    dropped_targets
        Targets the file measures but the gene selection leaves out: keep them with
        :func:`lcd_core.pp.add_measured_targets` (or ``select_genes(keep_targets=True)``).
    clipr_singles
        Single-gene conditions whose target is modelled (CLIPR's perturbations).
    testable_doubles
        Combinations whose every single is measured (the held-out candidates, and the doubles with an
        observed genetic interaction).
    """

    pages: dict[str, PageSupport]
    targets: list[str]
    modelled_targets: list[str]
    unmeasured_targets: list[str]
    dropped_targets: list[str]
    clipr_singles: list[str]
    testable_doubles: list[str]
    n_genes: int
    n_file_genes: int
    notes: list[str] = field(default_factory=list)

    @property
    def unsupported(self) -> list[str]:
        """Keys of the pages that will not work."""
        return [p for p, s in self.pages.items() if not s.supported]

    def lines(self) -> list[str]:
        """One line per page, ``"✓ Perturb: …"`` / ``"✗ Causal graph: …"``, then the notes."""
        return [f"{'✓' if s.supported else '✗'} {s.title}: {s.why}" for s in self.pages.values()] + self.notes


def _listing(items: Sequence[str], n: int = 6) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" and {len(items) - n} more" if len(items) > n else "")


def supported_pages(screen: Any, genes: Sequence[str] | None = None) -> SupportReport:
    """Which pages and features work on ``screen`` when ``genes`` are modelled, each with the reason.

    - Perturb needs at least one perturbed condition besides control.
    - Causal graph, Modules and the linear what-if need CLIPR: at least :data:`MIN_CLIPR_SINGLES`
      single-gene perturbations whose target is a modelled gene (METHOD.md §4: a perturbation of an
      unmodelled gene moves no modelled gene's own drift, so it gives CLIPR no equation).
    - Benchmark needs doubles whose singles are all measured (the paper's protocol holds out only those).
    - Genetic interactions need doubles whose two singles are measured (METHOD.md §6).

    Parameters
    ----------
    screen
        A :class:`~lcd_core.data.Screen` (or anything with ``conditions`` and ``genes``).
    genes
        The genes a run would model (a gene selection); default every gene of the screen, which is what
        ``lcd train`` models.

    Returns
    -------
    :class:`SupportReport`; ``report.lines()`` gives the sentences Home shows.
    """
    conditions = [str(c) for c in screen.conditions]
    file_genes = [str(g) for g in screen.genes]
    genes = file_genes if genes is None else [str(g) for g in genes]
    modelled, measured = set(genes), set(file_genes)
    present = set(conditions)
    singles = [c for c in conditions if len(targets_of(c)) == 1]
    doubles = [c for c in conditions if len(targets_of(c)) > 1]
    perturbed = [c for c in conditions if c != KEYS.CONTROL]
    targets = sorted({t for c in perturbed for t in targets_of(c)})
    modelled_targets = [t for t in targets if t in modelled]
    unmeasured = [t for t in targets if t not in measured]
    dropped = [t for t in targets if t in measured and t not in modelled]
    clipr_singles = [c for c in singles if targets_of(c)[0] in modelled]
    unmodelled_singles = [c for c in singles if targets_of(c)[0] not in modelled]
    testable = [c for c in doubles if all(t in present for t in targets_of(c))]

    pages: dict[str, PageSupport] = {}
    if perturbed:
        pages["perturb"] = PageSupport("perturb", True, f"{len(perturbed)} perturbed conditions "
                                       f"({len(singles)} singles, {len(doubles)} combinations) to predict and compare")
    else:
        pages["perturb"] = PageSupport("perturb", False, "the screen has only control cells; nothing to predict")

    k = len(clipr_singles)
    if k >= MIN_CLIPR_SINGLES:
        why = (f"CLIPR has {k} single-gene perturbations of modelled genes"
               + (f" ({len(unmodelled_singles)} other singles target genes not modelled and add nothing)"
                  if unmodelled_singles else ""))
        if k < len(genes):
            why += f"; with {k} of {len(genes)} genes perturbed only part of the causal matrix is identified"
        ok = True
    else:
        why = (f"CLIPR needs at least {MIN_CLIPR_SINGLES} single-gene perturbations whose target is a modelled "
               f"gene; this screen has {k} of {len(singles)} singles"
               + (f" (targets not modelled: {_listing([targets_of(c)[0] for c in unmodelled_singles])})"
                  if unmodelled_singles else ""))
        if dropped:
            why += f"; {len(dropped)} targets are in the file but not in the gene selection: keep them"
        ok = False
    for page in ("causal_graph", "modules", "whatif"):
        pages[page] = PageSupport(page, ok, why)

    shipped = getattr(screen, "split", None) or {}
    if testable:
        why = (f"{len(testable)} of {len(doubles)} combinations have all their singles measured and can be held out"
               + (" (the screen ships its own split)" if shipped.get("heldout") else ""))
        pages["benchmark"] = PageSupport("benchmark", True, why)
        pages["interactions"] = PageSupport("interactions", True, f"{len(testable)} doubles have both singles "
                                            "measured: observed and predicted interactions can be scored")
    else:
        why = ("the screen has no combinations" if not doubles else
               f"none of its {len(doubles)} combinations has all its singles measured")
        pages["benchmark"] = PageSupport("benchmark", False, why + ", so no double can be held out fairly")
        pages["interactions"] = PageSupport("interactions", False, why + "; a genetic interaction compares a "
                                            "double with its two singles")

    notes = []
    if unmeasured:
        notes.append(f"{len(unmeasured)} of {len(targets)} perturbed genes are not measured in the file "
                     f"({_listing(unmeasured)}): normal for CRISPRa; LCD still predicts them, CLIPR cannot use them.")
    if dropped:
        notes.append(f"{len(dropped)} perturbed genes are measured but not in the gene selection "
                     f"({_listing(dropped)}): keep them (lcd_core.pp.add_measured_targets) so CLIPR can use them.")
    return SupportReport(pages=pages, targets=targets, modelled_targets=modelled_targets, unmeasured_targets=unmeasured,
                         dropped_targets=dropped, clipr_singles=clipr_singles, testable_doubles=testable,
                         n_genes=len(genes), n_file_genes=len(file_genes), notes=notes)
