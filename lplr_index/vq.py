"""Spectrum-following codes: grouped 4-bit vector quantizers of a principal basis.

The scalar codes of the paper's LPLR (:mod:`lplr_index.train`) give every kept
latent direction one 4- or 8-bit code and every other direction nothing. On a
flat spectrum (sentence embeddings) a budget of 1 bit per coordinate then buys
only ``dim / 4`` directions and the rest of the energy is lost. Transform
coding (reverse water-filling) says the rate of a direction should follow its
variance, and fall below one bit where the variance is small. This module does
that with vector quantizers that share one 4-bit code between ``g`` directions:

1. **Basis.** The shared factor ``R`` (``K x dim``, orthonormal rows) is either
   the principal basis of the data (the covariance eigenvectors, the subspace
   LPLR's sketch-and-refine approximates, stored as 8-bit codes and used with
   its rows re-orthonormalised) or, free to store, ``K`` columns of a Haar
   rotation regenerated from the seed (only their indices are stored). The
   latent coordinates of a vector are ``z = (x - mean) R^T``.
2. **Rates.** Each direction ``j`` of variance ``v_j`` takes the code option
   ``(g, levels)`` (or is dropped) minimising ``v_j F(g, levels) + mu 4 levels / g``,
   where ``F`` is the squared error per dimension of unit Gaussians in ``g``
   dimensions under that code (:data:`KMEANS_DISTORTION`) and ``mu`` is
   bisected so the codes fill the budget (a Lagrangian rate allocation).
3. **Codes.** The directions of one option form a class; a seeded random
   rotation within the class balances their variances. A class of one level
   has one 16-centroid k-means codebook (trained on the seeded sample) and one
   4-bit code per group; a class of two levels (for directions worth more than
   4 bits, or 2 bits shared by 4) has a coarse 16-centroid codebook and, per
   coarse cell, 16 fine centroids fitted to that cell's residuals: 256
   centroids, two 4-bit codes per group (coarse, fine).

The coarse (or only) codes are a product quantizer of the latent space with
sub-vectors of different widths: faiss's fast-scan kernels score them with the
sub-quantizers zero-padded to a common width (:mod:`lplr_index.search.fastscan`),
and the exact re-rank scores the whole code (16 or 256 entries per group: faiss
from per-query tables, or numpy by decoding it). Two-level codes are re-ranked deeper
(:data:`TWO_LEVEL_RERANK_FACTOR`), since fast-scan sees only their coarse half.

Which basis and which options win depends on the data (measured: on flat
text spectra groups of 2-8 directions win; on some synthetic spectra one code per
direction on the top directions has the best recall although grouping has the
lower error; two-level codes win where some directions deserve more than 4 bits,
at 4 bits per coordinate on 10^6 synthetic vectors recall 10@10 0.91 against 0.84),
so :func:`fit_vq` measures the recall of each candidate design on the seeded
sample, searching two-level codes as the index does, and keeps the best; on data
larger than the sample a winning two-level design is checked once more on all rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable, NamedTuple

import numpy as np

from ._common import _normalize_rows as _normalize
from ._common import recall_at_k
from ._threads import one_blas_thread, one_faiss_thread
from .packing import _pack
from .quantize import Quantizer, _fit
from .train import _EncoderBase, _orthonormal_rows, haar

__all__ = ["GroupedQuantizer", "VQEncoder", "fit_vq", "NoRoom", "CANDIDATE_SIZES", "KMEANS_DISTORTION"]


class NoRoom(ValueError):
    """The budget holds the shared parts but not one 4-bit code per vector."""

KSUB = 16  # centroids per codebook (4-bit codes: what fast-scan scores)
#: squared error per dimension of standard Gaussians in g dimensions coded by ``(g, levels)``:
#: one level, a 16-centroid k-means (faiss.Kmeans, 40,000 points, 40 iterations, best of 2;
#: bench_codes.py); two levels, the 256 centroids of a 16-centroid k-means and a 16-centroid
#: k-means of each cell's residuals (65,536 points, 25 iterations, nearest of the 256, mean of
#: two seeds)
KMEANS_DISTORTION = {(1, 1): 0.01082, (2, 1): 0.11027, (4, 1): 0.34862, (8, 1): 0.60999,
                     (1, 2): 0.0000968, (2, 2): 0.00787, (4, 2): 0.0982}
#: options tried at build time: one 4-bit code per direction, two grouped designs, and
#: groups of 1, 2 or 4 directions with two codes (coarse + fine, 256 centroids) beside them
CANDIDATE_SIZES = ((1,), (1, 2, 4), (1, 2, 4, 8), ((1, 2), (2, 2), (4, 2), 1, 2, 4, 8))
#: data of up to this many rows (four samples) have a winning two-level design checked on
#: all rows when they outgrow the sample (see :func:`fit_vq`): that costs an encoding pass
#: when the check fails (Fashion-MNIST, 60,000 x 1,280 at 1 bit per coordinate: build 12 s
#: without two-level designs, 17 s with them and the check)
FULL_CHECK_ROWS = 1 << 16
#: bits per coordinate from which designs with two-level codes are tried on data of more
#: than :data:`FULL_CHECK_ROWS` rows, without the check: there they win everywhere measured
#: (recall 10@10 of the default search, 10^6 x 384 synthetic 0.911 against 0.840 at 4
#: bits), while below it they lost or won little (0.597 / 0.748 against 0.607 / 0.738 at
#: 1 / 2 bits), and checking them would take 2-3 times the build (their encoding pass at
#: 10^6 rows: 13 s, the one-level build 9 s)
TWO_LEVEL_MIN_BITS = 3.5
#: deep re-rank of the full-scale check (times the default depth): it gives the recall of
#: the two-level codes themselves, which the default depth loses some of
CHECK_DEPTH_MULTIPLE = 10
BASES = ("pca", "rotation")
#: designs whose model error (:func:`model_error`) is over this many times the least of the
#: candidates are not fitted. The model tracks the sample's measured error within 5-15 %,
#: and the design with the best recall had up to 1.83 times the least error on the five
#: benchmark sets at 0.5-4 bits per coordinate (synthetic 10^6 x 384, 2 bits: one code per
#: direction, recall on the sample 0.874 against 0.856 for the least error), while every
#: design over 4 times lost by 0.02-0.24 (Fashion-MNIST's rotation designs, 6.3-24 times,
#: recall 0.58-0.96 against 0.82-0.99), whose fits took 16-66 % of its builds (10.9 / 16.4 /
#: 19.8 / 23.0 s at 0.5-4 bits with them, 7.6 / 10.0 / 16.6 / 7.8 s without)
DESIGN_ERROR_RATIO = 4.0
#: sample rows used as queries when choosing the design
SELECT_QUERIES = 256
KMEANS_POINTS = 1 << 16  # training points per codebook (a seeded subsample)
KMEANS_ITERS = 25
#: fast-scan candidates per result where groups have coarse and fine codes (fast-scan
#: scores the coarse ones; the index's default re-rank depth for such codes). Measured,
#: 200,000 x 384 synthetic: recall 10@10 of 40 candidates 0.643-0.928, of 160
#: 0.689-0.931, of all 0.690-0.931 at 1-4 bits per coordinate
TWO_LEVEL_RERANK_FACTOR = 16


# ----------------------------------------------------------------- quantizer
class Class(NamedTuple):
    """One class of a :class:`GroupedQuantizer`: ``count`` groups of ``g`` latent coordinates.

    ``levels`` 4-bit codes per group: 1 (16 centroids ``C``) or 2 (coarse + fine: 256
    centroids ``C[c] + fine[c, f]``, a coarse code ``c`` and a fine code ``f``).
    ``z0``: first latent coordinate; ``c0``: column of the first coarse code;
    ``f0``: column of the first fine code (coarse codes of every class come first).
    """

    g: int
    count: int
    levels: int
    z0: int
    c0: int
    f0: int
    C: np.ndarray  # (16, g)
    fine: np.ndarray | None  # (16, 16, g) offsets from the coarse centroids, levels == 2

    @property
    def centroids(self) -> np.ndarray:
        """Every centroid: ``(16, g)``, or ``(256, g)`` indexed ``16 c + f``."""
        if self.fine is None:
            return self.C
        return (self.C[:, None, :] + self.fine).reshape(KSUB * KSUB, self.g)

    def index(self, codes: np.ndarray, coarse: bool = False) -> np.ndarray:
        """Each group's centroid in :attr:`centroids` (``16 c + f``, still a byte), or with
        ``coarse`` in ``C``, from unpacked codes ``(n, n_codes)``: ``(n, count)`` uint8."""
        idx = codes[:, self.c0 : self.c0 + self.count]
        if self.levels == 2 and not coarse:
            idx = (idx << 4) | codes[:, self.f0 : self.f0 + self.count]
        return idx


def groups_from_file(groups: np.ndarray, columns: int, what: str) -> np.ndarray:
    """The ``(n_classes, 3)`` layout of a file's ``vq_groups`` stored with ``columns`` columns
    (2, ``(g, count)``: files from before two-level codes, one level per class); ``what``
    names the file's kind and version in the error."""
    if groups.ndim != 2 or groups.shape[1] != columns:
        raise ValueError(f"{what}'s vq_groups must have shape (n_classes, {columns}), got {groups.shape}")
    return _as_groups(groups)


