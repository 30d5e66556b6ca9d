"""Threads: searches read one committed snapshot while a writer mutates the index.

The stress test runs reader threads (every mode, filters, k on both sides of fast-scan's
kernel switch, ``n_threads``) against one writer (add / remove / update / compact) and
checks that no call failed and that every result is the answer of one snapshot committed
while the search ran: recomputed on that snapshot alone, it is the same, bit for bit.
"""

from __future__ import annotations

import copy
import os
import threading
import time

import faiss
import numpy as np
import pytest

from lplr_index import LPLRIndex

pytestmark = pytest.mark.usefixtures("blas_single_thread")

DIM = 32
#: writer rounds of the stress test: add 300, remove 120, update 60, and every 4th round compact
ROUNDS = 120


def data(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, DIM)) * (0.93 ** np.arange(DIM))).astype(np.float32)


def on_snapshot(index: LPLRIndex, snap) -> LPLRIndex:
    """An index that serves ``snap`` alone (its settings, this snapshot, a lock of its own)."""
    frozen = copy.copy(index)
    frozen._state = snap
    return frozen


class History:
    """The snapshots the writer committed, in order (appended right after each commit)."""

    def __init__(self, index: LPLRIndex):
        self.index, self.snaps = index, [index._state]

    def committed(self) -> None:
        assert self.index._state is not self.snaps[-1]
        self.snaps.append(self.index._state)

    def window(self, start: int, end: int) -> range:
        # the writer swaps a snapshot in, then records it: at most one more than recorded
        return range(start, min(end + 2, len(self.snaps)))


def writer(index: LPLRIndex, history: History, rounds: int, seed: int, stop: threading.Event, errors: list) -> None:
    rng = np.random.default_rng(seed)
    next_id = 10**6
    try:
        for r in range(rounds):
            if stop.is_set():
                return
            index.add(data(300, seed * 1000 + r), ids=np.arange(next_id, next_id + 300))
            next_id += 300
            history.committed()
            live = index.live_ids
            index.remove(rng.choice(live, 120, replace=False))
            history.committed()
            live = index.live_ids
            index.update(rng.choice(live, 60, replace=False), data(60, seed * 2000 + r))
            history.committed()
            if r % 4 == 3:
                index.compact()
                history.committed()
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(("writer", repr(exc)))
    finally:
        stop.set()


CALLS = [  # (mode, k, filter kind, n_threads)
    ("auto", 10, None, None), ("auto", 3, None, 1), ("auto", 10, "most", None), ("auto", 5, "half", 2),
    ("auto", 10, "few", None), ("factored", 10, None, None), ("factored", 4, "half", None),
    ("reconstructed", 10, "most", None), ("auto", 1, "callable", None), ("auto", 40, None, 1),
]


def reader(index: LPLRIndex, history: History, seed: int, stop: threading.Event, log: list, errors: list) -> None:
    rng = np.random.default_rng(seed)
    base = data(200, 7)
    while not stop.is_set():
        mode, k, kind, threads = CALLS[int(rng.integers(len(CALLS)))]
        Q = base[rng.choice(len(base), int(rng.integers(1, 40)))] + 0.05
        start = len(history.snaps) - 1
        snap = history.snaps[start]
        allowed = None
        if kind == "callable":
            allowed = lambda i, m=int(rng.integers(2, 5)): i % m != 0  # noqa: E731
        elif kind is not None:
            share = {"most": 0.95, "half": 0.5, "few": 0.05}[kind]
            ids = snap.row_ids
            allowed = ids[rng.random(len(ids)) < share]
        try:
            got = index.search(Q, k, mode=mode, allowed=allowed, n_threads=threads)
        except Exception as exc:  # noqa: BLE001 - reported by the test
            errors.append(("search", mode, k, kind, repr(exc)))
            continue
        log.append((start, len(history.snaps) - 1, Q, k, mode, allowed, threads, got))


