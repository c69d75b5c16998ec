"""Which conditions train, tune and test: the paper's combination protocol (METHOD.md §9)."""

from __future__ import annotations

import difflib
from typing import Any, Sequence

import numpy as np

from .._constants import KEYS
from ..data._conventions import targets_of
from ..errors import ConfigError


def _conditions(screen: Any) -> list[str]:
    """Conditions of a Screen, or of an AnnData's canonical ``obs["perturbation"]``."""
    if hasattr(screen, "conditions"):
        return list(screen.conditions)
    labels = set(screen.obs[KEYS.PERT].astype(str))
    return [KEYS.CONTROL] + sorted(labels - {KEYS.CONTROL})



def split_combinations(
    screen: Any,
    *,
    n_tuning: int = 20,
    n_folds: int = 10,
    seed: int | np.random.Generator = 0,
) -> dict[str, Any]:
    """Split a screen's combinations into tuning and test folds (the LCD paper's protocol).

    Control and all singles train. Combinations are shuffled with ``seed``; those with a gene that has
    no single in the screen cannot be tested fairly and go to training. Of the testable ones, the first
    ``n_tuning`` are reserved for tuning and the rest are dealt into ``n_folds`` folds of near-equal size.

    Parameters
    ----------
    screen
        A :class:`~lcd_core.data.Screen` (or an AnnData with canonical labels).
    n_tuning
        Combinations reserved for hyperparameter tuning.
    n_folds
        Number of test folds.
    seed
        Seed or Generator of the shuffle; the same seed gives the same split.

    Returns
    -------
    ``{"train": [...], "tuning": [...], "folds": [[...], ...], "seed": int|None, "protocol": "combinations"}``:
    ``train`` holds control, all singles and untestable combinations. For fold ``f`` train on ``train``
    plus the other folds (:func:`fold_split`).

    Raises
    ------
    ConfigError
        Fewer testable combinations than ``n_tuning + n_folds``.
    """
    rng = np.random.default_rng(seed)
    conditions = _conditions(screen)
    singles = {c for c in conditions if len(targets_of(c)) == 1}
    combos = [c for c in conditions if len(targets_of(c)) > 1]
    order = [combos[i] for i in rng.permutation(len(combos))]
    testable = [c for c in order if all(t in singles for t in targets_of(c))]
    untestable = sorted(set(combos) - set(testable))
    if n_tuning < 0 or n_folds < 1:
        raise ConfigError(f"need n_tuning >= 0 and n_folds >= 1, got {n_tuning}, {n_folds}")
    if len(testable) < n_tuning + n_folds:
        raise ConfigError(
            f"only {len(testable)} combinations have all their genes' singles in the screen, fewer than "
            f"n_tuning + n_folds = {n_tuning} + {n_folds}; lower n_tuning / n_folds or use explicit_split"
        )
    tuning = testable[:n_tuning]
    folds = [list(map(str, f)) for f in np.array_split(np.asarray(testable[n_tuning:], dtype=object), n_folds)]
    train = [c for c in conditions if c == KEYS.CONTROL or c in singles] + untestable
    return {
        "train": train,
        "tuning": list(tuning),
        "folds": folds,
        "seed": seed if isinstance(seed, (int, np.integer)) else None,
        "protocol": "combinations",
    }


def fold_split(split: dict[str, Any], fold: int) -> dict[str, list[str]]:
    """Train / tuning / test conditions for one fold of :func:`split_combinations` or :func:`explicit_split`.

    Returns
    -------
    ``{"train": split["train"] + the other folds, "tuning": split["tuning"], "test": split["folds"][fold]}``.
    """
    folds = split["folds"]
    if not 0 <= fold < len(folds):
        raise ConfigError(f"fold {fold} out of range; this split has folds 0..{len(folds) - 1}")
    others = [c for i, f in enumerate(folds) if i != fold for c in f]
    return {"train": list(split["train"]) + others, "tuning": list(split["tuning"]), "test": list(folds[fold])}


