"""numpy's and scipy's BLAS thread pools, sized so that they do not fight over the cores.

numpy and scipy each bundle their own OpenBLAS, each with one thread per core, and an OpenBLAS thread keeps
spinning for a while after a call returns. Code that alternates numpy and scipy calls (CLIPR's CG solve: a
numpy product, then a scipy Cholesky solve, and again) therefore runs with twice as many busy threads as
cores. On the 2-core reference CPU a directed CLIPR solve took 0.71 s at d = 144 with the default pools and
0.054 s with one thread each; at d = 1000, 4.0 s and 3.4 s (docs/benchmarks.md, "Edge confidence").
:func:`shared_blas` gives each pool half the cores for the heavy numerical sections of lcd_core; torch's
own threads are not touched.
"""

from __future__ import annotations

import os
from contextlib import contextmanager


def blas_threads() -> int:
    """Threads each BLAS pool gets inside :func:`shared_blas`: half the cores this process may use, at least 1."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // 2)


@contextmanager
def shared_blas():
    """Limit numpy's and scipy's BLAS pools to :func:`blas_threads` threads each while the block runs
    (~2 ms to enter: for a solve or a loop of them, not for one small product)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=blas_threads(), user_api="blas"):
        yield
