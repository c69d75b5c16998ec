"""A run's reference embedding, fitted once and saved in its run directory (``cache/embedding-*.npz``).

The app's Perturb page draws predicted and observed cells on one embedding of the run's control +
training cells (:mod:`lcd_core.tl._embedding`). Fitting UMAP takes tens of seconds, so it is done when the
run is trained (or by ``lcd embed``, or the first time a run is opened without one) and saved as plain
arrays; later opens load it in milliseconds. The file name carries a hash of what made it — the screen's
data hash, the reference conditions, the fitting parameters and :data:`EMBEDDING_VERSION` — so an embedding
of other cells or of an older algorithm is never read: it is refitted.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np

from ..tl._embedding import EMBEDDING_VERSION, ReferenceEmbedding, fit_reference_embedding, reference_cells, \
    reference_conditions
from ._run import RunDir, atomic_write_bytes

#: what TrainConfig.embedding may name: the method fitted at the end of training, or none
EMBEDDING_METHODS = ("umap", "pca", "none")
#: the fitting parameters every saved embedding uses (fit_reference_embedding's defaults)
EMBEDDING_PARAMS = {"n_pcs": 30, "max_cells": 5000, "n_neighbors": 15, "min_dist": 0.3, "rng": 0}


def embedding_path(model, screen, *, method: str = "umap") -> Path | None:
    """Where the run of ``model`` keeps the embedding of ``screen``'s reference cells (``None``: the model
    has no run directory)."""
    run = model.info.get("run")
    if not run:
        return None
    key = {"version": EMBEDDING_VERSION, "method": method, "data_hash": screen.data_hash,
           "conditions": reference_conditions(screen, model.conditions), "params": EMBEDDING_PARAMS}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return RunDir(run).cache / f"embedding-{method}-{digest}.npz"


def get_embedding(model, screen, *, method: str = "umap", use_cache: bool = True) -> ReferenceEmbedding:
    """The reference embedding of ``model``'s control + training cells in ``screen``: loaded from the run
    directory when saved there for these cells, else fitted (:func:`fit_reference_embedding`) and saved.

    Parameters
    ----------
    model
        A trained :class:`~lcd_core.model.LCD` (its ``info["run"]`` names the run directory).
    screen
        The screen whose cells form the reference (normally the one the run was trained on).
    method
        ``"umap"`` or ``"pca"``.
    use_cache
        Read and write the saved embedding; ``False`` always fits and writes nothing.
    """
    path = embedding_path(model, screen, method=method) if use_cache else None
    if path is not None and path.is_file():
        emb = load_embedding(path)
        if emb is not None:
            return emb
    X, labels = reference_cells(screen, model.conditions)
    emb = fit_reference_embedding(X, labels, method=method, **EMBEDDING_PARAMS)
    if path is not None:
        save_embedding(path, emb)
    return emb


def save_embedding(path: str | Path, emb: ReferenceEmbedding) -> bool:
    """Write ``emb`` as an ``.npz`` of plain arrays (atomically); ``False`` when the run directory is not
    writable (a shipped run in a read-only install: the embedding is then fitted once per process)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **emb.to_arrays())
    try:
        atomic_write_bytes(Path(path), buf.getvalue())
    except OSError:
        return False
    return True


def load_embedding(path: str | Path) -> ReferenceEmbedding | None:
    """The embedding saved at ``path``; ``None`` when the file is unreadable or of another version
    (the caller refits)."""
    try:
        with np.load(path, allow_pickle=False) as z:  # plain arrays only: never unpickles
            emb = ReferenceEmbedding.from_arrays({k: z[k] for k in z.files})
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None
    return emb if emb.params.get("version") == EMBEDDING_VERSION else None


def write_run_embedding(model, screen, run: RunDir, method: str, report=None) -> None:
    """End of training: fit and save the run's reference embedding (``method`` ``"none"``: skip), so the
    app's first Perturb visit loads it. A failure is logged and the run still completes (the app then fits
    it when the run is first opened)."""
    if method == "none":
        return
    import time

    t0 = time.monotonic()
    if report is not None:
        report("embedding", 0, 1, {})
    try:
        emb = get_embedding(model, screen, method=method)
    except Exception as e:  # noqa: BLE001 -- hours of training must not be lost to a picture
        run.log({"event": "embedding_failed", "error": f"{type(e).__name__}: {e}"})
        return
    run.log({"event": "embedding", "method": method, "n_cells": emb.params["n_cells"],
             "seconds": round(time.monotonic() - t0, 2)})
    if report is not None:
        report("embedding", 1, 1, {})
