"""The backend interface: where training, prediction and CLIPR run (this process, or a Ray cluster).

The CLI and the app talk to a :class:`Backend` only; the engine (:mod:`lcd_core.model`, :mod:`lcd_core.tl`)
never knows which one it runs under. A training is a :class:`Job`: it streams the progress records of
the engine (one :class:`~lcd_core.train.Progress` each), can be cancelled from any thread, and ends with a
finished run directory at ``out`` on the client, or nothing that looks complete.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._progress import Progress, ProgressFn  # noqa: F401 (re-exported)
from ..errors import BackendError, BackendResourceError, BackendUnavailable, JobCancelled, LCDError  # noqa: F401 (re-exported)

if TYPE_CHECKING:  # torch-free import of the backends
    from ..clipr import CliprOptions


class Job(ABC):
    """One submitted training. Thread-safe: one thread may ``wait`` while another calls ``cancel``.

    Attributes
    ----------
    out
        The run directory the job delivers (on the client).
    """

    def __init__(self, out: str | os.PathLike):
        self.out = Path(out)
        self._events: queue.SimpleQueue[Progress] = queue.SimpleQueue()
        self._cancel = threading.Event()
        self.last: Progress | None = None

    # what a subclass provides ------------------------------------------------------------------
    @abstractmethod
    def _step(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the work; pull remote progress into ``_events``; True when finished."""

    @abstractmethod
    def _result(self) -> Path:
        """The delivered run directory, or raise the job's error (:class:`JobCancelled` if cancelled)."""

    @abstractmethod
    def _request_cancel(self) -> None:
        """Stop the work (idempotent; must not block for long)."""

    # public -----------------------------------------------------------------------------------
    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Stop the job. The run directory is left without a ``COMPLETE`` marker (resumable when the
        backend trains in place) or untouched (when the backend ships the run back at the end)."""
        self._cancel.set()
        self._request_cancel()

    def poll(self) -> list[Progress]:
        """Progress reports since the last call (non-blocking)."""
        self._step(0.0)
        out = []
        while True:
            try:
                out.append(self._events.get_nowait())
            except queue.Empty:
                break
        if out:
            self.last = out[-1]
        return out

    def done(self) -> bool:
        return self._step(0.0)

    def wait(self, progress: ProgressFn | None = None, *, timeout: float | None = None,
             interval: float = 0.25) -> Path:
        """Block until the job ends, calling ``progress`` for each record; return the run directory.

        Ctrl-C (KeyboardInterrupt) while waiting cancels the job before re-raising.
        """
        t0 = time.monotonic()
        try:
            while True:
                finished = self._step(interval)
                for event in self.poll():
                    if progress is not None:
                        progress(event)
                if finished:
                    return self._result()
                if timeout is not None and time.monotonic() - t0 > timeout:
                    raise TimeoutError(f"job for {self.out} still running after {timeout:.0f} s")
        except KeyboardInterrupt:
            self.cancel()
            self._drain_after_cancel()
            raise

    def _drain_after_cancel(self, limit: float = 30.0) -> None:
        """After a cancel, wait (bounded) until the work really stopped, so nothing keeps writing."""
        t0 = time.monotonic()
        while time.monotonic() - t0 < limit:
            if self._step(0.25):
                return


class Backend(ABC):
    """Where the work runs. Obtain one with :func:`lcd_core.backends.get_backend`.

    Every method takes and returns plain things: paths, labels, NumPy arrays, the engine's result
    objects; a backend is a context manager (``close`` releases what it started).
    """

    name: str = "?"

    # training ------------------------------------------------------------------------------------
    @abstractmethod
    def submit_train(self, screen: str | os.PathLike, out: str | os.PathLike, *, config, device: str = "auto",
                     heldout: list[str] | None = None, fold: int | None = None,
                     read_kwargs: dict | None = None, max_seconds_per_stage: float | None = None) -> Job:
        """Start training ``screen`` (an .h5ad path) into the run directory ``out``; return at once.

        Parameters are those of :func:`lcd_core.model.train`; ``read_kwargs`` go to
        :func:`lcd_core.data.read_screen` (``perturbation_key``, ``layer``, ...).
        """

    def train(self, screen: str | os.PathLike, out: str | os.PathLike, *, config, device: str = "auto",
              heldout: list[str] | None = None, fold: int | None = None, progress: ProgressFn | None = None,
              read_kwargs: dict | None = None, max_seconds_per_stage: float | None = None) -> Path:
        """Train and wait (Ctrl-C cancels); return the finished run directory ``out``."""
        job = self.submit_train(screen, out, config=config, device=device, heldout=heldout, fold=fold,
                                read_kwargs=read_kwargs, max_seconds_per_stage=max_seconds_per_stage)
        return job.wait(progress)

    def train_folds(self, screen: str | os.PathLike, outs: Sequence[str | os.PathLike], folds: Sequence[int], *,
                    config, device: str = "auto", progress: ProgressFn | None = None, read_kwargs: dict | None = None,
                    max_seconds_per_stage: float | None = None) -> list[Path]:
        """The k trainings of ``lcd evaluate --folds`` (fold ``folds[i]`` into ``outs[i]``); progress stages
        are prefixed ``fold{F}/``. Here one after the other; the Ray backend runs them at once."""
        runs = []
        for out, fold in zip(outs, folds):
            tag = (lambda f: (lambda p: progress(p.with_stage(f"fold{f}/{p.stage}"))))(fold) if progress else None
            runs.append(self.train(screen, out, config=config, device=device, fold=fold, progress=tag,
                                   read_kwargs=read_kwargs, max_seconds_per_stage=max_seconds_per_stage))
        return runs

    # inference -----------------------------------------------------------------------------------
    @abstractmethod
    def predict(self, run: str | os.PathLike, perturbations: Sequence[str], n_cells: int = 500, *,
                sampler: str | None = None, n_evals: int | None = None, seed: int = 0, device: str = "auto",
                anchored: bool = False, guidance: float | None = None):
        """Generated cells of each perturbation: a :class:`lcd_core.model.Prediction` (as ``LCD.predict``;
        ``anchored``: the run's anchored prediction; ``guidance``: None, the run's weight)."""

    @abstractmethod
    def clipr(self, run: str | os.PathLike, options: CliprOptions | None = None, *, device: str = "auto",
              **overrides):
        """CLIPR of a finished run, as :func:`lcd_core.clipr.get_clipr` computes it: ``options`` (default
        :data:`lcd_core.clipr.CLIPR`) with ``overrides`` by field name (``variant="paper"``, ``lam=1e-3``,
        ``seed=3``...); a :class:`lcd_core.clipr.CliprResult`. Both backends give the same result on the same
        kind of device."""

    # generic -------------------------------------------------------------------------------------
    @abstractmethod
    def map(self, fn: Callable[[Any], Any], items: Iterable[Any], *, gpus: float = 0.0) -> list:
        """``[fn(item) for item in items]``, in parallel where the backend can; order kept.

        ``fn`` must be importable by the workers (a module-level function of an installed package).
        """

    def cancel(self) -> None:
        """Cancel every job this backend started and has not finished."""
        for job in list(getattr(self, "_jobs", [])):
            job.cancel()

    def close(self) -> None:
        """Release what the backend started (a local Ray instance)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
