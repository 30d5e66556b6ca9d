"""Smoke test of ``benchmarks/bench_ivf_build.py`` on a tiny set: three builds timed, the
partitioned one's nprobe report and sweep recorded, bad arguments refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_ivf_build.py"


def test_builds_are_timed(tmp_path):
    args = [sys.executable, str(SCRIPT), "--n", "3000", "--dim", "32", "--nlist", "32", "--nprobe", "2", "64",
            "--n-queries", "30", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads((tmp_path / "synthetic-3000x32-1bc-nlist32.json").read_text())
    assert [r["build"] for r in got["rows"]] == ["exhaustive", "partitioned", "exhaustive, again"]
    ivf = got["rows"][1]
    assert ivf["nlist"] == 32 and str(ivf["nprobe"]) in ivf["sweep"] and "64" not in ivf["sweep"]
    assert ivf["nprobe_report"]["32"] == 1.0
    assert all(0 <= v["recall"] <= 1 and v["qps"] > 0 for v in ivf["sweep"].values())
    assert got["ratio"] > 0 and all(r["build_s"] > 0 for r in got["rows"])
    assert "the partitioned build (32 lists)" in (tmp_path / "synthetic-3000x32-1bc-nlist32.md").read_text()
    bad = subprocess.run(args[:2] + ["--n", "10", "--nlist", "20"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--nlist must be" in bad.stderr


def test_partitioned_alone_with_plans(tmp_path):
    """``--builds partitioned``: one build, no ratio; ``--plan-n``: the plan's figures at the run's size
    (its file size is the build's, the design chosen on all rows) and at a larger one."""
    args = [sys.executable, str(SCRIPT), "--n", "3000", "--dim", "32", "--nlist", "32", "--nprobe", "2",
            "--n-queries", "30", "--builds", "partitioned", "--plan-n", "3000", "30000", "--plan-sample", "3000",
            "--plan-nlist", "same", "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads((tmp_path / "synthetic-3000x32-1bc-nlist32.json").read_text())
    assert [r["build"] for r in got["rows"]] == ["partitioned"] and got["ratio"] is None
    here, larger = got["plans"]
    assert (here["n"], here["nlist"], larger["n"]) == (3000, 32, 30000)
    assert here["file_gib"] == got["rows"][0]["file_gib"]
    assert larger["file_gib"] > here["file_gib"] and larger["build_peak_gib"] > 0
    assert "no exhaustive build" in (tmp_path / "synthetic-3000x32-1bc-nlist32.md").read_text()
    for wrong in (["--builds", "exhaustive"], ["--builds", "partitioned,partitioned"], ["--builds", "flat"],
                  ["--plan-n", "0"]):
        bad = subprocess.run(args[:2] + ["--n", "3000", "--nlist", "32"] + wrong, cwd=ROOT, capture_output=True,
                             text=True)
        assert bad.returncode == 2 and ("--builds must" in bad.stderr or "--plan-n" in bad.stderr), bad.stderr
