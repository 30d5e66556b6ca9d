"""Smoke test of ``benchmarks/bench_rerank_depth.py``: every factor of the design measured, the
agreements are fractions, the deepest reaches the exact scan's neighbours on a tiny set."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_rerank_depth.py"


def test_depths_per_design_are_measured(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--sets", "synthetic-3000", "--dim", "32", "--bits", "1", "4",
                           "--queries", "30", "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.loads((tmp_path / "depths.json").read_text())["rows"]
    assert [r["bits"] for r in rows] == [1.0, 4.0]
    for r in rows:
        factors = [int(f) for f in r["by_factor"]]
        assert factors == ([4, 6, 8, 12, 16] if r["design"] == "two-level" else [2, 3, 4])
        assert all(0 <= a <= 1 for a in r["by_factor"].values())
        assert r["by_factor"][str(factors[-1])] >= 0.99  # the default depth keeps the exact neighbours
    assert "top-10 agreement" in (tmp_path / "depths.md").read_text()
    bad = subprocess.run([sys.executable, str(SCRIPT), "--sets", "nope"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--sets: 'nope' is neither synthetic-N" in bad.stderr
