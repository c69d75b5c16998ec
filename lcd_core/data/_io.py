"""Reading screens from h5ad files or AnnData objects, and writing them in any convention."""

from __future__ import annotations

import os
from pathlib import Path
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from .._constants import KEYS
from ..errors import ConfigError, ScreenContentError
from ._conventions import (
    CONVENTIONS,
    ORIGINAL_SUFFIX,
    canonical_labels,
    detect_convention,
    resolve_gene_names,
    to_convention,
)
from ._contexts import find_contexts, subset_mask
from ._recovery import BACKED_SAMPLE_CELLS, CountRecovery, recover_counts
from ._screen import Screen
from ._validate import check_file, check_min_cells, check_targets, check_unique_genes, check_values, open_h5ad, value_stats


def read_screen(
    path: str | os.PathLike,
    *,
    perturbation_key: str | None = None,
    control_label: str | None = None,
    combo_sep: str | None = None,
    gene_key: str | None = None,
    layer: str | None = None,
    min_cells: int = 1,
    backed: bool = False,
    drop_small: bool = False,
    strict: bool = False,
    count_recovery: bool = True,
    subset: str | Mapping[str, str] | Sequence[str] | None = None,
) -> Screen:
    """Read and validate an ``.h5ad`` Perturb-seq screen.

    The label convention (ours, GEARS or scPerturb) is detected from ``obs``; any of
    ``perturbation_key``, ``control_label``, ``combo_sep`` overrides detection.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    perturbation_key
        obs column with the perturbation labels (default: detected; ``perturbation`` then ``condition``).
    control_label
        Label of control cells (default: detected; ``ctrl``, ``control``, ``non-targeting``, ``NT``).
    combo_sep
        Separator of the genes of a combination (default: ``+``, or ``_`` for scPerturb files).
    gene_key
        var column holding gene symbols (default: var_names, or a symbol column such as ``gene_symbols``
        / ``gene_name`` when var_names are Ensembl IDs).
    layer
        Where the raw counts are: a layer name or ``"X"``. Default: ``layers["counts"]`` if present,
        else ``.X``. A named layer must hold integers. Without one, a non-integer ``.X`` is read as
        normalised expression: its counts are recovered when it is (log1p of) per-cell-scaled counts
        (``count_recovery``), otherwise it stays normalised (``Screen.is_counts`` False, the reason in
        ``Screen.problems``).
    min_cells
        Minimum cells per condition.
    backed
        Leave ``.X`` on disk (anndata backed mode); enough for ``lcd inspect`` on large files.
    drop_small
        Drop conditions below ``min_cells`` (noted in ``problems``) instead of raising.
    strict
        Raise when target genes are not among the measured genes. Default: a warning in ``problems``,
        because CRISPRa targets can be unmeasured.
    count_recovery
        Recover the integer counts of a normalised ``.X`` when exactly possible
        (:func:`~lcd_core.data.recover_counts`): the screen then is a count screen
        (``layers["counts"]``, ``obs[KEYS.SIZE_FACTOR]``, ``Screen.recovery`` says how). ``False``
        keeps it normalised. In backed mode recovery is checked on a sample of cells and reported, not
        applied.
    subset
        Keep only the cells of one context, ``"key=value"`` (or a ``{key: value}`` mapping, or several
        ``key=value`` strings): e.g. ``"cell_type=K562"`` (:func:`~lcd_core.data.find_contexts`).

    Returns
    -------
    The validated :class:`Screen`; ``data_hash`` is the sha256 of the file's bytes (computed on first
    access; it raises if the file changed since it was read).

    Raises
    ------
    ScreenFormatError
        The file is missing, empty, not HDF5/AnnData, truncated or corrupt.
    ScreenContentError
        The content breaks the data contract (see :mod:`lcd_core.data._validate`); the message names
        the problem and the fix.
    """
    p = check_file(path)
    st = p.stat()
    adata = open_h5ad(p, backed=backed)
    return _build(
        adata,
        path=str(p),
        file_stat=(st.st_size, st.st_mtime_ns),
        backed=backed,
        count_recovery=count_recovery,
        subset=subset,
        perturbation_key=perturbation_key,
        control_label=control_label,
        combo_sep=combo_sep,
        gene_key=gene_key,
        layer=layer,
        min_cells=min_cells,
        drop_small=drop_small,
        strict=strict,
    )


