"""Optional extras that are missing or broken: the suite still runs, and the library says what to install.

A registry served dask 2026.11.0 with distributed only up to 2026.8.0; pip then picked
distributed 2021.4.1, which fails to import beside the new dask, and pytest's doctest
collection of ``lplr_index/distributed.py`` stopped the whole run with 0 tests. Here a
stand-in ``distributed`` package that fails the same way is put first on the path of a
fresh interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BROKEN = "raise ImportError(\"cannot import name 'collections_to_dsk' from 'dask.base'\")\n"


@pytest.fixture
def broken_distributed(tmp_path) -> dict:
    (tmp_path / "distributed").mkdir()
    (tmp_path / "distributed" / "__init__.py").write_text(BROKEN)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}


def test_collection_survives_a_broken_extra(broken_distributed):
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-p", "no:cacheprovider", "lplr_index",
         "tests/test_distributed.py"],
        cwd=ROOT, env=broken_distributed, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert "lplr_index/distributed.py not collected (import distributed failed" in out.stdout
    assert "tests collected" in out.stdout or "collected" in out.stdout


def test_broken_pair_names_both_versions_and_the_fix(broken_distributed):
    out = subprocess.run([sys.executable, "-c", "import lplr_index.distributed"], cwd=ROOT,
                         env=broken_distributed, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: lplr_index.distributed needs a matching dask and distributed")
    assert "collections_to_dsk" in last and "pip install --upgrade 'lplr-index[dask]'" in last


def test_extras_have_lower_bounds_that_keep_dask_and_distributed_together():
    """Without a lower bound on distributed, pip backtracks it to a release with no bound on dask."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for spec in extras["dask"]:
        assert ">=" in spec, spec


def test_lock_pins_every_package_of_the_environment():
    """requirements/lock.txt pins exact versions (the Makefile installs with -c from it)."""
    lines = [ln for ln in (ROOT / "requirements" / "lock.txt").read_text().splitlines()
             if ln.strip() and not ln.startswith("#")]
    assert lines and all("==" in ln and ";" not in ln for ln in lines), lines[:5]
    names = {ln.split("==")[0].lower() for ln in lines}
    assert {"numpy", "faiss-cpu", "scikit-learn", "dask", "distributed", "torch"} <= names
    assert "-c requirements/lock.txt" in (ROOT / "Makefile").read_text()
