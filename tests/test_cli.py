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
    assert info["codes"] == "scalar LPLR codes: 6 latent directions, 3 bits each" and info["quantizer"] == "mse-col"


def test_info(capsys, files):
    info = run_json(capsys, "info", files["index"])
    size = os.path.getsize(files["index"])
    assert info["file_size"] == size == info["nbytes"]
    assert info["bits_per_coordinate"] * info["ntotal"] * info["dim"] / 8 == pytest.approx(size, rel=1e-12)
    assert info["bits_per_coordinate"] <= info["budget_bits_per_coordinate"] == 2
    assert info["file"] == str(files["index"])
    for key in ("codes", "codec", "encoder", "rank", "bits_l", "metric", "seed", "storage_bytes"):
        assert key in info
    index = LPLRIndex.load(files["index"])
    assert index.codec == "vq" and info["groups"] == index.layout["groups"]
    assert info["rank"] == index.layout["rank"] and info["codes"].startswith("grouped 4-bit codes: ")
    assert "quantizer" not in info and "refine_iters" not in info  # scalar settings: not for grouped codes
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
    mode = "reconstructed" if "reconstructed" in extra else "auto"
    expected = LPLRIndex.load(files["index"]).search(np.load(files["test"]), 7, mode=mode)
    np.testing.assert_array_equal(I, expected.indices)
    np.testing.assert_array_equal(D, expected.distances)


def test_search_json(capsys, files):
    code, out, err = run(capsys, "search", files["index"], files["test"], "-k", 3, "--json")
    assert code == 0, err
    result = json.loads(out, parse_constant=lambda c: pytest.fail(f"invalid JSON constant {c}"))
    assert np.array(result["indices"]).shape == (40, 3)
    assert np.array(result["distances"]).shape == (40, 3)
    assert result["n_queries"] == 40 and result["k"] == 3


def test_search_prints_a_compact_table(capsys, files):
    code, out, err = run(capsys, "search", files["index"], files["test"], "-k", 12)
    assert code == 0, err
    lines = out.splitlines()
    header = lines.index("query  rank   id  distance")
    rows = [line.split() for line in lines[header + 1 : -1]]
    assert len(rows) == 20 * 10  # the first 20 of 40 queries, 10 of 12 neighbours each
    assert lines[-1] == "(showing 20 of 40 queries and 10 of 12 neighbours each; all of them with -o results.npz or --json)"
    D, I = LPLRIndex.load(files["index"]).search(np.load(files["test"]), 12)
    for query, rank, id_, dist in rows:
        q, r = int(query), int(rank) - 1
        assert int(id_) == I[q, r]
        assert float(dist) == pytest.approx(D[q, r], rel=1e-5)
    assert len(out) < 8000  # the whole result as two lines was 60 KB for 1,000 queries


def test_search_table_without_a_note_when_everything_fits(capsys, files, tmp_path):
    few = tmp_path / "few.npy"
    np.save(few, np.load(files["test"])[:3])
    code, out, _ = run(capsys, "search", files["index"], few, "-k", 2)
    assert code == 0
    assert len(out.splitlines()[out.splitlines().index("query  rank   id  distance") + 1 :]) == 6
    assert "showing" not in out


def test_search_output_is_exactly_the_path_given(capsys, files, tmp_path):
    target = tmp_path / "neighbours.npz"
    result = run_json(capsys, "search", files["index"], files["test"], "-k", 2, "-o", target)
    assert result["output"] == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["neighbours.npz"]


def test_k_above_the_index_size_is_clamped_with_a_warning(capsys, files, tmp_path):
    target = tmp_path / "all.npz"
    code, out, err = run(capsys, "search", files["index"], files["test"], "-k", 10**9, "-o", target)
    assert code == 0, err
    assert "warning: -k 1000000000 is more than the 1000 vectors in the index" in err
    with np.load(target) as result:
        assert result["indices"].shape == (40, 1000)
        assert (np.sort(result["indices"], axis=1) == np.arange(1000)).all()  # every vector, once


