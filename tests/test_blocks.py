"""Out-of-core inputs of build/add: every kind of input gives the same index, byte for byte.

The data has three canonical blocks (2 * BLOCK_ROWS + 1234 rows), more rows than
the seeded sample, so re-blocking, the sample's random access and the block-order
reduction are all exercised.
"""

from __future__ import annotations

import os
import tempfile
import tracemalloc

import numpy as np
import pytest

from lplr_index import LPLRIndex
from lplr_index._blocks import (
    BLOCK_ROWS,
    ArraySource,
    ChunkedSource,
    IterableSource,
    _MappedPages,
    reblock,
    spool,
)
from lplr_index._inputs import open_source
from lplr_index.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("blas_single_thread")

N, DIM = 2 * BLOCK_ROWS + 1234, 24
#: odd piece sizes (the rest of the rows follow as one last piece)
SIZES = (1000, 7, BLOCK_ROWS + 1, 5000, 3)
SETTINGS = dict(bits_per_coordinate=1.0, seed=3)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[np.ndarray, str]:
    """(N, DIM) float32 vectors with a decaying spectrum, and the same saved as a .npy."""
    rng = np.random.default_rng(4242)
    X = (rng.standard_normal((N, DIM)) * 0.8 ** np.arange(DIM)).astype(np.float32)
    X.setflags(write=False)
    path = str(tmp_path_factory.mktemp("blocks") / "x.npy")
    np.save(path, X)
    return X, path


def pieces(X: np.ndarray) -> list[np.ndarray]:
    cuts = np.cumsum((0,) + SIZES)
    return [X[a:b] for a, b in zip(cuts[:-1], cuts[1:])] + [X[cuts[-1]:]]


class Reiterable:
    """An object whose ``__iter__`` gives a fresh iterator over the same pieces (read once per pass)."""

    def __init__(self, parts):
        self.parts, self.passes = parts, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.parts)


def saved_bytes(index: LPLRIndex, tmp_path, name: str = "index.lplr") -> bytes:
    path = tmp_path / name
    index.save(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory) -> bytes:
    X, _ = data
    return saved_bytes(LPLRIndex(DIM, **SETTINGS).build(X), tmp_path_factory.mktemp("ref"))


INPUTS = {
    "memmap": lambda X, path: np.load(path, mmap_mode="r"),
    "path": lambda X, path: path,
    "float64": lambda X, path: X.astype(np.float64),
    "list-of-odd-blocks": lambda X, path: pieces(X),
    "tuple-of-float64-blocks": lambda X, path: tuple(p.astype(np.float64) for p in pieces(X)),
    "generator": lambda X, path: (p for p in pieces(X)),
    "iterator": lambda X, path: iter(pieces(X)),
    "reiterable": lambda X, path: Reiterable(pieces(X)),
    "read-rows-1000": lambda X, path: ArraySource(np.load(path, mmap_mode="r"), read_rows=1000),
    "read-rows-50000": lambda X, path: ArraySource(X, read_rows=50000),
}


@pytest.mark.parametrize("kind", list(INPUTS))
def test_every_input_builds_the_same_file(kind, data, reference, tmp_path, monkeypatch):
    X, path = data
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where a one-shot iterator is spooled
    index = LPLRIndex(DIM, **SETTINGS).build(INPUTS[kind](X, path))
    assert index.ntotal == N
    assert saved_bytes(index, tmp_path) == reference
    assert [f for f in os.listdir(tmp_path) if f.startswith("lplr-spool")] == []  # spool file removed


@pytest.mark.parametrize("kind", ["list-of-odd-blocks", "generator", "reiterable", "path"])
def test_add_from_any_input_matches_add_from_the_array(kind, data, tmp_path):
    X, path = data
    base = X[:3000]
    want = LPLRIndex(DIM, **SETTINGS).build(base).add(X)
    got = LPLRIndex(DIM, **SETTINGS).build(base).add(INPUTS[kind](X, path))
    assert got.to_bytes() == want.to_bytes()


