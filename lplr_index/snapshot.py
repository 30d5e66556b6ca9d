"""Snapshot: everything one search reads, immutable; every mutation makes the next one.

A :class:`Snapshot` holds the frozen encoder, the code store, the user ids and the
tombstones of one committed state of an :class:`~lplr_index.LPLRIndex`, and the search
structures derived from them, made for that snapshot only: the backends' view of the
codes, the rows' norms, the fast-scan scorer (its faiss indexes) and the decoded flat
index of ``mode="reconstructed"``. A search takes the index's current snapshot once
and reads nothing else; a mutation builds the next snapshot (sharing what did not
change: the encoder, the code buffer an append writes past, the ids, the derived
structures the change leaves valid) and the index swaps it in whole. The successors of
the mutations are made here: :meth:`Snapshot.appended` (``add``), :meth:`Snapshot.updated`
(``update``), :meth:`Snapshot.compacted` (``compact``) and :meth:`Snapshot.replaced`
(``remove``: new tombstones, the same codes and search structures).

The derived structures are built lazily, at most once per snapshot: each under its own
lock, so two searches racing for one build wait for the same one, and searches that
find it built take no lock. A structure is never changed once published: ``add``
extends a copy of the fast-scan indexes (:meth:`~lplr_index.search.fastscan.FastScanScorer.extended`)
and concatenates new norms into a new array, for the next snapshot.

Locks do not survive a ``fork`` held: the child re-creates them (a build or a mutation
that another thread of the parent was running simply did not happen in the child).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from .codes import CodeStore
from .ids import compacted_ids
from .ids import ids_layout as _ids_layout
from .search import blas, fastscan
from .search.metrics import CodeView
from .train import Encoder

__all__ = ["Snapshot", "UnknownIdError", "LAYOUT_VERSION", "DERIVED"]

#: index layout written by this library (container format version)
LAYOUT_VERSION = 4
#: the search structures a snapshot builds on first use (each at most once; :meth:`Snapshot.derived`
#: takes other keys too): all derived from the codes alone, so a change of the tombstones keeps them
DERIVED = ("norms2", "fastscan", "flat", "ivf")


class UnknownIdError(KeyError, IndexError):
    """An id that no (live) vector of the index has.

    Both a :class:`KeyError` (ids are keys) and an :class:`IndexError` (what
    :meth:`LPLRIndex.reconstruct` raised before user ids existed).
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DerivedCache:
    """Structures derived from a state that never changes, each made on first use, once, under
    its own lock (readers racing for one wait for the one build; once built, no lock is taken)
    and published whole (arrays read-only). A snapshot holds one; so does a
    :class:`lplr_index.distributed.Shard`. A forked child gets new locks, and each structure
    with an ``after_fork`` (the scorers' locks) is told (a lock another thread of the parent
    held stays held in the child)."""

    __slots__ = ("items", "_locks", "_locks_lock", "__weakref__")

    def __init__(self):
        self.items: dict[str, Any] = {}
        self._new_locks()
        _CACHES.add(self)

    def _new_locks(self) -> None:
        self._locks: dict[str, threading.Lock] = {}
        self._locks_lock = threading.Lock()

    def get(self, key: str, make: Callable[[], Any]) -> Any:
        """The structure ``key``, ``make()`` at its first use."""
        got = self.items.get(key)
        if got is None:
            lock = self._locks.get(key)
            if lock is None:
                with self._locks_lock:
                    lock = self._locks.setdefault(key, threading.Lock())
            with lock:
                got = self.items.get(key)
                if got is None:
                    got = make()
                    if isinstance(got, np.ndarray):
                        _frozen(got)
                    self.items[key] = got
        return got

    def after_fork(self) -> None:
        """New locks in a forked child, for this cache and the structures it holds."""
        self._new_locks()
        for value in list(self.items.values()):
            renew = getattr(value, "after_fork", None)
            if renew is not None:
                renew()


#: caches alive, whose locks a forked child re-creates
_CACHES: "weakref.WeakSet[DerivedCache]" = weakref.WeakSet()


