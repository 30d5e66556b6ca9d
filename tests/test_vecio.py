"""Vector files (lplr_index.vecio) and the command line reading them.

Every fixture file is written by the tests into their own temporary folder.
"""

from __future__ import annotations

import json
import logging
import struct
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lplr_index import exact_knn
from lplr_index.cli import main
from lplr_index.vecio import (
    FORMATS,
    VectorFileError,
    hdf5_datasets,
    hdf5_metric,
    iter_row_blocks,
    read_array,
    read_ground_truth,
    read_ids,
    read_vectors,
    write_bvecs,
    write_fvecs,
    write_ivecs,
)

h5py = pytest.importorskip("h5py")

pytestmark = pytest.mark.usefixtures("blas_single_thread")


@pytest.fixture
def X(rng) -> np.ndarray:
    return rng.standard_normal((37, 5)).astype(np.float32)


def write_hdf5(path, datasets: dict, **attrs) -> None:
    """An ANN-benchmarks-style file: one contiguous dataset per entry, attributes on the root."""
    with h5py.File(path, "w") as f:
        for name, value in datasets.items():
            f.create_dataset(name, data=value)
        f.attrs.update(attrs)


# ------------------------------------------------------------- round trips
def _npy(path, X):
    np.save(path, X)


def _npz_single(path, X):
    np.savez(path, anything=X)


def _npz_embeddings(path, X):
    np.savez_compressed(path, labels=np.arange(len(X)), embeddings=X)


def _hdf5(path, X):
    write_hdf5(path, {"train": X, "test": X[:3]})


WRITERS = {
    ".npy": _npy,
    ".npz-single": _npz_single,
    ".npz-embeddings": _npz_embeddings,
    ".fvecs": write_fvecs,
    ".hdf5": _hdf5,
}


@pytest.mark.parametrize("fmt", WRITERS, ids=str)
@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
def test_float_round_trip(tmp_path, X, fmt, mmap):
    path = tmp_path / f"x{fmt.split('-')[0]}"
    WRITERS[fmt](path, X)
    Y = read_vectors(path, mmap=mmap)
    assert Y.dtype == np.float32 and Y.shape == X.shape
    np.testing.assert_array_equal(Y, X)  # lossless
    mappable = fmt in (".npy", ".fvecs", ".hdf5")
    assert isinstance(Y, np.memmap) == (mmap and mappable)


def test_fvecs_bytes_are_the_texmex_layout(tmp_path):
    X = np.array([[1.5, -2.0], [0.0, 3.25]], np.float32)
    assert write_fvecs(tmp_path / "x.fvecs", X) == 24
    expected = b"".join(struct.pack("<i2f", 2, *row) for row in X.tolist())
    assert (tmp_path / "x.fvecs").read_bytes() == expected


def test_bvecs_stay_uint8_mapped_and_convert_on_demand(tmp_path, rng):
    B = rng.integers(0, 256, (40, 7), dtype=np.uint8)
    write_bvecs(tmp_path / "b.bvecs", B)
    Y = read_vectors(tmp_path / "b.bvecs")
    assert isinstance(Y, np.memmap) and Y.dtype == np.uint8
    np.testing.assert_array_equal(Y, B)
    F = read_vectors(tmp_path / "b.bvecs", dtype=np.float32)
    assert F.dtype == np.float32 and not isinstance(F, np.memmap)
    np.testing.assert_array_equal(F, B.astype(np.float32))
    blocks = list(iter_row_blocks(Y, 16))
    assert [s for s, _ in blocks] == [0, 16, 32]
    assert all(b.dtype == np.float32 and b.flags.c_contiguous for _, b in blocks)
    np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), F)


def test_ivecs_ground_truth_and_ids(tmp_path):
    gt = np.array([[4, 0, 2], [1, 3, 0]])
    write_ivecs(tmp_path / "gt.ivecs", gt)
    got = read_ground_truth(tmp_path / "gt.ivecs")
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, gt)
    write_ivecs(tmp_path / "ids.ivecs", np.array([[7], [9], [11]]))
    np.testing.assert_array_equal(read_ids(tmp_path / "ids.ivecs"), [7, 9, 11])
    np.save(tmp_path / "ids.npy", np.array([5, 6], np.uint32))
    assert read_ids(tmp_path / "ids.npy").dtype == np.int64


