"""Smoke test of ``benchmarks/bench_ivf.py`` on a tiny set: every index has its rows, bits within the
target, memory and timing measured, the outputs written (not speed). One run, shared by the tests;
ScaNN's rows are checked only where ``scann`` (the optional ``bench`` extra) imports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_ivf.py"
N, DIM, BITS = 4000, 32, 4


def _scann_imports() -> bool:
    """Whether ``import scann`` works here (the script leaves ScaNN out, with a note, when not)."""
    try:
        import scann  # noqa: F401
    except ImportError:  # not installed, or a broken binary wheel
        return False
    return True


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_ivf")
    argv = [sys.executable, str(SCRIPT), "--n", str(N), "--dim", str(DIM), "--bits", str(BITS), "--nlist", "16",
            "--nprobe", "1", "4", "32", "--n-queries", "40", "--repeats", "1", "--latency-queries", "5",
            "--faiss-train", "4000", "--out", str(out), "--cache", str(out / "cache")]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / f"synthetic-{N}x{DIM}-{BITS}bc.json").read_text())


def test_bench_ivf_runs_on_a_tiny_set(tiny_run):
    tmp_path, result = tiny_run
    rows = result["rows"]
    assert result["nlist"] == 16 and result["lplr"]["nlist"] == 16
    (ref,) = [r for r in rows if r["kind"] == "lplr exhaustive"]
    ivf = [r for r in rows if r["kind"] == "lplr ivf"]
    default = result["lplr"]["default_nprobe"]
    # 32 > nlist is skipped; the default nprobe and nlist itself are added
    assert [r["nprobe"] for r in ivf] == sorted({1, 4, 16, default})
    assert ivf[-1]["vs_all_lists"] == 1.0
    faiss_kinds = {r["kind"] for r in rows if r["kind"].startswith("faiss")} | {
        s["template"] for s in result["skipped"] if s["method"] == "faiss"}
    assert len(faiss_kinds) == 2
    for r in rows:
        assert r["bits_per_coord"] <= BITS and r["bits_per_coord"] == 8 * r["nbytes"] / (N * DIM)
        assert 0 <= r["recall"] <= 1 and r["qps"] > 0 and r["latency_ms"] > 0
        assert r["build_s"] > 0 and r["build_peak_mib"] >= 0 and r["build_anon_peak_mib"] is not None
    # the partitioned index's memory-mapped load and first query are timed
    assert result["lplr"]["load_s"] > 0 and result["lplr"]["first_query_after_load_s"] > 0
    for r in ivf:
        assert 0 <= r["vs_exhaustive"] <= 1
    name = f"synthetic-{N}x{DIM}-{BITS}bc"
    assert "| method | nprobe |" in (tmp_path / f"{name}.md").read_text()
    assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    # the ground truth is cached: a re-run reads it
    assert list((tmp_path / "cache").glob("gt-*.npy"))
    if not _scann_imports():
        assert not result["scann"]["enabled"] and any(s["method"] == "scann" for s in result["skipped"])


def test_bench_ivf_scann_rows_within_the_bits(tiny_run):
    pytest.importorskip("scann", exc_type=ImportError)  # a broken wheel is left out too
    _, result = tiny_run
    info = result["scann"]
    assert info["enabled"] and info["reorder"] is None, info
    scann = [r for r in result["rows"] if r["kind"] == "scann tree-ah"]
    assert [r["nprobe"] for r in scann] == [1, 4]  # 32 > nlist skipped
    for r in scann:
        assert r["nlist"] == 16 and r["dims_per_block"] == info["dims_per_block"]
        assert r["bits_per_coord"] <= BITS and r["nbytes"] == sum(info["stored_files"].values())
        assert r["recall"] > 0.2 and r["build_s"] > 0 and r["resident_mib"] is not None
    # the most blocks that fit: one block more would go over the target (estimate, or measured)
    tried = info["tried"]
    assert tried[-1]["bits_per_coord"] <= BITS and all(t["bits_per_coord"] > BITS for t in tried[:-1])
    assert "serialized_partitioner.pb" in info["stored_files"] and "datapoint_to_token.npy" in info["stored_files"]


def test_faiss_templates_are_sized_for_their_own_list_count():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_ivf

    assert bench_ivf.factory_nlist("PCAR{M},IVF{nlist},PQ{M}x4fs", 4096) == 4096
    assert bench_ivf.factory_nlist("PCAR{M},IVF1024,PQ{M}x4fs", 4096) == 1024
    # fewer lists leave room for more sub-quantizers within the same bits
    few = bench_ivf.faiss_candidates("PCAR{M},IVF1024,PQ{M}x4fs", 10**6, 384, 1024, 1.0)[0]
    many = bench_ivf.faiss_candidates("PCAR{M},IVF1024,PQ{M}x4fs", 10**6, 384, 4096, 1.0)[0]
    assert few > many


def test_bench_ivf_without_the_exhaustive_index(tmp_path):
    """``--no-exhaustive``: no exhaustive row and no 'vs exhaustive' column, the rest as usual."""
    argv = [sys.executable, str(SCRIPT), "--n", "3000", "--dim", "16", "--bits", "2", "--nlist", "8",
            "--nprobe", "1", "2", "--n-queries", "20", "--repeats", "1", "--latency-queries", "3",
            "--faiss-train", "3000", "--faiss-factory", "PCAR{M},IVF{nlist},PQ{M}x4fs", "--no-scann",
            "--no-exhaustive", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "synthetic-3000x16-2bc.json").read_text())
    kinds = [r["kind"] for r in result["rows"]]
    assert "lplr exhaustive" not in kinds and "lplr ivf" in kinds
    assert all("vs_exhaustive" not in r for r in result["rows"])
    assert result["lplr"]["rank"] is None and result["lplr"]["ivf_rank"] > 0
    assert "rank not built (exhaustive)" in (tmp_path / "synthetic-3000x16-2bc.md").read_text()


def test_bench_ivf_on_a_npy_file(tmp_path):
    """``--data npy``: a real set's file, its last rows the queries, the results named after it."""
    import numpy as np

    rng = np.random.default_rng(1)
    np.save(tmp_path / "emb.npy", rng.standard_normal((2500, 16)).astype(np.float32))
    argv = [sys.executable, str(SCRIPT), "--data", "npy", "--npy", str(tmp_path / "emb.npy"), "--bits", "2",
            "--nlist", "8", "--nprobe", "1", "--n-queries", "20", "--repeats", "1", "--latency-queries", "2",
            "--faiss-train", "2480", "--faiss-factory", "IVF{nlist},PQ{M}x4fs", "--no-scann", "--out",
            str(tmp_path), "--cache", str(tmp_path / "cache")]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "emb-2480x16-2bc.json").read_text())
    assert result["n"] == 2480 and result["dim"] == 16
    assert list((tmp_path / "cache").glob("gt-emb-q20-k10.npy"))
    bad = subprocess.run(argv[:2] + ["--data", "npy"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--npy" in bad.stderr
