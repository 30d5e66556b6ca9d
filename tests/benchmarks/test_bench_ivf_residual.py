"""Smoke test of ``benchmarks/bench_ivf_residual.py`` on a tiny set: every variant measured at
comparable bits, the method checked against the index's own search, bad arguments refused."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "bench_ivf_residual.py"


def test_variants_are_measured(tmp_path):
    args = [sys.executable, str(SCRIPT), "--n", "4000", "--dim", "32", "--nlist", "16", "--n-queries", "30",
            "--out", str(tmp_path)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads((tmp_path / "clustered-4000x32-1bc-nlist16.json").read_text())
    assert [r["variant"] for r in got["rows"]] == ["vectors", "residuals, own basis", "vectors, same lists",
                                                   "shared basis, vectors", "shared basis, residuals"]
    vectors, own, same, shared_v, shared_r = got["rows"]
    # equal budgets: the residual variants spend what the centroids and list numbers leave
    assert 0 < own["bits"] <= vectors["bits"] <= 1.0 and abs(same["bits"] - own["bits"]) < 0.05
    assert 0 < shared_v["bits"] == shared_r["bits"] <= 1.0  # same codes, lists and centroids
    for r in got["rows"]:
        assert all(0 <= r[f"r{q}"] <= 1 for q in ("1", "2", "4", "8", "16", "all"))
    # the exact scan of the decoded codes in every list is what the index's search tends to
    assert abs(vectors["index_search"]["16"] - vectors["r16"]) <= 0.05
    assert 0 < own["residual_energy"] < 1
    bad = subprocess.run(args[:2] + ["--n", "4000", "--dim", "32", "--nlist", "1000"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "--nlist must be" in bad.stderr


def test_any_npy_file(tmp_path):
    """``--data npy``: the file's last rows are the queries; the results are named after the file."""
    import numpy as np

    rng = np.random.default_rng(0)
    np.save(tmp_path / "vecs.npy", (rng.standard_normal((3000, 16)) + 3 * rng.standard_normal((8, 16))[
        rng.integers(8, size=3000)]).astype(np.float32))
    args = [sys.executable, str(SCRIPT), "--data", "npy", "--npy", str(tmp_path / "vecs.npy"), "--nlist", "8",
            "--n-queries", "20", "--out", str(tmp_path)]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads((tmp_path / "vecs-2980x16-1bc-nlist8.json").read_text())
    assert got["n"] == 2980 and len(got["rows"]) == 5
    bad = subprocess.run(args[:2] + ["--data", "npy"], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 2 and "--npy" in bad.stderr
