"""The wheel holds the library only: ``lplr_index`` (with its sub-packages) and its dist-info.

``pipelines/`` and ``benchmarks/`` run from the checkout; a wheel that installed a
top-level ``pipelines`` package would shadow (or be shadowed by) any other package of
that name. The wheel is built offline from a copy of the checkout with the venv's
setuptools (``pip wheel --no-deps --no-build-isolation``), then installed into a folder
and imported without the checkout's editable install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: not copied into the build folder: environments, caches, data and results
SKIP = {".git", ".venv", "build", "dist", "data", "results", "__pycache__", ".pytest_cache", ".mypy_cache"}


def _ignore(folder: str, names: list[str]) -> set[str]:
    return {n for n in names if n in SKIP or n.endswith((".egg-info", ".pyc", ".lplr", ".npy", ".npz"))}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of the checkout (the checkout itself stays untouched)."""
    setuptools = pytest.importorskip("setuptools")
    major, minor = (int(x) for x in setuptools.__version__.split(".")[:2])
    assert (major, minor) >= (70, 1), (
        f"setuptools {setuptools.__version__} has no built-in bdist_wheel: install the test extra "
        "(pip install -e '.[test]'), which asks for setuptools>=70.1"
    )
    src = tmp_path_factory.mktemp("src") / "lplr-index"
    shutil.copytree(ROOT, src, ignore=_ignore)
    out = tmp_path_factory.mktemp("wheel")
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--disable-pip-version-check", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PIP_NO_INDEX": "1"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    wheels = list(out.glob("lplr_index-*.whl"))
    assert len(wheels) == 1, os.listdir(out)
    return wheels[0]


def test_wheel_holds_only_the_library(wheel):
    import lplr_index

    names = zipfile.ZipFile(wheel).namelist()
    dist_info = f"lplr_index-{lplr_index.__version__}.dist-info/"
    strays = [n for n in names if not (n.startswith("lplr_index/") or n.startswith(dist_info))]
    assert not strays, f"the wheel holds more than the library: {strays}"
    assert not any(n.startswith(("pipelines/", "benchmarks/", "tests/")) for n in names)


def test_wheel_holds_every_library_module_and_the_typing_marker(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    package = ROOT / "lplr_index"
    expected = {p.relative_to(ROOT).as_posix() for p in package.rglob("*.py") if "__pycache__" not in p.parts}
    missing = expected - names
    assert not missing, f"modules of the checkout missing from the wheel (a sub-package not listed?): {missing}"
    assert "lplr_index/py.typed" in names


def test_wheel_metadata(wheel):
    import lplr_index

    archive = zipfile.ZipFile(wheel)
    dist_info = f"lplr_index-{lplr_index.__version__}.dist-info"
    metadata = archive.read(f"{dist_info}/METADATA").decode()
    assert f"Version: {lplr_index.__version__}" in metadata  # one version, from lplr_index/_version.py
    requires = [line.split(":", 1)[1].strip() for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert sorted(r.split(">")[0].split("=")[0].strip() for r in core) == ["faiss-cpu", "numpy", "scikit-learn"]
    entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert "lplr-index = lplr_index.cli:main" in entry_points


def test_installed_wheel_imports_the_library_and_nothing_else_of_ours(wheel, tmp_path):
    target = tmp_path / "site"
    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--disable-pip-version-check",
         "-q", "--target", str(target), str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    installed = {p.name for p in target.iterdir() if not p.name.endswith(".dist-info")}
    assert installed - {"bin"} == {"lplr_index"}  # bin/: the lplr-index console script
    # -S: no site-packages processing, so the checkout's editable install is not on the path;
    # numpy and faiss come from the venv's site-packages, listed after the installed wheel
    site_packages = sysconfig.get_paths()["purelib"]
    probe = (
        "import sys, lplr_index, lplr_index.cli\n"
        f"assert lplr_index.__file__.startswith({str(target)!r}), lplr_index.__file__\n"
        "try:\n    import pipelines\nexcept ImportError:\n    pass\n"
        "else:\n    raise SystemExit('pipelines is importable: ' + pipelines.__file__)\n"
        "sys.exit(lplr_index.cli.main(['--version']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-S", "-c", probe], capture_output=True, text=True, timeout=120, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(target), site_packages])},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("lplr-index ")


# ---------------------------------------------------------------- from the checkout
def _without_the_editable_install(tmp_path: Path) -> dict[str, str]:
    """Environment for ``python -S``: the library as a wheel would install it, nothing else of ours.

    ``-S`` skips site-packages' ``.pth`` files (the editable install); the venv's
    site-packages is put back on PYTHONPATH for numpy and faiss, and a folder holding
    only a link to ``lplr_index`` stands for the installed wheel.
    """
    wheel_like = tmp_path / "installed"
    wheel_like.mkdir()
    (wheel_like / "lplr_index").symlink_to(ROOT / "lplr_index", target_is_directory=True)
    site_packages = sysconfig.get_paths()["purelib"]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(wheel_like), site_packages])}


README_COMMANDS = {
    "pipelines.experiment": ["-m", "pipelines.experiment", "--help"],
    "bench_index": ["benchmarks/bench_index.py", "--help"],
    "bench_factorize": ["benchmarks/bench_factorize.py", "--help"],
    "bench_refinement": ["benchmarks/bench_refinement.py", "--help"],
    "bench_faiss": ["benchmarks/bench_faiss.py", "--help"],
    "bench_codes": ["benchmarks/bench_codes.py", "--help"],
    "bench_scale": ["benchmarks/bench_scale.py", "--help"],
    "bench_threads": ["benchmarks/bench_threads.py", "--help"],
    "bench_ivf": ["benchmarks/bench_ivf.py", "--help"],
    "bench_ivf_index": ["benchmarks/bench_ivf_index.py", "--help"],
    "bench_ivf_ab": ["benchmarks/bench_ivf_ab.py", "--help"],
    "bench_removed": ["benchmarks/bench_removed.py", "--help"],
    "bench_parquet": ["benchmarks/bench_parquet.py", "--help"],
}


@pytest.mark.parametrize("argv", README_COMMANDS.values(), ids=README_COMMANDS.keys())
def test_readme_commands_run_from_the_checkout_without_installing_pipelines(argv, tmp_path):
    done = subprocess.run(
        [sys.executable, "-S", *argv], capture_output=True, text=True, timeout=120, cwd=ROOT,
        env=_without_the_editable_install(tmp_path),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage:" in done.stdout
