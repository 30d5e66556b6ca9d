"""Runs never dirty the checkout: default outputs go to a folder git ignores, and the
committed reference results (what the README's tables and links show) are tracked."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a git checkout"
)


def git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def is_ignored(path: Path) -> bool:
    rel = (ROOT / path).resolve().relative_to(ROOT).as_posix()
    return git("check-ignore", "-q", "--no-index", rel).returncode == 0


def default_outputs() -> dict[str, Path]:
    from pipelines.experiment import DEFAULT_OUT_DIR

    outputs = {"pipelines.experiment": DEFAULT_OUT_DIR}
    # the benchmarks' defaults, read from their source (they cannot be imported without
    # running or without their heavy imports); each names a folder under results/
    for script in ("bench_faiss", "bench_index", "bench_factorize"):
        source = (ROOT / "benchmarks" / f"{script}.py").read_text()
        for i, match in enumerate(re.findall(r'Path\("results"\)((?:\s*/\s*"[^"]+")+)', source)
                                  + re.findall(r'ROOT\s*/\s*"results"((?:\s*/\s*"[^"]+")+)', source)):
            parts = re.findall(r'"([^"]+)"', match)
            outputs[f"{script}[{i}]"] = Path("results", *parts)
    return outputs


def test_every_benchmark_default_was_found():
    names = {name.split("[")[0] for name in default_outputs()}
    assert names == {"pipelines.experiment", "bench_faiss", "bench_index", "bench_factorize"}


@pytest.mark.parametrize("name", sorted(default_outputs()))
def test_default_output_is_ignored_by_git(name):
    folder = default_outputs()[name]
    assert is_ignored(folder / "result.json"), f"{name} writes to {folder}, which git does not ignore"


def test_reference_results_are_tracked_and_not_ignored():
    tracked = git("ls-files", "results").stdout.split()
    assert tracked, "no committed reference results"
    assert all(p.startswith("results/reference/") for p in tracked), tracked
    assert not any(is_ignored(Path(p)) for p in tracked)


def test_readme_links_to_results_exist():
    text = (ROOT / "README.md").read_text()
    paths = set(re.findall(r"`(results/[^`*<]+?)/?`", text))
    assert paths, "the README names no results folder"
    for path in paths:
        assert (path + "/").startswith(("results/reference/", "results/runs/")), path
        if path.startswith("results/reference"):
            assert (ROOT / path).exists(), f"the README names {path}, which does not exist"