def test_searches_during_mutations_answer_one_committed_snapshot():
    index = LPLRIndex(DIM, bits_per_coordinate=1).build(data(6000, 0), ids=np.arange(6000) * 3)
    index.search(data(5, 1), 10)  # the fast-scan structures exist: add extends copies of them
    history, stop, errors, logs = History(index), threading.Event(), [], [[] for _ in range(4)]
    threads = [threading.Thread(target=reader, args=(index, history, 100 + i, stop, logs[i], errors))
               for i in range(4)]
    threads.append(threading.Thread(target=writer, args=(index, history, ROUNDS, 11, stop, errors)))
    began = time.perf_counter()
    for t in threads:
        t.start()
    stop.wait(60)  # the writer's rounds take a few seconds; a guard against a hang
    stop.set()
    for t in threads:
        t.join(60)
    seconds = time.perf_counter() - began
    searches = [entry for log in logs for entry in log]
    print(f"{len(searches)} searches by 4 readers during {len(history.snaps) - 1} commits in {seconds:.1f} s, "
          f"{len(errors)} errors")
    assert not errors, errors[:5]
    assert len(history.snaps) == 1 + ROUNDS * 3 + ROUNDS // 4 and len(searches) > 500  # every commit recorded
    assert len({entry[4] for entry in searches}) == 3  # every mode ran

    # every result is what one snapshot committed during the search answers, bit for bit
    frozen = {}
    for start, end, Q, k, mode, allowed, threads, got in searches:
        window = history.window(start, end)
        # no id removed before the search began: tombstoned then, or dropped by a compaction
        # before (ids are never reused: an id above the stored ones was added since)
        snap = history.snaps[start]
        stored = snap.row_ids
        dead = stored[snap.removed] if snap.removed is not None else stored[:0]
        I = got.indices
        bad = np.isin(I, dead) | ((I >= 0) & (I <= stored.max()) & ~np.isin(I, stored))
        assert not bad.any(), f"a search returned ids removed before it began: {I[bad][:5]}"
        for j in window:
            if j not in frozen:
                frozen[j] = on_snapshot(index, history.snaps[j])
            # the same call (n_threads too: without it a single query takes the lean path, whose
            # distances may differ from the general path's in the last bit)
            want = frozen[j].search(Q, k, mode=mode, allowed=allowed, n_threads=threads)
            if np.array_equal(want.indices, got.indices) and np.array_equal(want.distances, got.distances):
                break
        else:
            raise AssertionError(f"a {mode} search (k={k}) answers none of the snapshots {list(window)}")


