"""Exception types. Every error a user can cause is an ``LCDError``: the CLI prints its message on one
line and exits non-zero, the app shows it in a box; anything else is a bug and keeps its traceback."""

from __future__ import annotations


class LCDError(Exception):
    """Base class of all errors caused by input, configuration or environment, never by a bug."""


class ScreenFormatError(LCDError, ValueError):
    """The file is not a readable h5ad screen (empty, truncated, corrupt, not HDF5)."""


class ScreenContentError(LCDError, ValueError):
    """The h5ad opened but its content breaks the data contract (missing column, no control cells,
    non-count values, NaN, duplicated genes, ...)."""


class RunError(LCDError, RuntimeError):
    """A run directory is missing, incomplete, corrupt or from an incompatible version."""


class ConfigError(LCDError, ValueError):
    """A configuration value or command-line argument is invalid."""


class BackendError(LCDError, RuntimeError):
    """A backend could not run the work (cluster, resources, remote failure)."""


class BackendUnavailable(BackendError):
    """The backend cannot be reached (wrong or dead address, missing package)."""


class BackendResourceError(BackendError):
    """The cluster lacks the resources the job asks for (a GPU, CPUs)."""


class JobCancelled(BackendError):
    """The job was cancelled (``cancel()`` or Ctrl-C); no run that looks complete was left behind."""
