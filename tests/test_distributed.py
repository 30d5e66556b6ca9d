"""Dask build and sharded search on a LocalCluster of 2 worker processes (one BLAS thread each).

The data has three canonical blocks (2 * BLOCK_ROWS + 1234 rows), more rows than
the seeded sample. The cluster is started once for the module.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from lplr_index import LPLRIndex
from lplr_index._blocks import BLOCK_ROWS

N, DIM = 2 * BLOCK_ROWS + 1234, 24
SETTINGS = dict(bits_per_coordinate=1.0, seed=3)


def test_import_lplr_index_does_not_import_dask():
    code = ("import sys, lplr_index; "
            "print(sorted(m for m in ('dask', 'distributed', 'lplr_index.distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def client(blas_single_thread):
    distributed = pytest.importorskip("distributed")
    one_thread = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  env=one_thread) as cluster, distributed.Client(cluster) as c:
        yield c


@pytest.fixture(scope="module")
def ld(client):
    from lplr_index import distributed as ld

    return ld


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> np.ndarray:
    rng = np.random.default_rng(4242)
    X = (rng.standard_normal((N, DIM)) * 0.8 ** np.arange(DIM)).astype(np.float32)
    X.setflags(write=False)
    return X


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory, blas_single_thread) -> bytes:
    """The saved file of the local build."""
    path = tmp_path_factory.mktemp("ref") / "local.lplr"
    LPLRIndex(DIM, **SETTINGS).build(data).save(path)
    return path.read_bytes()


def dask_array(X, chunks):
    import dask.array as da

    return da.from_array(np.array(X), chunks=chunks)


@pytest.mark.parametrize("chunks", [(7001, DIM), (BLOCK_ROWS, DIM), (N, DIM), (5000, 10)],
                         ids=["odd-rows", "canonical", "one-chunk", "split-columns"])
def test_dask_build_saves_the_local_file(chunks, ld, client, data, reference, tmp_path):
    index = ld.build(dask_array(data, chunks), client, **SETTINGS)
    index.save(tmp_path / "dask.lplr")
    assert (tmp_path / "dask.lplr").read_bytes() == reference


def test_dask_build_on_one_worker_saves_the_local_file(ld, client, data, reference, tmp_path):
    worker = sorted(client.scheduler_info()["workers"])[0]
    source = ld.DaskExecutor(dask_array(data, (3333, DIM)), client, workers=[worker], max_in_flight=1)
    LPLRIndex(DIM, **SETTINGS).build(source).save(tmp_path / "one.lplr")
    assert (tmp_path / "one.lplr").read_bytes() == reference


def test_dask_build_of_a_npy_file_read_by_the_workers(ld, client, data, reference, tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, data)
    X = ld.from_npy(path, chunk_rows=9999)
    assert X.shape == (N, DIM) and X.chunks[0][0] == 9999
    assert ld.build(X, **SETTINGS).to_bytes() == reference  # the current client


def test_add_from_a_dask_array_matches_add_from_the_array(ld, client, data):
    base = LPLRIndex(DIM, **SETTINGS).build(data[:5000])
    want = LPLRIndex.from_bytes(base.to_bytes()).add(data)
    got = LPLRIndex.from_bytes(base.to_bytes()).add(ld.DaskExecutor(dask_array(data, (4321, DIM)), client))
    assert got.to_bytes() == want.to_bytes()


def test_dask_build_of_4_bit_cosine_codes(ld, client, data):
    settings = dict(bits_per_coordinate=2.0, metric="cosine", seed=5)
    local = LPLRIndex(DIM, **settings).build(data)
    assert ld.build(dask_array(data, (12345, DIM)), client, **settings).to_bytes() == local.to_bytes()


def test_dask_errors_name_the_row_and_the_argument(ld, client, data):
    bad = np.array(data)
    bad[20001, 3] = np.inf
    with pytest.raises(ValueError, match=r"X must be finite .* non-finite value \(inf\) at row 20001, column 3"):
        ld.build(dask_array(bad, (7001, DIM)), client, rank=4, refine_iters=0)
    with pytest.raises(TypeError, match=r"X must be a dask.array.Array, got ndarray"):
        ld.build(data, client, rank=4)
    with pytest.raises(ValueError, match=r"dim=5 was given, but X holds 24-dimensional vectors"):
        ld.build(dask_array(data, (7001, DIM)), client, dim=5, rank=4)
    X = dask_array(data, (7001, DIM))
    unknown = X[X[:, 0] > 0]
    with pytest.raises(ValueError, match=r"unknown chunk sizes.*compute_chunk_sizes"):
        ld.build(unknown, client, rank=4)


def _kill_worker_once(block, marker: str, block_info=None):
    """Chunk 1's second read kills the worker process running it (once)."""
    if block_info is not None and block_info[0]["chunk-location"][0] == 1:
        try:
            os.close(os.open(marker + ".seen", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            try:
                os.close(os.open(marker + ".killed", os.O_CREAT | os.O_EXCL))
            except FileExistsError:
                return block
            os.kill(os.getpid(), signal.SIGKILL)
    return block


def test_a_worker_killed_mid_build_gives_the_same_file_or_a_clear_error(ld, client, data, reference, tmp_path):
    marker = str(tmp_path / "kill")
    X = dask_array(data, (7001, DIM)).map_blocks(_kill_worker_once, marker, dtype=np.float32)
    out = tmp_path / "index.lplr"
    out.write_bytes(b"an older file")
    try:
        ld.build(X, client, **SETTINGS).save(out)
    except RuntimeError as exc:  # Dask gave up: nothing saved, the older file untouched
        assert "Nothing was built" in str(exc)
        assert out.read_bytes() == b"an older file"
    else:  # Dask recomputed the lost tasks (what happens with the default allowed-failures=3)
        assert out.read_bytes() == reference
    assert os.path.exists(marker + ".killed")  # the worker was killed during the build
    client.wait_for_workers(2, timeout=60)


# -------------------------------------------------------------- sharded search
@pytest.fixture(scope="module")
def queries(data) -> np.ndarray:
    rng = np.random.default_rng(99)
    return (data[rng.choice(N, 40, replace=False)] + 0.05 * rng.standard_normal((40, DIM))).astype(np.float32)


@pytest.fixture(scope="module")
def indexes(data, blas_single_thread):
    """Indexes built locally per (metric, budget); 2 bits per coordinate gives 4-bit codes."""
    cache = {}

    def get(metric, budget):
        if (metric, budget) not in cache:
            cache[metric, budget] = LPLRIndex(DIM, bits_per_coordinate=budget, metric=metric, seed=1).build(data)
        return cache[metric, budget]

    return get


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
@pytest.mark.parametrize("n_shards", [2, 3, 7])
def test_sharded_exact_search_equals_the_local_search(metric, n_shards, ld, client, indexes, queries):
    index = indexes(metric, 1.0)
    with ld.ShardedIndex(index, n_shards, client=client) as sharded:
        assert sharded.n_shards == n_shards and sharded.bounds[-1] == N
        D, I = sharded.search(queries, 10, mode="factored")
    D0, I0 = index.search(queries, 10, mode="factored")
    if n_shards <= 3:  # shards on multiples of the scan's block: the same float32 scores, bit for bit
        np.testing.assert_array_equal(D, D0)
        np.testing.assert_array_equal(I, I0)
    else:  # shards inside a scan block: same neighbours, scores equal to float32 rounding
        np.testing.assert_allclose(D, D0, rtol=1e-5, atol=1e-5)
        assert (I == I0).mean() > 0.99  # observed 1.0; only near-ties may swap


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_sharded_fastscan_is_at_least_as_good_as_the_local_search(metric, ld, client, indexes, queries):
    index = indexes(metric, 2.0)
    assert index.bits_l == 4 and index.fastscan_ready
    with ld.ShardedIndex(index, 3, client=client) as sharded:
        D, I = sharded.search(queries, 10)  # auto: fast-scan + exact re-ranking on every shard
    D0, I0 = index.search(queries, 10)
    tol = 1e-5 * np.abs(D0).max()
    # every shard re-ranks a superset of its part of the local candidates: each rank's score is as good
    if metric == "l2":
        assert (D <= D0 + tol).all()
    else:
        assert (D >= D0 - tol).all()
    assert np.isin(I, I0).mean() > 0.95  # the same neighbours, up to ties; observed 1.0


def test_sharded_search_pads_past_the_end_and_checks_its_arguments(ld, client, indexes, queries):
    index = indexes("l2", 1.0)
    with ld.ShardedIndex(index, 2, client=client) as sharded:
        D, I = sharded.search(queries[:2], N + 5, mode="factored")
        assert D.shape == (2, N + 5) and (I[:, N:] == -1).all() and np.isinf(D[:, N:]).all()
        np.testing.assert_array_equal(np.sort(I[0, :N]), np.arange(N))
        with pytest.raises(ValueError, match=r"queries has 23 dimensions, but this index holds 24-dimensional"):
            sharded.search(queries[:, :23], 3)
        with pytest.raises(ValueError, match=r"mode must be one of"):
            sharded.search(queries, 3, mode="reconstructed")
    with pytest.raises(RuntimeError, match="closed"):
        sharded.search(queries, 3)
    eight_bit = LPLRIndex(DIM, rank=4).build(index.reconstruct()[:500])
    with ld.ShardedIndex(eight_bit, client=client) as sharded:
        assert sharded.n_shards == 2  # one per worker
        with pytest.raises(ValueError, match=r"mode='fastscan' needs 4-bit codes, this index has 8-bit codes"):
            sharded.search(queries, 3, mode="fastscan")


def test_sharded_search_returns_user_ids(ld, client, data, queries):
    if not hasattr(LPLRIndex, "has_user_ids"):
        pytest.skip("this LPLRIndex has no user ids")
    ids = 10 * np.arange(N, dtype=np.int64)[::-1] + 7
    index = LPLRIndex(DIM, rank=6, bits_l=4).build(data, ids=ids)  # ids cost 8 bytes a vector: no budget
    with ld.ShardedIndex(index, 2, client=client) as sharded:
        D, I = sharded.search(queries, 5, mode="factored")
    D0, I0 = index.search(queries, 5, mode="factored")
    np.testing.assert_array_equal(I, I0)
    np.testing.assert_array_equal(D, D0)
    assert np.isin(I, ids).all()


def test_merging_indexes_that_share_the_encoder(ld, client, indexes, data, queries):
    index = indexes("l2", 1.0)
    copy = LPLRIndex.from_bytes(index.to_bytes())
    merged = LPLRIndex.from_bytes(index.to_bytes()).add(data)  # the same rows twice, on one machine
    with ld.ShardedIndex.from_indexes([index, copy], client=client) as sharded:
        assert sharded.bounds == [0, N, 2 * N]
        D, I = sharded.search(queries, 10, mode="factored")
    D0, I0 = merged.search(queries, 10, mode="factored")
    np.testing.assert_array_equal(D, D0)
    np.testing.assert_array_equal(I, I0)


def test_merging_indexes_with_other_settings_or_encoders_is_refused(ld, client, data):
    a = LPLRIndex(DIM, rank=6, seed=0, refine_iters=0).build(data[:20000])
    b = LPLRIndex(DIM, rank=6, seed=1, refine_iters=0).build(data[:20000])
    c = LPLRIndex(DIM, rank=6, seed=0, refine_iters=0).build(data[20000:])
    with pytest.raises(ValueError, match=r"indexes\[1\] cannot be merged with indexes\[0\]: seed=1 \(index 0 has 0\)"):
        ld.ShardedIndex.from_indexes([a, b], client=client)
    with pytest.raises(ValueError, match=r"indexes\[2\] cannot be merged .* a different trained encoder"):
        ld.ShardedIndex.from_indexes([a, a, c], client=client)
    assert ld.encoder_fingerprint(a._state.encoder, "l2") != ld.encoder_fingerprint(c._state.encoder, "l2")


def test_a_build_dask_gives_up_on_raises_a_clear_error_and_saves_nothing(data, tmp_path, blas_single_thread):
    """With allowed-failures=0 the first killed worker ends the build: a RuntimeError naming the block.

    (With one worker, its death also loses the pass's scattered arguments: Dask
    reports the tasks as cancelled rather than as KilledWorker.)
    """
    import dask
    import distributed

    from lplr_index import distributed as ld

    marker = str(tmp_path / "kill")
    out = tmp_path / "index.lplr"
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as c:
        X = dask_array(data, (7001, DIM)).map_blocks(_kill_worker_once, marker, dtype=np.float32)
        with pytest.raises(RuntimeError, match=r"the Dask cluster lost block \d+ \(rows \d+-\d+ of X\) in pass 1: "
                                               r"(KilledWorker|FutureCancelledError).*[^.]\. Nothing was built"):
            ld.build(X, c, **SETTINGS).save(out)
    assert not out.exists()


def test_saved_shards_load_on_the_workers_and_search_the_same(ld, client, indexes, queries, tmp_path):
    from lplr_index import IndexFileError

    index = indexes("l2", 1.0)
    with ld.ShardedIndex(index, 3, client=client) as sharded:
        manifest = sharded.save(tmp_path / "sharded")
        want = sharded.search(queries, 10, mode="factored")
    assert sorted(os.listdir(tmp_path / "sharded")) == ["manifest.json"] + [f"shard-0000{j}.lplrs" for j in range(3)]
    with ld.ShardedIndex.load(tmp_path / "sharded", client=client) as loaded:
        assert (loaded.bounds, loaded.fingerprint) == (sharded.bounds, sharded.fingerprint)
        got = loaded.search(queries, 10, mode="factored")
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.distances, want.distances)

    # a shard of another encoder (same settings, other seed) dropped in: refused, naming the file
    other = LPLRIndex(DIM, bits_per_coordinate=1.0, seed=2).build(index.reconstruct())
    with ld.ShardedIndex(other, 3, client=client) as foreign:
        foreign.save(tmp_path / "foreign")
    shard1 = tmp_path / "sharded" / "shard-00001.lplrs"
    original = shard1.read_bytes()
    shard1.write_bytes((tmp_path / "foreign" / "shard-00001.lplrs").read_bytes())
    with pytest.raises(IndexFileError, match=r"shard-00001.lplrs: this shard was built with another encoder"):
        ld.ShardedIndex.load(tmp_path / "sharded", client=client)
    shard1.write_bytes(original[: len(original) // 2])  # truncated
    with pytest.raises(IndexFileError, match=r"shard-00001.lplrs"):
        ld.ShardedIndex.load(tmp_path / "sharded", client=client)
    with pytest.raises(IndexFileError, match=r"manifest.json: no such file"):
        ld.ShardedIndex.load(tmp_path, client=client)
    assert manifest.endswith("manifest.json")
