"""What travels between the Ray client and its workers (:mod:`lcd_core.backends.ray`): run directories as
tar bytes, unpacked into a temporary folder on a worker and renamed into place on the client."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..model._anchor import ANCHORS_FILE

#: files a finished run needs for LCD.load (what prediction and CLIPR ship)
_MODEL_FILES = ("config.json", "model.json", "model.safetensors", "COMPLETE", ANCHORS_FILE)  # anchors: if present


def _tar(folder: Path, names: Iterable[str] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in (names if names is not None else sorted(os.listdir(folder))):
            tar.add(folder / name, arcname=name)
    return buf.getvalue()


def _untar(blob: bytes, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r") as tar:
        tar.extractall(folder, filter="data")  # "data": no absolute paths, no escapes, no devices


def _with_run(run_ref, run_path: str | None, fn: Callable[[str], Any]):
    """Call ``fn(run directory)`` on a shipped copy (``run_ref`` bytes) or the shared path."""
    if run_path is not None:
        return fn(run_path)
    tmp = Path(tempfile.mkdtemp(prefix="lcd-ray-run-"))
    try:
        _untar(run_ref, tmp / "run")
        return fn(str(tmp / "run"))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _deliver_run(blob: bytes, out: Path, *, data_path: str) -> Path:
    """Unpack a shipped run next to ``out`` and rename it into place; a run that looks complete appears
    only with the final rename. Paths recorded by the worker (its temporary folder) become the client's."""
    from ..model._run import atomic_write_json

    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp = out.with_name(f".{out.name}.incoming-{tag}")
    try:
        _untar(blob, tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        if cfg.get("data_path") is not None:
            atomic_write_json(cfg_path, dict(cfg, data_path=data_path))
        meta_path = tmp / "model.json"
        if meta_path.exists():
            meta = json.loads(meta_path.read_text())
            if "run" in meta.get("info", {}):
                meta["info"]["run"] = str(out)
                atomic_write_json(meta_path, meta)
        if out.exists():  # an interrupted run we shipped for resuming: replace it
            old = out.with_name(f".{out.name}.replaced-{tag}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
