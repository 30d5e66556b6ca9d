"""Shared pieces of the benchmarks: synthetic data, machine description, timing, output."""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def make_embeddings(n: int, d: int, *, decay: float = 0.7, n_queries: int = 0, seed: int = 0):
    """Synthetic embeddings with a power-law spectrum, plus held-out queries.

    Rows are ``g * diag(i**-decay) * O`` with Gaussian ``g`` and a random
    orthogonal ``O`` (d x d), generated in blocks so the peak memory is the
    output itself. Queries are further rows of the same distribution.

    Returns
    -------
    X : ndarray of shape (n, d), float32
    Q : ndarray of shape (n_queries, d), float32
    """
    rng = np.random.default_rng(seed)
    O, _ = np.linalg.qr(rng.standard_normal((d, d)))
    M = (np.arange(1, d + 1, dtype=np.float64) ** -decay)[:, None] * O
    M = M.astype(np.float32)
    total = n + n_queries
    out = np.empty((total, d), np.float32)
    block = 1 << 16
    for s in range(0, total, block):
        g = rng.standard_normal((min(block, total - s), d), dtype=np.float32)
        out[s : s + len(g)] = g @ M
    return out[:n], out[n:]


def machine() -> dict:
    """What the numbers were measured on."""
    import faiss

    info = {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "faiss": faiss.__version__,
        "faiss_threads": faiss.omp_get_max_threads(),
        "faiss_blas": _faiss_blas(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            info["mem_total"] = f.readline().split(":", 1)[1].strip()
    except OSError:
        pass
    return info


def _faiss_blas() -> str | None:
    """faiss's own BLAS and the kernels it runs (lplr_index._faiss), e.g. "openblas 0.3.15 SkylakeX"."""
    from lplr_index._faiss import faiss_blas

    lib = faiss_blas()
    return None if lib is None else f"{lib.get('internal_api')} {lib.get('version')} {lib.get('architecture')}"


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls of ``fn`` and its last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TracedPeak:
    """Peak of memory allocated through Python and numpy inside the block, MiB (tracemalloc).

    BLAS and faiss internal buffers are not traced; the process's peak RSS covers them.
    """

    def __enter__(self) -> "TracedPeak":
        import tracemalloc

        tracemalloc.start()
        self.mib = 0.0
        return self

    def __exit__(self, *exc) -> None:
        import tracemalloc

        self.mib = tracemalloc.get_traced_memory()[1] / 2**20
        tracemalloc.stop()


def run_case_in_subprocess(script: Path, case: dict, timeout: float | None = None) -> dict:
    """Run ``script --case JSON`` in a fresh interpreter so its peak memory is its own."""
    proc = subprocess.run(
        [sys.executable, str(script), "--case", json.dumps(case)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(rows: Sequence[dict], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as a Markdown table; ``columns`` are (key, header, format spec)."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "|" + "|".join("---:" if f else "---" for _, _, f in columns) + "|"
    lines = [head, sep]
    for r in rows:
        cells = []
        for key, _, fmt in columns:
            v = r.get(key)
            cells.append("" if v is None else (format(v, fmt) if fmt else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(folder: Path, name: str, payload: dict, table: str) -> None:
    """``name.json`` (payload) and ``name.md`` (table plus the command) in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    cmd = "python " + " ".join([os.path.relpath(sys.argv[0], ROOT)] + sys.argv[1:])
    m = payload["machine"]
    (folder / f"{name}.md").write_text(
        f"{table}\n\nMeasured with `{cmd}` on {m.get('cpu', m['processor'])}, "
        f"{m['cpu_count']} cores, faiss threads {m['faiss_threads']}, numpy {m['numpy']}, "
        f"faiss {m['faiss']}; load average {m.get('load_average_1_5_15')} when it ended "
        f"(above 0.5, other processes shared the 2 cores: times are then upper bounds).\n"
    )