def test_reiterable_is_read_once_per_pass(data):
    X, _ = data
    src = Reiterable(pieces(X))
    LPLRIndex(DIM, refine_iters=1, rank=4).build(src)
    # counting pass + sample pass + (1 + refine_iters) fitting passes + encoding pass
    assert src.passes == 2 + 2 + 1


def test_reiterable_yielding_other_rows_on_a_later_pass_is_refused(data):
    X, _ = data

    class Shrinking:
        calls = 0

        def __iter__(self):
            self.calls += 1
            return iter([X[:20000]] if self.calls > 1 else [X[:20000], X[20000:21000]])

    with pytest.raises(ValueError, match=r"yielded 20000 rows on this pass, but 21000 on the first.*same rows"):
        LPLRIndex(DIM, rank=4).build(Shrinking())

    class Growing:
        calls = 0

        def __iter__(self):
            self.calls += 1
            return iter([X[:100]] * (1 if self.calls == 1 else 2))

    with pytest.raises(ValueError, match=r"yielded more than 100 rows on this pass, but 100 on the first"):
        LPLRIndex(DIM, rank=4).build(Growing())


@pytest.mark.parametrize("make", [lambda bad: [bad[:1000], bad[1000:]], lambda bad: iter([bad[:1000], bad[1000:]])],
                         ids=["list", "generator"])
def test_a_bad_value_is_named_by_its_row_in_the_whole_input(make, data, tmp_path, monkeypatch):
    X, _ = data
    bad = np.array(X[:20000])
    bad[17001, 5] = np.nan
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with pytest.raises(ValueError, match=r"non-finite value \(nan\) at row 17001, column 5"):
        LPLRIndex(DIM, rank=4).build(make(bad))
    assert os.listdir(tmp_path) == []  # the half-written spool file is gone


def test_blocks_of_the_wrong_width_name_the_block(data):
    X, _ = data
    with pytest.raises(ValueError, match=r"X: block 1 has 23 dimensions, but the blocks before it have 24"):
        LPLRIndex(DIM, rank=4).build([X[:10], X[:10, :23]])
    with pytest.raises(ValueError, match=r"X: block 0 has 24 dimensions, but this index holds 25-dimensional"):
        LPLRIndex(DIM + 1, rank=4).build(iter([X[:10]]))
    with pytest.raises(TypeError, match=r"X: block 1 must hold real numbers .* got dtype <U1"):
        LPLRIndex(DIM, rank=4).build(iter([X[:10], np.full((2, DIM), "a")]))


def test_empty_iterables_are_refused(tmp_path):
    with pytest.raises(ValueError, match="X must hold at least one row, got an iterator that yielded none"):
        LPLRIndex(DIM, rank=4).build(iter([]))
    with pytest.raises(ValueError, match="X must hold at least one row, got an iterable that yielded none"):
        LPLRIndex(DIM, rank=4).build(Reiterable([]))


def test_a_list_of_rows_is_still_an_array(data):
    X, _ = data
    rows = X[:300].tolist()
    assert isinstance(open_source(rows, "X", DIM), ArraySource)
    assert isinstance(open_source(pieces(X), "X", DIM), ChunkedSource)
    assert isinstance(open_source(Reiterable(pieces(X)), "X", DIM), IterableSource)
    a = LPLRIndex(DIM, rank=4).build(rows)
    b = LPLRIndex(DIM, rank=4).build(X[:300])
    assert a.to_bytes() == b.to_bytes()


def test_reblock_gives_canonical_blocks_of_the_same_rows(data):
    X, _ = data
    got = list(reblock(pieces(X), "X", DIM))
    assert [s for s, _ in got] == [0, BLOCK_ROWS, 2 * BLOCK_ROWS]
    assert [len(b) for _, b in got] == [BLOCK_ROWS, BLOCK_ROWS, 1234]
    assert all(b.dtype == np.float32 and b.flags.c_contiguous for _, b in got)
    np.testing.assert_array_equal(np.concatenate([b for _, b in got]), X)