@dataclass(frozen=True, eq=False)
class Snapshot:
    """One committed state of an index and the search structures made for it; never changed."""

    encoder: Encoder
    store: CodeStore
    n_build: int
    n_clipped: int
    fit_error: float
    metric: str
    version: int = LAYOUT_VERSION
    #: (n,) int64 user id of each stored row, or None: the id of row i is i
    ids: np.ndarray | None = None
    #: (n,) bool tombstones of the stored rows, or None: nothing removed
    removed: np.ndarray | None = None
    #: partitioned search (format version 5): the coarse centroids ``(nlist, rank)`` float32 in the
    #: latent space, the list of every stored row ``(n,)`` int64, and the default ``nprobe``; None
    #: for an exhaustive index
    ivf_centroids: np.ndarray | None = None
    ivf_lists: np.ndarray | None = None
    nprobe: int | None = None
    #: fast-scan candidates per result a search re-ranks when it names none (format version 6: its
    #: build measured it, :func:`lplr_index.builder.measure_rerank_factor`); None: the encoder's
    #: default (:func:`lplr_index.search.router.default_rerank_factor`)
    rerank_factor: int | None = None

    def __post_init__(self):
        cache = DerivedCache()
        object.__setattr__(self, "_cache", cache)
        object.__setattr__(self, "_built", cache.items)

    # pickled without the derived structures (faiss's indexes) and the locks: rebuilt on use
    def __getstate__(self):
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __setstate__(self, state):
        for key, value in state.items():
            object.__setattr__(self, key, value)
        self.__post_init__()

    # ------------------------------------------------------------ rows and ids
    @property
    def n(self) -> int:
        return self.store.n

    @property
    def n_removed(self) -> int:
        if self.removed is None:
            return 0
        return self.derived("n_removed", lambda: int(np.count_nonzero(self.removed)))

    def live(self) -> np.ndarray | None:
        """The stored rows not removed (bool, read-only), or None when none is removed: made once,
        so a search of an index with removed vectors does no work in proportion to its rows to
        learn which are live (:func:`lplr_index.ids.allowed_rows`)."""
        if self.removed is None:
            return None
        return self.derived("live", lambda: ~self.removed)

    @property
    def n_live(self) -> int:
        return self.n - self.n_removed

    @property
    def id_slots(self) -> int:
        """Length of a boolean mask over ids: the largest stored id + 1."""
        if self.ids is None:
            return self.n
        return int(self.ids.max()) + 1 if self.n else 0

    @property
    def ids_layout(self) -> tuple[str, int] | None:
        """How the user ids are saved: (array name, its length), or None (made once)."""
        return self._cached("_ids_layout", lambda: _ids_layout(self.ids))

    @property
    def row_ids(self) -> np.ndarray:
        """The id of every stored row, (n,) int64."""
        return np.arange(self.n, dtype=np.int64) if self.ids is None else self.ids

    def _sorted_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(order, ids[order]) of the user ids (made once)."""
        def make():
            order = np.argsort(self.ids, kind="stable")
            return order, self.ids[order]

        return self._cached("_sorted", make)

    def rows_of(self, ids: np.ndarray, name: str) -> np.ndarray:
        """Stored rows of live ``ids`` (checked ids); an unknown or removed id raises."""
        if self.ids is None:
            bad = ids[ids >= self.n]
            if bad.size:
                raise UnknownIdError(
                    f"{name}: no vector has id {bad[0]}: ids must be in [0, {self.n - 1}], got {bad[0]}")
            rows = ids
        else:
            order, sorted_ids = self._sorted_ids()
            pos = np.minimum(np.searchsorted(sorted_ids, ids), max(self.n - 1, 0))
            found = (sorted_ids[pos] == ids) if self.n else np.zeros(len(ids), bool)
            if not found.all():
                raise UnknownIdError(f"{name}: no vector has id {ids[~found][0]} (this index holds "
                                     f"{self.n_live} vectors with user ids)")
            rows = order[pos]
        if self.removed is not None and ids.size:
            gone = self.removed[rows]
            if gone.any():
                raise UnknownIdError(f"{name}: the vector with id {ids[gone][0]} was removed")
        return rows.astype(np.int64)

    # ------------------------------------------------------------ successors
    def replaced(self, *, keep: tuple[str, ...] = (), derived: dict[str, Any] | None = None,
                 **changes) -> "Snapshot":
        """The next snapshot: this one with ``changes``. What depends on unchanged ids is carried
        over; the derived search structures named in ``keep`` are shared (the caller knows the
        change leaves them valid: the codes did not change), those in ``derived`` are given
        (made by the caller for the new snapshot, e.g. extended copies); the others are
        built again on first use."""
        new = dataclasses.replace(self, **changes)
        if new.ids is self.ids:
            for key in ("_sorted", "_ids_layout"):
                if key in self.__dict__:
                    object.__setattr__(new, key, self.__dict__[key])
        if new.store is self.store and new.encoder is self.encoder and "_view" in self.__dict__:
            object.__setattr__(new, "_view", self.__dict__["_view"])
        for key in keep:
            if key in self._built:
                new._built[key] = self._built[key]
        return new.seeded(**(derived or {}))

    def seeded(self, **derived) -> "Snapshot":
        """This snapshot given derived structures made for it (``None`` values skipped); only
        before it is published (a mutation seeds the snapshot it is about to commit)."""
        for key, value in derived.items():
            if value is not None:
                self._built[key] = _frozen(value) if isinstance(value, np.ndarray) else value
        return self

    def appended(self, packed: np.ndarray, clipped: int, ids: np.ndarray | None = None) -> "Snapshot":
        """The next snapshot of ``add``: the code rows ``packed`` appended (``clipped`` entries
        clipped while encoding them), ``ids`` the ids of every row (None: as they are; see
        :func:`lplr_index.ids.appended_ids`); a partitioned snapshot's new rows go to their
        nearest lists (no retraining). The search structures searches built for this snapshot
        are extended for the next one: new arrays and copies of faiss's indexes (searches still
        running on this one see no change)."""
        removed = self.removed
        if removed is not None:
            removed = _frozen(np.concatenate([removed, np.zeros(len(packed), bool)]))
        lists, ivf_lists = None, self.ivf_lists
        if self.nlist is not None:  # new rows go to their nearest lists (no retraining)
            lists = self.lists_of(packed)
            ivf_lists = _frozen(np.concatenate([self.ivf_lists, lists]))
        state = dataclasses.replace(self, store=self.store.appended(packed), n_clipped=self.n_clipped + clipped,
                                    ids=_frozen(ids) if ids is not None else self.ids, removed=removed,
                                    ivf_lists=ivf_lists)
        norms2, scorer, part = self.built("norms2"), self.built("fastscan"), self.built("ivf")
        if norms2 is not None:
            norms2 = np.concatenate([norms2, blas.row_norms2(state.view, len(norms2))])
        return state.seeded(norms2=norms2, fastscan=None if scorer is None else scorer.extended(state.view),
                            ivf=None if part is None else part.extended(state.view, lists))

    def updated(self, rows: np.ndarray, packed: np.ndarray, clipped: int) -> "Snapshot":
        """The next snapshot of ``update``: the stored ``rows`` re-encoded as ``packed`` (a new code
        buffer; ``clipped`` entries clipped), a partitioned snapshot's lists of those rows
        re-assigned; the rows' norms patched on a copy, the other structures rebuilt on use."""
        ivf_lists = self.ivf_lists
        if self.nlist is not None:  # the new codes go to their nearest lists; the lists are rebuilt
            ivf_lists = self.ivf_lists.copy()
            ivf_lists[rows] = self.lists_of(packed)
            ivf_lists = _frozen(ivf_lists)
        state = self.replaced(store=self.store.replaced(rows, packed), n_clipped=self.n_clipped + clipped,
                              ivf_lists=ivf_lists)
        norms2 = self.built("norms2")
        if norms2 is not None:
            norms2 = norms2.copy()
            norms2[rows] = blas.row_norms2(CodeView(self.encoder, packed, self.metric))
        return state.seeded(norms2=norms2)

    def compacted(self) -> "Snapshot":
        """The next snapshot of ``compact``: the removed rows dropped (codes, ids, tombstones, lists;
        ids kept, see :func:`lplr_index.ids.compacted_ids`), the rows' norms carried over."""
        keep = np.flatnonzero(~self.removed)
        # n_build (the rows of the fit) is capped at the rows kept, as a file requires
        state = dataclasses.replace(self, store=self.store.taken(keep), ids=_frozen(compacted_ids(self, keep)),
                                    removed=None, n_build=min(self.n_build, max(len(keep), 1)),
                                    ivf_lists=None if self.ivf_lists is None else _frozen(self.ivf_lists[keep]))
        norms2 = self.built("norms2")
        return state.seeded(norms2=None if norms2 is None else norms2[keep])

    def lists_of(self, packed: np.ndarray) -> np.ndarray:
        """The nearest list of each packed code row (of this partitioned snapshot's encoder): its
        stored centroids."""
        from .search import ivf

        scorer = self.built("ivf")
        if scorer is None:
            scorer = ivf.IVFScorer(self.view, self.nlist, centroids=ivf.padded_centroids(
                self.encoder, self.ivf_centroids), _add_rows=False)
        return scorer.assign(packed)

    # ------------------------------------------------------------ derived structures
    @property
    def view(self) -> CodeView:
        """The search backends' view of this snapshot (made once)."""
        return self._cached("_view", lambda: CodeView(self.encoder, self.store.codes, self.metric))

    def _cached(self, key: str, make: Callable[[], Any]) -> Any:
        """A cheap structure, built then published: two racing readers may both build it (alike)."""
        got = self.__dict__.get(key)
        if got is None:
            got = make()
            object.__setattr__(self, key, got)
        return got

    def built(self, key: str) -> Any:
        """The derived structure ``key`` if some search built it already, else None."""
        return self._built.get(key)

    def derived(self, key: str, make: Callable[[], Any]) -> Any:
        """The derived structure ``key`` of this snapshot, ``make()`` at its first use (once:
        readers racing for it wait for the one build; once built, no lock is taken)."""
        return self._cache.get(key, make)

    def norms2(self) -> np.ndarray:
        """:func:`lplr_index.search.blas.row_norms2` of every stored row (read-only)."""
        return self.derived("norms2", lambda: blas.row_norms2(self.view))

    def fastscan(self) -> fastscan.FastScanScorer:
        """The fast-scan scorer of this snapshot's codes."""
        return self.derived("fastscan", lambda: fastscan.FastScanScorer(self.view))

    @property
    def nlist(self) -> int | None:
        """Coarse lists of a partitioned snapshot, None when exhaustive."""
        return None if self.ivf_centroids is None else len(self.ivf_centroids)

    def ivf(self):
        """The partitioned fast-scan scorer (:class:`lplr_index.search.ivf.IVFScorer`), its lists
        made from the stored list numbers (no k-means, no assignment)."""
        return self.derived("ivf", self._make_ivf)

    def _make_ivf(self):
        from .search import ivf

        return ivf.IVFScorer.from_assignment(self.view, ivf.padded_centroids(self.encoder, self.ivf_centroids),
                                             self.ivf_lists)

    def flat(self):
        """faiss's flat index of the decoded rows (unit rows for cosine): ``mode="reconstructed"``."""
        return self.derived("flat", self._make_flat)

    def _make_flat(self):
        import faiss

        from ._common import _normalize_rows

        Xr = self.reconstruct_rows()
        if self.metric == "cosine":
            Xr = _normalize_rows(Xr)
        dim = Xr.shape[1]
        flat = faiss.IndexFlatL2(dim) if self.metric == "l2" else faiss.IndexFlatIP(dim)
        flat.add(Xr)
        return flat

    def reconstruct_rows(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Decoded vectors ``mean + L R`` of stored ``rows`` (all when None), float32."""
        codes = self.store.codes if rows is None else self.store.codes[rows]
        enc = self.encoder
        out = np.empty((codes.shape[0], enc.R.shape[1]), np.float32)
        for s in range(0, codes.shape[0], blas.BLOCK_ROWS):
            out[s : s + blas.BLOCK_ROWS] = self.view.decode_latent(codes[s : s + blas.BLOCK_ROWS]) @ enc.R + enc.mean
        return out


def _frozen(a: np.ndarray | None) -> np.ndarray | None:
    """``a`` made read-only (snapshot arrays are never written after a commit)."""
    if a is not None:
        a.setflags(write=False)
    return a


def _after_fork_in_child() -> None:
    """A lock another thread of the parent held stays held in a forked child: make new ones."""
    for cache in list(_CACHES):
        cache.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
