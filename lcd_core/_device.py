"""Choosing the torch device: one function, so the CLI, the app and the backends agree."""

from __future__ import annotations

import torch

from .errors import ConfigError


def resolve_device(name: str | None = "auto") -> torch.device:
    """``auto`` → CUDA if present, else Apple MPS, else CPU; an explicit device must exist.

    Raises
    ------
    ConfigError
        The named device is not available on this machine (with what is available instead).
    """
    name = (name or "auto").strip().lower()
    has_mps = bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but this machine has no usable CUDA GPU "
                              f"(torch {torch.__version__}); use --device cpu or auto")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
        return dev
    if name == "mps":
        if not has_mps:
            raise ConfigError("device 'mps' requested but Apple's MPS backend is not available here; use --device cpu or auto")
        return torch.device("mps")
    raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")
