"""The background job runner: long work (sampling, CLIPR, UMAP, evaluation) in worker threads shared by
all sessions, keyed by what it computes.

Workers never call ``st.*``. When the interpreter exits (also after the server's SIGINT/SIGTERM, which
Streamlit turns into a normal exit) :func:`stop_jobs` stops the workers first: a thread still inside
torch while the C++ runtime is torn down aborts the process ("terminate called without an active
exception", status 134).
"""

from __future__ import annotations

import atexit
import ctypes
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

import streamlit as st

from lcd_core import LCDError

from .widgets import show_error


@dataclass
class Job:
    key: tuple
    label: str
    started: float = field(default_factory=time.time)
    finished: float | None = None
    result: Any = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)

    @property
    def ok(self) -> bool:
        return self.done.is_set() and self.error is None

    def wait(self, timeout: float | None) -> bool:
        return self.done.wait(timeout)

    def get(self) -> Any:
        """The result, waiting for it as long as it takes (the job's error raised here instead)."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


class _Shutdown(BaseException):
    """Raised inside a job's thread when the interpreter exits (a BaseException, so that no ``except
    Exception`` of the engine swallows it)."""


#: set once the interpreter is exiting: queued jobs do not start, running ones are stopped
_STOPPING = threading.Event()
#: the job threads ever started in this process (finished ones are dropped as they end)
_WORKERS: set[threading.Thread] = set()
_WORKERS_LOCK = threading.Lock()


def stop_jobs(timeout: float = 30.0) -> list[str]:
    """Stop the background job threads and wait for them; run at interpreter exit.

    Job code is the engine's (torch, numpy): it cannot be asked to stop, so each worker gets a
    :class:`_Shutdown` exception raised asynchronously, which Python delivers at the worker's next
    bytecode, i.e. as soon as the current torch / numpy call returns (sent again until the thread ends,
    in case it lands where it is caught). Queued jobs see :data:`_STOPPING` and never start.

    Returns
    -------
    Names of the threads still alive after ``timeout`` seconds (a single C call that long).
    """
    _STOPPING.set()
    me = threading.current_thread()
    deadline = time.monotonic() + timeout
    while True:
        with _WORKERS_LOCK:
            alive = [t for t in _WORKERS if t.is_alive() and t is not me]
        if not alive or time.monotonic() >= deadline:
            return [t.name for t in alive]
        for t in alive:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(t.ident), ctypes.py_object(_Shutdown))
        for t in alive:
            t.join(min(0.5, max(0.0, deadline - time.monotonic())))


atexit.register(stop_jobs)


class Jobs:
    """Background work shared by all sessions, keyed by what it computes (so two sessions asking the same
    question share one job, and different questions never see each other's results). Workers are daemon
    threads that never call ``st.*``; :func:`stop_jobs` stops them when the interpreter exits."""

    def __init__(self, max_results: int = 64):
        self._lock = threading.Lock()
        self._jobs: OrderedDict[tuple, Job] = OrderedDict()
        self._max = max_results

    def submit(self, key: tuple, fn: Callable[[], Any], label: str = "", *, after: Job | None = None) -> Job:
        """Start ``fn`` in a daemon thread unless a job under ``key`` exists (a failed one is retried only
        for unexpected errors). ``after``: a job this one waits for before it starts, so that work queued
        behind what the page shows first does not take the CPU from it."""
        with self._lock:
            job = self._jobs.get(key)
            if job is not None and not (job.done.is_set() and job.error is not None and not isinstance(job.error, LCDError)):
                self._jobs.move_to_end(key)
                return job
            job = Job(key=key, label=label)
            self._jobs[key] = job
            while len(self._jobs) > self._max:
                old_key, old = next(iter(self._jobs.items()))
                if not old.done.is_set():
                    break
                self._jobs.pop(old_key)

        def work():
            try:
                # waits in slices: an exception raised asynchronously (stop_jobs) is not seen inside a wait
                while after is not None and not after.wait(0.2):
                    if _STOPPING.is_set():
                        raise _Shutdown
                if _STOPPING.is_set():
                    raise _Shutdown
                job.result = fn()
            except BaseException as e:  # noqa: BLE001 - reported to the page, never raised in the worker
                job.error = e
            finally:
                job.finished = time.time()
                job.done.set()
                with _WORKERS_LOCK:
                    _WORKERS.discard(threading.current_thread())

        thread = threading.Thread(target=work, name=f"lcd-job-{label}", daemon=True)
        with _WORKERS_LOCK:
            _WORKERS.add(thread)
        thread.start()
        return job

    def get(self, key: tuple) -> Job | None:
        with self._lock:
            return self._jobs.get(key)

    def keys(self) -> list[tuple]:
        with self._lock:
            return list(self._jobs)

    def running(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if not j.done.is_set()]


@st.cache_resource
def _table(store: str) -> Jobs:
    return Jobs(max_results=64 if store == "predictions" else 32)


def jobs(store: str = "predictions") -> Jobs:
    """The job table: ``"predictions"`` (many small results, least recently used dropped first) or
    ``"resources"`` (reference embeddings, CLIPR, evaluations: few, expensive, kept)."""
    # always called with the name: st.cache_resource keys ``f()`` and ``f("predictions")`` apart, and two
    # tables for one store sampled every prefetched label twice (the Home warm-up's cells were never found)
    return _table(store)


def run_job(key: tuple, fn: Callable[[], Any], *, label: str, wait: float = 2.0, what: str = "",
            store: str = "predictions") -> Any | None:
    """Submit (or find) a job and wait up to ``wait`` s; return its result, or ``None`` while it runs
    (a polling fragment then reruns the page when it is done). Errors are shown and give ``None``."""
    job = jobs(store).submit(key, fn, label=label)
    if not job.wait(wait):
        st.info(f"⏳ {what or label}: working in the background (started {time.time() - job.started:.0f} s ago); "
                "this page updates by itself.")
        _poll(key, store)
        return None
    if job.error is not None:
        show_error(job.error, what or label)
        return None
    return job.result


def _poll(key: tuple, store: str) -> None:
    @st.fragment(run_every=1.0)
    def poll():
        job = jobs(store).get(key)
        if job is None or job.done.is_set():
            st.rerun(scope="app")

    poll()