def _as_groups(groups) -> np.ndarray:
    """``(n_classes, 3)`` int32 ``(g, count, levels)``; a ``(n, 2)`` layout has one level."""
    groups = np.asarray(groups, np.int32)
    if groups.ndim == 2 and groups.shape[1] == 2:
        groups = np.hstack([groups, np.ones((len(groups), 1), np.int32)])
    return groups


@dataclass(frozen=True, eq=False)
class GroupedQuantizer:
    """4-bit codes of groups of latent coordinates, one codebook per class.

    Attributes
    ----------
    groups : ndarray of shape (n_classes, 3), int32
        ``(g, count, levels)`` per class: ``count`` groups of ``g`` consecutive
        latent coordinates, classes in order, each group coded by one 4-bit code
        (``levels=1``, 16 centroids) or two (``levels=2``: a coarse code and a
        fine code, 256 centroids). A ``(n_classes, 2)`` array means one level.
    codebooks : ndarray, float32
        Per class, row-major: the ``16 x g`` (coarse) centroids, then for two
        levels the ``16 x 16 x g`` fine offsets (centroid ``16 c + f`` is
        ``C[c] + fine[c, f]``).

    Codes of a vector: the coarse (or only) code of every group, classes in
    order, then the fine codes. The coarse codes alone are a 4-bit product
    quantizer (what fast-scan scans); all codes together are the exact code.
    """

    groups: np.ndarray
    codebooks: np.ndarray
    bits = 4
    scheme = "vq"

    def __post_init__(self):
        # the layout is fixed: its sizes and classes are derived once (a search reads them
        # a dozen times; recomputed they took 60 us of a 390 us single-query search)
        groups = _as_groups(self.groups).copy()
        groups.flags.writeable = False
        g, count, levels = groups.T.astype(np.int64)
        put = partial(object.__setattr__, self)
        put("groups", groups)
        put("n_codes", int((count * levels).sum()))
        put("n_coarse", int(count.sum()))
        put("rank", int((g * count).sum()))
        put("dsub", int(g.max(initial=0)))
        put("two_level", bool((levels > 1).any()))
        put("_classes", self._make_classes())

    #: cached by ``__post_init__``: codes per vector (coarse and fine), coarse codes per
    #: vector (the fast-scan part), latent coordinates, widest group, any two-level class
    n_codes: int = field(init=False, repr=False)
    n_coarse: int = field(init=False, repr=False)
    rank: int = field(init=False, repr=False)
    dsub: int = field(init=False, repr=False)
    two_level: bool = field(init=False, repr=False)

    @property
    def stored_groups(self) -> np.ndarray:
        """The layout as files before two-level codes held it, ``(g, count)``, where every
        class has one level (shard files and fingerprints keep that form); else :attr:`groups`."""
        return self.groups if self.two_level else np.ascontiguousarray(self.groups[:, :2])

    def classes(self) -> list[Class]:
        """The :class:`Class` of each row of :attr:`groups`, in order."""
        return self._classes

    def _make_classes(self) -> list[Class]:
        out = []
        z = c = b = 0
        f = self.n_coarse
        for g, count, levels in self.groups.tolist():
            C = self.codebooks[b : b + KSUB * g].reshape(KSUB, g)
            fine = None
            if levels == 2:
                fine = self.codebooks[b + KSUB * g : b + KSUB * g * (1 + KSUB)].reshape(KSUB, KSUB, g)
            out.append(Class(g, count, levels, z, c, f if levels == 2 else -1, C, fine))
            z, c, b = z + g * count, c + count, b + book_size(g, levels)
            f += count if levels == 2 else 0
        return out

    def encode(self, Z: np.ndarray, return_clipped: bool = False):
        """Nearest-centroid codes ``(n, n_codes)`` uint8 of latent rows ``Z`` (n, rank).

        One faiss product quantizer per class of groups (every sub-quantizer holding
        the class's 16 or 256 centroids) finds the nearest centroids with its
        small-dimension kernels; single coordinates count the midpoints below.
        """
        from .packing import _unpack

        n = len(Z)
        codes = np.empty((n, self.n_codes), np.uint8)
        for cl, pq in zip(self.classes(), self._pqs()):
            g, count = cl.g, cl.count
            V = np.ascontiguousarray(Z[:, cl.z0 : cl.z0 + g * count], np.float32)
            if g == 1:  # scalar levels: count the midpoints below (3 ns a code, faiss ~100)
                levels = cl.centroids[:, 0]
                order = np.argsort(levels, kind="stable")
                mids = (levels[order[1:]] + levels[order[:-1]]) / 2
                if cl.levels == 1:
                    pos = np.zeros(V.shape, np.uint8)
                    for m in mids:
                        pos += V > m
                else:  # 255 midpoints: a binary search
                    pos = np.searchsorted(mids, V, side="left")
                full = order.astype(np.uint8)[pos]
            elif cl.levels == 1:
                full = _unpack(pq.compute_codes(V), 4, count)
            else:
                full = pq.compute_codes(V)
            if cl.levels == 1:
                codes[:, cl.c0 : cl.c0 + count] = full
            else:
                codes[:, cl.c0 : cl.c0 + count] = full >> 4
                codes[:, cl.f0 : cl.f0 + count] = full & 15
        return (codes, 0) if return_clipped else codes

    def __getstate__(self):
        """Pickled as its two arrays (the faiss quantizers and the classes are rebuilt): a worker
        gets the arrays."""
        return {"groups": self.groups, "codebooks": self.codebooks}

    def __setstate__(self, state):
        object.__setattr__(self, "codebooks", state["codebooks"])
        object.__setattr__(self, "groups", state["groups"])
        self.__post_init__()

    def _pqs(self):
        pqs = self.__dict__.get("_pq")
        if pqs is None:
            import faiss

            pqs = []
            for cl in self.classes():
                if cl.g == 1:
                    pqs.append(None)
                    continue
                pq = faiss.ProductQuantizer(cl.g * cl.count, cl.count, 4 * cl.levels)
                faiss.copy_array_to_vector(np.ascontiguousarray(np.tile(cl.centroids.ravel(), cl.count), np.float32),
                                           pq.centroids)
                pqs.append(pq)
            object.__setattr__(self, "_pq", pqs)
        return pqs

    def decode(self, codes: np.ndarray, coarse: bool = False) -> np.ndarray:
        """Latent rows ``(..., rank)`` float32 of codes ``(..., n_codes)``.

        ``coarse=True`` decodes the coarse codes only (the fast-scan view).
        """
        codes = np.asarray(codes)
        lead = codes.shape[:-1]
        codes = codes.reshape(-1, codes.shape[-1])
        n = len(codes)
        out = np.empty((n, self.rank), np.float32)
        single = len(self.classes()) == 1  # its columns are the whole output: contiguous
        for cl in self.classes():
            idx, table = cl.index(codes, coarse), (cl.C if coarse else cl.centroids)
            dst = out[:, cl.z0 : cl.z0 + cl.g * cl.count].reshape(n, cl.count, cl.g)
            if single:
                np.take(table, idx, axis=0, out=dst, mode="clip")
            else:  # numpy's take into a strided out is the slow part: gather, then copy
                dst[...] = np.take(table, idx, axis=0, mode="clip")
        return out.reshape(lead + (self.rank,))

    def table(self) -> np.ndarray:
        """Coarse centroids of every group zero-padded to :attr:`dsub`: ``(n_coarse, 16, dsub)`` float32."""
        T = np.zeros((self.n_coarse, KSUB, self.dsub), np.float32)
        for cl in self.classes():
            T[cl.c0 : cl.c0 + cl.count, :, : cl.g] = cl.C
        return T

    def pad(self, Z: np.ndarray) -> np.ndarray:
        """Latent rows laid out as ``n_coarse`` sub-vectors of :attr:`dsub` (zero-padded)."""
        n, w = len(Z), self.dsub
        out = np.zeros((n, self.n_coarse, w), np.float32)
        for cl in self.classes():
            out[:, cl.c0 : cl.c0 + cl.count, : cl.g] = Z[:, cl.z0 : cl.z0 + cl.g * cl.count].reshape(n, cl.count, cl.g)
        return out.reshape(n, self.n_coarse * w)


