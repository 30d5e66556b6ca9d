"""lplr_index.ids on its own: id checks, the ids and tombstones of a mutation's result, filters.

The functions read a snapshot's ids, tombstones and row count only, so the snapshots here
hold no encoder (nothing is built); every case checks the exact arrays returned.
"""

from __future__ import annotations

import numpy as np
import pytest

from lplr_index import ids as idm
from lplr_index.codes import CodeStore
from lplr_index.snapshot import Snapshot, UnknownIdError


def rows(n: int, ids=None, removed=None) -> Snapshot:
    """A snapshot of ``n`` rows with these ids and tombstones (no encoder: ids only)."""
    return Snapshot(None, CodeStore(np.zeros((n, 1), np.uint8)), 1, 0, 0.0, "l2",
                    ids=None if ids is None else np.asarray(ids, np.int64),
                    removed=None if removed is None else np.asarray(removed, bool))


@pytest.mark.parametrize("given, want", [
    (7, [7]), ([3, 1, 2], [3, 1, 2]), (np.array([5], np.uint64), [5]), ([], []),
], ids=["int", "list", "uint64", "empty"])
def test_as_ids_gives_a_1d_int64_array(given, want):
    got = idm.as_ids(given, "ids")
    assert got.dtype == np.int64 and got.ndim == 1
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("given, match", [
    ([-1, 2], r"\[0, 2\*\*63 - 1\] \(-1 marks"), ([1.5], "integer ids"), ([[1, 2]], "1-D"),
    (np.array([2**63], np.uint64), r"\[0, 2\*\*63 - 1\], got 9223372036854775808"), ([[1], [2, 3]], "cannot convert"),
], ids=["negative", "float", "2d", "too-large", "ragged"])
def test_as_ids_refuses_what_is_no_id(given, match):
    with pytest.raises(ValueError, match=match):
        idm.as_ids(given, "ids")


def test_check_unique_names_the_repeated_id():
    idm.check_unique(np.array([4, 1, 9]), "ids")
    with pytest.raises(ValueError, match="ids holds id 9 more than once"):
        idm.check_unique(np.array([9, 1, 9, 2]), "ids")


@pytest.mark.parametrize("ids, want", [
    (None, None),
    (np.arange(100) * 2, ("id_bitmap", 25)),  # 199 bits: 25 bytes, less than 800
    (np.array([0, 10**9]), ("ids", 2)),  # a bitmap of 10^9 bits is larger
    (np.array([5, 3, 9]), ("ids", 3)),  # not increasing
], ids=["none", "dense-increasing", "sparse", "unordered"])
def test_ids_layout_picks_the_smaller_form(ids, want):
    assert idm.ids_layout(ids) == want


def test_id_bitmap_sets_exactly_the_ids():
    ids = np.array([0, 3, 8, 9, 17])
    bits = idm.id_bitmap(ids)
    assert bits.size == 3
    np.testing.assert_array_equal(np.flatnonzero(np.unpackbits(bits, bitorder="little")), ids)


def test_built_ids_drops_the_default_ids_and_checks_the_others():
    assert idm.built_ids(None, 4) is None
    assert idm.built_ids([0, 1, 2, 3], 4) is None  # the row numbers are not stored
    np.testing.assert_array_equal(idm.built_ids([7, 1, 2, 3], 4), [7, 1, 2, 3])
    with pytest.raises(ValueError, match="one id per vector of X, 4, got 3 ids"):
        idm.built_ids([1, 2, 3], 4)
    with pytest.raises(ValueError, match="id 2 more than once"):
        idm.built_ids([2, 1, 2, 3], 4)


def test_appended_ids_continue_default_ids_without_storing_them():
    st = rows(3)
    assert idm.appended_ids(st, None, 2) is None
    assert idm.appended_ids(st, [3, 4], 2) is None  # exactly the next row numbers
    # other ids: the old rows' numbers become stored ids
    np.testing.assert_array_equal(idm.appended_ids(st, [10, 4], 2), [0, 1, 2, 10, 4])


def test_appended_ids_continue_after_the_largest_user_id():
    st = rows(3, ids=[40, 7, 12])
    np.testing.assert_array_equal(idm.appended_ids(st, None, 2), [40, 7, 12, 41, 42])
    np.testing.assert_array_equal(idm.appended_ids(st, [1, 2], 2), [40, 7, 12, 1, 2])


