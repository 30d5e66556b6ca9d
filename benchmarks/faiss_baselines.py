"""faiss baselines for ``bench_faiss.py``: index families, byte counting, budget matching.

Every faiss index is measured by what it really stores: ``faiss.serialize_index`` gives the
bytes of the whole index (per-vector codes plus the shared parts: codebooks, rotations, PCA
matrices, trained ranges, header), and its bits per coordinate are
``len(serialized) * 8 / (ntotal * dim)``.

Matching a bit budget: each family has a ladder of settings ordered by code size (PQ's number
of sub-quantizers M, LSH's number of bits, the PCA output dimension, RaBitQ's bits per
coordinate, ...). For a budget ``b`` the benchmark takes the *largest* setting whose total
size stays within ``b * (1 + slack)`` bits per coordinate. The total of a candidate is
predicted before the real build from the size of the same index trained on a small
calibration sample (shared parts do not depend on the number of training vectors once there
are at least ``dim`` of them) plus ``n`` times its code size; the real build is then measured
and stepped down if it still overshoots. The slack (default 2 %) lets a faiss setting whose
codes alone meet the budget exactly (PQ with M = d * b / 8, SQ4 at 4 bits) count as at the
budget despite its header and codebooks; LPLRIndex gets no slack.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import lplr_index  # noqa: F401 (first: it loads faiss with this CPU's BLAS kernels)
import faiss
import numpy as np
from numpy.typing import NDArray

__all__ = [
    "FaissSetting",
    "Family",
    "BuiltIndex",
    "default_families",
    "serialized_nbytes",
    "choose_setting",
    "build_faiss",
]


def serialized_nbytes(index: faiss.Index) -> int:
    """Return the number of bytes ``faiss.serialize_index`` writes for ``index``.

    Parameters
    ----------
    index : faiss.Index
        Any faiss CPU index.

    Returns
    -------
    int
        Size of the serialized index in bytes (codes, shared parts and header).
    """
    return int(faiss.serialize_index(index).size)


@dataclass(frozen=True)
class FaissSetting:
    """One concrete configuration of a faiss index family.

    Parameters
    ----------
    family : str
        Display name of the family (``"PQ"``, ``"OPQ+PQ"``, ...).
    param : str
        Human readable parameter (``"M=48"``), unique within the family.
    factory : str or None
        ``faiss.index_factory`` string; None when ``maker`` builds the index.
    maker : callable or None
        ``maker(dim) -> faiss.Index`` for indexes the factory cannot express.
    order : float
        Sort key within the family (grows with the code size).
    code_size : int or None
        Bytes of code per vector when known without constructing the index (constructing
        an ``IndexLSH`` draws its rotation, which takes seconds for large ``nbits``).
    """

    family: str
    param: str
    factory: str | None = None
    maker: Callable[[int], faiss.Index] | None = field(default=None, compare=False)
    order: float = 0.0
    code_size: int | None = None

    def make(self, dim: int, *, quick: bool = False, opq_niter: int | None = None) -> faiss.Index:
        """Construct the untrained index.

        Parameters
        ----------
        dim : int
            Vector dimension.
        quick : bool, default=False
            Cut training iterations to one (used for size calibration only: the stored
            size of an index does not depend on how long it was trained).
        opq_niter : int or None, default=None
            Number of OPQ iterations (faiss default 50 when None); ignored when ``quick``.

        Returns
        -------
        faiss.Index
        """
        index = self.maker(dim) if self.maker is not None else faiss.index_factory(dim, self.factory)
        _configure_training(index, quick=quick, opq_niter=opq_niter)
        return index

    def code_bytes(self, dim: int) -> int:
        """Bytes of per-vector code (``sa_code_size``), before any block padding."""
        if self.code_size is not None:
            return self.code_size
        key = (self, dim)
        if key not in _CODE_BYTES:
            _CODE_BYTES[key] = int(self.make(dim).sa_code_size())
        return _CODE_BYTES[key]

    @property
    def label(self) -> str:
        """``"family (param)"``."""
        return f"{self.family} ({self.param})"


_CODE_BYTES: dict[tuple[FaissSetting, int], int] = {}


def _configure_training(index: faiss.Index, *, quick: bool, opq_niter: int | None) -> None:
    """Set training iteration counts on ``index`` and the transforms in front of it."""
    if isinstance(index, faiss.IndexPreTransform):
        for i in range(index.chain.size()):
            vt = faiss.downcast_VectorTransform(index.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                if quick:
                    vt.niter, vt.niter_pq, vt.niter_pq_0 = 1, 1, 1
                elif opq_niter is not None:
                    vt.niter = int(opq_niter)
        inner = faiss.downcast_index(index.index)
    else:
        inner = index
    if hasattr(inner, "do_polysemous_training"):
        # index_factory("PQ...") turns on polysemous training, a code re-ordering that only
        # serves polysemous (Hamming-filtered) search, which the benchmark does not use: it
        # leaves the ADC results unchanged and costs 10-20x the k-means time.
        inner.do_polysemous_training = False
    pq = getattr(inner, "pq", None)
    if pq is not None:
        # only silences the "please provide at least N training points" warning on small
        # sets; it does not change the k-means result.
        pq.cp.min_points_per_centroid = 1
        if quick:
            pq.cp.niter = 1


@dataclass(frozen=True)
class Family:
    """A faiss index family with a ladder of settings.

    Parameters
    ----------
    name : str
        Display name.
    ladder : callable
        ``ladder(dim) -> list[FaissSetting]``, any order.
    native_only : bool, default=False
        The family has one fixed rate (e.g. SQ8 = 8 bits); it is reported once at that rate
        instead of being matched to budgets.
    reference : callable or None
        ``reference(dim) -> FaissSetting``: a setting that must appear in the results even if
        no budget selects it (reported at its native rate), e.g. 1-bit RaBitQ.
    affine_shared : bool, default=False
        The shared bytes grow linearly with ``order`` (LSH: its rotation is ``nbits x dim``;
        PCA: its ``m x dim`` projection; RaBitQ: constant); the calibration then measures the
        two smallest settings and extrapolates, instead of drawing large rotations or
        decomposing large matrices once per candidate (the real build is measured and
        stepped down if over).
    """

    name: str
    ladder: Callable[[int], list[FaissSetting]]
    native_only: bool = False
    reference: Callable[[int], FaissSetting] | None = None
    affine_shared: bool = False

    def settings(self, dim: int) -> list[FaissSetting]:
        """Settings sorted by increasing code size."""
        return sorted(self.ladder(dim), key=lambda s: s.order)


def _divisors(d: int) -> list[int]:
    return [m for m in range(1, d + 1) if d % m == 0]


def _pq(d: int) -> list[FaissSetting]:
    return [FaissSetting("PQ", f"M={m}x8", f"PQ{m}x8", order=m) for m in _divisors(d)]


def _pq_fastscan(d: int) -> list[FaissSetting]:
    return [FaissSetting("PQfs4", f"M={m}x4", f"PQ{m}x4fs", order=m) for m in _divisors(d)]


def _opq(d: int) -> list[FaissSetting]:
    return [FaissSetting("OPQ+PQ", f"M={m}x8", f"OPQ{m},PQ{m}x8", order=m) for m in _divisors(d)]


def _sq4(d: int) -> list[FaissSetting]:
    return [FaissSetting("SQ4", "QT_4bit", "SQ4", order=4)]


def _sq8(d: int) -> list[FaissSetting]:
    return [FaissSetting("SQ8", "QT_8bit", "SQ8", order=8)]


def _rabitq_factory(d: int, b: int) -> str:
    return f"RR{d},RaBitQ" if b == 1 else f"RR{d},RaBitQ{b}"


def _rabitq(d: int) -> list[FaissSetting]:
    # multi-bit RaBitQ ("RaBitQ{b}") exists in faiss >= 1.12; 1.15 accepts b = 1..9
    return [FaissSetting("RaBitQ", f"{b}bit", _rabitq_factory(d, b), order=b) for b in range(1, 10)]


def _rabitq_ref(d: int) -> FaissSetting:
    return FaissSetting("RaBitQ", "1bit", _rabitq_factory(d, 1), order=1)


def _pca_sq8(d: int) -> list[FaissSetting]:
    # every output dimension, so the budget rule can take the largest that fits. Beware:
    # faiss's SQ8 distance code is SIMD only when m is a multiple of 8; m = 97 searches about
    # 10x slower than m = 96 (measured on this machine), a speed trap the table shows as is.
    return [FaissSetting("PCA+SQ8", f"m={m}", f"PCA{m},SQ8", order=m) for m in range(1, d + 1)]


def _pcar_pqfs(d: int) -> list[FaissSetting]:
    # PCA to m dims, a random rotation, one 4-bit fast-scan code per latent dimension: the
    # closest faiss analogue of LPLRIndex's rotated latent with 4-bit codes
    return [FaissSetting("PCAR+PQfs4", f"m={m}", f"PCAR{m},PQ{m}x4fs", order=m) for m in range(2, d + 1, 2)]


def _pca_pqfs(d: int) -> list[FaissSetting]:
    return [FaissSetting("PCA+PQfs4", f"m={m}", f"PCA{m},PQ{m}x4fs", order=m) for m in range(2, d + 1, 2)]


def _opq_pqfs(d: int) -> list[FaissSetting]:
    return [FaissSetting("OPQ+PQfs4", f"M={m}x4", f"OPQ{m},PQ{m}x4fs", order=m) for m in _divisors(d)]


def _rabitq_fs(d: int) -> list[FaissSetting]:
    # RaBitQ's fast-scan index (IVF-free), behind a random rotation; 1 to 9 bits
    names = {b: f"RR{d},RaBitQfs" if b == 1 else f"RR{d},RaBitQfs{b}" for b in range(1, 10)}
    return [FaissSetting("RaBitQfs", f"{b}bit", f, order=b) for b, f in names.items()]


def _lsh_maker(nbits: int) -> Callable[[int], faiss.Index]:
    def make(d: int) -> faiss.Index:
        # random rotation/projection to nbits dims, thresholds trained (per-dim medians)
        return faiss.IndexLSH(d, nbits, True, True)

    return make


def _lsh(d: int) -> list[FaissSetting]:
    # whole bytes of code only: nbits a multiple of 8, up to 4 bits per coordinate
    return [FaissSetting("LSH", f"nbits={nb}", maker=_lsh_maker(nb), order=nb, code_size=nb // 8)
            for nb in range(8, 4 * d + 1, 8)]


def default_families() -> list[Family]:
    """The faiss families compared in the benchmark (all L2, flat scans, no IVF).

    Returns
    -------
    list of Family
        PQ (8-bit sub-quantizers), PQ fast-scan (4-bit), OPQ + PQ, SQ4, SQ8 (native rate
        only), RaBitQ behind a random rotation (1 to 9 bits; 1 bit always reported),
        PCA + SQ8, LSH (random rotation, trained thresholds), and the fast-scan rivals:
        PCA + random rotation + PQ fast-scan with one 4-bit code per latent dimension
        (``PCAR{m},PQ{m}x4fs``), the same without rotation, OPQ + PQ fast-scan, and
        RaBitQ fast-scan (1 to 9 bits).
    """
    return [
        Family("PQ", _pq),
        Family("PQfs4", _pq_fastscan),
        Family("OPQ+PQ", _opq),
        Family("SQ4", _sq4, reference=lambda d: _sq4(d)[0]),
        Family("SQ8", _sq8, native_only=True),
        Family("RaBitQ", _rabitq, reference=_rabitq_ref, affine_shared=True),
        Family("PCA+SQ8", _pca_sq8, affine_shared=True),
        Family("LSH", _lsh, affine_shared=True),
        # the fast-scan rivals of a fast-scan LPLRIndex
        Family("PCAR+PQfs4", _pcar_pqfs, affine_shared=True),
        Family("PCA+PQfs4", _pca_pqfs, affine_shared=True),
        Family("OPQ+PQfs4", _opq_pqfs),
        Family("RaBitQfs", _rabitq_fs, affine_shared=True),
    ]


@dataclass
class Choice:
    """Outcome of matching one family to one budget."""

    setting: FaissSetting | None
    predicted_bits: float | None
    reason: str = ""


class SizeCalibrator:
    """Predict the stored size of a faiss setting on ``n`` vectors without building it.

    Parameters
    ----------
    sample : ndarray of shape (n_calib, dim), float32
        Calibration vectors (at least ``dim`` and 256 rows where the data allows).
    n : int
        Number of database vectors the real index will hold.
    """

    def __init__(self, sample: NDArray[np.float32], n: int) -> None:
        self.sample = np.ascontiguousarray(sample, dtype=np.float32)
        self.n = int(n)
        self.dim = int(sample.shape[1])
        self._shared: dict[FaissSetting, int] = {}

    def shared_bytes(self, setting: FaissSetting, family: Family | None = None) -> int:
        """Bytes of the trained index holding no vectors (header + shared parts).

        With an ``affine_shared`` family, extrapolated from its two smallest settings.
        """
        if setting not in self._shared:
            if family is not None and family.affine_shared:
                s0, s1 = family.settings(self.dim)[:2]
                b0, b1 = self.shared_bytes(s0), self.shared_bytes(s1)
                slope = (b1 - b0) / (s1.order - s0.order)
                self._shared[setting] = int(round(b0 + slope * (setting.order - s0.order)))
            else:
                index = setting.make(self.dim, quick=True)
                index.train(self.sample)
                self._shared[setting] = serialized_nbytes(index)
        return self._shared[setting]

    def predicted_bits(self, setting: FaissSetting, family: Family | None = None) -> float:
        """Predicted bits per coordinate of ``setting`` holding ``n`` vectors."""
        total = self.shared_bytes(setting, family) + self.n * setting.code_bytes(self.dim)
        return total * 8.0 / (self.n * self.dim)


def choose_setting(family: Family, budget: float, calib: SizeCalibrator, *,
                   slack: float, below: FaissSetting | None = None) -> Choice:
    """Largest setting of ``family`` whose predicted size fits ``budget * (1 + slack)``.

    Parameters
    ----------
    family : Family
    budget : float
        Target bits per coordinate.
    calib : SizeCalibrator
    slack : float
        Relative tolerance on the budget (headers and shared parts).
    below : FaissSetting or None, default=None
        Only consider settings strictly smaller than this one (used to step down after a
        real build overshot its prediction).

    Returns
    -------
    Choice
        ``setting`` is None when no setting fits; ``reason`` then says why.
    """
    limit = budget * (1.0 + slack)
    d = calib.dim
    settings = family.settings(d)
    if below is not None:
        settings = [s for s in settings if s.order < below.order]
    fits_code = [s for s in settings if s.code_bytes(d) * 8.0 / d <= limit]
    if not fits_code:
        smallest = family.settings(d)[0]
        return Choice(None, None, f"smallest setting {smallest.param} stores "
                                  f"{smallest.code_bytes(d) * 8.0 / d:.3g} bits/coord in codes alone")
    tried = []

    def bits_of(setting):
        tried.append(setting)
        return calib.predicted_bits(setting, family)

    try:
        best = largest_within(fits_code, bits_of, limit)
    except RuntimeError as exc:  # e.g. fewer training vectors than centroids
        return Choice(None, None, f"cannot train {tried[-1].param}: {str(exc).splitlines()[0][:120]}")
    if best is None:
        s0 = fits_code[0]
        return Choice(None, None, f"shared parts (codebooks/rotations/matrices) alone exceed the "
                                  f"budget at n={calib.n}: smallest setting {s0.param} measures "
                                  f"{calib.predicted_bits(s0, family):.3g} bits/coord")
    return Choice(best[0], best[1])


@dataclass
class BuiltIndex:
    """A trained and filled faiss index with its build time and stored size."""

    setting: FaissSetting
    index: faiss.Index
    train_s: float
    add_s: float
    nbytes: int
    bits_per_coordinate: float
    code_bits_per_coordinate: float

    @property
    def build_s(self) -> float:
        """Train + add seconds."""
        return self.train_s + self.add_s


def build_faiss(setting: FaissSetting, xb: NDArray[np.float32], xtrain: NDArray[np.float32], *,
                opq_niter: int | None = None) -> BuiltIndex:
    """Train ``setting`` on ``xtrain``, add ``xb``, and measure its serialized size.

    Parameters
    ----------
    setting : FaissSetting
    xb : ndarray of shape (n, dim), float32
        Database vectors.
    xtrain : ndarray of shape (n_train, dim), float32
        Training vectors (a subset of ``xb``).
    opq_niter : int or None, default=None
        OPQ iterations (faiss default when None).

    Returns
    -------
    BuiltIndex
    """
    n, d = xb.shape
    t0 = time.perf_counter()  # construction counts: IndexLSH draws its rotation there
    index = setting.make(d, opq_niter=opq_niter)
    index.train(xtrain)
    t1 = time.perf_counter()
    index.add(xb)
    t2 = time.perf_counter()
    nbytes = serialized_nbytes(index)
    return BuiltIndex(setting, index, t1 - t0, t2 - t1, nbytes, nbytes * 8.0 / (n * d),
                      index.sa_code_size() * 8.0 / d)


def build_flat(xb: NDArray[np.float32]) -> BuiltIndex:
    """Exact float32 reference (``IndexFlatL2``), measured like the others."""
    n, d = xb.shape
    setting = FaissSetting("Flat", "float32", "Flat", order=32)
    index = faiss.IndexFlatL2(d)
    t0 = time.perf_counter()
    index.add(xb)
    t1 = time.perf_counter()
    nbytes = serialized_nbytes(index)
    return BuiltIndex(setting, index, 0.0, t1 - t0, nbytes, nbytes * 8.0 / (n * d), 32.0)


def plan_family(family: Family, budgets: Sequence[float], calib: SizeCalibrator, *,
                slack: float) -> tuple[dict[FaissSetting, list[float]], list[dict]]:
    """Pick the settings of ``family`` to build for all budgets.

    Parameters
    ----------
    family : Family
    budgets : sequence of float
    calib : SizeCalibrator
    slack : float

    Returns
    -------
    planned : dict
        Setting -> budgets it was chosen for (empty list: native-rate row).
    skipped : list of dict
        One ``{"family", "budget", "reason"}`` per budget no setting fits.
    """
    planned: dict[FaissSetting, list[float]] = {}
    skipped: list[dict] = []
    if family.native_only:
        for s in family.settings(calib.dim):
            planned[s] = []
        for b in budgets:
            skipped.append({"family": family.name, "budget": b,
                            "reason": "fixed rate; reported at its native rate only"})
        return planned, skipped
    for b in budgets:
        choice = choose_setting(family, b, calib, slack=slack)
        if choice.setting is None:
            skipped.append({"family": family.name, "budget": b, "reason": choice.reason})
        else:
            planned.setdefault(choice.setting, []).append(b)
    if family.reference is not None:
        ref = family.reference(calib.dim)
        if ref not in planned:
            planned[ref] = []
    return planned, skipped


# ------------------------------------------------------------------ other libraries
# Optional rivals from other packages (ScaNN, RaBitQ-Library). Same rule as the faiss
# families: the whole stored index (everything the library's own save writes) is counted,
# and a family takes its largest setting within budget * (1 + slack). The stored size of a
# setting is affine in the number of vectors (shared codebooks/header + per-vector bytes),
# so it is predicted from two small calibration builds, then the real build is measured and
# stepped down if it still overshoots. A package that is not installed gives one skipped
# entry per budget with the reason.

def package_version(name: str) -> str | None:
    """Installed version of distribution ``name``, or None when it is not installed."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def dir_nbytes(path: str) -> dict[str, int]:
    """Sizes of the files under ``path`` (relative name -> bytes)."""
    import os

    out = {}
    for root, _, files in os.walk(path):
        for f in files:
            p = os.path.join(root, f)
            out[os.path.relpath(p, path)] = os.path.getsize(p)
    return out