def test_hdf5_ann_benchmarks_members(tmp_path, X):
    gt = np.array([[0, 1], [2, 3], [4, 5]], np.int32)
    path = tmp_path / "ann.hdf5"
    write_hdf5(path, {"train": X, "test": X[:3], "neighbors": gt, "distances": np.ones((3, 2), np.float32)},
               distance="angular")
    assert sorted(hdf5_datasets(path)) == ["distances", "neighbors", "test", "train"]
    assert hdf5_metric(path) == "cosine"
    np.testing.assert_array_equal(read_vectors(path), X)  # train by default
    np.testing.assert_array_equal(read_vectors(path, dataset="test"), X[:3])
    np.testing.assert_array_equal(read_vectors(f"{path}:test"), X[:3])  # PATH:NAME
    np.testing.assert_array_equal(read_ground_truth(path), gt)  # neighbors by default


def test_hdf5_chunked_compressed_is_read(tmp_path, X):
    path = tmp_path / "c.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("train", data=X, chunks=(8, 5), compression="gzip")
    Y = read_vectors(path)
    assert not isinstance(Y, np.memmap)
    np.testing.assert_array_equal(Y, X)


def test_npz_member_choice(tmp_path, X):
    np.savez(tmp_path / "m.npz", a=X, b=X[:2])
    np.testing.assert_array_equal(read_vectors(tmp_path / "m.npz", dataset="b"), X[:2])
    np.testing.assert_array_equal(read_vectors(f"{tmp_path / 'm.npz'}:a"), X)
    with pytest.raises(VectorFileError, match=r"holds 2 arrays \['a', 'b'\]; name one"):
        read_vectors(tmp_path / "m.npz")
    with pytest.raises(VectorFileError, match=r"has no array 'c'; it holds \['a', 'b'\]"):
        read_vectors(tmp_path / "m.npz", dataset="c")


# ----------------------------------------------------------- malformed files
def _fvecs_rows(*rows) -> bytes:
    """Raw .fvecs bytes: each row is (declared dimension, values)."""
    return b"".join(struct.pack(f"<i{len(v)}f", d, *v) for d, v in rows)


def _object_npy(path):
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