def book_size(g: int, levels: int) -> int:
    """Floats of one class's codebook: 16 g centroids, plus 256 g fine offsets for two levels."""
    return KSUB * g * (1 + KSUB * (levels - 1))


def check_groups(groups: np.ndarray, codebooks: np.ndarray, dim: int) -> None:
    """Raise ValueError unless ``groups``/``codebooks`` describe a valid quantizer of at most ``dim`` coordinates.

    ``groups`` is the ``(n_classes, 3)`` layout (a version-3 file's two columns are
    given a third, one level, before the check).
    """
    if groups.ndim != 2 or groups.shape[1] != 3 or len(groups) == 0:
        raise ValueError(f"vq_groups must have shape (n_classes, 3) with n_classes >= 1, got {groups.shape}")
    if (groups[:, 0] < 1).any() or (groups[:, 0] > dim).any() or (groups[:, 1] < 1).any():
        raise ValueError(f"vq_groups must hold group sizes in [1, {dim}] and counts >= 1, got {groups.tolist()}")
    if not np.isin(groups[:, 2], (1, 2)).all():
        raise ValueError(f"vq_groups must hold 1 or 2 code levels per class, got {groups[:, 2].tolist()}")
    if int((groups[:, 0].astype(np.int64) * groups[:, 1]).sum()) > dim:
        raise ValueError(f"vq_groups cover more than dim={dim} latent coordinates")
    size = sum(book_size(g, levels) for g, _, levels in groups.tolist())
    if codebooks.shape != (size,):
        raise ValueError(f"vq_codebooks must hold {size} values, got {codebooks.shape}")
    if not np.isfinite(codebooks).all():
        raise ValueError("vq_codebooks must be finite")


