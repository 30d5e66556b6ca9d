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
2. **Rates.** Each direction ``j`` of variance ``v_j`` takes the group size
   ``g`` (or is dropped) minimising ``v_j F(g) + mu 4 / g``, where ``F(g)`` is
   the squared error per dimension of a 16-centroid k-means of unit Gaussians in
   ``g`` dimensions (:data:`KMEANS_DISTORTION`) and ``mu`` is bisected so the
   codes fill the budget (a Lagrangian rate allocation).
3. **Codes.** The directions of one group size form a class; a seeded random
   rotation within the class balances their variances, and one 16-centroid
   k-means codebook (trained on the seeded sample) serves every group of the
   class. A vector stores one 4-bit code per group.

Every such code is a product quantizer of the latent space with sub-vectors of
different widths: faiss's fast-scan kernels score it with the sub-quantizers
zero-padded to a common width (:mod:`lplr_index.search.fastscan`), and the
exact re-ranker decodes it with one table lookup per group.

Which basis and which group sizes win depends on the data (measured: on flat
text spectra groups of 2-8 directions win; on some synthetic spectra one code per
direction on the top directions has the best recall although grouping has the
lower error), so :func:`fit_vq` measures the recall of each candidate design on
the seeded sample and keeps the best.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .evaluation import _normalize_rows as _normalize
from .packing import _pack
from .quantize import Quantizer, _fit
from .train import _EncoderBase, _orthonormal_rows, haar

__all__ = ["GroupedQuantizer", "VQEncoder", "fit_vq", "NoRoom", "CANDIDATE_SIZES", "KMEANS_DISTORTION"]


class NoRoom(ValueError):
    """The budget holds the shared parts but not one 4-bit code per vector."""

KSUB = 16  # centroids per codebook (4-bit codes: what fast-scan scores)
#: squared error per dimension of a 16-centroid k-means of standard Gaussians in g
#: dimensions (faiss.Kmeans, 40,000 points, 40 iterations, best of 2; bench_codes.py)
KMEANS_DISTORTION = {1: 0.01082, 2: 0.11027, 4: 0.34862, 8: 0.60999}
#: group-size sets tried at build time (one code per direction, and two grouped designs)
CANDIDATE_SIZES = ((1,), (1, 2, 4), (1, 2, 4, 8))
BASES = ("pca", "rotation")
#: sample rows used as queries when choosing the design
SELECT_QUERIES = 256
KMEANS_POINTS = 1 << 16  # training points per codebook (a seeded subsample)
KMEANS_ITERS = 25