def screen_from_anndata(
    adata: Any,
    *,
    perturbation_key: str | None = None,
    control_label: str | None = None,
    combo_sep: str | None = None,
    gene_key: str | None = None,
    layer: str | None = None,
    min_cells: int = 1,
    drop_small: bool = False,
    strict: bool = False,
    count_recovery: bool = True,
    subset: str | Mapping[str, str] | Sequence[str] | None = None,
) -> Screen:
    """Validate an in-memory AnnData as a screen (same rules as :func:`read_screen`).

    The input is copied, never modified. ``data_hash`` is a hash of the content.
    """
    own = adata.to_memory() if getattr(adata, "isbacked", False) else adata.copy()
    return _build(
        own,
        path=None,
        file_stat=None,
        backed=False,
        count_recovery=count_recovery,
        subset=subset,
        perturbation_key=perturbation_key,
        control_label=control_label,
        combo_sep=combo_sep,
        gene_key=gene_key,
        layer=layer,
        min_cells=min_cells,
        drop_small=drop_small,
        strict=strict,
    )


def _keep_cells(adata: Any, mask: np.ndarray) -> Any:
    sub = adata[mask]
    return sub.to_memory() if getattr(adata, "isbacked", False) else sub.copy()


def _build(
    adata: Any,
    *,
    path: str | None,
    file_stat: tuple[int, int] | None,
    perturbation_key: str | None,
    control_label: str | None,
    combo_sep: str | None,
    gene_key: str | None,
    layer: str | None,
    min_cells: int,
    drop_small: bool,
    strict: bool,
    backed: bool,
    count_recovery: bool,
    subset: Any,
) -> Screen:
    problems: list[str] = []
    if adata.n_obs == 0 or adata.n_vars == 0:
        raise ScreenContentError(f"the screen has {adata.n_obs} cells and {adata.n_vars} genes; nothing to load")
    chosen: dict[str, str] | None = None
    if subset:
        keep, chosen = subset_mask(adata.obs, subset)
        if not keep.all():
            adata = _keep_cells(adata, keep)

    # Genes: unique symbols as var_names
    names, used = resolve_gene_names(adata.var, adata.var_names, gene_key)
    check_unique_genes(names, f"var[{used!r}]" if used else "var_names")
    if used is not None:
        adata.var["var_names" + ORIGINAL_SUFFIX] = adata.var_names.astype(str)
        adata.var_names = names

    # Labels: detect the convention, translate to ours, keep the file's column
    conv = detect_convention(
        adata.obs, perturbation_key=perturbation_key, control_label=control_label, combo_sep=combo_sep
    )
    raw = adata.obs[conv.key]
    labels = canonical_labels(raw, conv, adata.var_names)
    if conv.key == KEYS.PERT and not labels.astype(object).equals(raw.astype(object)):
        adata.obs[KEYS.PERT + ORIGINAL_SUFFIX] = raw.values
    elif conv.key != KEYS.PERT and KEYS.PERT in adata.obs:  # an unrelated column of that name: keep it
        adata.obs[KEYS.PERT + ORIGINAL_SUFFIX] = adata.obs[KEYS.PERT].values
    adata.obs[KEYS.PERT] = labels.values
    unlabelled = np.asarray(labels.isna())
    if unlabelled.any():
        problems.append(f"dropped {int(unlabelled.sum())} cell(s) without a label in obs[{conv.key!r}]")
        adata = _keep_cells(adata, ~unlabelled)

    # Values: find raw counts, refuse NaN / inf / negatives
    if layer is not None:
        if layer != "X" and layer not in adata.layers:
            raise ScreenContentError(
                f"layer {layer!r} not found; layers are {list(adata.layers.keys()) or 'none'}; "
                "pass one of them, or layer='X'"
            )
        where, claimed = layer, True
    elif KEYS.COUNTS in adata.layers:
        where, claimed = KEYS.COUNTS, True
    else:
        where, claimed = "X", False
    if where == "X" and adata.X is None:
        raise ScreenContentError("the file has no .X and no counts layer; store expression in .X or layers['counts']")
    if where != "X" and sp.issparse(adata.layers[where]) and adata.layers[where].format != "csr":
        adata.layers[where] = adata.layers[where].tocsr()  # row (cell) slicing is what every reader does
    if where == "X" and sp.issparse(adata.X) and adata.X.format != "csr":
        adata.X = adata.X.tocsr()
    m = adata.X if where == "X" else adata.layers[where]
    label = ".X" if where == "X" else f"layers[{where!r}]"
    # only an explicit declaration admits negative values (simulated latent screens); never a guess
    latent_values = not claimed and _declared_not_counts(adata.uns)
    stats = check_values(m, where=label, claimed_counts=claimed, genes=adata.var_names, cells=adata.obs_names,
                         allow_negative=latent_values)
    counts_where: str | None = where
    normalised = not claimed and not stats.is_integer
    if normalised:
        counts_where = None

    # Conditions: drop or refuse those below min_cells
    n_cells = adata.obs[KEYS.PERT].value_counts()
    n_cells = n_cells[n_cells > 0]
    drop, notes = check_min_cells(n_cells, min_cells=min_cells, drop_small=drop_small)
    problems += notes
    if drop:
        adata = _keep_cells(adata, ~adata.obs[KEYS.PERT].isin(drop).to_numpy())
        m = adata.X if where == "X" else adata.layers[where]
        stats = value_stats(m)
    adata.obs[KEYS.PERT] = adata.obs[KEYS.PERT].astype(str).astype("category")

    # Normalised values: recover the counts when exactly possible, else say why not
    recovery: CountRecovery | None = None
    if normalised and not latent_values:
        recovery, counts = _try_recovery(adata, stats, enabled=count_recovery, backed=backed)
        if counts is not None:
            adata.layers[KEYS.COUNTS] = counts
            adata.obs[KEYS.SIZE_FACTOR] = recovery.size_factors
            counts_where, stats = KEYS.COUNTS, value_stats(counts)
        elif not recovery.recovered:
            problems.append(_normalised_problem(stats, recovery.reason))
    elif normalised:
        problems.append(_normalised_problem(stats, "the file declares its values not to be counts"))

    problems += check_targets(list(adata.obs[KEYS.PERT].cat.categories), adata.var_names, strict=strict)
    problems += [c.problem() for c in find_contexts(adata.obs)]
    return Screen(
        adata,
        path=path,
        convention=conv.name,
        counts_where=counts_where,
        stats=stats,
        problems=problems,
        file_stat=file_stat,
        recovery=recovery,
        subset=chosen,
    )


