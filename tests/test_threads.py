"""Threads: small factorisations run on one BLAS thread, ``--threads`` sets BLAS and faiss for a command."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from lplr_index import LPLRIndex
from lplr_index._threads import limit_threads, one_blas_thread, shared_one_blas_thread
from lplr_index.cli import DEFAULT_THREADS, build_parser


def blas_threads(process_wide_only: bool = False) -> set[int]:
    """Thread counts of the loaded BLAS libraries; ``process_wide_only``: those whose setting is
    process-wide (pthreads builds such as numpy's; an OpenMP build's count is per thread)."""
    return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"
            and not (process_wide_only and lib.get("threading_layer") == "openmp")}


def test_one_blas_thread_limits_and_restores():
    with threadpool_limits(limits=2, user_api="blas"):
        assert blas_threads() == {2}
        with one_blas_thread():
            assert blas_threads() == {1}
        assert blas_threads() == {2}


def test_small_factorisations_of_a_build_and_a_load_run_on_one_thread(monkeypatch, tmp_path):
    """The QRs of the basis and rotations and the eigh of the covariance see one BLAS thread
    even when the caller allows two (3.96 s against 0.025 s for a 384 x 384 QR on a busy machine)."""
    seen = []
    for name in ("qr", "eigh"):
        real = getattr(np.linalg, name)

        def spy(*a, _real=real, _name=name, **kw):
            seen.append((_name, blas_threads()))
            return _real(*a, **kw)

        monkeypatch.setattr(np.linalg, name, spy)
    X = np.random.default_rng(0).standard_normal((3000, 24)).astype(np.float32) * 0.8 ** np.arange(24)
    with threadpool_limits(limits=2, user_api="blas"):
        index = LPLRIndex(24, bits_per_coordinate=2).build(X)
        index.save(tmp_path / "a.lplr")
        LPLRIndex.load(tmp_path / "a.lplr").search(X[:3], 2)
    assert {"qr", "eigh"} <= {name for name, _ in seen}
    assert all(threads == {1} for _, threads in seen), seen


@pytest.mark.parametrize("argv, expected", [
    (["search", "a.lplr", "q.npy"], DEFAULT_THREADS),
    (["--threads", "2", "search", "a.lplr", "q.npy"], 2),
    (["search", "a.lplr", "q.npy", "--threads", "3"], 3),
    (["--threads", "2", "build", "x.npy", "-o", "a.lplr", "--threads", "4"], 4),
])
def test_threads_option_before_or_after_the_command(argv, expected):
    assert build_parser().parse_args(argv).threads == expected


def test_limit_threads_sets_and_restores_blas_and_faiss():
    code = ("import numpy, os; from lplr_index._threads import limit_threads\n"
            "import faiss\n"
            "from threadpoolctl import threadpool_info\n"
            "def blas(): return sorted({l['num_threads'] for l in threadpool_info() if l['user_api'] == 'blas'})\n"
            "with limit_threads(2):\n"
            "    print(blas(), faiss.omp_get_max_threads())\n"
            "print(blas(), faiss.omp_get_max_threads(), os.environ['OPENBLAS_NUM_THREADS'])")
    env = {"PATH": "/usr/bin:/bin", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    # numpy's and faiss's OpenBLAS (faiss is loaded with lplr_index) and faiss's OpenMP threads,
    # all restored afterwards, and the environment
    assert out.stdout.split() == ["[2]", "2", "[1]", "1", "1"]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_limit_threads_rejects_bad_counts(bad):
    with pytest.raises(ValueError, match="threads must be a positive integer"), limit_threads(bad):
        pass


def test_blocks_in_several_threads_leave_the_setting_as_it_was():
    """Small factorisations in reader threads (first searches after a load) and in the main
    thread at once: afterwards the process's BLAS setting is what it was."""
    import threading

    go = threading.Event()

    def worker():
        go.wait(5)
        for _ in range(20):
            with one_blas_thread():
                np.linalg.qr(np.eye(8))

    with threadpool_limits(limits=2, user_api="blas"):
        threads = [threading.Thread(target=worker) for _ in range(3)]
        for t in threads:
            t.start()
        go.set()
        for _ in range(20):
            with one_blas_thread():
                np.linalg.qr(np.eye(8))
        for t in threads:
            t.join(10)
        assert blas_threads(True) == {2}


def test_shared_one_blas_thread_nests_and_is_the_main_threads():
    """The search's one-thread block: one thread inside the main thread's blocks, the setting back
    once its last block ends; other threads' blocks change nothing (numpy's OpenBLAS ignores a
    count set from them), so however blocks of several threads overlap, the setting comes back."""
    import threading

    with threadpool_limits(limits=2, user_api="blas"):
        with shared_one_blas_thread():
            assert blas_threads(True) == {1}
            with shared_one_blas_thread():
                assert blas_threads(True) == {1}
            assert blas_threads(True) == {1}  # the outer block still holds it
        assert blas_threads(True) == {2}
        seen = {}

        def alone():
            with shared_one_blas_thread():
                seen["inside"] = shared_one_blas_thread._inside

        t = threading.Thread(target=alone)
        t.start()
        t.join(5)
        assert seen["inside"] == 0 and blas_threads(True) == {2}  # another thread's block set nothing

        def worker():
            for _ in range(50):
                with shared_one_blas_thread():
                    np.ones((4, 4)) @ np.ones((4, 4))

        for _ in range(10):  # blocks overlapping in five threads, the main one among them
            threads = [threading.Thread(target=worker) for _ in range(4)]
            for t in threads:
                t.start()
            worker()
            for t in threads:
                t.join(10)
            assert shared_one_blas_thread._inside == 0 and blas_threads(True) == {2}
