"""Smoke test of ``benchmarks/bench_removed.py`` on a tiny set: both copies timed, the removed
rows counted, the single queries on the lean path, bad arguments refused (not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_removed.py"


@pytest.mark.parametrize("nlist", [None, 16])
def test_both_copies_are_timed(tmp_path, nlist):
    args = [sys.executable, str(SCRIPT), "--n", "3000", "--dim", "32", "--queries", "30", "--latency-queries", "5",
            "--rounds", "2", "--removed", "0.01", "--out", str(tmp_path)] + (["--nlist", str(nlist)] if nlist else [])
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    name = "synthetic-3000x32-1bc" + (f"-nlist{nlist}" if nlist else "")
    got = json.loads((tmp_path / f"{name}.json").read_text())
    row, = got["rows"]
    assert row["removed_rows"] == 30 and row["nlist"] == nlist and row["lean_share"] == 1.0
    assert row["plain_us"] > 0 and row["removed_us"] > 0 and row["plain_qps"] > 0 and row["removed_qps"] > 0
    assert row["single_ratio"] == pytest.approx(row["removed_us"] / row["plain_us"])
    assert 0.5 < row["overlap_with_as_built"] <= 1
    assert "ratio" in (tmp_path / f"{name}.md").read_text()


@pytest.mark.parametrize("bad", [["--removed", "0"], ["--removed", "1.5"], ["--nlist", "0"]])
def test_bad_arguments_are_refused(bad):
    proc = subprocess.run([sys.executable, str(SCRIPT), *bad], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and bad[0] in proc.stderr
