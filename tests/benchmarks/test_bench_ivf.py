"""Smoke test of ``benchmarks/bench_ivf.py`` on a tiny set: every index has its rows, bits within the
target, memory and timing measured, the outputs written (not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_ivf.py"


def test_bench_ivf_runs_on_a_tiny_set(tmp_path):
    argv = [sys.executable, str(SCRIPT), "--n", "4000", "--dim", "32", "--bits", "4", "--nlist", "16",
            "--nprobe", "1", "4", "32", "--n-queries", "40", "--repeats", "1", "--latency-queries", "5",
            "--faiss-train", "4000", "--out", str(tmp_path), "--cache", str(tmp_path / "cache")]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "synthetic-4000x32-4bc.json").read_text())
    rows = result["rows"]
    assert result["nlist"] == 16 and result["lplr"]["nlist"] == 16
    (ref,) = [r for r in rows if r["kind"] == "lplr exhaustive"]
    ivf = [r for r in rows if r["kind"] == "lplr ivf"]
    default = result["lplr"]["default_nprobe"]
    # 32 > nlist is skipped; the default nprobe and nlist itself are added
    assert [r["nprobe"] for r in ivf] == sorted({1, 4, 16, default})
    assert ivf[-1]["vs_all_lists"] == 1.0
    faiss_kinds = {r["kind"] for r in rows if r["kind"].startswith("faiss")} | {s["template"] for s in result["skipped"]}
    assert len(faiss_kinds) == 2
    for r in rows:
        assert r["bits_per_coord"] <= 4 and r["bits_per_coord"] == 8 * r["nbytes"] / (4000 * 32)
        assert 0 <= r["recall"] <= 1 and r["qps"] > 0 and r["latency_ms"] > 0
        assert r["build_s"] > 0 and r["build_peak_mib"] >= 0
    for r in ivf:
        assert 0 <= r["vs_exhaustive"] <= 1
    assert "| method | nprobe |" in (tmp_path / "synthetic-4000x32-4bc.md").read_text()
    assert (tmp_path / "synthetic-4000x32-4bc.png").read_bytes()[:4] == b"\x89PNG"
    # the ground truth is cached: a re-run reads it
    assert list((tmp_path / "cache").glob("gt-*.npy"))
