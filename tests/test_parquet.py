"""Parquet and Arrow input (issue 26): datasets written by pyarrow and pandas, read as the same rows as .npy.

Every dataset is written into tmp_path from seeded data. The index sees only a
source's canonical blocks and its sampled rows (``take``), so most layouts are
checked on those; full builds compare ``to_bytes()`` with the build of the
same rows saved as ``.npy``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytest.importorskip("pyarrow.dataset")

from lplr_index import LPLRIndex  # noqa: E402
from lplr_index._blocks import BLOCK_ROWS, ArraySource  # noqa: E402
from lplr_index._inputs import open_source  # noqa: E402
from lplr_index.parquet import ParquetSource  # noqa: E402
from lplr_index.vecio import VectorFileError  # noqa: E402

pytestmark = pytest.mark.usefixtures("blas_single_thread")

N, DIM = BLOCK_ROWS + 2500, 12
#: the fast scalar codes (3 passes) for most comparisons; the default grouped codes of a budget in one
SETTINGS = dict(rank=4, codec="scalar", refine_iters=1, seed=2)
BUDGET = dict(bits_per_coordinate=1.0, seed=2)
ID_SETTINGS = SETTINGS
#: file boundaries of the multi-file dataset: an empty file, a file of one row, row groups across block edges
CUTS = [0, 6000, 6000, 6001, 15000, N]


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    rng = np.random.default_rng(2626)
    X = (rng.standard_normal((N, DIM)) * 0.85 ** np.arange(DIM)).astype(np.float32)
    X.setflags(write=False)
    return X


def fixed(X: np.ndarray):
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(X).ravel()), X.shape[1])


def write_dataset(folder, X, *, vectors=fixed, ids=None, cuts=CUTS, row_group_size=4000):
    """``X`` split into part-<k>.parquet files at ``cuts``, each in row groups; an id column beside."""
    os.makedirs(folder, exist_ok=True)
    ids = np.arange(len(X)) if ids is None else ids
    for k, (a, b) in enumerate(zip(cuts[:-1], cuts[1:])):
        table = pa.table({"id": pa.array(ids[a:b], pa.int64()), "emb": vectors(X[a:b]),
                          "text": pa.array([f"row {i}" for i in range(a, b)], pa.string())})
        pq.write_table(table, os.path.join(folder, f"part-{k}.parquet"), row_group_size=row_group_size)
    return folder


@pytest.fixture(scope="module")
def dataset(data, tmp_path_factory):
    return write_dataset(str(tmp_path_factory.mktemp("pq") / "emb"), data, ids=np.arange(N) * 7 + 3)


@pytest.fixture(scope="module")
def npy(data, tmp_path_factory):
    path = tmp_path_factory.mktemp("npy") / "x.npy"
    np.save(path, data)
    return str(path)


@pytest.fixture(scope="module")
def reference(npy) -> bytes:
    return LPLRIndex(DIM, **SETTINGS).build(npy).to_bytes()


def blocks_of(source):
    return [(s, b.copy()) for s, b in source.blocks()]


def assert_same_rows(source, X):
    """The canonical blocks and a random gather of ``source`` are those of ``X`` (float32)."""
    want = ArraySource(np.asarray(X))
    assert (source.n, source.dim) == (want.n, want.dim)
    got = blocks_of(source)
    exp = blocks_of(want)
    assert [s for s, _ in got] == [s for s, _ in exp]
    for (_, g), (_, e) in zip(got, exp):
        assert g.dtype == np.float32 and g.flags.c_contiguous
        np.testing.assert_array_equal(g, e)
    rows = np.unique(np.random.default_rng(5).integers(0, want.n, 300))
    np.testing.assert_array_equal(source.take(rows), want.take(rows))


# ------------------------------------------------------------ import rules
def test_import_lplr_index_does_not_import_pyarrow():
    code = ("import sys, lplr_index, lplr_index.cli, lplr_index.parquet; lplr_index.cli.build_parser().format_help(); "
            "print(sorted(m for m in ('pyarrow', 'pandas') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_without_pyarrow_the_error_says_how_to_install_it(dataset):
    code = ("import sys; sys.modules['pyarrow'] = None\n"
            "from lplr_index import LPLRIndex\n"
            f"try:\n    LPLRIndex(12, rank=2).build({dataset!r}, column='emb')\n"
            "except ImportError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert 'pip install "lplr-index[parquet]"' in out.stdout


# ------------------------------------------------ the same index as the .npy
def test_a_folder_of_files_builds_the_npy_index_byte_for_byte(dataset, reference):
    index = LPLRIndex(DIM, **SETTINGS).build(dataset, column="emb")
    assert index.to_bytes() == reference


def test_grouped_codes_of_a_budget_from_parquet_are_the_npy_index(dataset, npy):
    index = LPLRIndex(DIM, **BUDGET).build(dataset)  # the only column of vectors
    assert index.codec == "vq" and index.to_bytes() == LPLRIndex(DIM, **BUDGET).build(npy).to_bytes()


def test_every_way_of_naming_the_files_gives_the_same_rows(dataset, data):
    import pyarrow.dataset as ds

    files = sorted(os.path.join(dataset, f) for f in os.listdir(dataset))
    for X in (dataset, os.path.join(dataset, "part-*.parquet"), files, ds.dataset(dataset),
              pq.read_table(dataset), pa.record_batch({"emb": fixed(data[:3000])})):
        source = open_source(X, column="emb")
        expected = data if not isinstance(X, pa.RecordBatch) else data[: X.num_rows]
        assert_same_rows(source, expected)


def test_the_rows_of_a_folder_follow_pyarrow_s_file_order(tmp_path, data):
    """part.10 sorts before part.2: the order of pyarrow.parquet.read_table and pandas.read_parquet."""
    X = data[:1200]
    for k in range(12):
        pq.write_table(pa.table({"v": fixed(X[k * 100 : (k + 1) * 100])}), tmp_path / f"part.{k}.parquet")
    source = ParquetSource(tmp_path, "v")
    np.testing.assert_array_equal(source.read(), pq.read_table(tmp_path).column("v").combine_chunks()
                                  .flatten().to_numpy().reshape(-1, DIM))
    assert [os.path.basename(f) for f in source.files][:4] == ["part.0.parquet", "part.1.parquet",
                                                              "part.10.parquet", "part.11.parquet"]


def test_one_shot_record_batch_streams_are_spooled_with_their_ids(dataset, reference, tmp_path):
    reader = pq.ParquetFile(os.path.join(dataset, "part-0.parquet")).iter_batches(batch_size=999)
    table = pq.read_table(dataset)
    for X in (table.to_reader(max_chunksize=3333), iter(table.to_batches(max_chunksize=5000))):
        index = LPLRIndex(DIM, **SETTINGS).build(X, column="emb", spool_dir=tmp_path)
        assert index.to_bytes() == reference
        assert os.listdir(tmp_path) == []
    source = open_source(reader, column="emb", id_column="id")
    assert source.n == 6000
    np.testing.assert_array_equal(source.read_ids(), np.arange(6000) * 7 + 3)


def test_the_blocks_do_not_depend_on_read_rows_or_row_groups(dataset, data, tmp_path):
    for read_rows in (777, BLOCK_ROWS + 5):
        assert_same_rows(ParquetSource(dataset, "emb", read_rows=read_rows), data)
    assert_same_rows(ParquetSource(pq.read_table(dataset).slice(5990, 40), "emb", read_rows=1), data[5990:6030])
    one_file = write_dataset(str(tmp_path / "one"), data, cuts=[0, N], row_group_size=N)
    assert_same_rows(ParquetSource(one_file, "emb"), data)


# ------------------------------------------------------------- the layouts
def _as_list(value_type, large=False):
    def make(X):
        t = pa.large_list(value_type) if large else pa.list_(value_type)
        return pa.array(list(X), t)
    return make


@pytest.mark.parametrize("layout", ["list-float16", "list-float64", "large-list-float32", "fixed-float16",
                                    "fixed-float64", "fixed-int8", "binary", "fixed-binary", "tensor"])
def test_each_vector_layout_reads_the_rows_it_stores(layout, data, tmp_path):
    X = data[:5000]
    if "int8" in layout:
        X = np.clip(np.round(X * 40), -128, 127).astype(np.int8)
    elif "float16" in layout:
        X = X.astype(np.float16)
    elif "float64" in layout:
        X = X.astype(np.float64) / 3
    column = {
        "list-float16": _as_list(pa.float16()), "list-float64": _as_list(pa.float64()),
        "large-list-float32": _as_list(pa.float32(), large=True),
        "binary": lambda X: pa.array([r.tobytes() for r in X.astype("<f4")], pa.binary()),
        "fixed-binary": lambda X: pa.array([r.tobytes() for r in X.astype("<f4")], pa.binary(4 * DIM)),
        "tensor": lambda X: pa.FixedShapeTensorArray.from_numpy_ndarray(np.ascontiguousarray(X, np.float32)),
    }.get(layout, fixed)
    folder = write_dataset(str(tmp_path / "d"), X, vectors=column, cuts=[0, 2000, 5000], row_group_size=1500)
    if layout == "tensor":  # an extension type is stored in Parquet as its storage type: test it in memory
        folder = pa.table({"emb": column(X)})
    source = open_source(folder, column="emb")
    assert_same_rows(source, X)


def test_pandas_written_datasets_and_dataframes(data, tmp_path):
    pd = pytest.importorskip("pandas")
    X = data[:7000].astype(np.float16)
    os.makedirs(tmp_path / "pd")
    for k, (a, b) in enumerate([(0, 2500), (2500, 7000)]):
        df = pd.DataFrame({"doc": np.arange(a, b) + 100, "embedding": list(X[a:b]), "title": ["t"] * (b - a)})
        df.to_parquet(tmp_path / "pd" / f"{k:05d}.parquet", row_group_size=1000)
    source = ParquetSource(tmp_path / "pd", "embedding", "doc")
    assert_same_rows(source, X)
    np.testing.assert_array_equal(source.read_ids(), np.arange(7000) + 100)
    np.save(tmp_path / "x16.npy", X)
    want = LPLRIndex(DIM, **SETTINGS).build(str(tmp_path / "x16.npy"), ids=np.arange(7000) + 100).to_bytes()
    assert LPLRIndex(DIM, **SETTINGS).build(tmp_path / "pd", id_column="doc").to_bytes() == want
    frame = pd.read_parquet(tmp_path / "pd")
    assert LPLRIndex(DIM, **SETTINGS).build(frame, column="embedding", id_column="doc").to_bytes() == want


# ------------------------------------------------------------------- ids
def test_id_column_gives_the_ids_of_build_and_add(dataset, data, npy):
    ids = np.arange(N) * 7 + 3
    index = LPLRIndex(DIM, **ID_SETTINGS).build(dataset, column="emb", id_column="id")
    assert index.has_user_ids and index.to_bytes() == LPLRIndex(DIM, **ID_SETTINGS).build(npy, ids=ids).to_bytes()
    small = LPLRIndex(DIM, rank=4, seed=2).build(data[:3000], ids=np.arange(3000) + 10**9)
    expected = LPLRIndex.from_bytes(small.to_bytes()).add(data, ids=ids)
    assert small.add(dataset, id_column="id").to_bytes() == expected.to_bytes()
    with pytest.raises(ValueError, match="give ids or id_column, not both"):
        LPLRIndex(DIM, **SETTINGS).build(dataset, ids=ids, id_column="id")
    with pytest.raises(TypeError, match="apply to Parquet and Arrow inputs"):
        LPLRIndex(DIM, **SETTINGS).build(data, column="emb")


# ----------------------------------------------------------------- errors
def _write(path, **columns):
    pq.write_table(pa.table(columns), path, row_group_size=3)
    return str(path)


def _rows(n=10, d=4):
    return [np.arange(d, dtype=np.float32) + i for i in range(n)]


def test_errors_name_the_file_the_row_group_the_column_and_the_row(tmp_path):
    ragged = _rows()
    ragged[7] = ragged[7][:3]
    nulls = _rows()
    nulls[4] = None
    nan = _rows()
    nan[8] = nan[8].copy()
    nan[8][2] = np.nan
    cases = {
        "ragged": (_write(tmp_path / "ragged.parquet", v=pa.array(ragged, pa.list_(pa.float32()))),
                   r"ragged\.parquet, row group 2, column 'v': row 7 has 3 values, but the vectors have 4 "
                   r"dimensions \(ragged rows"),
        "null row": (_write(tmp_path / "null.parquet", v=pa.array(nulls, pa.list_(pa.float32()))),
                     r"null\.parquet, row group 1, column 'v': row 4 is null \(a missing vector\)"),
        "null value": (_write(tmp_path / "nullval.parquet",
                              v=pa.array([[1.0, 2.0]] * 4 + [[1.0, None]], pa.list_(pa.float64()))),
                       r"nullval\.parquet, row group 1, column 'v': row 4 has a null value at position 1"),
        "nan": (_write(tmp_path / "nan.parquet", v=pa.array(nan, pa.list_(pa.float32()))),
                r"nan\.parquet, row group 2, column 'v': the vectors must be finite .* non-finite value \(nan\) at "
                r"row 8, position 2 of the vector"),
        "strings": (_write(tmp_path / "str.parquet", v=pa.array(["a", "b"])),
                    r"str\.parquet, column 'v' holds string, not vectors"),
        "list of strings": (_write(tmp_path / "lstr.parquet", v=pa.array([["a"], ["b"]])),
                            r"lstr\.parquet, column 'v' holds list<string>, not vectors"),
        "bad binary": (_write(tmp_path / "bin.parquet", v=pa.array([b"\0" * 8, b"\0" * 6])),
                       r"bin\.parquet, row group 0, column 'v': row 1 holds 6 bytes, but a vector of 2 float32 "
                       r"values takes 8"),
    }
    for what, (path, message) in cases.items():
        with pytest.raises(VectorFileError, match=message):
            ParquetSource(path, "v").read()
    with pytest.raises(VectorFileError, match=cases["ragged"][1]):  # and from build, the index left empty
        index = LPLRIndex(4, rank=2)
        index.build(cases["ragged"][0], column="v")
    assert not index.is_built
    # a wrong dimension: between files, between row groups of lists, against the index
    os.makedirs(tmp_path / "d")
    _write(tmp_path / "d" / "a.parquet", v=fixed(np.ones((4, 4), np.float32)))
    _write(tmp_path / "d" / "b.parquet", v=fixed(np.ones((4, 5), np.float32)))
    with pytest.raises(VectorFileError, match=r"column 'v' holds 4-dimensional vectors in file .*a\.parquet but "
                                              r"5-dimensional ones in file .*b\.parquet"):
        ParquetSource(tmp_path / "d", "v")
    with pytest.raises(ValueError, match=r"X has 4 dimensions \(column 'v'\), but this index holds 6"):
        LPLRIndex(6, rank=2).build(tmp_path / "d" / "a.parquet", column="v")
    # the column: missing, not given among several, ids that are not integers or null
    with pytest.raises(VectorFileError, match=r"a\.parquet has no column 'w'; its columns are 'v'"):
        ParquetSource(tmp_path / "d" / "a.parquet", "w")
    two = _write(tmp_path / "two.parquet", v=fixed(np.ones((3, 2), np.float32)), w=fixed(np.ones((3, 2))))
    with pytest.raises(VectorFileError, match=r"2 columns \('v', 'w'\) of vectors .* name the vector column"):
        ParquetSource(two)
    idnull = _write(tmp_path / "idnull.parquet", v=fixed(np.ones((5, 2))), i=pa.array([1, 2, 3, None, 5]))
    with pytest.raises(VectorFileError, match=r"idnull\.parquet, row group 1, id column 'i': row 3 has no id"):
        LPLRIndex(2, rank=1).build(idnull, id_column="i")
    with pytest.raises(VectorFileError, match=r"id column 'v' holds .*, not integers"):
        ParquetSource(idnull, "v", "v")
    with pytest.raises(FileNotFoundError, match="no file matches the pattern"):
        ParquetSource(str(tmp_path / "nothing-*.parquet"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.parquet").write_text("not parquet")
    with pytest.raises(VectorFileError, match=r"notes\.parquet"):
        ParquetSource(tmp_path / "junk")


# ---------------------------------------------------------------- memory
def test_a_pass_holds_a_few_blocks_not_the_dataset(tmp_path):
    """Rows are decoded one record batch at a time: a pass over a dataset of 8 canonical blocks
    (8 MiB of float32) holds at most 3 blocks of numpy memory and 2 MiB of Arrow memory at a time."""
    n, d = 8 * BLOCK_ROWS, 16
    X = np.random.default_rng(9).standard_normal((n, d)).astype(np.float32)
    write_dataset(str(tmp_path / "big"), X, cuts=[0, n // 3, n], row_group_size=BLOCK_ROWS // 2)
    del X
    source = ParquetSource(tmp_path / "big", "emb")
    block_bytes = BLOCK_ROWS * d * 4
    arrow_peak = 0
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        rows = 0
        for _, block in source.blocks():
            rows += len(block)
            arrow_peak = max(arrow_peak, pa.total_allocated_bytes())
        numpy_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert rows == n
    assert numpy_peak < 3 * block_bytes, numpy_peak
    assert arrow_peak < 2 * block_bytes, arrow_peak


# -------------------------------------------------------------------- CLI
def test_the_command_line_reads_parquet(dataset, npy, data, tmp_path, capsys):
    from lplr_index.cli import main

    args = ["--rank", "4", "--codec", "scalar", "--refine-iters", "1", "--seed", "2"]
    assert main(["build", npy, "-o", str(tmp_path / "npy.lplr"), *args]) == 0
    assert main(["build", dataset, "--column", "emb", "-o", str(tmp_path / "pq.lplr"), *args]) == 0
    assert (tmp_path / "npy.lplr").read_bytes() == (tmp_path / "pq.lplr").read_bytes()
    assert main(["build", os.path.join(dataset, "*.parquet"), "--id-column", "id", "--block-rows", "1000",
                 "-o", str(tmp_path / "ids.lplr"), *args]) == 0
    assert np.array_equal(LPLRIndex.load(tmp_path / "ids.lplr").ids, np.arange(N) * 7 + 3)
    queries = str(tmp_path / "q.parquet")
    pq.write_table(pa.table({"q": fixed(data[:50])}), queries)
    capsys.readouterr()
    assert main(["search", str(tmp_path / "pq.lplr"), queries, "--column", "q", "-k", "2", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    expected = LPLRIndex.load(tmp_path / "npy.lplr").search(data[:50], 2)
    assert found["indices"] == np.asarray(expected[1]).tolist()
    # errors: one line naming the file, row group and column; flags on a non-Parquet file
    ragged = _rows()
    ragged[5] = ragged[5][:2]
    bad = _write(tmp_path / "ragged.parquet", v=pa.array(ragged, pa.list_(pa.float32())))
    assert main(["build", bad, "-o", str(tmp_path / "x.lplr"), *args]) == 1
    err = capsys.readouterr().err
    assert "ragged.parquet, row group 1, column 'v': row 5 has 2 values" in err and err.count("\n") <= 2
    assert main(["build", npy, "--column", "emb", "-o", str(tmp_path / "x.lplr"), *args]) == 1
    assert "--column applies to Parquet files" in capsys.readouterr().err
    assert main(["build", "--help"]) == 0
    assert "Parquet" in capsys.readouterr().out


# ------------------------------------------------------------------- Dask
@pytest.fixture(scope="module")
def client():
    pytest.importorskip("dask.dataframe")
    distributed = pytest.importorskip("distributed")
    one_thread = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                                  env=one_thread) as cluster, distributed.Client(cluster) as c:
        yield c


def test_dask_builds_from_parquet_files_and_dataframes(client, dataset, reference, npy):
    import dask.dataframe as dd

    from lplr_index import distributed as ld

    X = ld.from_parquet(dataset, "emb")
    assert X.shape == (N, DIM) and X.chunks[0][:3] == (4000, 2000, 1)
    assert ld.build(dataset, client, column="emb", **SETTINGS).to_bytes() == reference
    ids = np.arange(N) * 7 + 3
    with_ids = LPLRIndex(DIM, **ID_SETTINGS).build(npy, ids=ids).to_bytes()
    frame = dd.read_parquet(dataset)  # part-0 .. part-4: the same order as pyarrow's
    assert ld.build(frame, client, column="emb", id_column="id", **ID_SETTINGS).to_bytes() == with_ids
    bad = frame.assign(emb=frame["text"])
    with pytest.raises(VectorFileError, match=r"partition \d+: the table, column 'emb' holds large_string, not"):
        ld.build(bad, client, column="emb", **SETTINGS)
