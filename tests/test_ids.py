"""User ids, removals, updates and compaction: results, storage, files and bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lplr_index import LPLRIndex
from lplr_index.fileformat import read_container
from lplr_index.index import UnknownIdError

N, DIM = 2000, 32
V1 = Path(__file__).parent / "data" / "format_v1"

pytestmark = pytest.mark.usefixtures("blas_single_thread")


@pytest.fixture(scope="module")
def X():
    rng = np.random.default_rng(99)
    basis, _ = np.linalg.qr(rng.standard_normal((DIM, DIM)))
    return ((rng.standard_normal((N, DIM)) * 0.9 ** np.arange(DIM)) @ basis).astype(np.float32)


@pytest.fixture(scope="module")
def user_ids():
    return np.random.default_rng(5).choice(10**12, N, replace=False).astype(np.int64)


def make(X, ids=None, **kw) -> LPLRIndex:
    kw.setdefault("rank", 12)
    kw.setdefault("bits_l", 4)
    return LPLRIndex(DIM, **kw).build(X, ids=ids)


def snapshot(index: LPLRIndex) -> bytes:
    """Everything the index holds, as the bytes of its file."""
    return index.to_bytes()


# ------------------------------------------------------------------ ids
@pytest.mark.parametrize("mode", ["fastscan", "factored", "reconstructed"])
def test_user_ids_are_returned_in_place_of_row_numbers(X, user_ids, mode):
    plain, named = make(X), make(X, user_ids)
    Dp, Ip = plain.search(X[:50], 5, mode=mode)
    Dn, In = named.search(X[:50], 5, mode=mode)
    np.testing.assert_array_equal(In, user_ids[Ip])
    np.testing.assert_array_equal(Dn, Dp)
    np.testing.assert_array_equal(named.reconstruct(user_ids[[3, 7]]), plain.reconstruct([3, 7]))
    np.testing.assert_array_equal(named.ids, user_ids)
    assert named.has_user_ids and not plain.has_user_ids


def test_default_ids_cost_nothing_and_user_ids_are_counted(X, user_ids, tmp_path):
    plain, named = make(X), make(X, user_ids)
    same = make(X, np.arange(N))  # ids equal to the default ones are not stored
    assert not same.has_user_ids and same.nbytes == plain.nbytes
    assert "ids" not in read_container(plain.to_bytes()).arrays
    assert named.storage_breakdown()["ids"] == 8 * N and plain.storage_breakdown()["ids"] == 0
    # exactly the int64 array and its table entry more
    extra = named.nbytes - plain.nbytes
    assert 8 * N <= extra <= 8 * N + 120
    assert named.save(tmp_path / "n.lplr") == named.nbytes == (tmp_path / "n.lplr").stat().st_size
    assert named.bits_per_coordinate == pytest.approx(8 * named.nbytes / (N * DIM))


def test_a_budget_counts_the_user_ids(X, user_ids):
    plain = LPLRIndex(DIM, bits_per_coordinate=4, bits_l=4).build(X)
    named = LPLRIndex(DIM, bits_per_coordinate=4, bits_l=4).build(X, ids=user_ids)
    assert named.bits_per_coordinate <= 4 and plain.bits_per_coordinate <= 4
    assert named.rank < plain.rank  # 2 of the 4 bits per coordinate go to the ids at dim 32
    with pytest.raises(ValueError, match=r"cannot hold even a rank-1 index of 2000 vectors of dimension 32 "
                                         r"and their user ids"):
        LPLRIndex(DIM, bits_per_coordinate=2, bits_l=4).build(X, ids=user_ids)


def test_add_with_ids_on_a_default_index_makes_the_ids_explicit(X):
    index = make(X[:1000])
    index.add(X[1000:1010])  # continues 1000..1009: still default ids
    assert not index.has_user_ids
    index.add(X[1010:1012], ids=[1010, 1011])  # the next row numbers: still default
    assert not index.has_user_ids
    index.add(X[1012:1014], ids=[5000, 4000])
    assert index.has_user_ids
    np.testing.assert_array_equal(index.ids, np.r_[np.arange(1012), 5000, 4000])
    index.add(X[1014:1016])  # without ids: after the largest id
    np.testing.assert_array_equal(index.ids[-2:], [5001, 5002])
    _, I = index.search(X[[1013, 1015, 17]], 1, mode="factored")
    np.testing.assert_array_equal(I[:, 0], [4000, 5002, 17])


def test_add_with_ids_continues_a_user_id_index(X, user_ids):
    index = make(X[:1000], user_ids[:1000])
    index.add(X[1000:], ids=user_ids[1000:])
    np.testing.assert_array_equal(index.ids, user_ids)
    _, I = index.search(X[1500:1510], 1, mode="factored")
    np.testing.assert_array_equal(I[:, 0], user_ids[1500:1510])


# ------------------------------------------------------- remove / compact / update
@pytest.mark.parametrize("kind", ["default", "user"])
def test_removed_vectors_are_never_returned_and_len_counts_live_ones(X, user_ids, kind):
    ids = None if kind == "default" else user_ids
    index = make(X, ids)
    gone = index.ids[:300:3]
    index.remove(gone)
    assert len(index) == N - 100 and index.ntotal == N and index.n_removed == 100
    for mode in ("fastscan", "factored", "reconstructed"):
        _, I = index.search(X[:300], 10, mode=mode)
        assert not np.isin(I, gone).any(), mode
        assert (I >= 0).all()
    _, I = index.search(X[:3], N, mode="factored")  # k past the live count: padded
    assert ((I >= 0).sum(axis=1) == N - 100).all()
    np.testing.assert_array_equal(index.live_ids, np.setdiff1d(index.ids, gone, assume_unique=True)
                                  if kind == "default" else index.ids[~np.isin(index.ids, gone)])


def assert_same_neighbours(got, expected, rtol=1e-5):
    """Distances equal to float32 rounding; ids equal except where the expected distances tie
    within that rounding (their order there is the arithmetic's, not the index's)."""
    np.testing.assert_allclose(got.distances, expected.distances, rtol=rtol, atol=rtol)
    D = expected.distances.astype(np.float64)
    tol = rtol * (1 + np.abs(D))
    ties = (np.abs(D[:, :, None] - D[:, None, :]) <= tol[:, :, None]).sum(axis=2) > 1
    differ = (got.indices != expected.indices) & ~ties
    assert not differ.any(), np.argwhere(differ)[:5]


@pytest.mark.parametrize("kind", ["default", "user"])
def test_compact_drops_rows_and_keeps_ids_and_results(X, user_ids, kind):
    ids = None if kind == "default" else user_ids
    index = make(X, ids)
    gone = index.ids[10:1500:2]
    index.remove(gone)
    before = index.search(X[:100], 10, mode="factored")
    fast_before = index.search(X[:100], 10, mode="fastscan")
    size = index.nbytes
    index.compact()
    assert index.ntotal == len(index) == N - len(gone) and index.n_removed == 0
    assert index.nbytes < size
    np.testing.assert_array_equal(index.ids, np.setdiff1d(np.asarray(ids if ids is not None else np.arange(N)),
                                                          gone) if kind == "default" else
                                  user_ids[~np.isin(user_ids, gone)])
    # the exact scan of fewer rows blocks its BLAS products otherwise: distances may move in the
    # last float32 bit (seen: 31 of 1,000 by 1.9e-6 on one CPU), ids only among such near-ties
    after = index.search(X[:100], 10, mode="factored")
    assert_same_neighbours(after, before)
    fast_after = index.search(X[:100], 10, mode="fastscan")  # fast-scan rebuilt over the kept rows
    assert_same_neighbours(fast_after, fast_before)
    assert index.has_user_ids  # default ids with holes become stored ids


def test_compact_of_removed_tail_keeps_default_ids(X):
    index = make(X)
    index.remove(np.arange(N - 10, N))
    index.compact()
    assert not index.has_user_ids and index.ntotal == N - 10
    index.add(X[:2])  # the tail's ids are free again
    np.testing.assert_array_equal(index.ids[-2:], [N - 10, N - 9])


def test_everything_removed_then_compacted(X, tmp_path):
    index = make(X[:100])
    index.remove(np.arange(100))
    D, I = index.search(X[:2], 3)
    assert (I == -1).all() and (D == np.inf).all()
    index.compact()
    assert index.ntotal == 0 and len(index) == 0
    assert (index.search(X[:2], 3, mode="factored").indices == -1).all()
    index.save(tmp_path / "empty.lplr")
    loaded = LPLRIndex.load(tmp_path / "empty.lplr")
    assert loaded.ntotal == 0
    loaded.add(X[:5])
    assert len(loaded) == 5


@pytest.mark.parametrize("kind", ["default", "user"])
def test_update_re_encodes_under_the_same_ids(X, user_ids, kind):
    ids = None if kind == "default" else user_ids
    index = make(X, ids)
    target = index.ids[[4, 9]]
    index.search(X[:5], 3)  # build the fast-scan and norm caches first: update must refresh them
    index.search(X[:5], 3, mode="factored")
    index.update(target, X[[100, 200]])
    fresh = make(X, ids)
    np.testing.assert_array_equal(index.reconstruct(target), fresh.reconstruct(fresh.ids[[100, 200]]))
    assert index.ntotal == N and index.ids[4] == target[0]
    for mode in ("fastscan", "factored", "reconstructed"):
        _, I = index.search(X[[100, 200]], 2, mode=mode)
        assert set(I[0]) == {fresh.ids[100], target[0]} and set(I[1]) == {fresh.ids[200], target[1]}, mode


def test_update_does_not_change_what_an_earlier_state_sees(X):
    index = make(X)
    old_state = index._state
    old_codes = old_state.store.codes.copy()
    index.update([0], X[[5]])
    np.testing.assert_array_equal(old_state.store.codes, old_codes)


@pytest.mark.parametrize("kind", ["default", "user"])
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_save_and_load_keep_ids_and_removals(X, user_ids, kind, mmap, tmp_path):
    ids = None if kind == "default" else user_ids
    index = make(X, ids)
    index.remove(index.ids[[0, 5, 1999]])
    path = tmp_path / "i.lplr"
    assert index.save(path) == index.nbytes == path.stat().st_size
    assert set(read_container(path).arrays) >= ({"removed", "ids"} if ids is not None else {"removed"})
    loaded = LPLRIndex.load(path, mmap=mmap)
    assert loaded.to_bytes() == index.to_bytes() == path.read_bytes()
    assert len(loaded) == N - 3 and loaded.n_removed == 3
    np.testing.assert_array_equal(loaded.ids, index.ids)
    for mode in ("fastscan", "factored"):
        np.testing.assert_array_equal(loaded.search(X[:20], 5, mode=mode).indices,
                                      index.search(X[:20], 5, mode=mode).indices)
    assert LPLRIndex.from_bytes(index.to_bytes()).n_removed == 3


def test_rescore_with_follows_the_stored_row_order(X, user_ids):
    """User ids: row i of rescore_with is the i-th vector added; removed rows are never read."""
    index = make(X, user_ids)
    index.remove(user_ids[:500])
    full = X.copy()
    full[:500] = np.nan  # removed rows: never read (a NaN would poison the scores)
    D, I = index.search(X[600:650], 5, rescore_with=full, mode="factored")
    assert np.isfinite(D).all() and not np.isin(I, user_ids[:500]).any()
    rows = np.searchsorted(user_ids, I, sorter=np.argsort(user_ids))
    rows = np.argsort(user_ids)[rows]
    exact = ((X[rows] - X[600:650, None, :]) ** 2).sum(-1)
    np.testing.assert_allclose(D, exact, rtol=1e-5, atol=1e-5)
    assert (I[:, 0] == user_ids[600:650]).all()  # each query is a stored vector: exactly itself first
    index.compact()
    with pytest.raises(ValueError, match=r"rescore_with must hold the 1500 original vectors of dimension 32 in "
                                         r"id order, shape \(1500, 32\), got shape \(2000, 32\) \(one row per "
                                         r"stored row"):
        index.search(X[:2], 5, rescore_with=X)
    # the exact candidates of the codes (fast-scan's could break ties differently in the new row order)
    D2, I2 = index.search(X[600:650], 5, rescore_with=X[500:], mode="factored")
    np.testing.assert_array_equal(I2, I)
    np.testing.assert_array_equal(D2, D)
    D3, I3 = index.search(X[600:650], 5, rescore_with=X[500:])  # fast-scan: the same neighbours
    assert (I3 == I).mean() >= 0.95  # observed 0.984: fast-scan candidates, re-scored exactly


def test_version_1_file_takes_removals_and_ids_and_keeps_its_layout(tmp_path):
    index = LPLRIndex.load(V1 / "l2_b2.lplr")
    Q = np.load(V1 / "queries.npy")
    _, I0 = index.search(Q, 3, mode="factored")
    index.remove(I0[:, 0])
    index.add(Q[:2], ids=[10**9, 10**9 + 1])
    index.save(tmp_path / "v1.lplr")
    c = read_container(tmp_path / "v1.lplr")
    assert c.version == 1 and {"ids", "removed"} <= set(c.arrays)
    again = LPLRIndex.load(tmp_path / "v1.lplr")
    _, I = again.search(Q, 3, mode="factored")
    assert not np.isin(I, I0[:, 0]).any()
    assert again.search(Q[:2], 1).indices[:, 0].tolist() == [10**9, 10**9 + 1]


# ------------------------------------------------------------- transactional
@pytest.mark.parametrize(
    "call",
    [
        lambda ix, X: ix.add(X[:3], ids=[1, 2000, 2001]),
        lambda ix, X: ix.add(np.r_[X[:2], np.full((1, DIM), np.nan)], ids=[5000, 5001, 5002]),
        lambda ix, X: ix.remove([3, 4, 10**6]),
        lambda ix, X: ix.remove([3, 3]),
        lambda ix, X: ix.update([3, 7], X[:1]),
        lambda ix, X: ix.update([3, 7], np.r_[X[:1], np.full((1, DIM), np.inf)]),
        lambda ix, X: ix.update([3, 5], X[:2]),  # 5 was removed
    ],
    ids=["add-duplicate", "add-nan", "remove-unknown", "remove-twice", "update-length", "update-inf",
         "update-removed"],
)
def test_a_failing_call_leaves_the_index_exactly_as_before(X, call):
    index = make(X)
    index.remove([5])
    index.search(X[:2], 3)  # caches built
    before = snapshot(index)
    with pytest.raises((ValueError, KeyError)):
        call(index, X)
    assert snapshot(index) == before
    assert len(index) == N - 1


# ------------------------------------------------------------------ bad ids
@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda ix, X: ix.add(X[:2], ids=[7, 7]), ValueError, "ids holds id 7 more than once; ids must be unique"),
        (lambda ix, X: ix.add(X[:2], ids=[2500, 15]), ValueError,
         "ids: id 15 is already in the index; ids must be new and unique"),
        (lambda ix, X: ix.add(X[:2], ids=[2500, 5]), ValueError,
         r"id 5 is already in the index \(it was removed but its row is still stored: call compact\(\)"),
        (lambda ix, X: ix.add(X[:2], ids=[1.5, 2.5]), ValueError, "ids must be a 1-D array of integer ids, got "
                                                                  r"shape \(2,\), dtype float64"),
        (lambda ix, X: ix.add(X[:2], ids=[[3000, 3001]]), ValueError, "ids must be a 1-D array of integer ids"),
        (lambda ix, X: ix.add(X[:2], ids=["a", "b"]), ValueError, "ids must be a 1-D array of integer ids"),
        (lambda ix, X: ix.add(X[:2], ids=[True, False]), ValueError, "dtype bool"),
        (lambda ix, X: ix.add(X[:2], ids=[3000]), ValueError, "ids must hold one id per vector of X, 2, got 1 ids"),
        (lambda ix, X: ix.add(X[:2], ids=[-1, 3000]), ValueError, r"ids must be in \[0, 2\*\*63 - 1\] .*got -1"),
        (lambda ix, X: ix.add(X[:2], ids=np.array([2**63, 1], np.uint64)), ValueError, r"got 9223372036854775808"),
        (lambda ix, X: ix.remove([10**6]), UnknownIdError, r"ids: no vector has id 1000000: ids must be in \[0, 1999\]"),
        (lambda ix, X: ix.remove([5]), UnknownIdError, "ids: the vector with id 5 was removed"),
        (lambda ix, X: ix.remove([1, 2, 1]), ValueError, "ids holds id 1 more than once"),
        (lambda ix, X: ix.update([10**6], X[:1]), KeyError, "no vector has id 1000000"),
        (lambda ix, X: ix.update([1], X[:2]), ValueError, "ids must hold one id per vector of X, 2, got 1 ids"),
        (lambda ix, X: ix.update([1], np.ones((1, 5))), ValueError,
         "X has 5 dimensions, but this index holds 32-dimensional vectors"),
        (lambda ix, X: ix.reconstruct([5]), IndexError, "the vector with id 5 was removed"),
        (lambda ix, X: ix.search(X[:1], 3, rescore_with=X[:10]), ValueError, r"got shape \(10, 32\)"),
        (lambda ix, X: ix.search(X[:1], 3, rescore_with=X[:, :5]), ValueError, r"got shape \(2000, 5\)"),
        (lambda ix, X: ix.search(X[:1], 3, rescore_with=X[0]), ValueError, r"got shape \(32,\)"),
        (lambda ix, X: ix.search(X[:1], 3, rescore_with=[1, 2]), ValueError, "got shape None"),
    ],
    ids=["add-dup-in-call", "add-dup-stored", "add-removed-id", "add-float-ids", "add-2-D-ids", "add-str-ids",
         "add-bool-ids", "add-ids-length", "add-negative", "add-uint64-overflow", "remove-unknown",
         "remove-removed", "remove-dup", "update-unknown", "update-length", "update-dim",
         "reconstruct-removed", "rescore-rows", "rescore-cols", "rescore-1-D", "rescore-list"],
)
def test_bad_id_input(X, call, exc, match):
    index = make(X)
    index.remove([5])
    with pytest.raises(exc, match=match):
        call(index, X)


def test_user_id_errors_name_the_id(X, user_ids):
    index = make(X, user_ids)
    with pytest.raises(UnknownIdError, match=r"ids: no vector has id 12 \(this index holds 2000 vectors with user"):
        index.remove([user_ids[0], 12])
    with pytest.raises(ValueError, match=rf"id {user_ids[3]} is already in the index"):
        index.add(X[:1], ids=[user_ids[3]])
    with pytest.raises(ValueError, match="ids must hold one id per vector of X, 2000, got 3 ids"):
        LPLRIndex(DIM, rank=4).build(X, ids=[1, 2, 3])
    with pytest.raises(ValueError, match="ids holds id 9 more than once"):
        LPLRIndex(DIM, rank=4).build(X[:3], ids=[9, 1, 9])
    assert len(index) == N  # nothing removed by the failing call


def test_increasing_ids_are_saved_as_a_bitmap_when_smaller(X, tmp_path):
    """Default ids with holes (after compact) cost one bit per id slot, not 8 bytes a vector."""
    index = make(X)
    index.remove(np.arange(0, N, 3))
    index.compact()
    kept = np.setdiff1d(np.arange(N), np.arange(0, N, 3))
    assert index.storage_breakdown()["ids"] == (N - 1) // 8 + 1  # ids up to 1999: 250 bytes
    index.save(tmp_path / "c.lplr")
    arrays = read_container(tmp_path / "c.lplr").arrays
    assert "id_bitmap" in arrays and "ids" not in arrays
    loaded = LPLRIndex.load(tmp_path / "c.lplr")
    np.testing.assert_array_equal(loaded.ids, kept)
    assert loaded.to_bytes() == index.to_bytes() and index.nbytes == len(index.to_bytes())
    # sparse increasing ids: the int64 array is smaller
    sparse = make(X[:20], ids=np.arange(20) * 10**6)
    assert "ids" in read_container(sparse.to_bytes()).arrays


# ------------------------------------------------------------ command line
CLI_IDS = np.arange(N) * 3 + 7  # increasing: saved as an id bitmap
@pytest.fixture
def cli_files(tmp_path, X):
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    arrays = {
        "X": X, "Q": X[:6] + 0.01, "ids": CLI_IDS, "more": X[:3], "more_ids": np.array([1, 2, 3]),
        "gone": CLI_IDS[:2], "dup": np.array([7, 7]), "unknown": np.array([5000]),
        "float_ids": np.array([1.5]), "mask_short": np.zeros(5, bool),
    }
    paths = {}
    for name, arr in arrays.items():
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], arr)
    paths["index"] = tmp_path / "i.lplr"
    yield paths
    root.handlers[:] = handlers
    root.setLevel(level)


def cli(capsys, *argv):
    import json

    from lplr_index.cli import main

    code = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 and "--json" in argv else out), err


def test_cli_ids_remove_allowed_rescore(capsys, cli_files, X):
    user_ids = CLI_IDS
    f = cli_files
    code, info, err = cli(capsys, "build", f["X"], "-o", f["index"], "--rank", 12, "--bits-l", 4, "--ids", f["ids"],
                          "--json")
    assert code == 0, err
    assert info["storage_bytes"]["ids"] == (3 * N + 4) // 8 + 1  # bits for ids 0 .. 6003
    code, res, err = cli(capsys, "search", f["index"], f["Q"], "-k", 3, "--json")
    assert np.array_equal(np.array(res["indices"])[:, 0], user_ids[:6])
    code, info, err = cli(capsys, "remove", f["index"], "--ids", f["gone"], "--json")
    assert code == 0 and info["removed"] == 2 and info["live"] == N - 2 and info["n_removed_stored"] == 2
    code, res, _ = cli(capsys, "search", f["index"], f["Q"], "-k", 3, "--mode", "fastscan", "--json")
    assert not np.isin(res["indices"], user_ids[:2]).any()
    allowed = user_ids[10:20]
    np.save(f["X"].parent / "allowed.npy", allowed)
    code, res, _ = cli(capsys, "search", f["index"], f["Q"], "-k", 3, "--allowed", f["X"].parent / "allowed.npy",
                       "--json")
    assert code == 0 and np.isin(res["indices"], allowed).all()
    mask = np.zeros(int(user_ids.max()) + 1, bool)
    mask[allowed] = True
    np.save(f["X"].parent / "mask.npy", mask)
    code, res2, _ = cli(capsys, "search", f["index"], f["Q"], "-k", 3, "--allowed", f["X"].parent / "mask.npy",
                        "--json")
    assert res2["indices"] == res["indices"]
    code, res, _ = cli(capsys, "search", f["index"], f["Q"], "-k", 3, "--rescore-with", f["X"], "--json")
    exact = ((X[2:6] - (X[2:6] + 0.01)) ** 2).sum(1)
    np.testing.assert_allclose(np.array(res["distances"])[2:, 0], exact, rtol=1e-4)
    code, info, err = cli(capsys, "add", f["index"], f["more"], "--ids", f["more_ids"], "--json")
    assert code == 0, err
    assert LPLRIndex.load(f["index"]).ids[-3:].tolist() == [1, 2, 3]
    code, info, _ = cli(capsys, "remove", f["index"], "--ids", f["more_ids"], "--compact", "--json")
    assert info["ntotal"] == N - 2 and info["n_removed_stored"] == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (("remove", "{index}", "--ids", "{dup}"), "--ids file {dup}: holds id 7 more than once"),
        (("remove", "{index}", "--ids", "{unknown}"), "--ids file {unknown}: no vector has id 5000"),
        (("remove", "{index}", "--ids", "{float_ids}"), "--ids file {float_ids} must hold integer ids, got dtype float64"),
        (("add", "{index}", "{more}", "--ids", "{dup}"), "--ids file {dup} holds 2 ids, but there are 3 vectors"),
        (("add", "{index}", "{more}", "--ids", "{more_ids}"), "--ids file {more_ids}: id 1 is already in the index"),
        (("search", "{index}", "{Q}", "--allowed", "{mask_short}"),
         r"--allowed file {mask_short}, a boolean mask over ids, must have shape (2000,)"),
        (("search", "{index}", "{Q}", "--allowed", "{float_ids}"), "--allowed file {float_ids} must hold integer ids or a "
                                                                 "boolean mask over ids, got dtype float64"),
        (("search", "{index}", "{Q}", "--rescore-with", "{Q}"),
         "--rescore-with file {Q} must hold the 2000 original vectors of dimension 32 in id order"),
        (("search", "{index}", "{Q}", "--rescore-with", "{dup}"), "--rescore-with file {dup} must hold a 2-D array"),
    ],
    ids=["remove-dup", "remove-unknown", "remove-float", "add-ids-length", "add-taken", "mask-length",
         "allowed-float", "rescore-shape", "rescore-1-D"],
)
def test_cli_bad_ids_and_filters(capsys, cli_files, argv, message):
    f = cli_files
    assert cli(capsys, "build", f["X"], "-o", f["index"], "--rank", 12, "--bits-l", 4)[0] == 0
    before = f["index"].read_bytes()
    code, out, err = cli(capsys, *(a.format(**f) for a in argv))
    assert code == 1 and err.count("\n") == 1
    assert message.format(**f) in err
    assert f["index"].read_bytes() == before


def test_update_and_remove_on_a_memory_mapped_index(X, user_ids, tmp_path):
    make(X, user_ids).save(tmp_path / "m.lplr")
    index = LPLRIndex.load(tmp_path / "m.lplr", mmap=True)
    index.update(user_ids[:2], X[[10, 11]])
    index.remove(user_ids[2:4])
    _, I = index.search(X[[10, 11]], 2, mode="factored")
    assert set(I[0]) == {user_ids[0], user_ids[10]} and set(I[1]) == {user_ids[1], user_ids[11]}
    assert LPLRIndex.load(tmp_path / "m.lplr").n_removed == 0  # the file itself is untouched
    index.save(tmp_path / "m.lplr")  # replaced while mapped: the old mapping stays valid
    assert LPLRIndex.load(tmp_path / "m.lplr").n_removed == 2


def test_derived_id_lookups_survive_removals(X, user_ids):
    index = make(X, user_ids)
    index.remove(user_ids[:1])
    sorted_before = index._state._sorted_ids()
    index.remove(user_ids[1:2])
    assert index._state._sorted_ids() is sorted_before  # ids unchanged: no re-sort
    with pytest.raises(UnknownIdError, match="was removed"):
        index.reconstruct(user_ids[:1])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_sequences_of_mutations_against_a_reference_model(X, seed, knn_checker, tmp_path):
    """add / remove / update / compact in random order: the live ids, their decoded vectors and
    the search results always match a plain dict kept alongside."""
    rng = np.random.default_rng(seed)
    use_user_ids = seed > 0
    ids0 = rng.choice(10**6, 300, replace=False) if use_user_ids else None
    index = make(X[:300], ids0, rank=8)
    ref = dict(zip(index.ids.tolist(), index.reconstruct(index.ids)))
    next_id = 10**6
    done = set()
    for step in range(25):
        op = rng.choice(["add", "remove", "update", "compact"])
        done.add(str(op))
        live = np.array(sorted(ref))
        if op == "add":
            m = int(rng.integers(1, 40))
            rows = rng.choice(N, m, replace=False)
            new = (np.arange(next_id, next_id + m) if rng.random() < 0.5 else None)
            before = set(index.ids.tolist())
            index.add(X[rows], ids=new)
            added = [i for i in index.ids.tolist() if i not in before]
            next_id += m
            assert len(added) == m
            ref.update(zip(added, index.reconstruct(added)))
        elif op == "remove" and len(live) > 20:
            gone = rng.choice(live, int(rng.integers(1, 20)), replace=False)
            index.remove(gone)
            for i in gone.tolist():
                del ref[i]
        elif op == "update" and len(live):
            ids = rng.choice(live, min(len(live), 5), replace=False)
            index.update(ids, X[rng.choice(N, len(ids))])
            ref.update(zip(ids.tolist(), index.reconstruct(ids)))
        elif op == "compact":
            index.compact()
        live = np.array(sorted(ref))
        assert len(index) == len(ref) and np.array_equal(np.sort(index.live_ids), live), (step, op)
        # same codes; the float32 product L R may round differently with another batch of rows
        np.testing.assert_allclose(index.reconstruct(live), np.stack([ref[i] for i in live.tolist()]),
                                   rtol=1e-5, atol=1e-6)
        Q = X[rng.choice(N, 5)]
        D, I = index.search(Q, 5, mode="factored")
        pos = np.searchsorted(live, I)
        assert np.array_equal(live[pos], I)
        knn_checker(np.stack([ref[i] for i in live.tolist()]), Q, D, pos, "l2")
    assert done == {"add", "remove", "update", "compact"}
    index.save(tmp_path / "r.lplr")
    again = LPLRIndex.load(tmp_path / "r.lplr")
    assert again.to_bytes() == index.to_bytes()
    np.testing.assert_array_equal(again.search(Q, 5).indices, index.search(Q, 5).indices)
