"""faiss, loaded with its bundled OpenBLAS's kernels chosen for this CPU.

faiss-cpu's Linux wheels (1.15.1 among them) bundle OpenBLAS 0.3.15, whose run-time CPU
detection predates Intel's Sapphire Rapids: on this project's machine (a Xeon with AVX-512)
it names the CPU "Prescott" and runs its generic SSE3 kernels for every product faiss
computes: k-means (IVF lists, grouped codes' codebooks), flat and coarse searches of 20
queries or more, ``LinearTransform`` (the projection of a batch of queries). Measured there
(1 thread, faiss 1.15.1): 65,536 x 88 rows in 1,024 clusters, 5 iterations, 2.9-3.0 s with
the generic kernels, 0.69-0.84 s with the AVX-512 ones (SkylakeX), 0.96-0.99 s with AVX2's
(Haswell); 1,000 queries of 384 projected to 204 coordinates 4.8-6.2 us a query against
0.9-1.9 (SkylakeX) and 2.2 (Haswell).

OpenBLAS reads ``OPENBLAS_CORETYPE`` once, when it is loaded. So ``import lplr_index`` loads
faiss (:func:`load`) with that variable set, for the load only, to the kernels the CPU runs:
SkylakeX where it has AVX-512's F, CD, BW, DQ and VL (numpy's ``AVX512_SKX``), Haswell where
it has AVX2 and FMA; nothing on other CPUs. The variable is removed afterwards: libraries
loaded later and child processes never see it. A variable the caller set is left as it is
(``OPENBLAS_CORETYPE=Prescott`` keeps the generic kernels). faiss imported before
lplr_index keeps what its OpenBLAS chose; when that is the generic kernels on a CPU with
better ones, :func:`load` warns and says how to choose them.

The choice changes no result beyond the last bits of float sums (as another BLAS would), and
one machine always makes the same one: builds there stay byte-identical.
"""

from __future__ import annotations

import os
import platform
import sys
import warnings

__all__ = ["load", "coretype", "cpu_features", "faiss_blas"]

#: OpenBLAS's name for the generic kernels its detection falls back to
_GENERIC = "Prescott"


def cpu_features() -> dict[str, bool]:
    """numpy's record of the CPU's instruction sets (what the OS lets programs use)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy < 2
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return {}
    return dict(__cpu_features__)


def coretype(features: dict[str, bool] | None = None, machine: str | None = None) -> str | None:
    """The OpenBLAS kernels for this CPU (``features``: :func:`cpu_features`; ``machine``:
    :func:`platform.machine`): ``"SkylakeX"`` with AVX-512 (F, CD, BW, DQ, VL), ``"Haswell"``
    with AVX2 and FMA, None elsewhere (other architectures, older x86)."""
    machine = platform.machine() if machine is None else machine
    if machine.lower() not in ("x86_64", "amd64"):
        return None
    f = cpu_features() if features is None else features
    if f.get("AVX512_SKX") or all(f.get(k) for k in ("AVX512F", "AVX512CD", "AVX512BW", "AVX512DQ", "AVX512VL")):
        return "SkylakeX"
    if f.get("AVX2") and f.get("FMA3"):
        return "Haswell"
    return None


def load():
    """faiss, imported (once) with :func:`coretype`'s kernels in its OpenBLAS (see the module's
    text); warns when faiss was imported before with the generic ones."""
    loaded = sys.modules.get("faiss")
    if loaded is not None:
        _warn_if_generic()
        return loaded
    core = None if "OPENBLAS_CORETYPE" in os.environ else coretype()
    if core is not None:
        os.environ["OPENBLAS_CORETYPE"] = core
    try:
        import faiss
    finally:
        if core is not None:
            del os.environ["OPENBLAS_CORETYPE"]
    return faiss


def faiss_blas() -> dict | None:
    """threadpoolctl's record of faiss's own BLAS (``architecture``, ``version``, ...), or None
    where faiss brings none (or threadpoolctl is missing)."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    for lib in threadpool_info():
        if lib.get("user_api") == "blas" and "faiss" in str(lib.get("filepath", "")):
            return lib
    return None


def _warn_if_generic() -> None:
    """Warn when faiss, imported before lplr_index, runs its OpenBLAS's generic kernels on a CPU
    that has better ones (and nobody chose them with ``OPENBLAS_CORETYPE``)."""
    if "OPENBLAS_CORETYPE" in os.environ:
        return
    core = coretype()
    blas = faiss_blas() if core is not None else None
    if blas is not None and blas.get("architecture") == _GENERIC:
        warnings.warn(
            f"faiss was imported before lplr_index and its OpenBLAS {blas.get('version')} runs its generic "
            f"({_GENERIC}) kernels on this CPU, which runs {core}'s: faiss's products (k-means, flat "
            f"searches, projections) take 2-5x longer. Import lplr_index first, or set "
            f"OPENBLAS_CORETYPE={core} before starting Python.",
            RuntimeWarning,
            stacklevel=3,
        )
