"""Registry drift: what a user gets today from ``pip install lplr-index[extra]`` without the lock.

Each case installs the checkout (not editable) into a fresh virtual environment with pip's own
resolve, within pyproject.toml's bounds only, then runs a small import check. The README's
commands install from requirements/lock.txt and are not affected; this tells the maintainers
that a fresh user install would break (as dask 2026.11.0 without a matching distributed did),
so that the bounds or the code can be mended before a user meets it.

Prints one line per case and a summary; exits 0 unless --strict is given and a case failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: extra -> code that must run in the fresh environment
CASES = {
    "": ("import numpy as np, lplr_index; "
         "X = np.random.default_rng(0).standard_normal((2000, 16)).astype('float32'); "
         "i = lplr_index.LPLRIndex(16, bits_per_coordinate=2).build(X); "
         "assert (i.search(X[:5], 1).indices[:, 0] == np.arange(5)).all()"),
    "dask": "import dask, dask.array, distributed, lplr_index.distributed",
    "hdf5": "import h5py, lplr_index.vecio",
    "parquet": "import pyarrow, pyarrow.dataset, pyarrow.parquet",
    "langchain": "import langchain_core.vectorstores, lplr_index.langchain",
}


def run(cmd: list[str], timeout: float) -> tuple[bool, str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s: {' '.join(cmd)}"
    text = (out.stdout + out.stderr).strip().splitlines()
    return out.returncode == 0, "\n".join(text[-15:])


def versions(python: str) -> str:
    names = ("numpy", "faiss-cpu", "scikit-learn", "dask", "distributed", "h5py", "pyarrow", "langchain-core")
    code = ("from importlib.metadata import version, PackageNotFoundError\n"
            "out = []\n"
            f"for n in {names!r}:\n"
            "    try: out.append(f'{n} {version(n)}')\n"
            "    except PackageNotFoundError: pass\n"
            "print(', '.join(out))")
    return subprocess.run([python, "-c", code], capture_output=True, text=True).stdout.strip()


def check(extra: str, code: str, timeout: float) -> tuple[bool, str]:
    with tempfile.TemporaryDirectory(prefix="lplr-drift-") as tmp:
        venv.create(tmp, with_pip=True)
        python = str(Path(tmp) / "bin" / "python")
        spec = f"{ROOT}[{extra}]" if extra else str(ROOT)
        ok, log = run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", spec], timeout)
        if not ok:
            return False, f"pip install failed:\n{log}"
        ok, log = run([python, "-c", code], 120)
        got = versions(python)
        return ok, got if ok else f"import check failed with {got}:\n{log}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*", default=list(CASES), help="extras to check (default: all)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per install (default: 600)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a case fails")
    args = parser.parse_args()
    failed = []
    for extra in args.extras:
        name = f"lplr-index[{extra}]" if extra else "lplr-index"
        start = time.perf_counter()
        ok, detail = check(extra, CASES[extra], args.timeout)
        took = time.perf_counter() - start
        print(f"drift check: {name}: {'ok' if ok else 'BROKEN'} ({took:.0f} s): {detail.splitlines()[0] if ok else ''}",
              flush=True)
        if not ok:
            failed.append(name)
            print("  " + detail.replace("\n", "\n  "), flush=True)
    if failed:
        print(f"REGISTRY DRIFT: an unconstrained install of {', '.join(failed)} is broken today; the lock "
              "(requirements/lock.txt) still installs the tested versions. Mend the bounds in pyproject.toml "
              "or the code, then re-lock (make lock).", flush=True)
    else:
        print("drift check: every extra installs and imports unconstrained", flush=True)
    return 1 if failed and args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
