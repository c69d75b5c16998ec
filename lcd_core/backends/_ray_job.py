"""A training running as a Ray task (:mod:`lcd_core.backends.ray`); ``ray`` is imported inside its methods,
which run only once a :class:`~lcd_core.backends.ray.RayBackend` has connected."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import LCDError
from ._base import BackendError, Job, JobCancelled

_SOFT_CANCEL_SECONDS = 5.0


class RayJob(Job):
    """A training running as a Ray task."""

    def __init__(self, out, ref, sink, deliver: Callable[[Any], Path]):
        super().__init__(out)
        self._ref, self._sink, self._deliver = ref, sink, deliver
        self._finished = False
        self._delivered: Path | None = None
        self._lock = threading.Lock()

    def _drain(self) -> None:
        import ray

        if self._sink is None:
            return
        try:
            items = ray.get(self._sink.drain.remote(), timeout=30)
        except Exception:  # the sink died with the cluster: the task's own error says why
            return
        for item in items:
            self._events.put(item)

    def _step(self, timeout: float) -> bool:
        import ray

        with self._lock:
            if self._finished:
                return True
            ready, _ = ray.wait([self._ref], timeout=max(timeout, 0.0))
            self._drain()
            if ready:
                self._finished = True
                self._drain()
                try:
                    ray.kill(self._sink)
                except Exception:  # already gone with its node: nothing left to free
                    pass
                self._sink = None
            return self._finished

    def _result(self) -> Path:
        import ray
        from ray import exceptions as rex

        if self._delivered is not None:
            return self._delivered
        try:
            blob = ray.get(self._ref)
        except (rex.TaskCancelledError, rex.WorkerCrashedError) as e:
            if self.cancelled:
                raise JobCancelled(f"training into {self.out} was cancelled; no finished run was written") from None
            raise BackendError(f"the Ray worker training {self.out} died ({type(e).__name__}); see the Ray logs "
                               "of the cluster (out of memory?)") from None
        except rex.RayTaskError as e:
            cause = getattr(e, "cause", None)
            if self.cancelled or isinstance(cause, (KeyboardInterrupt, rex.TaskCancelledError)):
                raise JobCancelled(f"training into {self.out} was cancelled; no finished run was written") from None
            if isinstance(cause, LCDError):
                raise cause from None
            raise BackendError(f"the remote training failed: {type(cause).__name__}: {cause}") from None
        except rex.RayError as e:
            raise BackendError(f"Ray failed while training {self.out}: {type(e).__name__}: {e}") from None
        self._delivered = self._deliver(blob)
        return self._delivered

    def _request_cancel(self) -> None:
        import ray

        if self._finished:
            return
        # polite first (the task gets KeyboardInterrupt and cleans its temporary folder), then forced
        ray.cancel(self._ref, force=False, recursive=True)

        def force():
            t0 = time.monotonic()
            while time.monotonic() - t0 < _SOFT_CANCEL_SECONDS:
                if ray.wait([self._ref], timeout=0.25)[0]:
                    return
            ray.cancel(self._ref, force=True, recursive=True)

        threading.Thread(target=force, daemon=True, name="lcd-ray-cancel").start()