#: id -> (file name, how to write it, a fragment of the expected message)
MALFORMED = {
    "fvecs-inconsistent-headers": ("x.fvecs", lambda p: p.write_bytes(_fvecs_rows((2, [1, 2]), (3, [3, 4]), (2, [5, 6]))),
                                   "inconsistent dimension headers: row 1 says 3, but row 0 says 2"),
    "fvecs-truncated": ("x.fvecs", lambda p: p.write_bytes(_fvecs_rows((2, [1, 2]), (2, [3, 4]))[:-3]),
                        "not a multiple of the row size 12"),
    "fvecs-zero-dim": ("x.fvecs", lambda p: p.write_bytes(_fvecs_rows((0, []), (0, []))),
                       "dimension header 0, but a dimension must be in [1,"),
    "fvecs-negative-dim": ("x.fvecs", lambda p: p.write_bytes(_fvecs_rows((-4, [1.0]))),
                           "dimension header -4"),
    "fvecs-huge-dim": ("x.fvecs", lambda p: p.write_bytes(struct.pack("<f", 1.0) + bytes(12)),
                       "dimension header 1065353216"),
    "fvecs-dim-past-end": ("x.fvecs", lambda p: p.write_bytes(_fvecs_rows((1000, [1.0, 2.0]))),
                           "declares 1000 dimensions (4004 bytes a row) in its first header, but holds only 12 bytes"),
    "fvecs-too-short": ("x.fvecs", lambda p: p.write_bytes(b"\x01\x00"), "too short"),
    "fvecs-nan": ("x.fvecs", lambda p: write_fvecs(p, np.where(np.arange(12).reshape(6, 2) == 11, np.nan, 1.0)),
                  None),  # write_fvecs refuses NaN: the file is written by hand below
    "fvecs-inf-row-5": ("x.fvecs", lambda p: p.write_bytes(_fvecs_rows(*[(2, [1, np.inf if i == 5 else 0]) for i in range(8)])),
                        "non-finite value (inf) at row 5, column 1"),
    "bvecs-truncated": ("x.bvecs", lambda p: p.write_bytes(struct.pack("<i3B", 3, 1, 2, 3) + struct.pack("<i", 3)),
                        "not a multiple of the row size 7"),
    "npy-is-text": ("x.npy", lambda p: p.write_text("1 2 3\n4 5 6\n"), "looks like a text file (starts with '1 2 3')"),
    "npy-is-npz": ("x.npy", lambda p: p.write_bytes(b"PK\x03\x04" + bytes(20)), "name it .npz"),
    "npy-objects": ("x.npy", _object_npy, "holds Python objects"),
    "npy-truncated": ("x.npy", lambda p: (np.save(p, np.ones((50, 4))), p.write_bytes(p.read_bytes()[:200])),
                      "truncated or damaged"),
    "npy-complex": ("x.npy", lambda p: np.save(p, np.ones((3, 2), np.complex64)), "must hold real numbers"),
    "npy-strings": ("x.npy", lambda p: np.save(p, np.array([["a", "b"]])), "must hold real numbers"),
    "npy-one-d": ("x.npy", lambda p: np.save(p, np.ones(4, np.float32)), "must hold a 2-D array (n, dim), got shape (4,)"),
    "npy-empty": ("x.npy", lambda p: np.save(p, np.ones((0, 4), np.float32)), "at least one vector"),
    "npy-nan": ("x.npy", lambda p: np.save(p, np.array([[0.0, 1.0], [np.nan, 2.0]])), "non-finite value (nan) at row 1, column 0"),
    "npz-not-zip": ("x.npz", lambda p: p.write_text("a,b\n"), "is not an .npz archive"),
    "npz-damaged": ("x.npz", lambda p: (np.savez(p, a=np.ones((30, 3))), p.write_bytes(p.read_bytes()[:150])),
                    "truncated or damaged"),
    "hdf5-missing-train": ("x.hdf5", lambda p: write_hdf5(p, {"test": np.ones((2, 2)), "neighbors": np.ones((2, 1), np.int32)}),
                           "has no dataset 'train'; it holds 'neighbors', 'test'"),
    "hdf5-strings": ("x.hdf5", lambda p: write_hdf5(p, {"train": np.array([b"ab", b"cd"])}), "holds |S2, not numbers"),
    "hdf5-not-hdf5": ("x.hdf5", lambda p: p.write_bytes(bytes(100)), "is not an HDF5 file"),
    "unknown-suffix": ("x.csv", lambda p: p.write_text("1,2\n"), "has the suffix '.csv'; supported formats are .npy, .npz"),
    "folder": ("x.npy", lambda p: p.mkdir(), "is a folder"),
}
MALFORMED["fvecs-nan"] = ("x.fvecs", lambda p: p.write_bytes(_fvecs_rows((2, [1, 2]), (2, [np.nan, 2]))),
                          "non-finite value (nan) at row 1, column 0")


@pytest.mark.parametrize("case", MALFORMED, ids=str)
def test_malformed_files_raise_one_readable_error(tmp_path, case):
    name, write, fragment = MALFORMED[case]
    path = tmp_path / name
    write(path)
    with pytest.raises(VectorFileError) as info:
        read_vectors(path, what="embeddings")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert message.startswith(f"embeddings file {path} ")  # names the file
    assert fragment in message
    assert "\n" not in message and "allow_pickle" not in message