@dataclass(frozen=True)
class RivalSetting:
    """One configuration of a rival from another library (``order`` grows with its size)."""

    family: str
    param: str
    order: float
    options: tuple = ()

    @property
    def opts(self) -> dict:
        return dict(self.options)

    @property
    def label(self) -> str:
        return f"{self.family} ({self.param})"


@dataclass
class BuiltRival:
    """A built rival index: its search, build time and measured stored size.

    ``search(Q, k, threads)`` returns the neighbour ids, shape ``(len(Q), k)``; a single
    query (``len(Q) == 1``) goes through the library's single-query call.
    """

    setting: RivalSetting
    search: Callable[[NDArray[np.float32], int, int], NDArray[np.int64]]
    train_s: float
    add_s: float
    nbytes: int
    files: dict[str, int]
    bits_per_coordinate: float
    code_bits_per_coordinate: float | None
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def build_s(self) -> float:
        return self.train_s + self.add_s


def _unit_norm(x: NDArray[np.float32], tol: float = 1e-3) -> bool:
    nrm = np.linalg.norm(x[: min(len(x), 10_000)], axis=1)
    return bool(np.all(np.abs(nrm - 1.0) <= tol))


def _pad_ids(rows: Sequence[Sequence[int]], k: int) -> NDArray[np.int64]:
    out = np.full((len(rows), k), -1, np.int64)
    for i, r in enumerate(rows):
        r = np.asarray(r, np.int64)[:k]
        out[i, :len(r)] = r
    return out


