"""lplr_index._faiss: faiss loaded with its OpenBLAS's kernels chosen for the CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lplr_index import _faiss

SKX = {k: True for k in ("AVX2", "FMA3", "AVX512F", "AVX512CD", "AVX512BW", "AVX512DQ", "AVX512VL")}


@pytest.mark.parametrize(
    "features, machine, want",
    [
        ({**SKX, "AVX512_SKX": True}, "x86_64", "SkylakeX"),
        (SKX, "AMD64", "SkylakeX"),  # (Windows's name)
        ({**SKX, "AVX512BW": False}, "x86_64", "Haswell"),  # no full AVX-512 set: AVX2's kernels
        ({"AVX2": True, "FMA3": True}, "x86_64", "Haswell"),
        ({"AVX2": True, "FMA3": False}, "x86_64", None),
        ({"AVX": True}, "x86_64", None),
        ({}, "x86_64", None),
        (SKX, "aarch64", None),  # another architecture: OpenBLAS's own choice
        (SKX, "arm64", None),
    ],
)
def test_coretype(features, machine, want):
    assert _faiss.coretype(features, machine) == want


def test_cpu_features_are_numpy_s():
    f = _faiss.cpu_features()
    assert isinstance(f, dict)
    if f:
        assert all(isinstance(v, bool) for v in f.values())
        assert "AVX2" in f or "ASIMD" in f or "NEON" in f or "VSX" in f


def run(code: str, env: dict | None = None) -> subprocess.CompletedProcess:
    e = {k: v for k, v in os.environ.items() if k != "OPENBLAS_CORETYPE"}
    e.update(env or {})
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=e)


REPORT = (
    "import json, os, lplr_index\n"
    "from lplr_index._faiss import faiss_blas\n"
    "lib = faiss_blas()\n"
    "print(json.dumps([None if lib is None else lib.get('architecture'), os.environ.get('OPENBLAS_CORETYPE')]))"
)


def test_import_loads_faiss_with_the_cpus_kernels_and_leaves_no_variable():
    done = run("import warnings; warnings.simplefilter('error')\n" + REPORT)
    assert done.returncode == 0, done.stderr
    arch, left = json.loads(done.stdout.splitlines()[-1])
    assert left is None  # set for faiss's load only
    want = _faiss.coretype()
    if arch is None or want is None:
        pytest.skip("faiss brings no OpenBLAS here, or the CPU has no kernels to choose")
    assert arch == want


def test_a_variable_the_caller_set_is_kept():
    done = run(REPORT, {"OPENBLAS_CORETYPE": "Prescott"})
    assert done.returncode == 0, done.stderr
    arch, left = json.loads(done.stdout.splitlines()[-1])
    assert left == "Prescott"
    if arch is not None:
        assert arch == "Prescott"
    assert "RuntimeWarning" not in done.stderr  # their choice: no warning


def test_faiss_imported_first_with_generic_kernels_is_named():
    done = run("import faiss\n" + REPORT)
    assert done.returncode == 0, done.stderr
    arch, _ = json.loads(done.stdout.splitlines()[-1])
    want = _faiss.coretype()
    if arch == "Prescott" and want is not None:
        assert "RuntimeWarning" in done.stderr and f"OPENBLAS_CORETYPE={want}" in done.stderr
    else:  # its OpenBLAS chose well (or there is none): nothing to say
        assert "RuntimeWarning" not in done.stderr