@pytest.mark.parametrize(
    "reader, write, fragment",
    [
        (read_ground_truth, lambda p: np.save(p, np.ones((2, 3), np.float32)), "must hold integers, got dtype float32"),
        (read_ground_truth, lambda p: np.save(p, np.ones(3, np.int32)), "2-D array of neighbour ids"),
        (read_ids, lambda p: np.save(p, np.ones((2, 3), np.int64)), "1-D array of ids (n,) or one column (n, 1)"),
        (read_ids, lambda p: np.save(p, np.array([2**63], np.uint64)), "larger than the int64 maximum"),
    ],
    ids=["gt-float", "gt-1d", "ids-2d", "ids-uint64-overflow"],
)
def test_ids_and_ground_truth_checks(tmp_path, reader, write, fragment):
    write(tmp_path / "x.npy")
    with pytest.raises(VectorFileError, match="x.npy") as info:
        reader(tmp_path / "x.npy")
    assert fragment in str(info.value)


def test_verify_false_checks_the_layout_only(tmp_path):
    """For huge files: the size and a sample of headers are checked, not every row."""
    X = np.arange(3000 * 2, dtype=np.float32).reshape(3000, 2)
    X[1234, 1] = np.nan
    data = bytearray(_fvecs_rows(*[(2, row) for row in X.tolist()]))
    data[1777 * 12 : 1777 * 12 + 4] = struct.pack("<i", 5)  # a bad header between sampled rows
    (tmp_path / "x.fvecs").write_bytes(bytes(data))
    with pytest.raises(VectorFileError, match="row 1777 says 5"):
        read_vectors(tmp_path / "x.fvecs")
    Y = read_vectors(tmp_path / "x.fvecs", verify=False)
    assert Y.shape == (3000, 2) and np.isnan(Y[1234, 1])
    (tmp_path / "cut.fvecs").write_bytes(bytes(data[:-1]))
    with pytest.raises(VectorFileError, match="not a multiple of the row size"):
        read_vectors(tmp_path / "cut.fvecs", verify=False)
    data[0:4] = struct.pack("<i", 5)  # the first header is always read, the last one sampled
    (tmp_path / "first.fvecs").write_bytes(bytes(data))
    with pytest.raises(VectorFileError):
        read_vectors(tmp_path / "first.fvecs", verify=False)


def test_missing_file_and_misplaced_dataset(tmp_path, X):
    with pytest.raises(FileNotFoundError, match="queries file .*missing.fvecs does not exist"):
        read_vectors(tmp_path / "missing.fvecs", what="queries")
    write_fvecs(tmp_path / "x.fvecs", X)
    with pytest.raises(VectorFileError, match="holds one array: dataset='train' applies to .npz and .hdf5"):
        read_vectors(tmp_path / "x.fvecs", dataset="train")


def test_hdf5_metric_unknown(tmp_path):
    write_hdf5(tmp_path / "j.hdf5", {"train": np.ones((2, 2))}, distance="jaccard")
    with pytest.raises(VectorFileError, match="has the distance 'jaccard'; lplr-index supports"):
        hdf5_metric(tmp_path / "j.hdf5")
    write_hdf5(tmp_path / "none.hdf5", {"train": np.ones((2, 2))})
    assert hdf5_metric(tmp_path / "none.hdf5") is None


def test_missing_h5py_says_what_to_install(tmp_path, X, monkeypatch):
    write_hdf5(tmp_path / "a.hdf5", {"train": X})
    monkeypatch.setitem(sys.modules, "h5py", None)  # import h5py now raises ImportError
    with pytest.raises(ImportError, match=r"install lplr-index\[hdf5\]"):
        read_vectors(tmp_path / "a.hdf5")


#: starts that get random bytes past the first checks of each format
PREFIXES = [b"", struct.pack("<i", 1), struct.pack("<i", 3), b"\x93NUMPY\x01\x00", b"PK\x03\x04", b"\x89HDF\r\n\x1a\n"]


@pytest.mark.parametrize("suffix", FORMATS)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=300), prefix=st.sampled_from(PREFIXES))
def test_random_bytes_never_crash(tmp_path, suffix, data, prefix):
    """Any bytes, after a plausible start, either read as an array or raise VectorFileError."""
    data = prefix + data
    path = tmp_path / f"random{suffix}"
    path.write_bytes(data)
    try:
        read_array(path)
    except VectorFileError:
        pass


