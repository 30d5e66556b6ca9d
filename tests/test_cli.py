"""The command line end to end: in-process through ``main`` and once as ``python -m lplr_index``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lplr_index import LPLRIndex
from lplr_index.cli import main

pytestmark = pytest.mark.usefixtures("blas_single_thread")

ERROR_PREFIX = "lplr-index: error:"


@pytest.fixture(autouse=True)
def restore_logging():
    """main() configures logging (as a command line should); undo it after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="module")
def files(blas_single_thread, small_embeddings, tmp_path_factory):
    """.npy inputs of the command line, and an index built from them by ``main``."""
    folder = tmp_path_factory.mktemp("cli")
    rng = np.random.default_rng(99)
    paths = {name: folder / f"{name}.npy" for name in ("train", "test", "train_labels", "test_labels", "one_d", "wrong_dim")}
    np.save(paths["train"], small_embeddings)
    np.save(paths["test"], (small_embeddings[:40] + 0.05 * rng.standard_normal((40, 32))).astype(np.float32))
    labels = (small_embeddings[:, 0] > 0).astype(np.int64)  # learnable: the sign of the first coordinate
    np.save(paths["train_labels"], labels)
    np.save(paths["test_labels"], labels[:40])
    np.save(paths["one_d"], np.ones(32, np.float32))
    np.save(paths["wrong_dim"], np.ones((3, 31), np.float32))
    paths["index"] = folder / "index.lplr"
    assert main(["-q", "build", str(paths["train"]), "-o", str(paths["index"]), "--bits-per-coordinate", "2"]) == 0
    return paths


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main(["-q", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def run_json(capsys, *argv) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


# ------------------------------------------------------------------ happy paths
def test_build(capsys, files, tmp_path):
    target = tmp_path / "built.lplr"
    info = run_json(capsys, "build", files["train"], "-o", target, "-b", "1", "--metric", "cosine")
    assert target.is_file()
    assert info["file_size"] == os.path.getsize(target) == info["nbytes"]
    assert info["metric"] == "cosine" and info["ntotal"] == 1000 and info["dim"] == 32
    assert info["bits_per_coordinate"] <= 1
    assert LPLRIndex.load(target).rank == info["rank"]


def test_build_with_an_explicit_rank(capsys, files, tmp_path):
    info = run_json(capsys, "build", files["train"], "-o", tmp_path / "r.lplr", "--rank", 6, "--bits-l", 3)
    assert (info["rank"], info["bits_l"], info["budget_bits_per_coordinate"]) == (6, 3, None)


def test_info(capsys, files):
    info = run_json(capsys, "info", files["index"])
    size = os.path.getsize(files["index"])
    assert info["file_size"] == size == info["nbytes"]
    assert info["bits_per_coordinate"] * info["ntotal"] * info["dim"] / 8 == pytest.approx(size, rel=1e-12)
    assert info["bits_per_coordinate"] <= info["budget_bits_per_coordinate"] == 2
    assert info["file"] == str(files["index"])
    for key in ("rank", "bits_l", "bits_r", "metric", "quantizer", "seed", "storage_bytes"):
        assert key in info
    code, out, _ = run(capsys, "info", files["index"])  # and a human-readable table
    assert code == 0 and any(line.split()[:2] == ["file_size", str(size)] for line in out.splitlines())


@pytest.mark.parametrize("extra", [[], ["--mmap"], ["--mode", "reconstructed"]], ids=["default", "mmap", "reconstructed"])
def test_search_to_npz(capsys, files, tmp_path, extra):
    out_path = tmp_path / "result.npz"
    code, _, err = run(capsys, "search", files["index"], files["test"], "-k", 7, "-o", out_path, *extra)
    assert code == 0, err
    with np.load(out_path) as result:
        D, I = result["distances"], result["indices"]
    assert D.shape == I.shape == (40, 7)
    assert D.dtype == np.float32 and I.dtype == np.int64
    mode = "reconstructed" if "reconstructed" in extra else "factored"
    expected = LPLRIndex.load(files["index"]).search(np.load(files["test"]), 7, mode=mode)
    np.testing.assert_array_equal(I, expected.indices)
    np.testing.assert_array_equal(D, expected.distances)


def test_search_json(capsys, files):
    result = run_json(capsys, "search", files["index"], files["test"], "-k", 3)
    assert np.array(result["indices"]).shape == (40, 3)
    assert np.array(result["distances"]).shape == (40, 3)
    assert result["n_queries"] == 40 and result["k"] == 3


def test_add(capsys, files, tmp_path):
    target = tmp_path / "bigger.lplr"
    info = run_json(capsys, "add", files["index"], files["test"], "-o", target)
    assert info["added"] == 40 and info["ntotal"] == 1040
    assert info["file_size"] == os.path.getsize(target)
    assert LPLRIndex.load(files["index"]).ntotal == 1000  # -o leaves the input alone
    in_place = tmp_path / "in-place.lplr"
    in_place.write_bytes(files["index"].read_bytes())
    assert run_json(capsys, "add", in_place, files["test"])["ntotal"] == 1040
    assert in_place.read_bytes() == target.read_bytes()


def test_eval(capsys, files):
    result = run_json(
        capsys, "eval", "--train", files["train"], "--train-labels", files["train_labels"],
        "--test", files["test"], "--test-labels", files["test_labels"], "-b", "2",
    )
    for key in ("accuracy", "weighted_f1", "exact_accuracy", "exact_weighted_f1", "recall_10@10", "neighbour_overlap@10"):
        assert 0 <= result[key] <= 1, key
    assert result["accuracy"] > 0.8  # a linear label on near-duplicate queries; observed 0.90 (exact: 0.90)
    assert result["k"] == 3


# --------------------------------------------------------------- user mistakes
@pytest.fixture
def bad_files(files, tmp_path):
    """``files`` plus a damaged index, a text file and an output path, in this test's folder."""
    damaged = tmp_path / "damaged.lplr"
    data = bytearray(files["index"].read_bytes())
    data[len(data) // 2] ^= 0x10
    damaged.write_bytes(bytes(data))
    text = tmp_path / "embeddings.txt"
    text.write_text("1 2 3\n")
    return {**files, "damaged": damaged, "text": text, "out": tmp_path / "out.lplr", "dir": tmp_path}


#: id -> argv of a user mistake, built from ``bad_files``
MISTAKES = {
    "missing-index": lambda f: ["info", f["dir"] / "missing.lplr"],
    "missing-embeddings": lambda f: ["build", f["dir"] / "missing.npy", "-o", f["out"], "-b", 2],
    "missing-queries": lambda f: ["search", f["index"], f["dir"] / "missing.npy"],
    "not-npy": lambda f: ["build", f["text"], "-o", f["out"], "-b", 2],
    "one-d-embeddings": lambda f: ["build", f["one_d"], "-o", f["out"], "-b", 2],
    "one-d-queries": lambda f: ["search", f["index"], f["one_d"]],
    "wrong-query-dim": lambda f: ["search", f["index"], f["wrong_dim"]],
    "damaged-index": lambda f: ["search", f["damaged"], f["test"]],
    "index-is-npy": lambda f: ["info", f["train"]],
    "neither-budget-nor-rank": lambda f: ["build", f["train"], "-o", f["out"]],
    "both-budget-and-rank": lambda f: ["build", f["train"], "-o", f["out"], "-b", 2, "--rank", 4],
    "budget-too-small": lambda f: ["build", f["train"], "-o", f["out"], "-b", 0.01],
    "k-zero": lambda f: ["search", f["index"], f["test"], "-k", 0],
    "labels-mismatch": lambda f: ["eval", "--train", f["train"], "--train-labels", f["test_labels"],
                                  "--test", f["test"], "--test-labels", f["test_labels"], "-b", 2],
    "output-folder-missing": lambda f: ["build", f["train"], "-o", f["dir"] / "no" / "folder.lplr", "-b", 2],
}


def assert_one_error_line(err: str, *, only_line: bool):
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err, err
    errors = [line for line in lines if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, err
    if only_line:
        assert lines == errors, err


@pytest.mark.parametrize("mistake", MISTAKES, ids=str)
def test_user_mistakes_give_one_line_and_status_1(capsys, bad_files, mistake):
    code, out, err = run(capsys, *MISTAKES[mistake](bad_files))
    assert code == 1
    assert_one_error_line(err, only_line=True)  # -q: no log lines either
    assert not bad_files["out"].exists()


def test_usage_errors_exit_with_status_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["build"])
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err


# ------------------------------------------------------------ a real process
def python_m(*argv, cwd) -> subprocess.CompletedProcess:
    # one BLAS thread, as in this process: float32 BLAS sums (so the bytes of a file)
    # depend on the thread count, and the test compares files built in both
    return subprocess.run(
        [sys.executable, "-m", "lplr_index", *map(str, argv)],
        capture_output=True, text=True, cwd=cwd, timeout=120,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )


def test_python_dash_m(files, tmp_path):
    target = tmp_path / "process.lplr"
    done = python_m("build", files["train"], "-o", target, "--bits-per-coordinate", 2, "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    info = json.loads(done.stdout)
    assert info["file_size"] == os.path.getsize(target)
    assert target.read_bytes() == Path(files["index"]).read_bytes()  # same data and seed, same file
    broken = tmp_path / "broken.lplr"
    broken.write_bytes(target.read_bytes()[:100])
    done = python_m("info", broken, cwd=tmp_path)
    assert done.returncode == 1
    assert_one_error_line(done.stderr, only_line=True)
    assert str(broken) in done.stderr
