"""Where the work runs: ``local`` (this process) or ``ray`` (a Ray cluster). See docs/ray.md.

>>> from lcd_core.backends import get_backend
>>> backend = get_backend("local")                                       # doctest: +SKIP
>>> backend = get_backend("ray", address="ray://gpu-box:10001")          # doctest: +SKIP
>>> run = backend.train("screen.h5ad", "runs/x", config=get_preset("demo"), progress=bar)  # doctest: +SKIP

The Ray backend lives in :mod:`lcd_core.backends.ray`, imported only by :func:`get_backend` (Ray stays
at the edge: nothing else in the package imports it).
"""

from __future__ import annotations

from ._base import (Backend, BackendError, BackendResourceError, BackendUnavailable, Job, JobCancelled,
                    Progress, ProgressFn)
from ._detached import DetachedJob, TrainRequest, list_detached, submit_detached
from ._factory import BACKENDS, get_backend
from ._local import LocalBackend

__all__ = ["get_backend", "Backend", "Job", "LocalBackend", "BackendError", "BackendUnavailable",
           "BackendResourceError", "JobCancelled", "Progress", "ProgressFn", "BACKENDS",
           "TrainRequest", "DetachedJob", "submit_detached", "list_detached"]