def test_appended_ids_refuse_taken_ids_and_name_removed_ones():
    st = rows(3, ids=[40, 7, 12], removed=[False, True, False])
    with pytest.raises(ValueError, match=r"id 40 is already in the index; ids must be new"):
        idm.appended_ids(st, [40], 1)
    with pytest.raises(ValueError, match=r"id 7 is already in the index \(it was removed .* compact\(\)"):
        idm.appended_ids(st, [8, 7], 2)
    with pytest.raises(ValueError, match="overflow int64"):
        idm.appended_ids(rows(1, ids=[2**63 - 1]), None, 1)


def test_is_removed_id_reads_the_tombstone_of_the_ids_row():
    st = rows(3, ids=[40, 7, 12], removed=[False, True, False])
    assert [idm.is_removed_id(st, i) for i in (40, 7, 12)] == [False, True, False]
    assert not idm.is_removed_id(rows(3, ids=[40, 7, 12]), 7)
    assert idm.is_removed_id(rows(3, removed=[False, False, True]), 2)


def test_tombstoned_marks_the_rows_on_a_copy():
    old = np.array([False, True, False, False])
    st = rows(4, ids=[40, 7, 12, 5], removed=old)
    new = idm.tombstoned(st, [5, 40])
    np.testing.assert_array_equal(new, [True, True, False, True])
    np.testing.assert_array_equal(st.removed, [False, True, False, False])  # unchanged
    with pytest.raises(UnknownIdError, match="id 7 was removed"):
        idm.tombstoned(st, [7])
    with pytest.raises(UnknownIdError, match="no vector has id 6"):
        idm.tombstoned(st, [6])
    with pytest.raises(ValueError, match="more than once"):
        idm.tombstoned(st, [5, 5])


@pytest.mark.parametrize("ids, keep, want", [
    (None, [0, 1, 2], None),  # a removed tail: still the row numbers
    (None, [0, 2, 3], [0, 2, 3]),  # a hole: the ids are stored
    ([40, 7, 12, 5], [1, 3], [7, 5]),
], ids=["default-prefix", "default-hole", "user"])
def test_compacted_ids_keep_every_id(ids, keep, want):
    got = idm.compacted_ids(rows(4, ids=ids), np.array(keep))
    if want is None:
        assert got is None
    else:
        np.testing.assert_array_equal(got, want)


def test_column_ids_takes_ids_or_the_id_column_not_both():
    class Source:
        id_column = "id"

        def read_ids(self):
            return np.array([3, 4])

    assert idm.column_ids(object(), [1]) == [1]
    np.testing.assert_array_equal(idm.column_ids(Source(), None), [3, 4])
    with pytest.raises(ValueError, match="give ids or id_column, not both"):
        idm.column_ids(Source(), [1, 2])


USER = [40, 7, 12, 5, 9]
REMOVED = [False, False, True, False, False]


@pytest.mark.parametrize("allowed, want", [
    (None, [True, True, False, True, True]),  # the live rows
    ([7, 12, 9, 1000], [False, True, False, False, True]),  # removed 12 and unknown 1000 ignored
    ({40, 5}, [True, False, False, True, False]),
    (range(0, 10), [False, True, False, True, True]),
    (lambda i: i > 8, [True, False, False, False, True]),
    (np.isin(np.arange(41), [5, 40]), [True, False, False, True, False]),  # a mask over ids
], ids=["none", "ids", "set", "range", "callable", "mask"])
def test_allowed_rows_are_live_and_allowed(allowed, want):
    mask = idm.allowed_rows(rows(5, ids=USER, removed=REMOVED), allowed)
    np.testing.assert_array_equal(mask, want)


def test_allowed_rows_is_none_when_every_row_may_be_returned():
    assert idm.allowed_rows(rows(4), None) is None
    assert idm.allowed_rows(rows(4), [0, 1, 2, 3, 9]) is None
    assert idm.allowed_rows(rows(4, ids=[3, 1, 8, 2]), lambda i: True) is None
    np.testing.assert_array_equal(idm.allowed_rows(rows(4), [1, 9]), [False, True, False, False])


def test_allowed_rows_refuses_bad_filters():
    st = rows(5, ids=USER)
    with pytest.raises(ValueError, match=r"must have shape \(41,\)"):
        idm.allowed_rows(st, np.ones(5, bool))
    with pytest.raises(TypeError, match="must return a bool, got int"):
        idm.allowed_rows(st, lambda i: 1)
    with pytest.raises(TypeError, match="dtype float64"):
        idm.allowed_rows(st, np.array([1.0]))
    with pytest.raises(ValueError, match=r"allowed must be in \[0"):
        idm.allowed_rows(st, [-3])