@pytest.mark.parametrize("command", ["search", "eval"])
def test_results_above_the_cap_are_refused_before_any_work(capsys, files, monkeypatch, command):
    import lplr_index.cli as cli

    monkeypatch.setattr(cli, "MAX_RESULT_BYTES", 40 * 5 * 12 - 1)  # 40 queries x k=5 is one byte too many
    monkeypatch.setattr(LPLRIndex, "search", lambda *a, **kw: pytest.fail("searched"))
    if command == "search":
        argv = ["search", files["index"], files["test"], "-k", 5]
    else:
        argv = ["eval", "--train", files["train"], "--train-labels", files["train_labels"], "--test", files["test"],
                "--test-labels", files["test_labels"], "-b", 2, "-k", 3, "--recall-k", 5]
    code, _, err = run(capsys, *argv)
    assert code == 1
    assert_one_error_line(err, only_line=True)
    flag = "-k" if command == "search" else "--recall-k"
    assert f"{flag} 5 for the 40 queries of" in err and "test.npy" in err and "split the queries" in err


@pytest.mark.parametrize(
    ("terminal", "extra", "drawn"),
    [(True, [], True), (True, ["--no-progress"], False), (False, [], False)],
    ids=["terminal", "terminal-no-progress", "pipe"],
)
def test_progress_bars_on_a_terminal_only(capsys, files, monkeypatch, terminal, extra, drawn):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal, raising=False)
    code = main([*extra, "-q", "eval", "--train", str(files["train"]), "--train-labels", str(files["train_labels"]),
                 "--test", str(files["test"]), "--test-labels", str(files["test_labels"]), "-b", "2", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    json.loads(out)  # bars never mix into the output
    for bar in ("compressed search: [", "exact search: ["):
        assert (bar in err) is drawn, err


def test_eval_recall_k_above_the_database_is_clamped(capsys, files):
    result = run_json(
        capsys, "eval", "--train", files["train"], "--train-labels", files["train_labels"],
        "--test", files["test"], "--test-labels", files["test_labels"], "-b", "2", "--recall-k", 2000,
    )
    assert result["recall_1000@1000"] == 1.0  # every vector retrieved
    assert result["neighbour_overlap@1000"] == 1.0


def test_info_of_an_explicit_rank_index_reads_none_and_warns_above_float32(capsys, tmp_path, small_embeddings):
    two = tmp_path / "two.npy"
    np.save(two, small_embeddings[:2])
    target = tmp_path / "two.lplr"
    code, out, err = run(capsys, "build", two, "-o", target, "--rank", 1)
    assert code == 0, err
    assert "bits per coordinate, more than the float32 vectors it replaces (32)" in err  # 136 observed
    assert len([line for line in err.splitlines() if "warning" in line]) == 1
    code, out, err = run(capsys, "info", target)
    assert code == 0
    budget = [line for line in out.splitlines() if line.startswith("budget_bits_per_coordinate")]
    assert budget[0].split(None, 1)[1] == "none (explicit rank)"
    assert "warning" in err
    assert run_json(capsys, "info", target)["budget_bits_per_coordinate"] is None


def test_no_warning_below_float32(capsys, files):
    code, _, err = run(capsys, "info", files["index"])
    assert code == 0 and "warning" not in err


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


def test_eval_scores_a_saved_index_without_building(capsys, files):
    """``eval --index`` gives the recall of the saved file itself (the index built by ``files``)."""
    saved = run_json(capsys, "eval", "--train", files["train"], "--test", files["test"], "--index", files["index"])
    built = run_json(capsys, "eval", "--train", files["train"], "--test", files["test"], "-b", "2")
    assert saved["recall_10@10"] == built["recall_10@10"]  # the same build (same defaults and seed)
    assert saved["bits_per_coordinate"] == LPLRIndex.load(files["index"]).bits_per_coordinate
    code, _, err = run(capsys, "eval", "--train", files["train"], "--test", files["test"], "--index", files["index"],
                       "-b", "1")
    assert code == 1 and "--index scores a saved index: --bits-per-coordinate" in err
    code, _, err = run(capsys, "eval", "--train", files["wrong_dim"], "--test", files["wrong_dim"],
                       "--index", files["index"])
    assert code == 1 and "holds 32-dimensional vectors" in err


def test_eval_index_of_other_rows_is_refused(capsys, files, tmp_path):
    other = tmp_path / "other.npy"
    np.save(other, np.load(files["train"])[:500])
    code, _, err = run(capsys, "eval", "--train", other, "--test", files["test"], "--index", files["index"])
    assert code == 1 and "must hold the 500 --train rows in order" in err


@pytest.mark.parametrize("dtype, level", [("int8", "INFO"), ("float64", "WARNING")])
def test_build_says_when_it_converts_the_vectors(capsys, files, tmp_path, dtype, level):
    path = tmp_path / f"{dtype}.npy"
    np.save(path, (np.load(files["train"]) * 20).astype(dtype))
    assert main(["build", str(path), "-o", str(tmp_path / "x.lplr"), "-b", "1"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "converted to float32" in line]
    assert len(said) == 1 and f"holds {dtype} values" in said[0]
    assert ("rounded" in said[0]) == (level == "WARNING")


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
    text_npy = tmp_path / "text.npy"  # a text file with a .npy name
    text_npy.write_text("0.1 0.2 0.3\n0.4 0.5 0.6\n")
    objects = tmp_path / "objects.npy"
    np.save(objects, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    return {**files, "damaged": damaged, "text": text, "text_npy": text_npy, "objects": objects,
            "out": tmp_path / "out.lplr", "dir": tmp_path}


#: id -> (argv of a user mistake, built from ``bad_files``; text the one error line must hold:
#: the flag or the file in the user's terms)
MISTAKES = {
    "missing-index": (lambda f: ["info", f["dir"] / "missing.lplr"], "missing.lplr"),
    "index-is-a-directory": (lambda f: ["info", f["dir"]], "is a directory"),
    "missing-embeddings": (lambda f: ["build", f["dir"] / "missing.npy", "-o", f["out"], "-b", 2],
                           "embeddings file"),
    "missing-queries": (lambda f: ["search", f["index"], f["dir"] / "missing.npy"], "queries file"),
    "queries-are-a-directory": (lambda f: ["search", f["index"], f["dir"]], "queries file"),
    "not-npy": (lambda f: ["build", f["text"], "-o", f["out"], "-b", 2], "embeddings file"),
    "text-named-npy": (lambda f: ["build", f["text_npy"], "-o", f["out"], "-b", 2],
                       "text.npy is not a NumPy .npy file"),
    "objects-npy": (lambda f: ["search", f["index"], f["objects"]], "objects.npy holds Python objects"),
    "one-d-embeddings": (lambda f: ["build", f["one_d"], "-o", f["out"], "-b", 2], "embeddings file"),
    "one-d-queries": (lambda f: ["search", f["index"], f["one_d"]], "queries file"),
    "wrong-query-dim": (lambda f: ["search", f["index"], f["wrong_dim"]], "has 31 dimensions"),
    "wrong-add-dim": (lambda f: ["add", f["index"], f["wrong_dim"], "-o", f["out"]], "wrong_dim.npy has 31"),
    "damaged-index": (lambda f: ["search", f["damaged"], f["test"]], "damaged.lplr"),
    "index-is-npy": (lambda f: ["info", f["train"]], "train.npy"),
    "neither-budget-nor-rank": (lambda f: ["build", f["train"], "-o", f["out"]], "--bits-per-coordinate"),
    "both-budget-and-rank": (lambda f: ["build", f["train"], "-o", f["out"], "-b", 2, "--rank", 4], "--rank"),
    "budget-too-small": (lambda f: ["build", f["train"], "-o", f["out"], "-b", 0.01], "--bits-per-coordinate"),
    "budget-overflows": (lambda f: ["build", f["train"], "-o", f["out"], "-b", "1e308"],
                         "--bits-per-coordinate must be a finite number > 0 and <= 1e+06, got 1e+308"),
    "budget-infinite": (lambda f: ["build", f["train"], "-o", f["out"], "-b", "inf"], "--bits-per-coordinate"),
    "budget-negative": (lambda f: ["build", f["train"], "-o", f["out"], "-b", "-1"], "--bits-per-coordinate"),
    "budget-not-a-number": (lambda f: ["build", f["train"], "-o", f["out"], "-b", "one"], "--bits-per-coordinate"),
    "rank-above-dim": (lambda f: ["build", f["train"], "-o", f["out"], "--rank", 40], "--rank"),
    "rank-zero": (lambda f: ["build", f["train"], "-o", f["out"], "--rank", 0], "--rank"),
    "bits-l-too-wide": (lambda f: ["build", f["train"], "-o", f["out"], "-b", 2, "--bits-l", 9], "--bits-l"),
    "seed-negative": (lambda f: ["build", f["train"], "-o", f["out"], "-b", 2, "--seed", -3], "--seed"),
    "k-zero": (lambda f: ["search", f["index"], f["test"], "-k", 0], "-k"),
    "k-negative": (lambda f: ["search", f["index"], f["test"], "-k", -1], "-k"),
    "k-not-an-integer": (lambda f: ["search", f["index"], f["test"], "-k", "2.5"], "-k"),
    "recall-k-zero": (lambda f: ["eval", "--train", f["train"], "--train-labels", f["train_labels"],
                                 "--test", f["test"], "--test-labels", f["test_labels"], "-b", 2,
                                 "--recall-k", 0], "--recall-k"),
    "labels-mismatch": (lambda f: ["eval", "--train", f["train"], "--train-labels", f["test_labels"],
                                   "--test", f["test"], "--test-labels", f["test_labels"], "-b", 2],
                        "--train-labels"),
    "eval-dims-differ": (lambda f: ["eval", "--train", f["train"], "--train-labels", f["train_labels"],
                                    "--test", f["wrong_dim"], "--test-labels", f["test_labels"], "-b", 2],
                         "--test"),
    "output-folder-missing": (lambda f: ["build", f["train"], "-o", f["dir"] / "no" / "folder.lplr", "-b", 2],
                              "-o/--output"),
    "output-is-a-directory": (lambda f: ["build", f["train"], "-o", f["dir"], "-b", 2], "-o/--output"),
    "search-output-not-npz": (lambda f: ["search", f["index"], f["test"], "-o", f["dir"] / "out.txt"],
                              "-o/--output"),
    "search-output-folder-missing": (lambda f: ["search", f["index"], f["test"], "-o", f["dir"] / "no" / "r.npz"],
                                     "-o/--output"),
    "add-output-folder-missing": (lambda f: ["add", f["index"], f["test"], "-o", f["dir"] / "no" / "i.lplr"],
                                  "-o/--output"),
    "missing-arguments": (lambda f: ["build"], "embeddings, -o/--output"),
    "unknown-command": (lambda f: ["bild", f["train"]], "'bild'"),
    "unknown-option": (lambda f: ["info", f["index"], "--frobnicate"], "--frobnicate"),
    "bad-metric": (lambda f: ["build", f["train"], "-o", f["out"], "-b", 2, "--metric", "l3"], "--metric"),
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
    argv, named = MISTAKES[mistake]
    code, out, err = run(capsys, *argv(bad_files))
    assert code == 1
    assert_one_error_line(err, only_line=True)  # -q: no log lines, and no usage block
    assert named in err, err  # the flag or the file, as the user gave it
    assert "allow_pickle" not in err  # numpy's advice to unpickle is unsafe
    assert not bad_files["out"].exists()
    assert not (bad_files["dir"] / "out.txt").exists()
    assert out == ""


def test_output_is_checked_before_the_build(capsys, files, tmp_path, monkeypatch):
    def must_not_run(self, *args, **kwargs):
        raise AssertionError("the build started although the output cannot be written")

    monkeypatch.setattr(LPLRIndex, "build", must_not_run)
    code, _, err = run(capsys, "build", files["train"], "-o", tmp_path / "missing" / "i.lplr", "-b", 1)
    assert code == 1 and "missing" in err and "AssertionError" not in err


def test_help_exits_0_and_version(capsys):
    assert main(["--help"]) == 0
    assert "build" in capsys.readouterr().out
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("lplr-index ")


def test_ctrl_c_gives_one_line_and_status_130(capsys, files, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LPLRIndex, "load", interrupted)
    code, _, err = run(capsys, "info", files["index"])
    assert code == 130
    assert err.strip() == "lplr-index: interrupted"


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
