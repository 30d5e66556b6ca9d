"""Smoke test of ``benchmarks/bench_latency.py``: both indexes timed, the ratio is theirs (not speed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_latency.py"


def test_alternating_blocks_time_both_indexes(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--synthetic", "--n", "4000", "--dim", "32", "--bits", "1", "2",
                           "--queries", "7", "--rounds", "3", "--max-train", "4000", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "synthetic-4000x32.json").read_text())
    assert [r["budget"] for r in result["rows"]] == [1.0, 2.0]
    for r in result["rows"]:
        assert r["queries_timed"] == 21 and r["pq_M"] == int(r["budget"] * 32 / 4)
        assert r["lplr_ms"] > 0 and r["pq_ms"] > 0
        assert r["ratio"] == pytest.approx(r["lplr_ms"] / r["pq_ms"])
        assert r["round_ratio_min"] <= r["round_ratio_max"]
        assert r["lplr_bits_per_coordinate"] <= r["budget"]
    assert "ratio" in (tmp_path / "synthetic-4000x32.md").read_text()


@pytest.mark.parametrize("argv, match", [(["--queries", "0"], "--queries must be >= 1"),
                                         (["--bits", "0"], "--bits must be positive")])
def test_bad_arguments_are_refused_by_name(argv, match):
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and match in proc.stderr
