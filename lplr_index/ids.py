"""User ids, id slots and tombstones of an index's rows, and the rows a search may return.

Every stored row has an int64 id: its row number by default (not stored), or a user id
(:attr:`Snapshot.ids <lplr_index.snapshot.Snapshot>`). Removed rows carry a tombstone bit
(``Snapshot.removed``) until ``compact``. The functions here check the ids a caller gives,
work out the ids and tombstones of the next snapshot of a mutation, and turn a search's
``allowed`` filter into a mask over stored rows; they read a snapshot's ``ids``,
``removed``, ``n``, ``row_ids``, ``id_slots`` and ``rows_of`` only and change nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .packing import packed_nbytes

if TYPE_CHECKING:
    from .snapshot import Snapshot

__all__ = ["as_ids", "check_unique", "column_ids", "ids_layout", "id_bitmap", "is_removed_id",
           "built_ids", "appended_ids", "tombstoned", "compacted_ids", "allowed_rows"]


def as_ids(ids, name: str) -> np.ndarray:
    """Ids as a 1-D int64 array of values >= 0 (a single int gives one id)."""
    try:
        arr = np.asarray(ids)
    except (TypeError, ValueError) as exc:  # ragged nested lists
        raise ValueError(f"{name} must be a 1-D array of integer ids, got {type(ids).__name__} that numpy "
                         f"cannot convert ({exc})") from None
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a 1-D array of integer ids, got shape {arr.shape}, dtype {arr.dtype}")
    if arr.size == 0:
        return np.zeros(0, np.int64)
    if arr.dtype.kind == "u" and arr.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{name} must be in [0, 2**63 - 1], got {arr.max()}")
    arr = arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError(f"{name} must be in [0, 2**63 - 1] (-1 marks a missing result), got {arr.min()}")
    return arr


def check_unique(ids: np.ndarray, name: str) -> None:
    """Raise ValueError naming the first id that ``ids`` holds more than once."""
    s = np.sort(ids)
    dup = s[1:][s[1:] == s[:-1]]
    if dup.size:
        raise ValueError(f"{name} holds id {dup[0]} more than once; ids must be unique")


def column_ids(source, ids):
    """``ids``, or the ids of a Parquet/Arrow source's ``id_column`` (not both)."""
    if getattr(source, "id_column", None) is None:
        return ids
    if ids is not None:
        raise ValueError(f"give ids or id_column, not both (id_column={source.id_column!r} was given)")
    return source.read_ids()


def ids_layout(ids: np.ndarray | None) -> tuple[str, int] | None:
    """How user ids are saved: ``("ids", n)`` (int64), or ``("id_bitmap", bytes)`` when
    they increase and a presence bitmap over ``0 .. max(ids)`` is smaller; None without ids."""
    if ids is None:
        return None
    n = len(ids)
    if n and bool(np.all(ids[1:] > ids[:-1])):
        nbytes = packed_nbytes(int(ids[-1]) + 1, 1)
        if nbytes < 8 * n:
            return ("id_bitmap", nbytes)
    return ("ids", n)


def id_bitmap(ids: np.ndarray) -> np.ndarray:
    """Presence bits of increasing ``ids`` over ``0 .. ids[-1]``, packed little-endian."""
    bits = np.zeros(int(ids[-1]) + 1, bool)
    bits[ids] = True
    return np.packbits(bits, bitorder="little")


def is_removed_id(st: Snapshot, id_: int) -> bool:
    """Whether the stored id ``id_`` belongs to a removed row."""
    if st.removed is None:
        return False
    row = id_ if st.ids is None else int(np.flatnonzero(st.ids == id_)[0])
    return bool(st.removed[row])


# ------------------------------------------------------------ the ids of a mutation's result
def built_ids(ids, n: int) -> np.ndarray | None:
    """The user ids of a build of ``n`` rows, checked; None for the default ids (given or not)."""
    if ids is None:
        return None
    ids = as_ids(ids, "ids")
    if len(ids) != n:
        raise ValueError(f"ids must hold one id per vector of X, {n}, got {len(ids)} ids")
    check_unique(ids, "ids")
    return None if np.array_equal(ids, np.arange(n)) else ids