class RivalFamily:
    """Base class: a rival library's ladder of settings, its build and its availability."""

    name: str = ""
    package: str = ""
    install_hint: str = "pip install 'lplr-index[bench]'"

    def version(self) -> str | None:
        return package_version(self.package)

    def unavailable_reason(self) -> str | None:
        """None when the library imports, else why it cannot run."""
        try:
            __import__(self.package)
        except Exception as exc:  # ImportError, or a broken binary wheel
            return (f"{self.package} not installed or not importable ({type(exc).__name__}: "
                    f"{str(exc).splitlines()[0][:120]}); optional: {self.install_hint}")
        return None

    def unsupported(self, dim: int) -> str | None:
        """None when the library handles dimension ``dim``, else why not."""
        return None

    def settings(self, dim: int) -> list[RivalSetting]:
        raise NotImplementedError

    def build(self, setting: RivalSetting, xb: NDArray[np.float32], xtrain: NDArray[np.float32], *,
              k: int, threads: int | None) -> BuiltRival:
        raise NotImplementedError


class ScannAH(RivalFamily):
    """ScaNN brute-force asymmetric hashing, 16 centroids (4 bits) per block, LUT16 scoring.

    ``scann.scann_ops_pybind.builder(db, k, metric).score_ah(dims_per_block,
    anisotropic_quantization_threshold=t, hash_type="lut16").build()``: no tree (no
    partitioning), no ``reorder`` (no rescoring, so no float dataset is stored). Metric rule:
    a database of unit-norm vectors uses ``"dot_product"`` with the anisotropic threshold 0.2
    ScaNN recommends for normalised data (same ranking as L2 on such data); any other uses
    ``"squared_l2"`` with the threshold NaN (plain k-means codebooks, ScaNN's default).

    Stored size: ``searcher.serialize(dir)`` writes ``ah_codebook.pb`` (the codebooks),
    ``hashed_dataset.npy`` (the codes, ONE BYTE PER 4-BIT CODE: the file does not pack two
    codes per byte as the in-memory LUT16 layout does), ``scann_config.pb`` and
    ``scann_assets.pbtxt`` (file list, written with relative paths); all are counted. So a setting with ``m`` blocks stores
    ``8 m / d`` bits per coordinate of codes (``4 m / d`` in memory), and the budget rule picks
    ``m`` accordingly. Settings: every distinct block count ``m`` (dims_per_block
    ``ceil(d / m)``; a last shorter block when it does not divide ``d``).
    """

    name = "ScaNN-AH"
    package = "scann"

    def settings(self, dim: int) -> list[RivalSetting]:
        out = {}
        for dpb in range(1, dim + 1):
            m = -(-dim // dpb)
            out.setdefault(m, dpb)  # smallest dims_per_block giving m blocks: most even split
        return [RivalSetting(self.name, f"dims_per_block={dpb} ({m} blocks x 4 bit)", order=m,
                             options=(("dims_per_block", dpb), ("blocks", m))) for m, dpb in sorted(out.items())]

    def build(self, setting: RivalSetting, xb: NDArray[np.float32], xtrain: NDArray[np.float32], *,
              k: int, threads: int | None) -> BuiltRival:
        import os
        import tempfile

        import scann

        n, d = xb.shape
        unit = _unit_norm(xb)
        metric, thr = ("dot_product", 0.2) if unit else ("squared_l2", float("nan"))
        dpb = setting.opts["dims_per_block"]
        db = np.ascontiguousarray(xb, dtype=np.float32)
        t0 = time.perf_counter()
        builder = scann.scann_ops_pybind.builder(db, k, metric).score_ah(
            dpb, anisotropic_quantization_threshold=thr, hash_type="lut16")
        builder.set_n_training_threads(int(threads or os.cpu_count() or 1))
        config = builder.create_config()
        if "reorder" in config or "partitioning" in config:
            raise RuntimeError("ScaNN config unexpectedly reorders or partitions")
        searcher = builder.build()
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            # relative paths: scann_assets.pbtxt then names its files without the folder's path
            searcher.serialize(tmp, relative_path=True)
            files = dir_nbytes(tmp)
        if any(f.startswith("dataset") or "reorder" in f for f in files):
            raise RuntimeError(f"ScaNN stored a float dataset / reordering data: {files}")
        nbytes = sum(files.values())
        state = {"threads": None}

        def search(q: NDArray[np.float32], kk: int, t: int) -> NDArray[np.int64]:
            q = np.ascontiguousarray(q, dtype=np.float32)
            if len(q) == 1:
                idx, _ = searcher.search(q[0], final_num_neighbors=kk)
                return _pad_ids([idx], kk)
            if t <= 1:
                idx, _ = searcher.search_batched(q, final_num_neighbors=kk)
            else:
                if state["threads"] != t:
                    searcher.set_num_threads(t)
                    state["threads"] = t
                idx, _ = searcher.search_batched_parallel(q, final_num_neighbors=kk)
            return np.asarray(idx, dtype=np.int64)

        m = setting.opts["blocks"]
        return BuiltRival(setting, search, t1 - t0, 0.0, nbytes, files, nbytes * 8.0 / (n * d),
                          8.0 * m / d,
                          notes=(f"{metric}, anisotropic threshold {thr:g}; no tree, no reorder; file stores "
                                 f"1 byte per 4-bit code (packed in memory: {4.0 * m / d:.3g} b/c)"),
                          extra={"library": "scann", "metric": metric, "anisotropic_threshold": thr,
                                 "dims_per_block": dpb, "blocks": m, "hash_type": "lut16",
                                 "packed_code_bits_per_coordinate": 4.0 * m / d, "stored_files": files,
                                 "batch_search": "search_batched (1 thread), set_num_threads + "
                                                 "search_batched_parallel (more)",
                                 "single_search": "search"})


class RaBitQLib(RivalFamily):
    """RaBitQ-Library (``rabitqlib``) extended RaBitQ, 1 to 9 bits per dimension, no IVF.

    The Python package has no flat RaBitQ index, so this is its ``IvfIndex(dim, n,
    num_clusters=1, nbits, "l2")`` built with ONE cluster (centroid = the database mean, every
    vector assigned to it) and searched with ``nprobe=1``: a scan of all codes, with
    rabitqlib's own rotation and estimator (``high_accuracy`` left at its default). ``nbits``
    = 1 sign bit + ``nbits - 1`` extended bits per dimension. Stored size: the file
    ``index.save(path)`` writes, which holds, besides the codes, per-vector float factors and
    ids (about 16-24 bytes per vector): small next to the codes at large ``d``, but several bits
    per coordinate at small ``d``. Dimensions below 64 are refused by rabitqlib's rotator.
    """

    name = "RaBitQLib"
    package = "rabitqlib"

    def unsupported(self, dim: int) -> str | None:
        # rabitqlib 0.7.1 raises "Unsupported dimension for FhtKacRotator" below 64 dims
        return None if dim >= 64 else f"rabitqlib's rotator (FhtKacRotator) refuses d={dim} < 64"

    def settings(self, dim: int) -> list[RivalSetting]:
        return [RivalSetting(self.name, f"nbits={b}, 1 cluster", order=b, options=(("nbits", b),))
                for b in range(1, 10)]

    def build(self, setting: RivalSetting, xb: NDArray[np.float32], xtrain: NDArray[np.float32], *,
              k: int, threads: int | None) -> BuiltRival:
        import os
        import tempfile

        import rabitqlib

        n, d = xb.shape
        nb = setting.opts["nbits"]
        nthreads = int(threads or os.cpu_count() or 1)
        db = np.ascontiguousarray(xb, dtype=np.float32)
        t0 = time.perf_counter()
        index = rabitqlib.IvfIndex(d, n, 1, nb, "l2")
        centroid = db.mean(axis=0, keepdims=True, dtype=np.float64).astype(np.float32)
        index.build(db, centroid, np.zeros(n, np.uint32), num_threads=nthreads)
        t1 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "index.rabitq")
            index.save(path)
            files = {"index.rabitq": os.path.getsize(path)}
        nbytes = sum(files.values())

        def search(q: NDArray[np.float32], kk: int, t: int) -> NDArray[np.int64]:
            ids, _ = index.search(np.ascontiguousarray(q, dtype=np.float32), kk, 1, num_threads=t)
            return np.asarray(ids, dtype=np.int64).reshape(len(q), kk)

        return BuiltRival(setting, search, t1 - t0, 0.0, nbytes, files, nbytes * 8.0 / (n * d),
                          float(nb),
                          notes=(f"IvfIndex with 1 cluster (database mean), nprobe=1: flat scan; "
                                 f"{(nbytes / n) - nb * d / 8:.1f} B/vector besides the {nb}-bit codes"),
                          extra={"library": "rabitqlib", "nbits": nb, "num_clusters": 1, "nprobe": 1,
                                 "metric": "l2", "stored_files": files,
                                 "per_vector_bytes": nbytes / n})