@pytest.mark.parametrize("make", [lambda X, p: ChunkedSource(pieces(X)),
                                  lambda X, p: IterableSource(Reiterable(pieces(X))),
                                  lambda X, p: ArraySource(np.load(p, mmap_mode="r"))],
                         ids=["chunked", "iterable", "memmap"])
def test_take_gathers_the_sample_rows(make, data):
    X, path = data
    rows = np.sort(np.random.default_rng(1).choice(N, 500, replace=False))
    np.testing.assert_array_equal(make(X, path).take(rows), X[rows])


def test_spool_writes_a_npy_to_the_given_folder_and_removes_it(data, tmp_path):
    X, _ = data
    seen = []

    def gen():
        for p in pieces(X):
            seen.append(os.listdir(tmp_path))
            yield p

    M = spool(gen(), "X", DIM, tmp_path)
    assert seen[-1] and seen[-1][0].startswith("lplr-spool-") and seen[-1][0].endswith(".npy")
    assert os.listdir(tmp_path) == []  # unlinked once mapped; the map keeps the data
    assert M.dtype == np.float32 and M.shape == (N, DIM)
    np.testing.assert_array_equal(M, X)


def test_spool_failure_in_a_missing_folder_names_it(data, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(OSError, match=r"X: cannot create a spool file in .*nope"):
        spool(iter([data[0][:10]]), "X", DIM, missing)


def test_ctrl_c_while_spooling_removes_the_file(data, tmp_path):
    X, _ = data

    def gen():
        yield X[:100]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        spool(gen(), "X", DIM, tmp_path)
    assert os.listdir(tmp_path) == []


def test_read_rows_must_be_a_positive_integer(data):
    with pytest.raises(ValueError, match=r"read_rows must be an integer >= 1 \(rows read per block\), got 0"):
        ArraySource(data[0], read_rows=0)


def test_read_only_memmaps_hand_their_pages_back(data):
    X, path = data
    assert _MappedPages.of(np.load(path, mmap_mode="r")) is not None
    assert _MappedPages.of(np.load(path, mmap_mode="c")) is None  # copy-on-write: never dropped
    assert _MappedPages.of(X) is None


def test_memory_stays_bounded_by_a_few_blocks(tmp_path):
    """A float64 memmap of 20 blocks: the build allocates a few blocks, not the (float32) matrix."""
    n, d = 20 * BLOCK_ROWS, 32
    path = tmp_path / "big.npy"
    M = np.lib.format.open_memmap(path, mode="w+", dtype=np.float64, shape=(n, d))
    rng = np.random.default_rng(7)
    for s in range(0, n, BLOCK_ROWS):
        M[s : s + BLOCK_ROWS] = rng.standard_normal((BLOCK_ROWS, d))
    M.flush()
    del M
    tracemalloc.start()
    try:
        LPLRIndex(d, rank=8, refine_iters=1).build(np.load(path, mmap_mode="r"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    float32_matrix = n * d * 4  # 42 MB; one block is 2.1 MB, the codes 2.6 MB
    assert peak < 0.5 * float32_matrix, peak  # observed: 16.8 MB (15.5 MB with 10 blocks)


@pytest.mark.parametrize("block_rows", ["1000", "100000"])
def test_cli_block_rows_does_not_change_the_index(block_rows, data, reference, tmp_path):
    _, path = data
    out = tmp_path / "cli.lplr"
    argv = ["--no-progress", "-q", "build", path, "-o", str(out), "-b", "1", "--seed", "3",
            "--block-rows", block_rows]
    assert cli_main(argv) == 0
    assert out.read_bytes() == reference
    assert cli_main(["-q", "add", str(out), path, "--block-rows", block_rows]) == 0
    assert LPLRIndex.load(out).ntotal == 2 * N


def test_cli_block_rows_must_be_positive(data, tmp_path, capsys):
    assert cli_main(["build", data[1], "-o", str(tmp_path / "x.lplr"), "-b", "1", "--block-rows", "0"]) != 0
    assert "--block-rows: must be an integer >= 1, got 0" in capsys.readouterr().err
