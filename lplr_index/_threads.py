"""Thread counts of the BLAS and OpenMP libraries: small linear algebra on one thread.

OpenBLAS's worker threads spin while they wait for work. On a machine whose cores are
busy with other processes, a small factorisation split over two threads waits for a
core the other process holds: measured on the project's 2-core machine with one core
kept busy, the QR of a 384 x 384 matrix took 3.96 s with 2 OpenBLAS threads and 0.025 s
with one (``benchmarks/bench_threads.py``). Matrices this small gain little from a
second thread even on a quiet machine, so the library runs its small factorisations
(QRs and eigen-decompositions of d x d or rank x rank matrices, pseudo-inverses of the
shared factor) on one BLAS thread, as scikit-learn does with ``threadpoolctl`` (installed
with scikit-learn, a dependency of the library), and
leaves large products (the passes over the data) to the caller's settings.

:class:`faiss_threads` is a search's ``n_threads=``: faiss's threads for one call, on the
calling thread only.

:func:`limit_threads` is the command line's ``--threads``: it sets the BLAS libraries
already loaded (numpy's, faiss's own OpenBLAS: faiss is loaded with the package), faiss's
OpenMP threads, and the environment read by libraries loaded later.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterator

__all__ = ["one_blas_thread", "shared_one_blas_thread", "one_faiss_thread", "faiss_threads", "limit_threads"]


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run the block with one thread in every loaded BLAS library, restored afterwards.

    For small factorisations only (they lose 10-100x to spinning threads on a busy
    machine and gain little from a second thread on a quiet one); costs about 1 ms.
    Measured with numpy's OpenBLAS (pthreads build): the limit takes effect when set
    from the main thread; set from another thread it changes nothing, so blocks in
    several threads cannot undo each other's settings.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


class shared_one_blas_thread:
    """:func:`one_blas_thread` cheap enough for each search (about 13 us: one threadpoolctl
    controller, made once), set from the main thread only: there the first block in sets every
    loaded BLAS library to one thread and the last one out restores what it found (blocks
    nest); in other threads a block changes nothing. (Other threads' BLAS calls while the main
    thread is inside run on one thread too.)

    Why the main thread only: numpy's OpenBLAS (a pthreads build) ignores a thread count set
    from any other thread. When blocks of several threads shared one count, the last one out
    could be another thread, whose restore was ignored, and numpy's BLAS stayed at one thread
    for good after overlapping searches (measured: 25 of 40 rounds of five threads each
    entering 50 blocks left numpy's OpenBLAS at one thread). A block in another thread would
    set nothing anyway.

    For a search's products of a few tens of millions of multiply-adds (the partitioned
    search's centroid scores, :meth:`lplr_index.search.ivf.IVFScorer._coarse`), right before
    faiss's scan: with numpy's two OpenBLAS threads, batches of 64 queries ran 0.57x (one core
    kept busy) and 0.42x (faiss on two threads) the speed of faiss's own coarse search.
    """

    _inside = 0  # the main thread's blocks open
    _limiter = None
    _controller = None

    def __enter__(self):
        self._main = threading.current_thread() is threading.main_thread()
        if self._main:
            cls = type(self)
            if cls._inside == 0:
                if cls._controller is None:
                    from threadpoolctl import ThreadpoolController

                    cls._controller = ThreadpoolController()
                cls._limiter = cls._controller.limit(limits=1, user_api="blas")
            cls._inside += 1
        return self

    def __exit__(self, *exc):
        if self._main:
            cls = type(self)
            cls._inside -= 1
            if cls._inside == 0:
                cls._limiter.restore_original_limits()
                cls._limiter = None


@contextmanager
def one_faiss_thread() -> Iterator[None]:
    """Run the block's faiss calls on one OpenMP thread, restored afterwards.

    For the build's small k-means and assignments (at most 65,536 points of a few
    dimensions): with two threads and one core busy elsewhere, a 300 x 1,280 build took
    5.9-12 s against 2.4-3.1 s with one (``benchmarks/bench_threads.py``). OpenMP's
    thread count is a per-thread setting, so other Python threads' faiss calls keep theirs.
    """
    import faiss

    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(old)


class faiss_threads:
    """Set faiss's OpenMP threads for a block on the calling thread and restore them (no-op for None).

    OpenMP keeps this setting (its ``nthreads-var``) per thread: ``omp_set_num_threads``
    changes what the calling thread's later parallel regions use, not another thread's
    (GNU OpenMP, which faiss's wheels bundle, gives a thread that never set it the
    process's initial value). So a search with ``n_threads`` never changes what a search
    running on another thread uses, and needs no lock. Whether the runtime loaded does
    keep it per thread is checked once (:func:`_omp_setting_per_thread`); where it would
    not, the calls that set it run one at a time under a process-wide lock (searches
    without ``n_threads`` then run with whatever setting is current).
    """

    def __init__(self, n: int | None):
        self.n = n
        self.locked = False

    def __enter__(self):
        if self.n is not None:
            import faiss

            if not _omp_setting_per_thread():
                _OMP_LOCK.acquire()
                self.locked = True
            self.old = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.n is not None:
            import faiss

            faiss.omp_set_num_threads(self.old)
            if self.locked:
                self.locked = False
                _OMP_LOCK.release()


#: serialises searches with ``n_threads`` where the OpenMP setting is process-wide
_OMP_LOCK = threading.Lock()
_OMP_PER_THREAD: list[bool] = []


def _omp_setting_per_thread() -> bool:
    """Whether the OpenMP runtime faiss uses keeps ``omp_set_num_threads`` per thread: a new
    thread sets another value, and this thread's must not change (checked once)."""
    if not _OMP_PER_THREAD:
        import faiss

        with _OMP_LOCK:
            if not _OMP_PER_THREAD:
                mine = faiss.omp_get_max_threads()
                probe = threading.Thread(target=faiss.omp_set_num_threads, args=(mine + 1,))
                probe.start()
                probe.join()
                after = faiss.omp_get_max_threads()
                if after != mine:  # a process-wide setting: put it back
                    faiss.omp_set_num_threads(mine)
                _OMP_PER_THREAD.append(after == mine)
    return _OMP_PER_THREAD[0]


@contextmanager
def limit_threads(n: int) -> Iterator[None]:
    """Use ``n`` threads for BLAS and OpenMP inside the block; everything restored afterwards.

    For a program's entry point (the command line's ``--threads``), not for library code:
    it changes process-wide settings. It sets the BLAS libraries already loaded (numpy's and
    faiss's own OpenBLAS), faiss's OpenMP threads, and the environment variables that
    libraries loaded inside the block read (such a library keeps ``n`` afterwards: it had no
    earlier setting to go back to).
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"threads must be a positive integer, got {n!r}")
    from threadpoolctl import threadpool_limits

    names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
    saved_env = {name: os.environ.get(name) for name in names}
    os.environ.update({name: str(n) for name in names})
    faiss = sys.modules.get("faiss")
    saved_faiss = faiss.omp_get_max_threads() if faiss is not None else None
    try:
        with threadpool_limits(limits=n):
            if faiss is not None:
                faiss.omp_set_num_threads(n)
            yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if saved_faiss is not None:
            faiss.omp_set_num_threads(saved_faiss)
