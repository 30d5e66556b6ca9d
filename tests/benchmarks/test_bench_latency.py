"""Smoke test of ``benchmarks/bench_latency.py``: every index timed, the ratios are theirs, the profile's
stages add up (not speed)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_latency.py"


def test_interleaved_rounds_time_every_index_and_profile_the_stages(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--synthetic", "--n", "4000", "--dim", "32", "--bits", "1", "2",
                           "--queries", "7", "--batch", "50", "--rounds", "3", "--max-train", "4000",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "synthetic-4000x32.json").read_text())
    assert [r["budget"] for r in result["rows"]] == [1.0, 2.0]
    for r in result["rows"]:
        assert r["pq_name"] == f"PQ{int(r['budget'] * 32 / 4)}x4fs"
        # PCAR's 32 x 32 PCA fits at 1 b/c of 4,000 rows: its m within the budget (+2 %)
        assert r["pcar_name"].startswith("PCAR") and r["pcar_bits"] <= 1.02 * r["budget"]
        assert r["lplr_bits"] <= r["budget"]
        rivals = ["pq", "pcar"]
        assert r["latency_ratio"] == pytest.approx(r["lplr_ms"] / min(r[f"{n}_ms"] for n in rivals))
        assert r["qps_ratio"] == pytest.approx(r["lplr_qps"] / max(r[f"{n}_qps"] for n in rivals))
        assert r["latency_ratio_rounds"][0] <= r["latency_ratio_rounds"][1]
        assert all(0 <= r[f"{n}_recall"] <= 1 for n in ["lplr", *rivals])
        for mode in ("single", "batch"):
            parts = r[f"profile_{mode}_us"]
            assert set(parts) == {"project", "fastscan", "rerank", "scorer_glue", "index_glue"}
            assert parts["fastscan"] > 0 and sum(parts.values()) == pytest.approx(r[f"profile_{mode}_total_us"])
    assert "q/s ratio" in (tmp_path / "synthetic-4000x32.md").read_text()
    assert (tmp_path / "synthetic-4000x32.png").stat().st_size > 0
    assert "same_name" not in result["rows"][0]  # the same-codes reference only when asked for


def test_same_codes_reference_scores_lplr_code_count_beside_the_rivals(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--synthetic", "--n", "3000", "--dim", "32", "--bits", "1",
                           "--queries", "5", "--batch", "40", "--rounds", "2", "--max-train", "3000", "--same-codes",
                           "--out", str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (r,) = json.loads((tmp_path / "synthetic-3000x32.json").read_text())["rows"]
    codes = int(r["same_name"].split(",")[0][len("PCAR"):])
    assert r["same_name"] == f"PCAR{codes},PQ{codes}x4fs"
    # LPLR's fast-scan codes a vector: its layout's groups (the coarse code of each), here one level
    assert codes == sum(count for _, count, _ in json.loads(r["lplr_layout"]))
    assert r["same_latency_ratio"] == pytest.approx(r["lplr_ms"] / r["same_ms"])
    assert r["same_qps_ratio"] == pytest.approx(r["lplr_qps"] / r["same_qps"])
    # a reference, not a rival: the ratios against the rivals leave it out
    assert r["qps_ratio"] == pytest.approx(r["lplr_qps"] / max(r["pq_qps"], r["pcar_qps"]))
    assert "LPLR's code count" in (tmp_path / "synthetic-3000x32.md").read_text()


@pytest.mark.parametrize("argv, match", [(["--queries", "0"], "--queries must be >= 1"),
                                         (["--bits", "0"], "--bits must be positive")])
def test_bad_arguments_are_refused_by_name(argv, match):
    proc = subprocess.run([sys.executable, str(SCRIPT), *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and match in proc.stderr
