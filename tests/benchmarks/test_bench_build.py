"""Smoke test of ``benchmarks/bench_build.py``: alternating builds of a reference and this tree
produce sane rows (not speed). The reference is this tree itself (``--ref-path``), so no git
history is needed; ``--ref`` is checked to name a missing revision clearly."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_build.py"


def run(*args, out):
    return subprocess.run([sys.executable, str(SCRIPT), "--synthetic", "--n", "3000", "--dim", "32",
                           "--threads", "1", "--out", str(out), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_alternating_builds_give_one_row_per_budget(tmp_path):
    proc = run("--bits", "0.5", "2", "--rounds", "2", "--ref-path", str(ROOT), out=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "synthetic-3000x32.json").read_text())
    assert [r["budget"] for r in result["rows"]] == [0.5, 2.0]
    for row in result["rows"]:
        assert len(row["ref_runs_s"]) == len(row["now_runs_s"]) == 2
        assert all(t > 0 for t in row["ref_runs_s"] + row["now_runs_s"])
        assert row["ratio"] == row["now_s"] / row["ref_s"]
        assert row["round_ratio_min"] <= row["round_ratio_max"]
        # the same library on both sides: the same index
        assert row["ref_version"] == row["now_version"]
        assert row["ref_bits_per_coordinate"] == row["now_bits_per_coordinate"] <= row["budget"]
    assert "| b/c |" in (tmp_path / "synthetic-3000x32.md").read_text()


def test_a_reference_that_cannot_be_read_is_named(tmp_path):
    proc = run("--bits", "1", "--rounds", "1", "--ref", "no-such-revision-0000", out=tmp_path)
    assert proc.returncode != 0
    assert "--ref no-such-revision-0000" in proc.stderr and "--ref-path" in proc.stderr
    proc = run("--ref-path", str(tmp_path), out=tmp_path)
    assert proc.returncode == 2 and "--ref-path must hold the lplr_index package" in proc.stderr