# ----------------------------------------------------------------- quantizer
@dataclass(frozen=True, eq=False)
class GroupedQuantizer:
    """4-bit codes of groups of latent coordinates, one codebook per group size.

    Attributes
    ----------
    groups : ndarray of shape (n_classes, 2), int32
        ``(g, count)`` per class: ``count`` groups of ``g`` consecutive latent
        coordinates, classes in order.
    codebooks : ndarray of shape (sum of 16 * g,), float32
        The classes' 16 x g codebooks, concatenated row-major.
    """

    groups: np.ndarray
    codebooks: np.ndarray
    bits = 4
    scheme = "vq"

    @property
    def n_codes(self) -> int:
        return int(self.groups[:, 1].sum())

    @property
    def rank(self) -> int:
        return int((self.groups[:, 0] * self.groups[:, 1]).sum())

    @property
    def dsub(self) -> int:
        return int(self.groups[:, 0].max())

    def classes(self):
        """``(g, count, latent offset, code offset, codebook (16, g))`` per class."""
        z = c = b = 0
        out = []
        for g, count in self.groups.tolist():
            out.append((g, count, z, c, self.codebooks[b : b + KSUB * g].reshape(KSUB, g)))
            z, c, b = z + g * count, c + count, b + KSUB * g
        return out

    def encode(self, Z: np.ndarray, return_clipped: bool = False):
        """Nearest-centroid codes ``(n, n_codes)`` uint8 of latent rows ``Z`` (n, rank).

        One faiss product quantizer per class (every sub-quantizer holding the
        class's codebook) finds the nearest centroids with its small-dimension kernels.
        """
        from .packing import _unpack

        n = len(Z)
        codes = np.empty((n, self.n_codes), np.uint8)
        for (g, count, z0, c0, C), pq in zip(self.classes(), self._pqs()):
            V = np.ascontiguousarray(Z[:, z0 : z0 + g * count], np.float32)
            if g == 1:  # scalar levels: count the midpoints below (3 ns a code, faiss ~100)
                order = np.argsort(C[:, 0], kind="stable")
                mids = (C[order[1:], 0] + C[order[:-1], 0]) / 2
                pos = np.zeros(V.shape, np.uint8)
                for m in mids:
                    pos += V > m
                codes[:, c0 : c0 + count] = order.astype(np.uint8)[pos]
            else:
                codes[:, c0 : c0 + count] = _unpack(pq.compute_codes(V), 4, count)
        return (codes, 0) if return_clipped else codes

    def __getstate__(self):
        """Pickled without the cached faiss quantizers (rebuilt on first use): a worker gets the arrays."""
        return {k: v for k, v in self.__dict__.items() if k != "_pq"}

    def _pqs(self):
        pqs = self.__dict__.get("_pq")
        if pqs is None:
            import faiss

            pqs = []
            for g, count, _, _, C in self.classes():
                if g == 1:
                    pqs.append(None)
                    continue
                pq = faiss.ProductQuantizer(g * count, count, 4)
                faiss.copy_array_to_vector(np.ascontiguousarray(np.tile(C.ravel(), count), np.float32), pq.centroids)
                pqs.append(pq)
            object.__setattr__(self, "_pq", pqs)
        return pqs

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Latent rows ``(..., rank)`` float32 of codes ``(..., n_codes)``."""
        codes = np.asarray(codes)
        lead = codes.shape[:-1]
        codes = codes.reshape(-1, codes.shape[-1])
        out = np.empty((len(codes), self.rank), np.float32)
        for g, count, z0, c0, C in self.classes():
            out[:, z0 : z0 + g * count] = C[codes[:, c0 : c0 + count]].reshape(len(codes), g * count)
        return out.reshape(lead + (self.rank,))

    def table(self) -> np.ndarray:
        """Centroids of every group zero-padded to :attr:`dsub`: ``(n_codes, 16, dsub)`` float32."""
        T = np.zeros((self.n_codes, KSUB, self.dsub), np.float32)
        for g, count, _, c0, C in self.classes():
            T[c0 : c0 + count, :, :g] = C
        return T

    def pad(self, Z: np.ndarray) -> np.ndarray:
        """Latent rows laid out as ``n_codes`` sub-vectors of :attr:`dsub` (zero-padded)."""
        n, w = len(Z), self.dsub
        out = np.zeros((n, self.n_codes, w), np.float32)
        for g, count, z0, c0, _ in self.classes():
            out[:, c0 : c0 + count, :g] = Z[:, z0 : z0 + g * count].reshape(n, count, g)
        return out.reshape(n, self.n_codes * w)


def check_groups(groups: np.ndarray, codebooks: np.ndarray, dim: int) -> None:
    """Raise ValueError unless ``groups``/``codebooks`` describe a valid quantizer of at most ``dim`` coordinates."""
    if groups.ndim != 2 or groups.shape[1] != 2 or len(groups) == 0:
        raise ValueError(f"vq_groups must have shape (n_classes, 2) with n_classes >= 1, got {groups.shape}")
    if (groups[:, 0] < 1).any() or (groups[:, 0] > dim).any() or (groups[:, 1] < 1).any():
        raise ValueError(f"vq_groups must hold group sizes in [1, {dim}] and counts >= 1, got {groups.tolist()}")
    if int((groups[:, 0].astype(np.int64) * groups[:, 1]).sum()) > dim:
        raise ValueError(f"vq_groups cover more than dim={dim} latent coordinates")
    if codebooks.shape != (KSUB * int(groups[:, 0].sum()),):
        raise ValueError(f"vq_codebooks must hold {KSUB * int(groups[:, 0].sum())} values, got {codebooks.shape}")
    if not np.isfinite(codebooks).all():
        raise ValueError("vq_codebooks must be finite")


# ------------------------------------------------------------------- encoder
def haar_rotation(d: int, seed: int) -> np.ndarray:
    """The seeded rotation whose columns the ``"rotation"`` basis keeps (float64, d x d)."""
    return haar(d, seed, 0xB0A5)


def _class_rotations(groups: np.ndarray, seed: int) -> list[np.ndarray]:
    """The seeded rotation of each class (float64, ``g * count`` square)."""
    return [haar(g * count, seed, 0xC1A5, i, g * count) for i, (g, count) in enumerate(groups.tolist())]


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
        for O, (g, count) in zip(_class_rotations(self.lq.groups, self.seed), self.lq.groups.tolist()):
            parts.append(O.T @ V[r0 : r0 + g * count])
            r0 += g * count
        return np.ascontiguousarray(np.vstack(parts), np.float32)

    @property
    def T(self) -> np.ndarray:
        """``R^T`` (dim x rank): the pseudo-inverse of orthonormal rows (cached)."""
        return self._cached("_T", lambda: np.ascontiguousarray(self.R.T))

    def encode(self, X: np.ndarray) -> tuple[np.ndarray, int]:
        """Packed codes of a block of raw vectors (nothing is clipped: 0)."""
        return _pack(self.lq.encode(self.prepare(X) @ self.T), 4), 0


# --------------------------------------------------------------------- fitting
def allocate(var: np.ndarray, code_bits: float, sizes: tuple[int, ...]) -> list[tuple[int, np.ndarray]]:
    """Directions per group size by a Lagrangian allocation (see the module docstring).

    ``var`` are the variances of the directions, largest first; returns
    ``(g, direction indices)`` per used size, each count a multiple of g,
    spending at most ``code_bits`` bits per vector (4 per group).
    """
    F = np.array([KMEANS_DISTORTION[g] for g in sizes])
    rate = np.array([4.0 / g for g in sizes] + [0.0])
    var = np.maximum(np.asarray(var, np.float64), 0)

    def choose(mu: float):
        costs = np.concatenate([var[:, None] * F[None, :] + mu * rate[None, :-1], var[:, None]], 1)
        return np.argmin(costs, 1)

    def classes_of(choice):
        # a class is cut to whole groups; the directions cut off (its weakest) join the next,
        # coarser class as its strongest, so a stronger direction never gets fewer bits
        out, carry = [], np.zeros(0, np.int64)
        for j, g in enumerate(sizes):
            dims = np.concatenate([carry, np.flatnonzero(choice == j)])
            keep = (len(dims) // g) * g
            dims, carry = dims[:keep], dims[keep:]
            if len(dims):
                out.append((g, dims))
        return out

    def spent(cl):
        return sum(4 * len(d) // g for g, d in cl)

    if code_bits < 4 or not var.any():
        return []
    lo, hi = 1e-12 * max(var.max(), 1e-30), 1e6 * max(var.max(), 1e-30)
    for _ in range(100):
        mu = np.sqrt(lo * hi)
        if spent(classes_of(choose(mu))) > code_bits:
            lo = mu
        else:
            hi = mu
    choice = choose(hi)
    # rates come in steps of one code and classes are cut to whole groups: spend what is
    # left on one code each for the strongest directions not coded on their own
    classes = classes_of(choice)
    if 1 in sizes:
        coded = np.zeros(len(var), bool)
        for g, d in classes:
            coded[d] = g == 1
        for j in np.flatnonzero(~coded & (var > 0)):
            if spent(classes) + 4 > code_bits:
                break
            choice[j] = sizes.index(1)
            classes = classes_of(choice)
            if spent(classes) > code_bits:  # re-cutting a group cost more than it freed
                choice[j] = len(sizes)
                classes = classes_of(choice)
                break
    return classes


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
    if len(np.unique(P, axis=0)) < KSUB:  # too few distinct points: repeat them as centroids
        U = np.unique(P, axis=0)
        return np.ascontiguousarray(U[np.arange(KSUB) % len(U)], np.float32)
    km.train(P)
    return np.ascontiguousarray(km.centroids, np.float32)


def _layout(classes) -> np.ndarray:
    return np.array([(g, len(d) // g) for g, d in classes], np.int32).reshape(-1, 2)


@dataclass(frozen=True)
class Design:
    basis: str
    sizes: tuple[int, ...]
    groups: np.ndarray  # (n_classes, 2)
    dirs: np.ndarray  # kept directions of the basis, class order


def design(basis: str, sizes, var: np.ndarray, order: np.ndarray,
           file_bits: Callable[[str, np.ndarray], int], budget_bits: float, n: int) -> Design | None:
    """The allocation of one candidate filling ``budget_bits`` (whole file) or None if nothing fits.

    ``var``/``order``: variances of the basis's directions, largest first, and their
    column indices; ``file_bits(basis, groups)`` is the exact file size in bits.
    """
    empty = np.zeros((0, 2), np.int32)
    code_bits = (budget_bits - file_bits(basis, empty)) / n
    for _ in range(20):  # shared parts grow with the allocation: shrink until the file fits
        classes = allocate(var, code_bits, sizes)
        if not classes:
            return None
        groups = _layout(classes)
        over = file_bits(basis, groups) - budget_bits
        if over <= 0:
            return Design(basis, tuple(sizes), groups, order[np.concatenate([d for _, d in classes])].astype(np.int32))
        code_bits -= max(over / n, 0.5)
    return None


def build_encoder(d: Design, mean, V_pca, sample_c: np.ndarray, bits_r: int, scheme: str, seed: int,
                  normalize: bool) -> VQEncoder:
    """The encoder of a design: stored basis, class rotations, codebooks trained on the centred sample."""
    dim = len(mean)
    if d.basis == "pca":
        Vsel = V_pca[:, d.dirs].T.astype(np.float32)  # (K, dim)
        rq = _fit(Vsel, bits_r, scheme, seed)
        rcodes, dirs = rq.encode(Vsel), None
    else:
        rq = rcodes = None
        dirs = d.dirs
    probe = VQEncoder(mean, GroupedQuantizer(d.groups, np.zeros(KSUB * int(d.groups[:, 0].sum()), np.float32)),
                      d.basis, rcodes, rq, dirs, seed, normalize, dim)
    Z = sample_c @ probe.T
    books, z0 = [], 0
    for i, (g, count) in enumerate(d.groups.tolist()):
        books.append(_kmeans(Z[:, z0 : z0 + g * count].reshape(-1, g), seed + 1000 * i + g).ravel())
        z0 += g * count
    lq = GroupedQuantizer(d.groups, np.concatenate(books).astype(np.float32))
    enc = VQEncoder(mean, lq, d.basis, rcodes, rq, dirs, seed, normalize, dim)
    object.__setattr__(enc, "_R", probe.R)
    return enc


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
        self.db = np.setdiff1d(np.arange(n), qi)
        self.Q, self.metric, self.k = sample[qi], metric, min(k, len(self.db))
        self.sample = sample
        X = sample[self.db]
        self.truth = self._top(self.Q, X, (X * X).sum(1))

    def _top(self, P, Xd, norms2, chunk: int = 32):
        """The k best rows of ``Xd`` for query rows ``P`` (chunks of queries bound the memory)."""
        out = np.empty((len(P), self.k), np.int64)
        for s in range(0, len(P), chunk):
            S = P[s : s + chunk] @ Xd.T
            if self.metric == "l2":
                S = 2 * S - norms2[None, :]
            elif self.metric == "cosine":
                S = S / np.sqrt(np.maximum(norms2, 1e-30))[None, :]
            np.negative(S, out=S)
            out[s : s + chunk] = np.argpartition(S, self.k - 1, axis=1)[:, : self.k]
        return out

    def __call__(self, enc: VQEncoder) -> tuple[float, float]:
        """Recall of exact search on the decoded sample, and the squared error per row."""
        Xc = self.sample - enc.mean
        Z = Xc @ enc.T
        Zh = enc.lq.decode(enc.lq.encode(Z))
        err = float(((Xc * Xc).sum(1) - (Z * Z).sum(1) + ((Z - Zh) ** 2).sum(1)).mean())
        Zd = Zh[self.db]
        zz = (Zd * Zd).sum(1)
        m = enc.mean.astype(np.float64)
        if self.metric == "l2":
            P, norms2 = (self.Q - enc.mean) @ enc.T, zz
            return self._recall(self._top(P, Zd, norms2)), max(err, 0.0)
        # <q, mean + z R> = <q R^T, z> + <q, mean>: one more latent column carries the constant
        P = np.hstack([self.Q @ enc.T, (self.Q @ enc.mean)[:, None]])
        Zd = np.hstack([Zd, np.ones((len(Zd), 1), np.float32)])
        norms2 = zz + 2 * (Zd[:, :-1] @ (enc.R @ enc.mean)) + float(m @ m)
        return self._recall(self._top(P, Zd, norms2)), max(err, 0.0)

    def decoded(self, Xh: np.ndarray) -> tuple[float, float]:
        """Recall and squared error per row of any decoded sample (prepared rows)."""
        err = float(((Xh - self.sample) ** 2).sum(1).mean())
        Xd = Xh[self.db]
        return self._recall(self._top(self.Q, Xd, (Xd * Xd).sum(1))), err

    def _recall(self, got) -> float:
        hits = sum(len(np.intersect1d(a, b)) for a, b in zip(self.truth, got))
        return hits / (len(self.Q) * self.k)


def cov_stats(block, normalize, mean):
    """Sums of one block for the covariance: ``Xc^T Xc`` (float64) and the row count."""
    Xc = (_normalize(block) if normalize else block) - mean
    X64 = Xc.astype(np.float64)
    return X64.T @ X64, len(block)


def encode_block(block, encoder: VQEncoder):
    """Packed codes of a block, and the squared error sums ``(||Xc - Xc_hat||^2, ||Xc||^2, ||X||^2)``."""
    X = _normalize(block) if encoder.normalize else block
    Xc = X - encoder.mean
    Z = Xc @ encoder.T
    codes = encoder.lq.encode(Z)
    Zh = encoder.lq.decode(codes)
    xx_c = float(np.einsum("ij,ij->", Xc, Xc, dtype=np.float64))
    # ||Xc - Zh R||^2 = ||Xc||^2 - ||Z||^2 + ||Z - Zh||^2 (R has orthonormal rows)
    err = xx_c - float(np.einsum("ij,ij->", Z, Z, dtype=np.float64)) + float(
        np.einsum("ij,ij->", Z - Zh, Z - Zh, dtype=np.float64))
    xx = float(np.einsum("ij,ij->", X, X, dtype=np.float64))
    return _pack(codes, 4), max(err, 0.0), xx


@dataclass(frozen=True, eq=False)
class VQFit:
    encoder: VQEncoder
    codes: np.ndarray
    error: float
    candidates: list  # (basis, sizes, groups, recall, error) measured on the sample


def fit_vq(executor, budget_bits: float, file_bits, *, bits_r: int, scheme: str, seed: int, metric: str,
           rank: int | None = None, on_pass: Callable[[str], None] | None = None,
           sample_rows: Callable[[int, int], np.ndarray] | None = None,
           rival: Callable[[np.ndarray], np.ndarray] | None = None) -> VQFit:
    """Fit grouped codes within ``budget_bits`` (whole file, bits) and encode every row.

    Two passes over ``executor``'s blocks (covariance, encoding) plus the seeded
    sample. ``file_bits(basis, groups)`` gives the exact file size of a layout.
    With ``rank`` (and no budget) the top ``rank`` principal directions get one
    code each. ``rival(raw sample) -> decoded sample`` is another codec fitted on
    the sample: when its recall on the sample is higher than every design's,
    nothing is encoded and the result's ``encoder`` is None.
    """
    from .train import sample_rows as default_rows

    n, dim = executor.n, executor.dim
    normalize = metric == "cosine"
    raw = executor.take((sample_rows or default_rows)(n, seed))
    sample = _normalize(raw) if normalize else raw
    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32)
    if on_pass is not None:
        on_pass("covariance")
    parts = list(executor.imap(cov_stats, normalize, mean))
    C = sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1)
    evals, V = np.linalg.eigh(C)
    evals, V = evals[::-1].clip(0), V[:, ::-1]
    sample_c = sample - mean

    if rank is not None:
        designs = [Design("pca", (1,), np.array([[1, rank]], np.int32), np.arange(rank, dtype=np.int32))]
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
                d = design(basis, sizes, var, order, file_bits, budget_bits, n)
                if d is not None and not any(np.array_equal(d.groups, e.groups) and d.basis == e.basis
                                             and np.array_equal(d.dirs, e.dirs) for e in designs):
                    designs.append(d)
        if not designs:
            raise NoRoom("the budget cannot hold one 4-bit code per vector beside the shared parts")
    results = []
    check = SampleCheck(sample, metric, seed) if len(designs) > 1 else None
    for d in designs:
        enc = build_encoder(d, mean, V, sample_c, bits_r, scheme, seed, normalize)
        rec, err = (1.0, 0.0) if check is None else check(enc)
        results.append((rec, -err, len(results), enc, d))
    rec, negerr, _, enc, _ = max(results, key=lambda r: (round(r[0], 6), r[1], -r[2]))
    cands = [(d.basis, d.sizes, d.groups.tolist(), r, -ne) for r, ne, _, _, d in results]
    if rival is not None:
        r_rec, r_err = (check or SampleCheck(sample, metric, seed)).decoded(rival(raw))
        cands.append(("scalar", None, None, r_rec, r_err))
        if round(r_rec, 6) > round(rec, 6):
            return VQFit(None, None, float("nan"), cands)
    if on_pass is not None:
        on_pass("encode")
    blocks, err, xx = [], 0.0, 0.0
    for packed, e, x in executor.imap(encode_block, enc):
        blocks.append(packed)
        err, xx = err + e, xx + x
    codes = np.concatenate(blocks)
    return VQFit(enc, codes, float(np.sqrt(err / (xx or 1.0))), cands)