def explicit_split(screen: Any, heldout: Sequence[str]) -> dict[str, Any]:
    """Hold out the given conditions (one test fold); everything else trains.

    Labels may list a combination's genes in any order (``B+A`` is ``A+B``) and may use GEARS'
    ``A+ctrl`` for a single.

    Returns
    -------
    ``{"train": [...], "tuning": [], "folds": [test], "test": test, "seed": None, "protocol": "explicit"}``
    where ``test`` is the canonical held-out labels, in the order given.

    Raises
    ------
    ConfigError
        An unknown label (close matches listed), control held out, or nothing held out.
    """
    conditions = _conditions(screen)
    known = set(conditions)
    out: list[str] = []
    for raw in heldout:
        parts = sorted({p.strip() for p in str(raw).split(KEYS.COMBO_SEP) if p.strip() and p.strip() != KEYS.CONTROL})
        label = KEYS.COMBO_SEP.join(parts) if parts else KEYS.CONTROL
        if label == KEYS.CONTROL:
            raise ConfigError("control cells cannot be held out; list perturbations only")
        if label not in known:
            close = difflib.get_close_matches(label, conditions, n=5, cutoff=0.5)
            raise ConfigError(f"held-out condition {raw!r} is not in the screen; close matches: {close or 'none'}")
        if label not in out:
            out.append(label)
    if not out:
        raise ConfigError("no held-out conditions given; pass labels such as 'KLF1+CEBPA'")
    held = set(out)
    return {
        "train": [c for c in conditions if c not in held],
        "tuning": [],
        "folds": [out],
        "test": list(out),
        "seed": None,
        "protocol": "explicit",
    }


def propose_heldout(screen: Any, *, fold: int = 0, seed: int = 0, n_tuning: int = 20, n_folds: int = 10) -> dict[str, Any]:
    """Held-out doubles for a screen that ships no split, by the paper's protocol, with a sentence why.

    - The screen ships a split (``uns["lcd_split"]``): that one.
    - At least ``n_tuning + n_folds`` testable doubles (all singles measured): fold ``fold`` of
      :func:`split_combinations` plus its tuning doubles, exactly what ``lcd train --fold`` holds out.
    - Fewer (a small screen): the same protocol scaled down, without tuning doubles and with
      ``min(4, n_testable)`` folds, so about a quarter of the testable doubles (at least one) is held out
      and the rest still teach the model combinations.
    - None testable: nothing held out, and the sentence says why Benchmark will have nothing to score.

    Returns
    -------
    ``{"heldout": [...], "why": str, "source": "shipped" | "protocol" | "scaled" | "none", "n_testable": int,
    "n_combinations": int}``; pass ``heldout`` to ``lcd_core.model.train(..., heldout=...)``
    (``lcd train --holdout-combos``).
    """
    conditions = _conditions(screen)
    present = set(conditions)
    combos = [c for c in conditions if len(targets_of(c)) > 1]
    testable = [c for c in combos if all(t in present for t in targets_of(c))]
    out = {"n_testable": len(testable), "n_combinations": len(combos)}
    shipped = getattr(screen, "split", None) or {}
    if shipped.get("heldout"):
        held = sorted(str(c) for c in shipped["heldout"] if str(c) in present)
        return {**out, "heldout": held, "source": "shipped",
                "why": f"the screen ships its own split: {len(held)} held-out conditions (uns['{KEYS.SPLIT}'])."}
    if not testable:
        why = ("the screen has no combinations" if not combos else
               f"none of its {len(combos)} combinations has all its singles measured")
        return {**out, "heldout": [], "source": "none",
                "why": f"Nothing held out: {why}, so no double can be held out fairly and Benchmark has nothing to score."}
    if len(testable) >= n_tuning + n_folds:
        protocol = split_combinations(screen, n_tuning=n_tuning, n_folds=n_folds, seed=seed)
        fs = fold_split(protocol, fold)
        held = sorted(set(fs["test"]) | set(protocol["tuning"]))
        why = (f"Held out {len(held)} of {len(testable)} testable doubles by the paper's split protocol "
               f"(seed {seed}): fold {fold} of {n_folds} ({len(fs['test'])} doubles) and the {len(protocol['tuning'])} "
               f"tuning doubles, as 'lcd train --fold {fold}' does.")
        return {**out, "heldout": held, "source": "protocol", "why": why}
    k = min(4, len(testable))
    protocol = split_combinations(screen, n_tuning=0, n_folds=k, seed=seed)
    held = sorted(fold_split(protocol, fold % k)["test"])
    why = (f"Held out {len(held)} of {len(testable)} testable doubles (those whose singles are all measured): "
           f"too few for the paper's protocol ({n_tuning} tuning + {n_folds} folds), so its shuffle (seed {seed}) "
           f"was dealt into {k} folds without tuning doubles and fold {fold % k} is held out.")
    return {**out, "heldout": held, "source": "scaled", "why": why}
