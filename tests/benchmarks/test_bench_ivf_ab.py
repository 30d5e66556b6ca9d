"""Smoke test of ``benchmarks/bench_ivf_ab.py`` on a tiny set: both indexes timed in every round,
the ratio along faiss's recall read off LPLR's curve, saved indexes loaded by a second run, bad
arguments refused (not speed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_ivf_ab.py"
sys.path.insert(0, str(ROOT / "benchmarks"))


def test_lplr_qps_is_read_off_its_curve():
    from bench_ivf_ab import lplr_qps_at

    curve = [(0.4, 1e-4), (0.5, 2e-4), (0.6, 4e-4)]  # (recall, seconds a query), by nprobe
    assert lplr_qps_at(curve, 0.3) == pytest.approx(1e4)  # the first point already reaches more
    assert lplr_qps_at(curve, 0.4) == pytest.approx(1e4)
    assert lplr_qps_at(curve, 0.45) == pytest.approx(1 / 1.5e-4)  # halfway in time
    assert lplr_qps_at(curve, 0.6) == pytest.approx(2500)
    assert lplr_qps_at(curve, 0.61) is None  # never reached
    assert lplr_qps_at([(0.5, 1e-4), (0.5, 2e-4), (0.7, 3e-4)], 0.6) == pytest.approx(1 / 2.5e-4)


def test_lplr_curve_is_the_envelope_of_its_points():
    from bench_ivf_ab import envelope

    # (recall, seconds a query) of two depths over nprobe: the shallow depth's points are faster
    # at equal recall; the deeper one reaches more; dominated points drop out
    points = [(0.43, 2e-5), (0.54, 2.4e-5), (0.43, 2.5e-5), (0.54, 3e-5), (0.60, 4e-5), (0.50, 5e-5)]
    assert envelope(points) == [(0.43, 2e-5), (0.54, 2.4e-5), (0.60, 4e-5)]
    assert envelope([(0.5, 1e-4)]) == [(0.5, 1e-4)]
    assert envelope([(0.5, 2e-4), (0.6, 1e-4)]) == [(0.6, 1e-4)]  # more recall in less time
    assert envelope([]) == []


def test_both_indexes_are_timed_alternately(tmp_path):
    args = [sys.executable, str(SCRIPT), "--n", "4000", "--dim", "32", "--n-queries", "40", "--nlist", "16",
            "--bits", "4", "--nprobe", "1", "4", "64", "--rounds", "2", "--latency-queries", "5",
            "--index-dir", str(tmp_path / "ix"), "--cache", str(tmp_path / "cache"), "--out", str(tmp_path)]
    runs = []
    for _ in range(2):
        proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        runs.append((json.loads((tmp_path / "synthetic-4000x32-4bc-nlist16.json").read_text()), proc.stderr))
    got, log = runs[0]
    assert "lplr built" in log and "lplr loaded" in runs[1][1] and "loaded" in runs[1][1].split("faiss")[1]
    # LPLR at its measured depth and at depth 1 (--lplr-depths' default), then faiss
    rows = got["rows"]
    default = rows[0]["depth"]
    assert default is not None and default > 1  # (4 b/c: two-level codes, measured deeper)
    assert [(r["kind"], r["depth"], r["nprobe"]) for r in rows] == (
        [("lplr", default, p) for p in (1, 4)] + [("lplr", 1, p) for p in (1, 4)] + [("faiss", None, p) for p in (1, 4)])
    for r in rows:
        assert 0 < r["bits_per_coord"] <= 4 and 0 <= r["recall"] <= 1
        assert r["qps_min"] <= r["qps"] <= r["qps_max"] and r["latency_ms"] > 0
    assert all(len(v) == 2 for v in got["batch_s"].values()) and len(got["batch_s"]) == 6  # every round
    for a in got["along_faiss"]:
        assert a["ratio"] is None or a["ratio"] == pytest.approx(a["lplr_qps"] / a["faiss_qps"])
    # the loaded indexes answer as the built ones did
    assert [r["recall"] for r in runs[1][0]["rows"]] == [r["recall"] for r in got["rows"]]
    assert (tmp_path / "synthetic-4000x32-4bc-nlist16.md").exists()
    assert (tmp_path / "synthetic-4000x32-4bc-nlist16.png").exists()
    bad = subprocess.run([sys.executable, str(SCRIPT), "--rounds", "0"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--rounds" in bad.stderr
    bad = subprocess.run([sys.executable, str(SCRIPT), "--lplr-depths", "0"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--lplr-depths" in bad.stderr
