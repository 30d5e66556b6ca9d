"""``benchmarks/bench_faiss.py --dataset``: the faiss benchmark on a pipelines dataset.

Runs on the CIFAR-10 batch files the fixtures write (30 training, 6 test images), embedded
by the pipelines' offline MobileNetV2 into a temporary cache, as a user would run it.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from pipelines.experiment import load_dataset_embeddings

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_faiss.py"


def _run(args, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=env)


def test_dataset_flag_runs_on_the_pipelines_embeddings(cifar_folder, tmp_path):
    folder, written = cifar_folder
    cache = tmp_path / "cache"
    env = dict(os.environ, LPLR_CACHE_DIR=str(cache), OMP_WAIT_POLICY="PASSIVE")
    proc = _run(["--dataset", "cifar10", "--cifar-dir", str(folder), "--out", str(tmp_path / "out"),
                 "--families", "SQ8", "PQfs4", "--lplr-variants", "default", "--budgets", "4",
                 "--repeats", "1", "--latency-queries", "3", "--time-cap", "1", "--threads", "1"], env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "cifar10-mobilenetv2.json").read_text())
    assert result["data"]["source"] == "pipelines" and result["data"]["dataset"] == "cifar10"
    assert (result["data"]["n"], result["data"]["n_queries"], result["data"]["dim"]) == (30, 6, 1280)
    got = {(r["method"], r["mode"]) for r in result["rows"]}
    assert ("LPLR default", "factored") in got, got  # 8-bit codes at 4 bits/coord: the exact scan
    assert {"Flat", "SQ8"} <= {r["family"] for r in result["rows"]}
    # PQ fast-scan's codebooks alone exceed 4 bits/coord on 30 vectors: skipped, with the reason
    assert any(s["family"] == "PQfs4" and "exceed" in s["reason"] for s in result["skipped"])
    for r in result["rows"]:
        assert 0 <= r["knn3_accuracy"] <= 1 and 0 <= r["recall_10_at_10"] <= 1
    # the same arrays the experiment would use, now from the cache
    os.environ["LPLR_CACHE_DIR"] = str(cache)
    try:
        data = load_dataset_embeddings("cifar10", ["--cifar-dir", str(folder), "--full", "--no-progress"])
    finally:
        del os.environ["LPLR_CACHE_DIR"]
    assert data.info["splits"]["train"]["cache_hit"]
    np.testing.assert_array_equal(data.y_train, np.concatenate([written[f"data_batch_{i}"][1] for i in range(1, 6)]))
    np.testing.assert_array_equal(data.y_test, written["test_batch"][1])

def test_dataset_flag_errors():
    proc = _run(["--dataset", "bbc", "--synthetic"])
    assert proc.returncode == 2 and "--synthetic, --embeddings and --dataset exclude each other" in proc.stderr
    proc = _run(["--dataset", "bbc", "--cifar-dir", "x"])
    assert proc.returncode == 2 and "--cifar-dir goes with --dataset cifar10" in proc.stderr
    proc = _run(["--dataset", "bbc", "--model", "mobilenet_v2"])
    assert proc.returncode == 2 and "--model and --weights go with an image --dataset" in proc.stderr
    proc = _run(["--dataset", "cifar10", "--cifar-dir", "/nonexistent/cifar", "--out", "/nonexistent/out"])
    assert proc.returncode != 0 and proc.stderr.strip().startswith("bench_faiss: --dataset cifar10:")
    assert "batches.meta" in proc.stderr

