"""The run directory that ``lcd train`` writes (PRODUCT.md, "A run directory").

Layout::

    runs/NAME/
        config.json          resolved configuration, data hash, genes, conditions, split, seed, version
        log.jsonl            one JSON object per progress report
        checkpoints/         stage1.pt, stage2.pt: resumable state (tensors + plain values only; removed on completion)
        model.safetensors    final weights
        model.json           everything else the model needs to be rebuilt (plain JSON)
        fit.json             the fit check: training conditions against their replicate ceiling (+ interval calibration)
        anchors.safetensors  the anchored prediction's factors and gaps (runs with a count model)
        ensemble.safetensors extra stage-2 networks (`lcd ensemble`, optional) and ensemble.json, their seeds
        cache/               CLIPR / module results, the reference embedding and the held-out evaluation (the
                             Benchmark page), each keyed by what made it
        COMPLETE             written last; holds the sha256 of the weights file

A run *looks complete* only when ``COMPLETE`` exists and matches the weights: a killed training leaves
checkpoints but never that file, and a later ``lcd train`` into the same folder resumes from them.
Every file is written to a temporary name and renamed (atomic on POSIX), so no reader ever sees half
a file. Weights are never unpickled: checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import RunError

#: bump when the layout or the meaning of a saved field changes; older runs are refused with a message
RUN_FORMAT_VERSION = 1

CONFIG = "config.json"
LOG = "log.jsonl"
WEIGHTS = "model.safetensors"
MODEL_META = "model.json"
COMPLETE = "COMPLETE"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see either the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default).encode())


def _json_default(o: Any) -> Any:
    # numpy scalars and arrays, Paths and tuples reach us from configs; everything else is a bug
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


class RunDir:
    """A run directory on disk. Creating the object touches nothing; methods read or write."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    # -- paths ------------------------------------------------------------------------------------
    def __truediv__(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def cache(self) -> Path:
        return self.path / "cache"

    # -- state ------------------------------------------------------------------------------------
    def is_complete(self) -> bool:
        return (self.path / COMPLETE).is_file()

    def read_config(self) -> dict:
        try:
            cfg = json.loads((self.path / CONFIG).read_text())
        except FileNotFoundError:
            raise RunError(f"{self.path} is not a run directory (no {CONFIG}); train one with 'lcd train'") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RunError(f"{self.path / CONFIG} is corrupt ({e}); retrain the run") from None
        version = cfg.get("run_format_version")
        if version != RUN_FORMAT_VERSION:
            raise RunError(
                f"{self.path} was written by lcd-explorer {cfg.get('package_version', '?')} in run format "
                f"{version}; this version ({__version__}) reads format {RUN_FORMAT_VERSION}. Retrain the run."
            )
        return cfg

    def write_config(self, cfg: dict) -> None:
        cfg = dict(cfg, run_format_version=RUN_FORMAT_VERSION, package_version=__version__)
        atomic_write_json(self.path / CONFIG, cfg)

    def log(self, record: dict) -> None:
        """Append one progress record; a torn last line (killed mid-write) is skipped by the reader."""
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / LOG, "a") as fh:
            fh.write(json.dumps(dict(record, time=time.time()), default=_json_default) + "\n")

    def read_log(self) -> list[dict]:
        out = []
        try:
            lines = (self.path / LOG).read_text().splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def recorded_weights(self) -> str | None:
        """The weights hash ``COMPLETE`` records (``None``: no such file, or not readable as one)."""
        try:
            value = json.loads((self.path / COMPLETE).read_text()).get("weights_sha256")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None

    def mark_complete(self) -> None:
        atomic_write_json(self.path / COMPLETE, {"weights_sha256": sha256_file(self.path / WEIGHTS),
                                                 "finished": time.time()})

    def trained_from(self, screen, purpose: str) -> tuple[dict, Any, list[str], dict[str, list[int]]]:
        """What this finished run was trained from, for work that re-derives its samples (its ensemble, a new
        guidance): ``(config.json, its TrainConfig, training conditions, validation cells per condition)``;
        refuses a screen other than the run's (data hash, cell subset), ``purpose`` saying what needs it."""
        from ..errors import ConfigError
        from ._presets import TrainConfig

        cfg = self.require_complete()
        if screen.data_hash != cfg.get("data_hash"):
            raise ConfigError(f"{self.path} was trained on other data (hash {str(cfg.get('data_hash'))[:12]}…, this "
                              f"screen {screen.data_hash[:12]}…): {purpose}")
        if (cfg.get("subset") or None) != (screen.subset or None):
            raise ConfigError(f"{self.path} was trained on the cells {cfg.get('subset') or 'all'} of its file, this "
                              f"screen holds {screen.subset or 'all'}: read it with the run's subset")
        conds = list(cfg["train_conditions"])
        # the run's validation cells (runs from before validation existed trained on every cell)
        cells = (cfg.get("validation") or {}).get("cells") or {}
        return cfg, TrainConfig.from_dict(cfg["config"]), conds, {c: [int(i) for i in cells.get(c, [])] for c in conds}

    def require_complete(self) -> dict:
        """Check that the run finished and its weights are the ones it finished with; return config."""
        if not self.path.exists():
            raise RunError(f"run directory {self.path} does not exist; train one with 'lcd train'")
        cfg = self.read_config()
        if not self.is_complete():
            raise RunError(
                f"run {self.path} is incomplete (training was interrupted or is still going); "
                f"resume it with 'lcd train <screen> --out {self.path}'"
            )
        try:
            expected = json.loads((self.path / COMPLETE).read_text())["weights_sha256"]
        except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
            raise RunError(f"{self.path / COMPLETE} is corrupt; retrain the run") from None
        weights = self.path / WEIGHTS
        if not weights.is_file():
            raise RunError(f"{weights} is missing; retrain the run")
        if sha256_file(weights) != expected:
            raise RunError(f"{weights} does not match the weights the run finished with (corrupt or replaced); retrain the run")
        return cfg