def rival_families() -> list[RivalFamily]:
    """The optional rivals from other libraries (skipped when not installed)."""
    return [ScannAH(), RaBitQLib()]


class RivalSizer:
    """Predict a rival's stored size on ``n`` vectors from builds on two small samples."""

    def __init__(self, family: RivalFamily, sample: NDArray[np.float32], n: int, *, k: int) -> None:
        self.family, self.n, self.k = family, int(n), int(k)
        self.dim = int(sample.shape[1])
        self.n1 = min(len(sample), 256)
        self.n2 = min(len(sample), 512)
        self.sample = np.ascontiguousarray(sample[: self.n2], dtype=np.float32)
        self._cache: dict[RivalSetting, float] = {}

    def predicted_bits(self, setting: RivalSetting) -> float:
        if setting not in self._cache:
            b1 = self.family.build(setting, self.sample[: self.n1], self.sample[: self.n1], k=self.k,
                                   threads=1).nbytes
            if self.n2 > self.n1:
                b2 = self.family.build(setting, self.sample, self.sample, k=self.k, threads=1).nbytes
                per = (b2 - b1) / (self.n2 - self.n1)
            else:
                per = 0.0
            total = b1 + per * (self.n - self.n1)
            self._cache[setting] = total * 8.0 / (self.n * self.dim)
        return self._cache[setting]


