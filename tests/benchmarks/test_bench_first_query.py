"""Smoke test of ``benchmarks/bench_first_query.py`` on a tiny partitioned index: every run's
stages are timed, the lists left after the warm-up are counted, bad arguments are refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_first_query.py"


def test_first_queries_are_timed(tmp_path):
    index = tmp_path / "ivf.lplr"
    args = [sys.executable, str(SCRIPT), "--n", "4000", "--dim", "32", "--nlist", "64", "--queries", "40",
            "--warm", "5", "--runs", "2", "--index", str(index), "--out", str(tmp_path)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert index.exists() and "built" in proc.stdout
    got = json.loads((tmp_path / "synthetic-4000x32-1bc.json").read_text())
    assert [r["run"] for r in got["runs"]] == [1, 2]
    for r in got["runs"]:
        assert r["nlist"] == 64 and 1 <= r["nprobe"] <= 64
        assert 0 <= r["lists_waiting_after_warm"] < 64
        for key in ("load_s", "first_query_s", "warm_median_ms", "fill_rest_s", "steady_median_ms",
                    "fill_all_at_once_s", "steady_batch_qps"):
            assert r[key] > 0 or (key == "fill_rest_s" and r[key] >= 0), (key, r)
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)  # the file is reused
    assert again.returncode == 0 and "built" not in again.stdout
    bad = subprocess.run(args[:2] + ["--warm", "50", "--queries", "40"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--warm must be" in bad.stderr
