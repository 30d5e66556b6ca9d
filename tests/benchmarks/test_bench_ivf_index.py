"""Smoke test of benchmarks/bench_ivf_index.py on a tiny set: it runs and writes its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bench_ivf_index_runs_on_a_tiny_set(tmp_path):
    done = subprocess.run(
        [sys.executable, "benchmarks/bench_ivf_index.py", "--n", "5000", "--dim", "32", "--queries", "20", "--bits", "4",
         "--repeats", "1", "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((tmp_path / "bench_ivf_index.json").read_text())["rows"]
    assert [r["index"] for r in rows] == ["exhaustive", "lists", "lists, nprobe = nlist"]
    assert rows[1]["nlist"] >= 1 and 1 <= rows[1]["nprobe"] <= rows[1]["nlist"]
    assert all(0 <= r["recall"] <= 1 and r["qps"] > 0 for r in rows)
    assert "| n | LPLRIndex |" in (tmp_path / "bench_ivf_index.md").read_text()