def test_mutations_run_one_at_a_time_and_each_is_whole():
    index = LPLRIndex(DIM, bits_per_coordinate=1).build(data(2000, 0))
    index.search(data(3, 1), 5)
    blocks = [(data(100, 10 + i), np.arange(10**5 * (i + 1), 10**5 * (i + 1) + 100)) for i in range(8)]

    def add(X, ids):
        index.add(X, ids=ids)

    threads = [threading.Thread(target=add, args=b) for b in blocks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(index) == 2000 + 800  # no add lost
    fresh = LPLRIndex.from_bytes(index.to_bytes())
    Q = data(20, 3)
    for a, b in zip(index.search(Q, 10), fresh.search(Q, 10)):  # the extended search structures
        np.testing.assert_array_equal(a, b)
    for X, ids in blocks:  # every vector got its own id
        np.testing.assert_array_equal(index.reconstruct(ids), fresh.reconstruct(ids))

    def rows():  # an input whose iteration mutates the index it is added to
        index.remove([0])
        yield data(5, 4)

    with pytest.raises(RuntimeError, match="another mutation of this index runs on the same thread"):
        index.add(rows())
    assert len(index) == 2800 and index.n_removed == 0  # nothing changed


def test_each_snapshot_builds_its_search_structures_once():
    from lplr_index.search import fastscan

    # loaded: nothing built yet (a build leaves the fast-scan structure it measured its depth with)
    index = LPLRIndex.load(LPLRIndex(DIM, bits_per_coordinate=1, metric="cosine").build(data(3000, 0)).to_bytes())
    made, real = [], fastscan.FastScanScorer.__init__

    def counting(self, view):
        made.append(view)
        time.sleep(0.05)  # a slow build: the racing readers wait for this one
        real(self, view)

    fastscan.FastScanScorer.__init__ = counting
    try:
        barrier = threading.Barrier(6)
        results = []

        def search():
            barrier.wait()
            results.append(index.search(data(4, 2), 3))

        threads = [threading.Thread(target=search) for _ in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        fastscan.FastScanScorer.__init__ = real
    assert len(made) == 1 and len(results) == 6
    for r in results[1:]:
        np.testing.assert_array_equal(r.indices, results[0].indices)
    snap = index._state
    assert snap.norms2() is snap.norms2() and not snap.norms2().flags.writeable
    index.remove([1])  # the codes do not change: the structures are shared
    assert index._state.built("fastscan") is snap.built("fastscan")
    index.add(data(10, 5))  # extended on a copy: the last snapshot's scorer is left as it was
    new = index._state.built("fastscan")
    assert new is not snap.built("fastscan") and new.ntotal == 3010 and snap.built("fastscan").ntotal == 3000
    assert new.index.ntotal == 3010 and snap.built("fastscan").index.ntotal == 3000


def test_n_threads_does_not_change_another_threads_setting():
    index = LPLRIndex(DIM, bits_per_coordinate=1).build(data(3000, 0))
    mine = faiss.omp_get_max_threads()
    stop, seen = threading.Event(), set()

    def searching():
        while not stop.is_set():
            index.search(data(50, 1), 10, n_threads=mine + 1)

    t = threading.Thread(target=searching)
    t.start()
    try:
        for _ in range(2000):
            seen.add(faiss.omp_get_max_threads())
    finally:
        stop.set()
        t.join()
    assert seen == {mine}
    from lplr_index import _threads

    assert _threads._OMP_PER_THREAD == [True]  # checked once, at the first n_threads


def test_n_threads_takes_a_lock_where_the_setting_is_process_wide(monkeypatch):
    # a runtime keeping omp_set_num_threads process-wide: calls that set it run one at a time
    from lplr_index import _threads
    from lplr_index.search import router

    index = LPLRIndex(DIM, bits_per_coordinate=1).build(data(2000, 0))
    monkeypatch.setattr(_threads, "_OMP_PER_THREAD", [False])
    held, real = [], router.search_fastscan

    def recording(*args):
        held.append(_threads._OMP_LOCK.locked())
        return real(*args)

    monkeypatch.setattr(router, "search_fastscan", recording)
    index.search(data(3, 1), 5, n_threads=1)
    index.search(data(3, 1), 5)
    assert held == [True, False] and not _threads._OMP_LOCK.locked()


def test_snapshots_and_indexes_pickle_without_their_locks_and_search_structures():
    import pickle

    index = LPLRIndex(DIM, bits_per_coordinate=1).build(data(2000, 0))
    Q = data(5, 1)
    want = index.search(Q, 5)  # builds faiss's structures, which do not pickle
    back = pickle.loads(pickle.dumps(index))
    assert back._state.built("fastscan") is None
    for a, b in zip(back.search(Q, 5), want):
        np.testing.assert_array_equal(a, b)
    back.add(data(10, 2))  # its own writer lock
    assert len(back) == 2010 and len(index) == 2000


def child_report(pid: int, read: int, write: int) -> int:
    """The byte a forked child wrote to the pipe before exiting; fails the test if it hangs."""
    os.close(write)
    deadline = time.time() + 60
    while os.waitpid(pid, os.WNOHANG) == (0, 0):
        if time.time() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child hung")
        time.sleep(0.05)
    got = os.read(read, 1)
    os.close(read)
    return got[0]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_searches_and_mutates():
    index = LPLRIndex(DIM, bits_per_coordinate=1).build(data(20_000, 0))
    Q = data(300, 1)
    old = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)  # the parent's OpenMP threads: a GNU OpenMP child would wait for them
    try:
        want = index.search(Q, 10)
    finally:
        faiss.omp_set_num_threads(old)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: search, add, search, report
        ok = 0
        try:
            ok = int(np.array_equal(index.search(Q, 10).indices, want.indices))
            index.add(data(10, 2))
            ok += int(len(index) == 20_010 and index.search(Q, 10).indices.shape == (300, 10))
        finally:
            os.write(write, bytes([ok]))
            os._exit(0)
    assert child_report(pid, read, write) == 2
    assert len(index) == 20_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_gets_new_locks_for_the_search_structures():
    # a lock another thread of the parent held at the fork stays held in the child: the
    # fast-scan scorer's lock and its projection's (faiss's copy is made under it at the first
    # large batch) are made anew there
    from lplr_index.search import fastscan

    index = LPLRIndex(DIM, bits_per_coordinate=1).build(data(5_000, 0))
    index.search(data(2, 1), 10)
    scorer = index._fastscan()
    Q = data(1 + fastscan.SMALL_PRODUCT // scorer.project.matrix.size, 3)  # large: faiss projects it
    assert scorer.project._lt is None
    held = [scorer._lock, scorer.project._lock]
    for lock in held:
        lock.acquire()  # as a thread of the parent would, at the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        ok = 0
        try:
            ok = int(index.search(Q, 10).indices.shape == (len(Q), 10))
        finally:
            os.write(write, bytes([ok]))
            os._exit(0)
    for lock in held:
        lock.release()
    assert child_report(pid, read, write) == 1