# ------------------------------------------------------------------- encoder
def haar_rotation(d: int, seed: int) -> np.ndarray:
    """The seeded rotation whose columns the ``"rotation"`` basis keeps (float64, d x d)."""
    return haar(d, seed, 0xB0A5)


def _class_rotations(groups: np.ndarray, seed: int) -> list[np.ndarray]:
    """The seeded rotation of each class (float64, ``g * count`` square)."""
    return [haar(g * count, seed, 0xC1A5, i, g * count) for i, (g, count) in enumerate(groups[:, :2].tolist())]


@dataclass(frozen=True, eq=False)
class VQEncoder(_EncoderBase):
    """Frozen state of the grouped codes: ``x -> codes((x - mean) R^T)``, ``codes -> mean + z R``.

    Attributes
    ----------
    mean : ndarray of shape (dim,), float32
    lq : GroupedQuantizer
    basis : {"pca", "rotation"}
    rcodes : ndarray of shape (rank, dim), uint8, or None
        8-bit codes of the principal directions (``basis="pca"``).
    rq : Quantizer or None
        Their quantizer.
    dirs : ndarray of shape (rank,), int32, or None
        Columns of the seeded Haar rotation kept (``basis="rotation"``).
    seed : int
    normalize : bool
    dim : int
    """

    mean: np.ndarray
    lq: GroupedQuantizer
    basis: str
    rcodes: np.ndarray | None
    rq: Quantizer | None
    dirs: np.ndarray | None
    seed: int
    normalize: bool
    dim: int
    orthonormal = True
    codec = "vq"

    @property
    def kind(self) -> str:
        return self.basis

    @property
    def rank(self) -> int:
        return self.lq.rank

    @property
    def n_codes(self) -> int:
        return self.lq.n_codes

    @property
    def R(self) -> np.ndarray:
        """The shared factor: ``rank x dim`` float32 with orthonormal rows (cached)."""
        return self._cached("_R", self._factor)

    def _factor(self) -> np.ndarray:
        if self.basis == "pca":
            V = _orthonormal_rows(self.rq.decode(self.rcodes)).astype(np.float64)
        else:
            V = haar_rotation(self.dim, self.seed)[:, self.dirs].T
        parts, r0 = [], 0
        for O, (g, count) in zip(_class_rotations(self.lq.groups, self.seed), self.lq.groups[:, :2].tolist()):
            parts.append(O.T @ V[r0 : r0 + g * count])
            r0 += g * count
        return np.ascontiguousarray(np.vstack(parts), np.float32)

    @property
    def T(self) -> np.ndarray:
        """``R^T`` (dim x rank): the pseudo-inverse of orthonormal rows (cached)."""
        return self.RT

    def encode(self, X: np.ndarray) -> tuple[np.ndarray, int]:
        """Packed codes of a block of raw vectors (nothing is clipped: 0)."""
        return _pack(self.lq.encode(self.prepare(X) @ self.T), 4), 0


# --------------------------------------------------------------------- fitting
def _options(sizes) -> list[tuple[int, int]]:
    """``(g, levels)`` of each entry of ``sizes`` (a bare ``g`` is one level), by falling rate."""
    opts = [(int(o), 1) if np.isscalar(o) else (int(o[0]), int(o[1])) for o in sizes]
    return sorted(opts, key=lambda o: (-o[1] / o[0], o[0]))


def two_level_tried(bits_per_coordinate: float, n: int) -> bool:
    """Whether a build of ``n`` rows tries the designs with two-level codes: on data of up to
    :data:`FULL_CHECK_ROWS` rows, and from :data:`TWO_LEVEL_MIN_BITS` on larger data."""
    return n <= FULL_CHECK_ROWS or bits_per_coordinate >= TWO_LEVEL_MIN_BITS


def _two_level(sizes) -> bool:
    return any(lv > 1 for _, lv in _options(sizes))