def appended_ids(st: Snapshot, ids, n_new: int) -> np.ndarray | None:
    """The ids of every row once ``n_new`` rows with ``ids`` (None: the next ids) are appended
    to ``st``'s, checked (new and unique); None when the snapshot's ids stay as they are
    (default ids continued)."""
    if ids is not None:
        ids = as_ids(ids, "ids")
        if len(ids) != n_new:
            raise ValueError(f"ids must hold one id per vector of X, {n_new}, got {len(ids)} ids")
        check_unique(ids, "ids")
        taken = (ids < st.n) if st.ids is None else np.isin(ids, st.ids)
        if taken.any():
            bad = int(ids[taken][0])
            why = (" (it was removed but its row is still stored: call compact() before reusing it)"
                   if is_removed_id(st, bad) else "")
            raise ValueError(f"ids: id {bad} is already in the index{why}; ids must be new and unique")
        if st.ids is not None or not np.array_equal(ids, np.arange(st.n, st.n + len(ids))):
            return np.concatenate([st.row_ids, ids])
        return None
    if st.ids is not None:
        start = st.id_slots
        if start > np.iinfo(np.int64).max - n_new:
            raise ValueError(f"ids: the next ids after {start - 1} overflow int64; pass ids explicitly")
        return np.concatenate([st.ids, np.arange(start, start + n_new, dtype=np.int64)])
    return None


def tombstoned(st: Snapshot, ids) -> np.ndarray:
    """The tombstones of ``st`` with the live vectors ``ids`` removed too (a new array);
    an unknown, removed or repeated id raises and changes nothing."""
    ids = as_ids(ids, "ids")
    check_unique(ids, "ids")
    rows = st.rows_of(ids, "ids")
    removed = np.zeros(st.n, bool) if st.removed is None else st.removed.copy()
    removed[rows] = True
    return removed


def compacted_ids(st: Snapshot, keep: np.ndarray) -> np.ndarray | None:
    """The ids of the rows ``keep`` (increasing) once the others are dropped: None while they
    are still the row numbers, else stored ids (row numbers change, ids do not)."""
    if st.ids is not None:
        return st.ids[keep]
    if np.array_equal(keep, np.arange(len(keep))):
        return None
    return keep.astype(np.int64)


# ------------------------------------------------------------ search filters
def allowed_rows(st: Snapshot, allowed) -> np.ndarray | None:
    """The stored rows a search may return: live and allowed; None when all are.

    ``allowed``: None, an array or set of ids (ids not stored are ignored), a boolean mask
    over ids of length ``st.id_slots``, or a callable ``id -> bool`` called once per live id.
    """
    live = st.live()
    if allowed is None:
        return live  # (read-only: the snapshot's own)
    if callable(allowed):
        ids = st.row_ids
        mask = np.zeros(st.n, bool)
        for row in (range(st.n) if live is None else np.flatnonzero(live)):
            ok = allowed(int(ids[row]))
            if not isinstance(ok, (bool, np.bool_)):
                raise TypeError(f"allowed(id) must return a bool, got {type(ok).__name__} ({ok!r}) for id {ids[row]}")
            mask[row] = ok
        return None if mask.all() else mask
    try:
        if isinstance(allowed, (set, frozenset, range)):
            allowed = np.fromiter(allowed, np.int64, count=len(allowed))
        arr = np.asarray(allowed)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"allowed must be an array of ids, a boolean mask over ids or a callable "
                        f"id -> bool, got {type(allowed).__name__} ({exc})") from None
    if arr.dtype == bool:
        if arr.ndim != 1 or len(arr) != st.id_slots:
            raise ValueError(
                f"allowed, a boolean mask over ids, must have shape ({st.id_slots},): one entry per id "
                f"0 .. {st.id_slots - 1} (index.id_slots), got shape {arr.shape}"
            )
        mask = arr.copy() if st.ids is None else arr[st.ids]
    elif arr.dtype.kind in "iu" or arr.size == 0:
        ids = as_ids(arr, "allowed")
        if st.ids is None:
            mask = np.zeros(st.n, bool)
            mask[ids[ids < st.n]] = True
        else:
            mask = np.isin(st.ids, ids)
    else:
        raise TypeError(f"allowed must be an array of ids (integers), a boolean mask over ids or a "
                        f"callable id -> bool, got an array of dtype {arr.dtype}")
    if live is not None:
        mask &= live
    return None if mask.all() else mask