# -------------------------------------------------------------------- writers
@pytest.mark.parametrize(
    "writer, X, exc, fragment",
    [
        (write_fvecs, np.ones(3), ValueError, "non-empty 2-D array"),
        (write_fvecs, np.array([[np.nan]]), ValueError, "finite"),
        (write_fvecs, np.array([["a"]]), TypeError, "real numbers"),
        (write_ivecs, np.array([[0.5]]), ValueError, "whole numbers"),
        (write_bvecs, np.array([[256]]), ValueError, "values in [0, 255]"),
    ],
    ids=["1d", "nan", "strings", "ivecs-fraction", "bvecs-range"],
)
def test_writers_refuse_what_the_format_cannot_hold(tmp_path, writer, X, exc, fragment):
    with pytest.raises(exc) as info:
        writer(tmp_path / "out", X)
    assert fragment in str(info.value)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------- command line
@pytest.fixture(autouse=True)
def restore_logging():
    """main() configures logging; undo it after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def cli_json(capsys, *argv) -> dict:
    code, out, err = cli(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def data(small_embeddings, tmp_path):
    """(400, 32) train, 30 noisy queries, their labels and exact 10-NN, in several formats."""
    rng = np.random.default_rng(7)
    train = np.asarray(small_embeddings[:400])
    test = (train[:30] + 0.05 * rng.standard_normal((30, 32))).astype(np.float32)
    _, gt = exact_knn(train, test, 10)
    paths = {
        "train.npy": train, "test.npy": test,
        "train_labels.npy": (train[:, 0] > 0).astype(np.int64), "test_labels.npy": (test[:, 0] > 0).astype(np.int64),
    }
    for name, value in paths.items():
        np.save(tmp_path / name, value)
    write_fvecs(tmp_path / "train.fvecs", train)
    write_fvecs(tmp_path / "test.fvecs", test)
    write_hdf5(tmp_path / "ann.hdf5", {"train": train, "test": test, "neighbors": gt.astype(np.int32),
                                       "distances": np.zeros(gt.shape, np.float32)}, distance="euclidean")
    return {"dir": tmp_path, "train": train, "test": test, "gt": gt}


def test_cli_builds_and_searches_fvecs_like_npy(capsys, data):
    d = data["dir"]
    cli_json(capsys, "build", d / "train.npy", "-o", d / "npy.lplr", "-b", 2)
    cli_json(capsys, "build", d / "train.fvecs", "-o", d / "fvecs.lplr", "-b", 2)
    assert (d / "npy.lplr").read_bytes() == (d / "fvecs.lplr").read_bytes()  # same vectors, same index
    from_fvecs = cli_json(capsys, "search", d / "fvecs.lplr", d / "test.fvecs", "-k", 5)
    from_hdf5 = cli_json(capsys, "search", d / "npy.lplr", d / "ann.hdf5", "-k", 5)  # queries: the 'test' set
    from_npy = cli_json(capsys, "search", d / "npy.lplr", d / "test.npy", "-k", 5)
    assert from_fvecs["indices"] == from_npy["indices"] == from_hdf5["indices"]
    assert from_npy["n_queries"] == 30


def test_cli_add_reads_bvecs(capsys, data, rng):
    d = data["dir"]
    B = rng.integers(0, 256, (300, 16), dtype=np.uint8)
    write_bvecs(d / "b.bvecs", B)
    info = cli_json(capsys, "build", d / "b.bvecs", "-o", d / "b.lplr", "--rank", 4)
    assert info["ntotal"] == 300 and info["dim"] == 16
    info = cli_json(capsys, "add", d / "b.lplr", f"{d / 'b.bvecs'}")
    assert info["added"] == 300


def test_cli_eval_uses_the_hdf5_ground_truth(capsys, data):
    d = data["dir"]
    from_file = cli_json(capsys, "eval", "--train", d / "ann.hdf5", "-b", 2)
    assert from_file["ground_truth"] == f"{d / 'ann.hdf5'}:neighbors"
    assert "accuracy" not in from_file  # no labels: recall only
    exact = cli_json(capsys, "eval", "--train", d / "train.fvecs", "--test", d / "test.fvecs", "-b", 2)
    assert exact["ground_truth"] == "exact search"
    # the file's neighbours are the exact ones: the same recall as computing them
    assert from_file["recall_10@10"] == exact["recall_10@10"]
    assert 0.5 < from_file["recall_10@10"] < 1  # observed 0.65 at 2 bits per coordinate
    # a file whose ground truth is wrong gives another recall: the file's neighbours are used
    write_hdf5(d / "wrong.hdf5", {"train": data["train"], "test": data["test"],
                                  "neighbors": (data["gt"][:, ::-1] + 1) % len(data["train"])})
    wrong = cli_json(capsys, "eval", "--train", d / "wrong.hdf5", "-b", 2)
    assert wrong["recall_10@10"] < from_file["recall_10@10"] - 0.3  # observed 0.02 against 0.65


def test_cli_eval_hdf5_with_labels_and_with_a_separate_test_file(capsys, data):
    d = data["dir"]
    result = cli_json(capsys, "eval", "--train", d / "ann.hdf5", "--train-labels", d / "train_labels.npy",
                      "--test-labels", d / "test_labels.npy", "-b", 2)
    assert result["accuracy"] >= 0.7  # the sign of a noisy coordinate; observed 0.80 (exact search: 0.80)
    assert result["ground_truth"].endswith(":neighbors")
    other = cli_json(capsys, "eval", "--train", d / "ann.hdf5", "--test", d / "test.npy", "-b", 2)
    assert other["ground_truth"] == "exact search"  # the file's neighbours are for its own test set


#: id -> (argv after "eval" or a whole command, fragment of the one error line)
CLI_MISTAKES = {
    "metric-mismatch": (lambda d: ["eval", "--train", d / "ann.hdf5", "-b", 2, "--metric", "ip"],
                        "holds ground truth for --metric l2, but --metric is ip"),
    "no-test": (lambda d: ["eval", "--train", d / "train.npy", "-b", 2], "give --test"),
    "one-label-file": (lambda d: ["eval", "--train", d / "ann.hdf5", "--train-labels", d / "train_labels.npy", "-b", 2],
                       "give both --train-labels and --test-labels"),
    "truncated-fvecs": (lambda d: ["build", d / "cut.fvecs", "-o", d / "o.lplr", "-b", 2],
                        "not a multiple of the row size"),
    "hdf5-no-test": (lambda d: ["search", d / "index.lplr", d / "only_train.hdf5"], "has no dataset 'test'; it holds 'train'"),
    "gt-out-of-range": (lambda d: ["eval", "--train", d / "bad_gt.hdf5", "-b", 2], "neighbour ids in [400, 400], but its train set has 400 rows"),
}


@pytest.mark.parametrize("mistake", CLI_MISTAKES, ids=str)
def test_cli_format_mistakes_give_one_line(capsys, data, mistake):
    d = data["dir"]
    (d / "cut.fvecs").write_bytes((d / "train.fvecs").read_bytes()[:-1])
    write_hdf5(d / "only_train.hdf5", {"train": data["train"]})
    write_hdf5(d / "bad_gt.hdf5", {"train": data["train"], "test": data["test"],
                                   "neighbors": np.full((30, 10), 400, np.int32)})
    argv, fragment = CLI_MISTAKES[mistake]
    argv = argv(d)
    if argv[0] == "search":
        cli_json(capsys, "build", d / "train.npy", "-o", d / "index.lplr", "-b", 2)
    code, out, err = cli(capsys, *argv)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1 and len(lines) == 1 and lines[0].startswith("lplr-index: error:"), err
    assert fragment in lines[0]


def test_cli_without_h5py_names_the_extra(capsys, data, monkeypatch):
    monkeypatch.setitem(sys.modules, "h5py", None)
    code, _, err = cli(capsys, "build", data["dir"] / "ann.hdf5", "-o", data["dir"] / "o.lplr", "-b", 2)
    assert code == 1 and "install lplr-index[hdf5]" in err and "Traceback" not in err