def largest_within(settings: list, bits_of: Callable[[Any], float], limit: float) -> tuple[Any, float] | None:
    """``(setting, bits)`` of the largest of ``settings`` (ordered by size, the predicted
    bits growing with it) with ``bits_of(setting) <= limit``, by binary search; None when
    none fits. Errors of ``bits_of`` propagate."""
    lo, hi, best = 0, len(settings) - 1, None
    while lo <= hi:
        mid = (lo + hi) // 2
        bits = bits_of(settings[mid])
        if bits <= limit:
            best = (settings[mid], bits)
            lo = mid + 1
        else:
            hi = mid - 1
    return best


def choose_rival(family: RivalFamily, budget: float, sizer: RivalSizer, *, slack: float,
                 below: RivalSetting | None = None) -> Choice:
    """Largest setting of a rival whose predicted stored size fits ``budget * (1 + slack)``."""
    limit = budget * (1.0 + slack)
    settings = family.settings(sizer.dim)
    if below is not None:
        settings = [s for s in settings if s.order < below.order]
    if not settings:
        return Choice(None, None, "no smaller setting left")
    best = largest_within(settings, sizer.predicted_bits, limit)
    if best is None:
        s0 = family.settings(sizer.dim)[0]
        return Choice(None, None, f"smallest setting {s0.param} stores {sizer.predicted_bits(s0):.3g} "
                                  f"bits/coord at n={sizer.n} (whole saved index)")
    return Choice(best[0], best[1])