def _normalised_problem(stats: Any, why: str) -> str:
    kind = "look log-normalised" if stats.looks_log_normalised else "are not integer counts"
    return (
        f"values in .X {kind} (max {stats.vmax:.3g}) and there is no counts layer; counts not recovered ({why}): "
        "read as normalised expression, never as counts; the ZIP measurement model is unavailable: train "
        "in the no-measurement-model mode (stage 2 on the normalised values)"
    )


def _try_recovery(adata: Any, stats: Any, *, enabled: bool, backed: bool) -> tuple[CountRecovery, Any]:
    """(recovery, counts to store or None). Backed: checked on a sample of cells, reported, not applied."""
    if not enabled:
        return CountRecovery(False, reason="count recovery turned off (--no-count-recovery)"), None
    if not backed:
        return recover_counts(adata.X, adata.obs, vmax=stats.vmax)
    n = adata.n_obs
    if n <= BACKED_SAMPLE_CELLS:
        rows = np.arange(n)
    else:  # ten contiguous blocks spread over the file: cheap to read from disk, not one condition only
        block = BACKED_SAMPLE_CELLS // 10
        starts = np.linspace(0, n - block, 10).astype(int)
        rows = np.unique(np.concatenate([np.arange(s, s + block) for s in starts]))
    m = adata.X[rows] if len(rows) < n else adata.X[:]
    rec, _ = recover_counts(m, adata.obs.iloc[rows], vmax=stats.vmax)
    rec.size_factors = None
    return rec, None


def _declared_not_counts(uns: Any) -> bool:
    flag = uns.get(KEYS.IS_COUNTS, None)
    return flag is not None and not bool(np.asarray(flag).item())


def write_screen(adata_or_screen: Any, path: str | os.PathLike, *, convention: str = "lcd") -> Path:
    """Write a screen as ``.h5ad`` with labels in one of the three conventions.

    Parameters
    ----------
    adata_or_screen
        A :class:`Screen`, or an AnnData (validated with :func:`screen_from_anndata` first).
    path
        Output file; written to a temporary file beside it, then renamed, so a crash never leaves a
        half-written screen.
    convention
        ``"lcd"`` (``obs["perturbation"]``: ``ctrl``, ``A``, ``A+B``), ``"gears"``
        (``obs["condition"]``: ``ctrl``, ``A+ctrl``, ``A+B``) or ``"scperturb"``
        (``obs["perturbation"]``: ``control``, ``A_B``).

    Returns
    -------
    The path written. Counts, var, uns (truth, split) and other obs columns are kept as they are.
    """
    if convention not in CONVENTIONS:
        raise ConfigError(f"unknown convention {convention!r}; use one of {list(CONVENTIONS)}")
    screen = adata_or_screen if isinstance(adata_or_screen, Screen) else screen_from_anndata(adata_or_screen)
    out = screen.adata.to_memory() if getattr(screen.adata, "isbacked", False) else screen.adata.copy()
    canonical = out.obs[KEYS.PERT].astype(str)
    spelled = canonical.map({c: to_convention(c, convention) for c in canonical.unique()})
    out.obs = out.obs.drop(columns=[c for c in (KEYS.PERT, KEYS.PERT + ORIGINAL_SUFFIX) if c in out.obs])
    column = "condition" if convention == "gears" else KEYS.PERT
    out.obs[column] = spelled.astype("category").values
    target = Path(path).expanduser()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".h5ad.tmp", dir=target.parent)
    os.close(fd)
    try:
        out.write_h5ad(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
