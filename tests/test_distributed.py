"""Dask build and sharded search on a LocalCluster of 2 worker processes (one BLAS thread each).

The data has three canonical blocks (2 * BLOCK_ROWS + 1234 rows), more rows than
the seeded sample. The cluster is started once for the module.

Most tests use the default codes of a budget (``codec="auto"``: the grouped
4-bit codes of :mod:`lplr_index.vq`, here with the principal basis); the scalar
LPLR codes (``codec="scalar"``, or a rank without a budget) and the grouped codes
with the seeded-rotation basis (the ``flat`` data) are tested beside them.
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
#: a budget and seed at which the ``flat`` data get grouped codes of the seeded-rotation basis (every metric)
ROTATION = dict(bits_per_coordinate=1.0, seed=1)


def _dask_or_skip():
    """Skip (with the reason) where the dask extra is missing or broken (a mismatched
    dask/distributed pair raises at import), instead of failing or stopping the suite."""
    try:
        import dask.array  # noqa: F401
        import distributed  # noqa: F401
    except Exception as exc:
        pytest.skip(f"the dask extra does not import: {type(exc).__name__}: {exc}")


def test_import_lplr_index_does_not_import_dask():
    code = ("import sys, lplr_index; "
            "print(sorted(m for m in ('dask', 'distributed', 'lplr_index.distributed') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.fixture(scope="module")
def client(blas_single_thread):
    _dask_or_skip()
    import distributed

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
def flat(tmp_path_factory) -> np.ndarray:
    """A flat spectrum (white noise): the seeded-rotation basis wins over the principal one."""
    X = np.random.default_rng(777).standard_normal((N, DIM)).astype(np.float32)
    X.setflags(write=False)
    return X


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory, blas_single_thread) -> bytes:
    """The saved file of the local build (the default codes: grouped, principal basis)."""
    path = tmp_path_factory.mktemp("ref") / "local.lplr"
    index = LPLRIndex(DIM, **SETTINGS).build(data)
    assert (index.codec, index._state.encoder.kind) == ("vq", "pca")
    index.save(path)
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
    index = ld.build(X, **SETTINGS)  # the current client
    assert index.codec == "vq" and index.to_bytes() == reference


def test_add_from_a_dask_array_matches_add_from_the_array(ld, client, data):
    base = LPLRIndex(DIM, **SETTINGS).build(data[:5000])
    want = LPLRIndex.from_bytes(base.to_bytes()).add(data)
    got = LPLRIndex.from_bytes(base.to_bytes()).add(ld.DaskExecutor(dask_array(data, (4321, DIM)), client))
    assert got.to_bytes() == want.to_bytes()


@pytest.mark.parametrize("codec", ["auto", "scalar"])
def test_dask_build_of_4_bit_cosine_codes(codec, ld, client, data):
    settings = dict(bits_per_coordinate=2.0, metric="cosine", seed=5, codec=codec)
    local = LPLRIndex(DIM, **settings).build(data)
    assert local.bits_l == 4 and local.codec == ("vq" if codec == "auto" else "scalar")
    assert ld.build(dask_array(data, (12345, DIM)), client, **settings).to_bytes() == local.to_bytes()


@pytest.mark.parametrize("case", [
    ("data", dict(bits_per_coordinate=1.0, seed=3, codec="scalar"), "scalar", "pinv"),
    ("flat", ROTATION, "vq", "rotation"),
    ("flat", dict(ROTATION, metric="ip"), "vq", "rotation"),
    ("data", dict(rank=5, codec="vq", metric="cosine"), "vq", "pca"),
    ("data", dict(bits_per_coordinate=4.0, seed=1), "vq", "pca"),  # auto: two-level grouped codes win
    ("one-level", dict(bits_per_coordinate=4.0, seed=1), "scalar", "pinv"),  # auto: the scalar 8-bit codes win
], ids=["scalar", "vq-rotation-l2", "vq-rotation-ip", "vq-rank-cosine", "auto-picks-vq", "auto-picks-scalar"])
def test_dask_build_of_each_codec_is_the_local_build(case, ld, client, data, flat, monkeypatch):
    which, settings, codec, kind = case
    if which == "one-level":  # without two-level designs the scalar codes beat the grouped ones here
        from lplr_index import builder, vq

        monkeypatch.setattr(vq, "CANDIDATE_SIZES", vq.CANDIDATE_SIZES[:-1])
        monkeypatch.setattr(builder, "SCALAR_RIVAL_MIN_BITS", 4.0)  # (fitted from 6 bits by default)
    X = flat if which == "flat" else data
    local = LPLRIndex(DIM, **settings).build(X)
    assert (local.codec, local._state.encoder.kind) == (codec, kind)
    got = ld.build(dask_array(X, (7001, DIM)), client, **settings)
    assert got.to_bytes() == local.to_bytes()


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
def indexes(data, flat, blas_single_thread):
    """Indexes built locally per (metric, budget, codec, data); 2 bits per coordinate gives 4-bit scalar codes.

    ``codec="auto"`` (the default) gives grouped codes of the principal basis
    on ``data`` and of the seeded-rotation basis on ``flat``.
    """
    cache = {}

    def get(metric, budget, codec="auto", which="data"):
        key = (metric, budget, codec, which)
        if key not in cache:
            X = data if which == "data" else flat
            cache[key] = LPLRIndex(DIM, bits_per_coordinate=budget, metric=metric, seed=1, codec=codec).build(X)
            want = ("scalar", "pinv") if codec == "scalar" else ("vq", "pca" if which == "data" else "rotation")
            got = (cache[key].codec, cache[key]._state.encoder.kind)
            if which == "flat" and metric == "cosine" and codec != "scalar":
                # unit-normalised white noise: the two bases tie on the sample, either may win
                assert got in (("vq", "pca"), ("vq", "rotation"))
            else:
                assert got == want
        return cache[key]

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
@pytest.mark.parametrize("variant", [("scalar", "data"), ("auto", "flat")], ids=["scalar", "vq-rotation"])
def test_sharded_exact_search_of_scalar_codes_and_of_a_rotation_basis(variant, metric, ld, client, indexes,
                                                                      queries):
    index = indexes(metric, 1.0, *variant)
    with ld.ShardedIndex(index, 2, client=client) as sharded:
        assert sharded.codec == index.codec
        D, I = sharded.search(queries, 10, mode="factored")
    D0, I0 = index.search(queries, 10, mode="factored")
    np.testing.assert_array_equal(D, D0)
    np.testing.assert_array_equal(I, I0)


@pytest.mark.parametrize("codec", ["auto", "scalar"])
@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_sharded_fastscan_is_at_least_as_good_as_the_local_search(metric, codec, ld, client, indexes, queries):
    index = indexes(metric, 2.0, codec)
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
    # the same neighbours, up to ties (observed 1.0); two-level codes: fast-scan ranks by the
    # coarse codes and the shards re-rank more candidates in all (observed 0.92)
    assert np.isin(I, I0).mean() > (0.85 if getattr(index._state.encoder.lq, "two_level", False) else 0.95)


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


@pytest.mark.parametrize("settings", [dict(rank=6, bits_l=4), dict(rank=6, codec="vq")], ids=["scalar", "vq"])
def test_sharded_search_returns_user_ids(settings, ld, client, data, queries):
    if not hasattr(LPLRIndex, "has_user_ids"):
        pytest.skip("this LPLRIndex has no user ids")
    ids = 10 * np.arange(N, dtype=np.int64)[::-1] + 7
    index = LPLRIndex(DIM, **settings).build(data, ids=ids)  # ids cost 8 bytes a vector: no budget
    assert index.codec == settings.get("codec", "scalar")
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
    a = LPLRIndex(DIM, rank=6, seed=0, refine_iters=0).build(data[:20000])  # scalar codes (a rank, no budget)
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
    _dask_or_skip()
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


# ------------------------------------------------------- grouped codes' shards
def test_merging_indexes_with_other_grouped_encoders_is_refused(ld, client, data, indexes):
    a = LPLRIndex(DIM, bits_per_coordinate=1.0, seed=0).build(data[:15000])
    b = LPLRIndex(DIM, bits_per_coordinate=1.0, seed=1).build(data[:15000])
    c = LPLRIndex(DIM, bits_per_coordinate=1.0, seed=0).build(data[15000:30000])
    s = LPLRIndex(DIM, bits_per_coordinate=1.0, seed=0, codec="scalar").build(data[:15000])
    assert (a.codec, b.codec, c.codec, s.codec) == ("vq", "vq", "vq", "scalar")
    with pytest.raises(ValueError, match=r"indexes\[1\] cannot be merged with indexes\[0\]: .*seed=1 \(index 0 has 0\)"):
        ld.ShardedIndex.from_indexes([a, b], client=client)
    with pytest.raises(ValueError, match=r"indexes\[2\] cannot be merged with indexes\[0\]"):
        ld.ShardedIndex.from_indexes([a, a, c], client=client)
    with pytest.raises(ValueError, match=r"indexes\[1\] cannot be merged .*codec='scalar' \(index 0 has 'auto'\)"):
        ld.ShardedIndex.from_indexes([a, s], client=client)
    # the principal and the rotation basis of the same settings
    pca, rot = indexes("l2", 1.0), indexes("l2", 1.0, "auto", "flat")
    with pytest.raises(ValueError, match=r"indexes\[1\] cannot be merged with indexes\[0\]"):
        ld.ShardedIndex.from_indexes([pca, rot], client=client)
    fp = {ld.encoder_fingerprint(ix._state.encoder, "l2") for ix in (a, b, c, s, pca, rot)}
    assert len(fp) == 6


def _old_fingerprint(encoder, metric, settings):
    """The scalar fingerprint as written before the grouped codes existed."""
    import hashlib
    import json

    h = hashlib.sha256()
    meta = {"metric": metric, "kind": encoder.kind, "seed": int(encoder.seed), "normalize": bool(encoder.normalize),
            "orthonormal": bool(encoder.orthonormal),
            "lq": [encoder.lq.scheme, int(encoder.lq.bits)], "rq": [encoder.rq.scheme, int(encoder.rq.bits)],
            "settings": settings}
    h.update(json.dumps(meta, sort_keys=True).encode())
    for a in (encoder.mean, encoder.lq.lo, encoder.lq.hi, encoder.rcodes, encoder.rq.lo, encoder.rq.hi):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def test_the_fingerprint_covers_every_part_of_either_encoder(ld, indexes):
    import dataclasses

    from lplr_index.quantize import Quantizer
    from lplr_index.vq import GroupedQuantizer

    scalar = indexes("l2", 1.0, "scalar")._state.encoder
    settings = {"any": "settings"}
    assert ld.encoder_fingerprint(scalar, "l2", settings) == _old_fingerprint(scalar, "l2", settings)

    def bump(a, where=0):
        a = np.array(a)
        a.flat[where] = a.flat[where] + 1 if a.dtype.kind in "iu" else a.flat[where] * 1.5 + 0.25
        return a

    for which in ("data", "flat"):
        enc = indexes("cosine", 1.0, "auto", which)._state.encoder
        base = ld.encoder_fingerprint(enc, "cosine", settings)
        fresh = dataclasses.replace(enc, lq=GroupedQuantizer(np.array(enc.lq.groups), np.array(enc.lq.codebooks)))
        assert ld.encoder_fingerprint(fresh, "cosine", settings) == base  # equal content, equal fingerprint
        changed = [dataclasses.replace(enc, mean=bump(enc.mean)),
                   dataclasses.replace(enc, lq=GroupedQuantizer(enc.lq.groups, bump(enc.lq.codebooks, 5))),
                   dataclasses.replace(enc, seed=enc.seed + 1), dataclasses.replace(enc, normalize=False)]
        if enc.basis == "pca":
            g = enc.lq.groups
            regrouped = np.array([[1, int((g[:, 0] * g[:, 1]).sum())]], np.int32)  # same rank, one code each
            changed.append(dataclasses.replace(enc, lq=GroupedQuantizer(regrouped, np.zeros(16, np.float32))))
            changed.append(dataclasses.replace(enc, rcodes=bump(enc.rcodes, 3)))
            changed.append(dataclasses.replace(enc, rq=Quantizer(enc.rq.scheme, enc.rq.bits, bump(enc.rq.lo),
                                                                 enc.rq.hi)))
        else:
            changed.append(dataclasses.replace(enc, dirs=np.roll(enc.dirs, 1)))
        prints = [ld.encoder_fingerprint(e, "cosine", settings) for e in changed]
        prints += [ld.encoder_fingerprint(enc, "ip", settings), ld.encoder_fingerprint(enc, "cosine", {"other": 1})]
        assert base not in prints and len(set(prints)) == len(prints)


def test_shards_pickle_after_the_encoder_searched(ld, indexes, queries):
    """A grouped encoder that has encoded caches faiss objects: a shard still pickles (to another worker)."""
    import pickle

    index = indexes("l2", 1.0)  # a class of groups of 2: a faiss product quantizer encodes it
    index.search(queries, 5)
    cached = index._state.encoder.lq.__dict__.get("_pq")  # cached by the build's encoding on the sample
    assert cached is not None and any(pq is not None for pq in cached)
    shard = ld.Shard(index._state.encoder, index._state.store.codes[:100], "l2", 0, {"s": 1})
    copy = pickle.loads(pickle.dumps(shard))
    assert copy.fingerprint == shard.fingerprint
    np.testing.assert_array_equal(np.asarray(copy.view.codes), np.asarray(shard.view.codes))
    for mode in ("fastscan", "factored"):
        for got, want in zip(copy.search(queries, 5, mode, 4), shard.search(queries, 5, mode, 4)):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("variant", [("l2", "auto", "data"), ("cosine", "auto", "flat"), ("ip", "scalar", "data")],
                         ids=["vq-pca", "vq-rotation", "scalar"])
@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_shards_of_each_codec_save_and_load(variant, mmap, ld, client, indexes, queries, tmp_path):
    from lplr_index.fileformat import read_container

    metric, codec, which = variant
    index = indexes(metric, 1.0, codec, which)
    with ld.ShardedIndex(index, 2, client=client) as sharded:
        manifest = sharded.save(tmp_path / "sharded")
        want = sharded.search(queries, 10, mode="factored")
    c = read_container(tmp_path / "sharded" / "shard-00001.lplrs")
    enc = index._state.encoder
    if index.codec == "vq":
        # one code level per class: the version-2 shard layout; coarse + fine codes: version 3
        two = enc.lq.two_level
        assert (c.version, c.header["shard_version"], c.header["codec"]) == ((4, 3) if two else (3, 2)) + ("vq",)
        assert c.arrays["vq_groups"].shape[1] == (3 if two else 2)
        assert {"vq_groups", "vq_codebooks"} <= set(c.arrays)
        assert ("vq_dirs" in c.arrays) == (enc.kind == "rotation") and ("rcodes" in c.arrays) == (enc.kind == "pca")
    else:  # the layout of the shards written before the grouped codes
        assert (c.version, c.header["shard_version"], "codec" in c.header) == (2, 1, False)
        assert set(c.arrays) == {"codes", "mean", "l_lo", "l_hi", "rcodes", "r_lo", "r_hi"}
    with open(manifest) as f:
        assert f.read().count(f'"codec": "{index.codec}"') == 1
    with ld.ShardedIndex.load(tmp_path / "sharded", client=client, mmap=mmap) as loaded:
        assert (loaded.bounds, loaded.fingerprint, loaded.codec) == (sharded.bounds, sharded.fingerprint, index.codec)
        got = loaded.search(queries, 10, mode="factored")
        # (a deep re-rank: fast-scan scores the coarse half of two-level codes)
        fast = loaded.search(queries, 10, mode="fastscan", rerank_factor=64) if index.fastscan_ready else None
    np.testing.assert_array_equal(got.indices, want.indices)
    np.testing.assert_array_equal(got.distances, want.distances)
    D0, I0 = index.search(queries, 10, mode="factored")
    np.testing.assert_array_equal(got.indices, I0)
    np.testing.assert_array_equal(got.distances, D0)
    if fast is not None:
        assert np.isin(fast.indices, I0).mean() > 0.9
    shard = ld.Shard.load(tmp_path / "sharded" / "shard-00000.lplrs", mmap=mmap)
    # the index's measured re-rank depth travels with its shards
    assert shard.rerank_factor == index.rerank_factor == c.header["rerank_factor"]
    for key in ("mean", "rcodes", "dirs"):
        a, b = getattr(shard.view.encoder, key, None), getattr(enc, key, None)
        assert (a is None and b is None) or np.array_equal(a, b)
    if index.codec == "vq":
        np.testing.assert_array_equal(shard.view.encoder.lq.codebooks, enc.lq.codebooks)
        np.testing.assert_array_equal(shard.view.encoder.R, enc.R)


def test_a_scalar_shard_folder_of_the_earlier_format_still_loads(ld, client, data, queries, tmp_path):
    """Shard files and a manifest exactly as written before the grouped codes existed."""
    import json

    from lplr_index.fileformat import write_container

    index = LPLRIndex(DIM, bits_per_coordinate=1.0, seed=4, codec="scalar").build(data)
    enc, codes = index._state.encoder, index._state.store.codes
    settings = index.settings.to_header(rank=index.rank)
    settings.pop("codec")  # the settings header of then
    fingerprint = _old_fingerprint(enc, "l2", settings)
    folder = tmp_path / "old"
    folder.mkdir()
    bounds = [0, 2 * BLOCK_ROWS, N]
    for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        header = {"format": "lplr-index-shard", "shard_version": 1, "metric": "l2", "kind": enc.kind,
                  "seed": int(enc.seed), "normalize": bool(enc.normalize), "orthonormal": bool(enc.orthonormal),
                  "lq": [enc.lq.scheme, int(enc.lq.bits)], "rq": [enc.rq.scheme, int(enc.rq.bits)],
                  "first_row": a, "settings": settings, "fingerprint": fingerprint}
        arrays = {"codes": np.asarray(codes[a:b]), "mean": enc.mean, "l_lo": enc.lq.lo, "l_hi": enc.lq.hi,
                  "rcodes": np.asarray(enc.rcodes, np.uint8), "r_lo": enc.rq.lo, "r_hi": enc.rq.hi}
        write_container(folder / f"shard-{j:05d}.lplrs", header, arrays, version=2)
    manifest = {"format": "lplr-index-manifest", "manifest_version": 1, "fingerprint": fingerprint, "dim": DIM,
                "metric": "l2", "bits_l": index.bits_l, "fastscan_ready": index.fastscan_ready, "ntotal": N,
                "shards": [{"file": f"shard-{j:05d}.lplrs", "first_row": a, "rows": b - a}
                           for j, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))
    with ld.ShardedIndex.load(folder, client=client) as loaded:
        assert (loaded.codec, loaded.fingerprint, loaded.bounds) == ("scalar", fingerprint, bounds)
        D, I = loaded.search(queries, 10, mode="factored")
    D0, I0 = index.search(queries, 10, mode="factored")
    np.testing.assert_array_equal(D, D0)
    np.testing.assert_array_equal(I, I0)


def test_shard_folders_of_other_grouped_encoders_or_codecs_are_refused(ld, client, indexes, tmp_path):
    from lplr_index import IndexFileError

    def save(index, name):
        with ld.ShardedIndex(index, 2, client=client) as sharded:
            sharded.save(tmp_path / name)
        return tmp_path / name

    pca = save(indexes("l2", 1.0), "pca")
    others = [save(indexes("l2", 1.0, "auto", "flat"), "rotation"), save(indexes("l2", 1.0, "scalar"), "scalar"),
              save(LPLRIndex(DIM, bits_per_coordinate=1.0, seed=1).build(indexes("l2", 1.0).reconstruct()[::-1]),
                   "retrained")]
    shard1 = pca / "shard-00001.lplrs"
    original = shard1.read_bytes()
    for other in others:
        shard1.write_bytes((other / "shard-00001.lplrs").read_bytes())
        with pytest.raises(IndexFileError, match=r"shard-00001.lplrs: this shard was built with another encoder"):
            ld.ShardedIndex.load(pca, client=client)
    shard1.write_bytes(original)
    with ld.ShardedIndex.load(pca, client=client) as loaded:
        assert loaded.n_shards == 2


@pytest.mark.parametrize("which", ["data", "flat"], ids=["vq-pca", "vq-rotation"])
def test_damaged_grouped_shards_are_refused_with_the_reason(which, ld, indexes, tmp_path):
    from lplr_index import IndexFileError
    from lplr_index.fileformat import read_container, write_container

    index = indexes("l2", 1.0, "auto", which)
    path = tmp_path / "shard.lplrs"
    ld.Shard(index._state.encoder, index._state.store.codes[:1000], "l2", 0,
             index.settings.to_header(rank=index.rank)).save(path)
    c = read_container(path)
    assert ld.Shard.load(path).fingerprint == c.header["fingerprint"]

    def damaged(match, header=None, **arrays):
        bad = tmp_path / "bad.lplrs"
        write_container(bad, dict(c.header, **(header or {})), {**c.arrays, **arrays}, version=c.version)
        with pytest.raises(IndexFileError, match=match):
            ld.Shard.load(bad)

    groups, books = c.arrays["vq_groups"], c.arrays["vq_codebooks"]
    wide = np.array(groups)
    wide[0, 0] = 99
    damaged(r"vq_groups must hold group sizes in \[1, 24\]", vq_groups=wide)
    damaged(r"vq_groups must have shape", vq_groups=np.zeros((0, groups.shape[1]), np.int32))
    other = 2 if groups.shape[1] == 3 else 3  # the other shard version's layout
    damaged(r"vq_groups must have shape", vq_groups=np.ones((1, other), np.int32))
    damaged(r"vq_codebooks must hold", vq_codebooks=books[:-1])
    damaged(r"vq_codebooks must be finite", vq_codebooks=np.full_like(books, np.nan))
    damaged(r"int32 array vq_groups", vq_groups=groups.astype(np.int64))
    damaged(r"codes of shape \(1000, \d+\) .* do not hold", codes=np.asarray(c.arrays["codes"])[:, :-1])
    damaged(r"codec 'pq' is not 'scalar' or 'vq'", header={"codec": "pq"})
    damaged(r"settings say rank=", header={"settings": dict(c.header["settings"], rank=1)})
    fp = r"does not give its recorded fingerprint"
    damaged(fp, mean=np.asarray(c.arrays["mean"]) + 1)
    damaged(fp, vq_codebooks=np.asarray(books) * 2)
    if which == "flat":
        dirs = np.array(c.arrays["vq_dirs"])
        damaged(r"vq_dirs must hold distinct directions in \[0, 23\]", vq_dirs=np.full_like(dirs, 3))
        damaged(r"vq_dirs must hold distinct directions in \[0, 23\]", vq_dirs=dirs + 24)
        damaged(r"vq_dirs of shape", vq_dirs=dirs[:-1])
        damaged(fp, vq_dirs=dirs[::-1].copy())
    else:
        rcodes = np.array(c.arrays["rcodes"])
        damaged(r"rcodes of shape", rcodes=rcodes[:, :-1])
        damaged(fp, rcodes=255 - rcodes)
        damaged(fp, r_lo=np.asarray(c.arrays["r_lo"]) - 1)


# ------------------------------------------------------------ partitioned indexes
#: rows and lists of the partitioned indexes sharded below: 2, 3 or 4 shards of 12,000 rows each
#: hold at least a fifth of the rows, so a search of the index restricted to a shard's rows
#: (``allowed=``) takes the lists too (under ``FILTER_SCAN_FRACTION`` it would scan exactly)
N_IVF, NLIST = 12000, 16


@pytest.mark.parametrize("settings", [dict(bits_per_coordinate=1.0, seed=3, nlist=32),
                                      dict(rank=8, bits_l=4, codec="scalar", metric="cosine", seed=1, nlist=16)],
                         ids=["vq-l2", "scalar-cosine"])
def test_dask_build_of_a_partitioned_index_is_the_local_build(settings, ld, client, data, tmp_path, monkeypatch):
    local = LPLRIndex(DIM, **settings).build(data)
    local.save(tmp_path / "local.lplr")

    def no_rows_to_the_client(self):
        raise AssertionError("the rows of X passed through the client")

    # the default nprobe's exact neighbours are found on the workers, block by block
    monkeypatch.setattr(ld.DaskExecutor, "blocks", no_rows_to_the_client)
    got = ld.build(dask_array(data, (7001, DIM)), client, **settings)
    got.save(tmp_path / "dask.lplr")
    assert (got.nlist, got.nprobe) == (local.nlist, local.nprobe) and got.nlist == settings["nlist"]
    assert got.nprobe_report == local.nprobe_report
    assert (tmp_path / "dask.lplr").read_bytes() == (tmp_path / "local.lplr").read_bytes() == got.to_bytes()
    Q = data[:20] + 0.01
    for nprobe in (1, None):
        for a, b in zip(got.search(Q, 10, nprobe=nprobe), local.search(Q, 10, nprobe=nprobe)):
            np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def partitioned(data, blas_single_thread):
    """Partitioned indexes of the first N_IVF rows, per metric (grouped 4-bit codes, 2 bits per coordinate)."""
    cache = {}

    def get(metric):
        if metric not in cache:
            cache[metric] = LPLRIndex(DIM, bits_per_coordinate=2.0, metric=metric, seed=1,
                                      nlist=NLIST).build(data[:N_IVF])
            assert cache[metric].nlist == NLIST and cache[metric].bits_l == 4
        return cache[metric]

    return get


def per_shard_reference(index, bounds, queries, k, nprobe):
    """The index's own search restricted to each shard's rows (``allowed=``), merged as shards are."""
    from lplr_index.search.topk import merge_results

    parts = [tuple(index.search(queries, k, nprobe=nprobe, allowed=np.arange(a, b)))
             for a, b in zip(bounds[:-1], bounds[1:])]
    return merge_results(parts, k, index.metric)


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("n_shards", [1, 2, 3])
def test_sharded_partitioned_search_equals_the_index_search(n_shards, metric, ld, client, partitioned, queries):
    index = partitioned(metric)
    with ld.ShardedIndex(index, n_shards, client=client) as sharded:
        assert (sharded.nlist, sharded.nprobe, sharded.n_shards) == (NLIST, index.nprobe, n_shards)
        assert f"nlist={NLIST}, nprobe={index.nprobe}" in repr(sharded)
        exact = sharded.search(queries, 10, mode="factored", nprobe=2)  # the exact scan ignores nprobe
        found = {p: sharded.search(queries, 10, nprobe=p) for p in (1, 4, NLIST, None)}
        bounds = sharded.bounds
    for a, b in zip(exact, index.search(queries, 10, mode="factored")):
        np.testing.assert_array_equal(a, b)
    for nprobe, (D, I) in found.items():
        D0, I0 = index.search(queries, 10, nprobe=nprobe)
        if n_shards == 1:
            np.testing.assert_array_equal(I, I0)
            np.testing.assert_array_equal(D, D0)
        # every shard scans its rows of the index's nprobe lists: the index's search of each shard's
        # rows, bit for bit
        Dr, Ir = per_shard_reference(index, bounds, queries, 10, nprobe)
        np.testing.assert_array_equal(I, Ir)
        np.testing.assert_array_equal(D, Dr)
        # and at least as good as the index's search (a superset of its candidates is re-ranked)
        tol = 1e-5 * np.abs(D0).max()
        assert (D <= D0 + tol).all() if metric == "l2" else (D >= D0 - tol).all()
        assert np.isin(I, I0).mean() > 0.9  # observed 0.9475 to 1.0 (l2), 1.0 (cosine)


def test_sharded_partitioned_indexes_merge_and_refuse_another_quantizer(ld, client, partitioned, data, queries):
    import dataclasses

    index = partitioned("l2")
    copy = LPLRIndex.from_bytes(index.to_bytes())
    merged = LPLRIndex.from_bytes(index.to_bytes()).add(data[:N_IVF])  # the same rows twice, their lists alike
    np.testing.assert_array_equal(merged._state.ivf_lists, np.tile(index._state.ivf_lists, 2))
    with ld.ShardedIndex.from_indexes([index, copy], client=client) as sharded:
        assert (sharded.bounds, sharded.nlist, sharded.nprobe) == ([0, N_IVF, 2 * N_IVF], NLIST, index.nprobe)
        got = {p: sharded.search(queries, 10, nprobe=p) for p in (2, NLIST)}
        exact = sharded.search(queries, 10, mode="factored")
    for a, b in zip(exact, merged.search(queries, 10, mode="factored")):
        np.testing.assert_array_equal(a, b)
    for nprobe, (D, I) in got.items():
        Dr, Ir = per_shard_reference(merged, [0, N_IVF, 2 * N_IVF], queries, 10, nprobe)
        np.testing.assert_array_equal(I, Ir)
        np.testing.assert_array_equal(D, Dr)

    # the same encoder and settings, the same lists numbered otherwise: another coarse quantizer
    st = index._state
    rolled = LPLRIndex.from_bytes(index.to_bytes())
    rolled._state = dataclasses.replace(st, ivf_centroids=np.roll(st.ivf_centroids, 1, axis=0),
                                        ivf_lists=(st.ivf_lists + 1) % NLIST)
    for a, b in zip(rolled.search(queries, 10, nprobe=3), index.search(queries, 10, nprobe=3)):
        np.testing.assert_array_equal(a, b)  # a valid index, searched alike
    with pytest.raises(ValueError, match=r"indexes\[1\] cannot be merged with indexes\[0\]: the same encoder but "
                                         r"another coarse quantizer \(16 centroids, index 0 has 16 centroids: "
                                         r"the centroids differ\)"):
        ld.ShardedIndex.from_indexes([index, rolled], client=client)
    plain = LPLRIndex.from_bytes(index.to_bytes())
    plain._state = dataclasses.replace(st, ivf_centroids=None, ivf_lists=None, nprobe=None)
    with pytest.raises(ValueError, match=r"indexes\[2\] cannot be merged .* \(no lists, index 0 has 16 centroids"):
        ld.ShardedIndex.from_indexes([index, copy, plain], client=client)
    other = LPLRIndex(DIM, bits_per_coordinate=2.0, seed=1, nlist=8).build(data[:N_IVF])
    with pytest.raises(ValueError, match=r"indexes\[1\] cannot be merged .*nlist=8 \(index 0 has 16\)"):
        ld.ShardedIndex.from_indexes([index, other], client=client)
    settings = index.settings.to_header(rank=index.rank)
    prints = {ld.encoder_fingerprint(st.encoder, "l2", settings, c) for c in
              (None, st.ivf_centroids, rolled._state.ivf_centroids)}
    assert len(prints) == 3
    assert ld.encoder_fingerprint(st.encoder, "l2", settings) == ld.encoder_fingerprint(st.encoder, "l2", settings,
                                                                                        None)


def test_nprobe_is_refused_by_shards_without_lists_and_checked_with_them(ld, client, indexes, partitioned, queries):
    with ld.ShardedIndex(indexes("l2", 2.0), 2, client=client) as sharded:
        assert sharded.nlist is None and sharded.nprobe is None and "nlist" not in repr(sharded)
        with pytest.raises(ValueError, match=r"nprobe=4: these shards have no partition .*nlist=None"):
            sharded.search(queries, 10, nprobe=4)
        with pytest.raises(ValueError, match=r"nprobe=4: these shards have no partition"):
            sharded.search(queries, 10, mode="factored", nprobe=4)
    with ld.ShardedIndex(partitioned("l2"), 2, client=client) as sharded:
        for bad in (0, NLIST + 1):
            with pytest.raises(ValueError, match=rf"nprobe must be an integer in \[1, {NLIST}\], got {bad}"):
                sharded.search(queries, 10, nprobe=bad)
        with pytest.raises(TypeError, match=r"nprobe must be an integer, got 2.5"):
            sharded.search(queries, 10, nprobe=2.5)


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_sharded_partitioned_index_saves_and_loads(mmap, ld, client, partitioned, queries, tmp_path):
    import dataclasses
    import json

    from lplr_index import IndexFileError
    from lplr_index.fileformat import read_container, write_container

    index = partitioned("cosine")
    st = index._state
    with ld.ShardedIndex(index, 3, client=client) as sharded:
        manifest = sharded.save(tmp_path / "sharded")
        want = {p: sharded.search(queries, 10, nprobe=p) for p in (1, 4, None)}
        bounds = sharded.bounds
    with open(manifest) as f:
        m = json.load(f)
    assert (m["nlist"], m["nprobe"]) == (NLIST, index.nprobe)
    c = read_container(tmp_path / "sharded" / "shard-00001.lplrs")
    assert c.version == 5 and (c.header["nlist"], c.header["nprobe"]) == (NLIST, index.nprobe)
    np.testing.assert_array_equal(c.arrays["ivf_centroids"], st.ivf_centroids)
    assert c.arrays["ivf_lists"].nbytes == (bounds[2] - bounds[1]) * 4 // 8  # 4 bits a row for 16 lists
    shard = ld.Shard.load(tmp_path / "sharded" / "shard-00001.lplrs", mmap=mmap)
    assert (shard.nlist, shard.nprobe, shard.first_row) == (NLIST, index.nprobe, bounds[1])
    np.testing.assert_array_equal(shard.lists, st.ivf_lists[bounds[1]:bounds[2]])
    with ld.ShardedIndex.load(tmp_path / "sharded", client=client, mmap=mmap) as loaded:
        assert (loaded.bounds, loaded.fingerprint, loaded.nlist, loaded.nprobe) == (
            bounds, sharded.fingerprint, NLIST, index.nprobe)
        for nprobe, (D, I) in want.items():
            D2, I2 = loaded.search(queries, 10, nprobe=nprobe)
            np.testing.assert_array_equal(I2, I)
            np.testing.assert_array_equal(D2, D)

    # a shard of the same encoder with another coarse quantizer dropped in: refused, naming the file
    rolled = LPLRIndex.from_bytes(index.to_bytes())
    rolled._state = dataclasses.replace(st, ivf_centroids=np.roll(st.ivf_centroids, 1, axis=0),
                                        ivf_lists=(st.ivf_lists + 1) % NLIST)
    with ld.ShardedIndex(rolled, 3, client=client) as foreign:
        foreign.save(tmp_path / "rolled")
    path = tmp_path / "sharded" / "shard-00001.lplrs"
    original = path.read_bytes()
    path.write_bytes((tmp_path / "rolled" / "shard-00001.lplrs").read_bytes())
    with pytest.raises(IndexFileError, match=r"shard-00001.lplrs: this shard was built with another encoder "
                                             r"\(settings, seed, training data or coarse centroids\)"):
        ld.ShardedIndex.load(tmp_path / "sharded", client=client)
    path.write_bytes(original)

    def rewritten(match, header=None, **arrays):
        write_container(path, dict(c.header, **(header or {})), {**c.arrays, **arrays}, version=c.version)
        with pytest.raises(IndexFileError, match=match):
            ld.ShardedIndex.load(tmp_path / "sharded", client=client)
        path.write_bytes(original)

    lists = np.array(c.arrays["ivf_lists"])
    rewritten(r"shard-00001.lplrs: damaged .*ivf_lists of shape", ivf_lists=lists[:-1])
    rewritten(r"shard-00001.lplrs: damaged .*nprobe must be an integer in \[1, 16\], got 17",
              header={"nprobe": NLIST + 1})
    rewritten(r"shard-00001.lplrs: damaged .*ivf_centroids of shape", header={"nlist": 8})
    rewritten(r"shard-00001.lplrs: the shard's encoder does not give its recorded fingerprint",
              ivf_centroids=np.asarray(c.arrays["ivf_centroids"]) * 2)
    # a manifest that says the index has no lists (as written before partitioned shards)
    (tmp_path / "sharded" / "manifest.json").write_text(json.dumps(dict(m, nlist=None, nprobe=None)))
    with pytest.raises(IndexFileError, match=r"shard-00000.lplrs: holds 16 coarse lists, but the manifest says "
                                             r"nlist=None"):
        ld.ShardedIndex.load(tmp_path / "sharded", client=client)


def test_a_shard_builds_its_search_structures_once_under_concurrent_searches(ld, partitioned, queries,
                                                                               monkeypatch):
    import threading
    import time

    index = partitioned("l2")
    st = index._state
    shard = ld.Shard(st.encoder, st.store.codes[:5000], "l2", 0, index.settings.to_header(rank=index.rank),
                     centroids=st.ivf_centroids, lists=st.ivf_lists[:5000], nprobe=index.nprobe)
    made = []
    real = ld.ivf_search.IVFScorer.from_assignment

    def slow(*args, **kwargs):
        made.append(1)
        time.sleep(0.2)  # the other searches arrive while it is built
        return real(*args, **kwargs)

    monkeypatch.setattr(ld.ivf_search.IVFScorer, "from_assignment", slow)
    results = [None] * 4

    def run(j):
        results[j] = shard.search(queries, 10, "fastscan", None, 4)

    threads = [threading.Thread(target=run, args=(j,)) for j in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(made) == 1
    for D, I in results[1:]:
        np.testing.assert_array_equal(I, results[0][1])
        np.testing.assert_array_equal(D, results[0][0])


def test_shards_wait_for_a_worker_to_join(ld, monkeypatch):
    # a cluster listing no workers (just started, or restarting them) is waited for, then refused
    class Client:
        def __init__(self, joins):
            self.joins, self.waited = joins, []

        def scheduler_info(self):
            return {"workers": {"tcp://b": {}, "tcp://a": {}} if self.waited and self.joins else {}}

        def wait_for_workers(self, n, timeout):
            self.waited.append((n, timeout))
            if not self.joins:
                raise TimeoutError

    monkeypatch.setattr(ld, "WORKER_WAIT_S", 0.5)
    joining = Client(joins=True)
    assert ld._workers(joining) == ["tcp://a", "tcp://b"] and joining.waited == [(1, 0.5)]
    with pytest.raises(ValueError, match=r"no workers to hold shards \(none joined within 0.5 s\)"):
        ld._workers(Client(joins=False))