def allocate(var: np.ndarray, code_bits: float, sizes) -> list[tuple[tuple[int, int], np.ndarray]]:
    """Directions per code option by a Lagrangian allocation (see the module docstring).

    ``var`` are the variances of the directions, largest first; ``sizes`` the
    options, each a group size ``g`` (one 4-bit code per group) or ``(g, levels)``
    (``levels`` 4-bit codes per group). Returns ``((g, levels), direction
    indices)`` per used option, highest rate first, each count a multiple of g,
    spending at most ``code_bits`` bits per vector.
    """
    opts = _options(sizes)
    F = np.array([KMEANS_DISTORTION[o] for o in opts])
    rate = np.array([4.0 * lv / g for g, lv in opts] + [0.0])
    var = np.maximum(np.asarray(var, np.float64), 0)

    def choose(mu: float):
        costs = np.concatenate([var[:, None] * F[None, :] + mu * rate[None, :-1], var[:, None]], 1)
        return np.argmin(costs, 1)

    def classes_of(choice):
        # a class is cut to whole groups; the directions cut off (its weakest) join the next
        # class (of lower or equal rate) as its strongest, so a stronger direction never gets fewer bits
        out, carry = [], np.zeros(0, np.int64)
        for j, (g, lv) in enumerate(opts):
            dims = np.concatenate([carry, np.flatnonzero(choice == j)])
            keep = (len(dims) // g) * g
            dims, carry = dims[:keep], dims[keep:]
            if len(dims):
                out.append(((g, lv), dims))
        return out

    def spent(cl):
        return sum(4 * lv * len(d) // g for (g, lv), d in cl)

    if code_bits < 4:
        return []
    if not var.any():
        # nothing varies (constant or repeated rows, one row, or variances that underflow):
        # one 4-bit code on the first direction (every vector decodes to the mean) keeps such
        # data buildable at any budget that holds a code
        g = min(g for g, lv in opts if lv == 1 and g <= len(var))
        return [((g, 1), np.arange(g))] if 4 <= code_bits else []
    lo, hi = 1e-12 * max(var.max(), 1e-30), 1e6 * max(var.max(), 1e-30)
    for _ in range(100):
        mu = np.sqrt(lo * hi)
        if spent(classes_of(choose(mu))) > code_bits:
            lo = mu
        else:
            hi = mu
    choice = choose(hi)
    # rates come in steps of one code and classes are cut to whole groups: spend what is
    # left on one code each for the strongest directions below 4 bits
    classes = classes_of(choice)
    if (1, 1) in opts:
        one = opts.index((1, 1))
        coded = np.zeros(len(var), bool)
        for (g, lv), d in classes:
            coded[d] = 4 * lv / g >= 4
        for j in np.flatnonzero(~coded & (var > 0)):
            if spent(classes) + 4 > code_bits:
                break
            choice[j] = one
            classes = classes_of(choice)
            if spent(classes) > code_bits:  # re-cutting a group cost more than it freed: drop it
                choice[j] = len(opts)
                classes = classes_of(choice)
                break
    return classes


def model_error(var: np.ndarray, classes) -> float:
    """Squared error per vector of unit-Gaussian codes on directions of variances ``var``
    allocated ``classes`` (:func:`allocate`'s output; dropped directions cost their variance)."""
    err = float(np.sum(var))
    for (g, lv), dims in classes:
        err -= (1 - KMEANS_DISTORTION[(g, lv)]) * float(var[dims].sum())
    return err


def gaussian_floor(var: np.ndarray, code_bits: float) -> float:
    """The least squared error per vector the code options reach on Gaussian data of variances ``var``.

    Every candidate option set (:data:`CANDIDATE_SIZES`) is allocated ``code_bits`` bits per
    vector (:func:`allocate`, shared parts not counted) and scored with the measured Gaussian
    distortions (:data:`KMEANS_DISTORTION`; dropped directions cost their variance); the
    smallest is returned. It is what design choices alone can bring the index's error down
    to on data of that spectrum, a model, not a bound for any code.
    """
    var = np.sort(np.maximum(np.asarray(var, np.float64), 0))[::-1]
    return min([float(var.sum())] + [model_error(var, allocate(var, code_bits, sizes)) for sizes in CANDIDATE_SIZES])


def _kmeans(P: np.ndarray, seed: int) -> np.ndarray:
    """16 centroids of the rows of ``P`` (float32), seeded; faiss's k-means."""
    import faiss

    P = np.ascontiguousarray(P, np.float32)
    if len(P) > KMEANS_POINTS:
        P = P[np.sort(np.random.default_rng([seed, 0x7E]).choice(len(P), KMEANS_POINTS, replace=False))]
    if not 0 <= seed < 2**31:  # faiss takes a C int: a larger seed is hashed into range
        seed = int(np.random.default_rng([seed, 0xF5]).integers(2**31 - 1))
    km = faiss.Kmeans(P.shape[1], KSUB, niter=KMEANS_ITERS, seed=seed, min_points_per_centroid=1,
                      max_points_per_centroid=1 << 20)
    # too few distinct points: repeat them as centroids (a few hundred rows usually show there are enough)
    if len(np.unique(P[:256], axis=0)) < KSUB and len(U := np.unique(P, axis=0)) < KSUB:
        return np.ascontiguousarray(U[np.arange(KSUB) % len(U)], np.float32)
    with one_faiss_thread():  # small: see lplr_index._threads
        km.train(P)
    return np.ascontiguousarray(km.centroids, np.float32)


def _nearest(C: np.ndarray, P: np.ndarray) -> np.ndarray:
    """Index of the nearest row of ``C`` for each row of ``P`` (faiss's exact search)."""
    import faiss

    index = faiss.IndexFlatL2(C.shape[1])
    index.add(np.ascontiguousarray(C, np.float32))
    with one_faiss_thread():
        return index.search(np.ascontiguousarray(P, np.float32), 1)[1][:, 0]


def _tree(P: np.ndarray, seed: int) -> np.ndarray:
    """Two-level codebook of the rows of ``P``: 16 coarse centroids, then 16 per coarse cell
    fitted to the residuals of its points; ``(16 + 256) * g`` floats (coarse, then fine offsets)."""
    P = np.ascontiguousarray(P, np.float32)
    if len(P) > KMEANS_POINTS:
        P = P[np.sort(np.random.default_rng([seed, 0x7E]).choice(len(P), KMEANS_POINTS, replace=False))]
    C = _kmeans(P, seed)
    cell = _nearest(C, P)
    fine = np.zeros((KSUB, KSUB, P.shape[1]), np.float32)
    for c in range(KSUB):
        R = P[cell == c] - C[c]
        if len(R):
            fine[c] = _kmeans(R, int(np.random.default_rng([seed, c, 0xF1]).integers(2**31 - 1)))
    return np.concatenate([C.ravel(), fine.ravel()])


def _layout(classes) -> np.ndarray:
    return np.array([(g, len(d) // g, lv) for (g, lv), d in classes], np.int32).reshape(-1, 3)


@dataclass(frozen=True)
class Design:
    basis: str
    sizes: tuple  # the options allocated (an entry of CANDIDATE_SIZES)
    groups: np.ndarray  # (n_classes, 3)
    dirs: np.ndarray  # kept directions of the basis, class order
    model: float = float("nan")  # model_error of the allocation


def design(basis: str, sizes, var: np.ndarray, order: np.ndarray,
           file_bits: Callable[[str, np.ndarray], int], budget_bits: float, n: int) -> Design | None:
    """The allocation of one candidate filling ``budget_bits`` (whole file) or None if nothing fits.

    ``var``/``order``: variances of the basis's directions, largest first, and their
    column indices; ``file_bits(basis, groups)`` is the exact file size in bits.
    """
    empty = np.zeros((0, 3), np.int32)
    code_bits = (budget_bits - file_bits(basis, empty)) / n
    for _ in range(20):  # shared parts grow with the allocation: shrink until the file fits
        classes = allocate(var, code_bits, sizes)
        if not classes:
            return None
        groups = _layout(classes)
        over = file_bits(basis, groups) - budget_bits
        if over <= 0:
            return Design(basis, tuple(sizes), groups, order[np.concatenate([d for _, d in classes])].astype(np.int32),
                          model_error(np.maximum(var, 0), classes))
        code_bits -= max(over / n, 0.5)
    return None


def build_encoder(d: Design, mean, V_pca, sample_c: np.ndarray, bits_r: int, scheme: str, seed: int,
                  normalize: bool) -> tuple[VQEncoder, np.ndarray]:
    """The encoder of a design (stored basis, class rotations, codebooks trained on the centred
    sample) and the sample's latent rows."""
    dim = len(mean)
    if d.basis == "pca":
        Vsel = V_pca[:, d.dirs].T.astype(np.float32)  # (K, dim)
        rq = _fit(Vsel, bits_r, scheme, seed)
        rcodes, dirs = rq.encode(Vsel), None
    else:
        rq = rcodes = None
        dirs = d.dirs
    size = sum(book_size(g, lv) for g, _, lv in d.groups.tolist())
    probe = VQEncoder(mean, GroupedQuantizer(d.groups, np.zeros(size, np.float32)),
                      d.basis, rcodes, rq, dirs, seed, normalize, dim)
    Z = sample_c @ probe.T
    books, z0 = [], 0
    for i, (g, count, levels) in enumerate(d.groups.tolist()):
        P = Z[:, z0 : z0 + g * count].reshape(-1, g)
        books.append(_kmeans(P, seed + 1000 * i + g).ravel() if levels == 1 else _tree(P, seed + 1000 * i + g))
        z0 += g * count
    lq = GroupedQuantizer(d.groups, np.concatenate(books).astype(np.float32))
    enc = VQEncoder(mean, lq, d.basis, rcodes, rq, dirs, seed, normalize, dim)
    object.__setattr__(enc, "_R", probe.R)
    return enc, Z


class SampleCheck:
    """Recall k@k of candidate designs on the seeded sample, against exact search of the sample.

    ``sample`` are prepared (normalised for cosine) vectors; :data:`SELECT_QUERIES`
    of them (seeded) query the others. The exact neighbours are found once;
    each design is scored in its latent space (its rows are orthonormal, so
    ``<q, mean + z R> = <q, mean> + <q R^T, z>`` and ``||z R|| = ||z||``).
    """

    def __init__(self, sample: np.ndarray, metric: str, seed: int, k: int = 10):
        n = len(sample)
        nq = min(SELECT_QUERIES, max(1, n // 5))
        qi = np.sort(np.random.default_rng([seed, 0x5E1]).choice(n, nq, replace=False))
        self.qi, self.db = qi, np.setdiff1d(np.arange(n), qi)
        self.Q, self.metric, self.k = sample[qi], metric, min(k, len(self.db))
        self.sample = sample
        X = sample[self.db]
        self.truth = self._top(self.Q, X, (X * X).sum(1))

    def _top(self, P, Xd, norms2, chunk: int = 32, first=None, shift=None):
        """The k best rows of ``Xd`` for query rows ``P`` (chunks of queries bound the memory).

        ``shift``: a per-query constant added to the inner products (ip, cosine);
        ``first=(Xc, norms2_c, depth)``: as the index searches two-level codes, the
        ``depth`` best rows by the coarse rows ``Xc`` first, then the k best of those.
        """
        out = np.empty((len(P), self.k), np.int64)
        for s in range(0, len(P), chunk):
            sh = None if shift is None else shift[s : s + chunk]
            S = self._scores(P[s : s + chunk], Xd, norms2, sh)
            if first is not None:
                Xc, nc, depth = first
                cand = np.argpartition(-self._scores(P[s : s + chunk], Xc, nc, sh), depth - 1, axis=1)[:, :depth]
                keep = np.full_like(S, -np.inf)
                np.put_along_axis(keep, cand, np.take_along_axis(S, cand, 1), 1)
                S = keep
            np.negative(S, out=S)
            out[s : s + chunk] = np.argpartition(S, self.k - 1, axis=1)[:, : self.k]
        return out

    def _scores(self, P, Xd, norms2, shift=None):
        S = P @ Xd.T
        if shift is not None:
            S += shift[:, None]
        if self.metric == "l2":
            S = 2 * S - norms2[None, :]
        elif self.metric == "cosine":
            S = S / np.sqrt(np.maximum(norms2, 1e-30))[None, :]
        return S

    def __call__(self, enc: VQEncoder, Z: np.ndarray, energy: float) -> tuple[float, float, float]:
        """Recall of the index's search on the decoded sample, the squared error per row, and
        the recall of the exact scan of the decoded sample.

        Exact search of the decoded rows; for two-level codes, as the index searches
        them, the :data:`TWO_LEVEL_RERANK_FACTOR` ``* k`` best by the coarse codes first
        (the exact scan's recall is then reported apart). ``Z``: the sample's latent
        rows ``(sample - mean) R^T`` (overwritten); ``energy``: ``||sample - mean||^2``
        summed, the same for every design (they share the mean).
        """
        codes = enc.lq.encode(Z)
        Zh = enc.lq.decode(codes)
        err = _error_sum(energy, Z, Zh) / len(Z)
        del Z
        depth = min(len(self.db), TWO_LEVEL_RERANK_FACTOR * self.k)
        rows = [Zh[self.db]]
        del Zh
        if enc.lq.two_level and depth < len(self.db):
            rows.append(enc.lq.decode(codes[self.db], coarse=True))
        if self.metric == "l2":
            P, shift, norms = (self.Q - enc.mean) @ enc.T, None, [np.einsum("ij,ij->i", Zd, Zd) for Zd in rows]
        else:  # <q, mean + z R> = <q R^T, z> + <q, mean>
            m = enc.mean.astype(np.float64)
            P, shift, Rm = self.Q @ enc.T, self.Q @ enc.mean, enc.R @ enc.mean
            norms = [np.einsum("ij,ij->i", Zd, Zd) + 2 * (Zd @ Rm) + float(m @ m) for Zd in rows]
        exact = self._recall(self._top(P, rows[0], norms[0], shift=shift))
        if len(rows) == 1:
            return exact, max(err, 0.0), exact
        first = (rows[1], norms[1], depth)
        return self._recall(self._top(P, rows[0], norms[0], first=first, shift=shift)), max(err, 0.0), exact

    def decoded(self, Xh: np.ndarray) -> tuple[float, float]:
        """Recall and squared error per row of any decoded sample (prepared rows)."""
        err = float(((Xh - self.sample) ** 2).sum(1).mean())
        Xd = Xh[self.db]
        return self._recall(self._top(self.Q, Xd, (Xd * Xd).sum(1))), err

    def _recall(self, got) -> float:
        return recall_at_k(got, self.truth, self.k)


def cov_stats(block, normalize, mean):
    """Sums of one block for the covariance: ``Xc^T Xc`` and the row count.

    The block's product in float32 (half the time of float64: Fashion-MNIST, 60,000 x
    1,280, 0.63 against 1.28 s at 2 threads; eigenvalues within 6e-6 relative), the sum
    over blocks in float64.
    """
    Xc = (_normalize(block) if normalize else block) - mean
    return (Xc.T @ Xc).astype(np.float64), len(block)


def _error_sum(energy: float, Z: np.ndarray, Zh: np.ndarray) -> float:
    """``||Xc - Zh R||^2`` summed over rows, as ``||Xc||^2 - ||Z||^2 + ||Z - Zh||^2`` (``R`` has
    orthonormal rows; ``Z = Xc R^T``, overwritten by ``Z - Zh``; ``energy = ||Xc||^2``), float64 sums."""
    err = energy - np.einsum("ij,ij->", Z, Z, dtype=np.float64)
    Z -= Zh
    return float(err + np.einsum("ij,ij->", Z, Z, dtype=np.float64))


def encode_block(block, encoder: VQEncoder, queries: np.ndarray | None = None, metric: str = "l2", k: int = 0):
    """Packed codes of a block, the squared error sums ``(||Xc - Xc_hat||^2, ||X||^2)``, and
    with ``queries`` (prepared) the scores and block row indices of the ``k`` best rows of
    the block for each (exact search of the prepared rows), else None."""
    X = _normalize(block) if encoder.normalize else block
    Xc = X - encoder.mean
    Z = Xc @ encoder.T
    codes = encoder.lq.encode(Z)
    err = _error_sum(float(np.einsum("ij,ij->", Xc, Xc, dtype=np.float64)), Z, encoder.lq.decode(codes))
    xx = float(np.einsum("ij,ij->", X, X, dtype=np.float64))
    top = None
    if queries is not None:  # faiss's exact search: blocked, so its buffers stay small
        import faiss

        D, I = faiss.knn(queries, X, min(k, len(X)), faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)
        top = (-D if metric == "l2" else D), I
    return _pack(codes, 4), max(err, 0.0), xx, top


@dataclass(frozen=True, eq=False)
class VQFit:
    encoder: VQEncoder
    codes: np.ndarray
    error: float
    candidates: list  # (basis, sizes, groups, recall, error, model error / least), measured on the sample
    #: the full-scale check of a two-level design (:func:`fit_vq`), or None where none was made
    full_check: dict | None = None
    #: the fast-scan scorer of ``codes`` that check built, or None
    scorer: object = None
    #: (basis, sizes, groups, model error / least) of the designs the model left out
    not_fitted: list = field(default_factory=list)


class _Result(NamedTuple):
    recall: float  # the index's search on the sample
    error: float
    exact: float  # the exact scan of the decoded sample
    enc: VQEncoder
    design: Design

    def key(self, i: int):
        return round(self.recall, 6), -self.error, -i


def _best(results: list[_Result]) -> _Result | None:
    """The result of the best recall (then the least error, then the earliest), None if none."""
    i = max(range(len(results)), key=lambda i: results[i].key(i), default=None)
    return None if i is None else results[i]


def _encode_all(executor, enc: VQEncoder, on_pass, queries=None, metric: str = "l2", k: int = 0):
    """The encoding pass: packed codes of every row, the relative error, and with ``queries``
    the row indices of their ``k`` nearest rows (exact search of the prepared rows), else None."""
    if on_pass is not None:
        on_pass("encode")
    blocks, err, xx, tops, start = [], 0.0, 0.0, [], 0
    for packed, e, x, top in executor.imap(encode_block, enc, queries, metric, k):
        blocks.append(packed)
        err, xx = err + e, xx + x
        if top is not None:
            tops.append((top[0], top[1] + start))
        start += len(packed)
    nearest = None
    if queries is not None:
        S, I = np.hstack([t[0] for t in tops]), np.hstack([t[1] for t in tops])
        nearest = np.take_along_axis(I, np.argsort(-S, axis=1, kind="stable")[:, :k], 1)
    return np.concatenate(blocks), float(np.sqrt(err / (xx or 1.0))), nearest


def fit_vq(executor, budget_bits: float, file_bits, *, bits_r: int, scheme: str, seed: int, metric: str,
           rank: int | None = None, on_pass: Callable[[str], None] | None = None,
           sample_rows: Callable[[int, int], np.ndarray] | None = None,
           rival: Callable[[np.ndarray], np.ndarray] | None = None, first_stage: Callable | None = None,
           n_rows: int | None = None, encode: bool = True) -> VQFit:
    """Fit grouped codes within ``budget_bits`` (whole file, bits) and encode every row.

    Two passes over ``executor``'s blocks (covariance, encoding) plus the seeded
    sample. ``file_bits(basis, groups)`` gives the exact file size of a layout.
    With ``rank`` (and no budget) the top ``rank`` principal directions get one
    code each. ``rival(raw sample) -> decoded sample`` is another codec fitted on
    the sample: when its recall on the sample is higher than every design's,
    nothing is encoded and the result's ``encoder`` is None. Designs whose model error
    (:func:`model_error` of the basis's variances) exceeds :data:`DESIGN_ERROR_RATIO` times
    the least of them are not fitted.

    When a design with two-level codes wins on a sample smaller than the data (of at most
    :data:`FULL_CHECK_ROWS` rows), the sample cannot show what fast-scan's first stage
    (their coarse codes alone) loses among all rows: its 160 candidates are a larger share
    of the sample (measured, Fashion-MNIST 60,000 x 1,280 at 1 bit per coordinate: recall on
    the 16,384-row sample 0.898 against 0.881 for the best one-level design, on the full
    index 0.860 against 0.869). Its codes are then searched at full scale: during their
    encoding pass the sample's query rows find their exact neighbours among all rows,
    then they search the codes with the default depth and 10 times deeper
    (:func:`lplr_index.search.fastscan.first_stage_recall`), and the design is kept only
    if its exact recall on the sample, less the recall the default depth lost, still
    beats the best one-level design; if not, the rows are encoded again with that one.
    ``first_stage(encoder, codes, metric, Q, rows, nearest, *, k, factor, multiple) ->
    ((recall, deep recall), scorer)`` measures that search: the index gives
    :func:`lplr_index.search.fastscan.first_stage_recall` (the codes do not import the
    search layer); None makes no full-scale check.

    ``n_rows``: the rows of the data when ``executor`` holds only a sample of them
    (:meth:`lplr_index.LPLRIndex.plan`): the designs are sized for ``n_rows`` rows and
    chosen on the executor's rows (their covariance and seeded sample); the full-scale
    check needs all rows. ``encode=False`` stops before the last encoding pass (the
    result's codes are then None unless the full-scale check made them).
    """
    from .train import sample_rows as default_rows

    n_data, dim = executor.n, executor.dim
    n = n_data if n_rows is None else int(n_rows)
    normalize = metric == "cosine"
    rows = (sample_rows or default_rows)(n_data, seed)
    raw = executor.take(rows)
    sample = _normalize(raw) if normalize else raw
    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    if on_pass is not None:
        on_pass("covariance")
    parts = list(executor.imap(cov_stats, normalize, mean))
    C = sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1)
    with one_blas_thread():  # d x d: small, see lplr_index._threads
        evals, V = np.linalg.eigh(C)
    evals, V = evals[::-1].clip(0), V[:, ::-1]
    sample_c = sample - mean

    if rank is not None:
        designs = [Design("pca", (1,), np.array([[1, rank, 1]], np.int32), np.arange(rank, dtype=np.int32))]
    else:
        designs = []
        for basis in BASES:
            if basis == "pca":
                var, order = evals, np.arange(dim)
            else:
                H = haar_rotation(dim, seed)
                var_all = np.einsum("ij,ij->j", H, C @ H)
                order = np.argsort(-var_all, kind="stable")
                var = var_all[order]
            for sizes in CANDIDATE_SIZES:
                if _two_level(sizes) and not two_level_tried(budget_bits / (n * dim), n):
                    continue
                d = design(basis, sizes, var, order, file_bits, budget_bits, n)
                if d is not None and not any(np.array_equal(d.groups, e.groups) and d.basis == e.basis
                                             and np.array_equal(d.dirs, e.dirs) for e in designs):
                    designs.append(d)
        if not designs:
            raise NoRoom("the budget cannot hold one 4-bit code per vector beside the shared parts")
    # recall on the sample is measured whenever there is a choice, also when the model leaves one design
    choice = len(designs) > 1 or rival is not None
    least = min(d.model for d in designs)  # nan for the rank's single design: nothing left out

    def ratio(d: Design) -> float | None:
        return float(d.model / least) if np.isfinite(d.model) and least > 0 else None

    not_fitted = [(d.basis, d.sizes, d.groups.tolist(), ratio(d)) for d in designs
                  if d.model > DESIGN_ERROR_RATIO * least]
    designs = [d for d in designs if not d.model > DESIGN_ERROR_RATIO * least]
    results = []
    # one row has no neighbour to find: the first design (and no rival) is kept
    check = SampleCheck(sample, metric, seed) if choice and len(sample) > 1 else None
    if check is not None:  # ||sample - mean||^2: every design's check uses it
        energy = float(np.einsum("ij,ij->", sample_c, sample_c, dtype=np.float64))
    for d in designs:
        enc, Z = build_encoder(d, mean, V, sample_c, bits_r, scheme, seed, normalize)
        rec, err, exact = (1.0, 0.0, 1.0) if check is None else check(enc, Z, energy)
        del Z
        results.append(_Result(rec, err, exact, enc, d))
    top = _best(results)
    cands = [(r.design.basis, r.design.sizes, r.design.groups.tolist(), r.recall, r.error, ratio(r.design))
             for r in results]
    r_rec = None
    if rival is not None and check is not None:
        r_rec, r_err = check.decoded(rival(raw))
        cands.append(("scalar", None, None, r_rec, r_err, None))
        if round(r_rec, 6) > round(top.recall, 6):
            return VQFit(None, None, float("nan"), cands, not_fitted=not_fitted)
    codes = full_check = scorer = None
    alt = _best([r for r in results if not r.enc.lq.two_level])
    if (top.enc.lq.two_level and check is not None and len(sample) < n <= FULL_CHECK_ROWS
            and (alt is not None or r_rec is not None)  # with nothing to fall back on, nothing to check
            and first_stage is not None and n_data == n):
        # k + 1 neighbours: a query row finds itself
        codes, error, nearest = _encode_all(executor, top.enc, on_pass, check.Q, metric, check.k + 1)
        (shallow, deep), scorer = first_stage(
            top.enc, codes, metric, check.Q, rows[check.qi], nearest, k=check.k,
            factor=TWO_LEVEL_RERANK_FACTOR, multiple=CHECK_DEPTH_MULTIPLE)
        predicted = top.exact - (deep - shallow)
        full_check = {"groups": top.design.groups.tolist(), "sample_recall": top.recall,
                      "exact_sample_recall": top.exact, "recall": shallow, "deep_recall": deep,
                      "predicted_recall": predicted, "kept": True}
        rivals = [r for r in (None if alt is None else alt.recall, r_rec) if r is not None]
        if rivals and round(max(rivals), 6) > round(predicted, 6):
            full_check["kept"] = False
            codes = scorer = None
            if alt is None or (r_rec is not None and round(r_rec, 6) > round(alt.recall, 6)):
                return VQFit(None, None, float("nan"), cands, full_check, not_fitted=not_fitted)
            top = alt
    if codes is None:
        if not encode:
            return VQFit(top.enc, None, float("nan"), cands, full_check, None, not_fitted)
        codes, error, _ = _encode_all(executor, top.enc, on_pass)
    return VQFit(top.enc, codes, error, cands, full_check, scorer, not_fitted)
