"""The index's fit: LPLR with alternating refinement, as passes over row blocks.

Every step that touches all vectors is a map over canonical row blocks
(:mod:`lplr_index._blocks`) followed by a float64 reduction in block order:

1. a seeded sample of :data:`SAMPLE_ROWS` rows (random access; no pass) gives
   the mean and fits each round's quantizer;
2. round 0 is LPLR (``L = Q(X S)`` with a Gaussian sketch ``S``) and each of
   the ``refine_iters`` refinement rounds re-encodes ``L = Q(X R^+)`` on the
   current shared factor: one pass each, accumulating ``L^T L``, ``L^T X`` and
   ``||X||^2``, from which both the least-squares factor ``R`` and the
   reconstruction error of every (codes, factor) pair follow without another
   pass; the pair with the least error is kept;
3. a last pass encodes every vector with the kept encoder.

With ``factor="orthonormal"`` (the index's default) the kept factor's row
space is given an orthonormal basis, randomly rotated (seeded) so that every
latent coordinate carries about the same variance, and vectors are encoded as
their quantized coordinates in it. Then the squared L2 distance between a
query and a stored vector is, up to a per-query constant, the squared distance
of their latent coordinates: what faiss's fast-scan kernels compute from 4-bit
codes (:mod:`lplr_index.search.fastscan`). ``factor="lstsq"`` keeps the
paper's least-squares factor.

The passes are ``1 + refine_iters + 1``; memory is the codes plus a few blocks
and ``rank x dim`` sums.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ._blocks import LocalExecutor
from ._common import _normalize_rows as _normalize
from ._threads import one_blas_thread
from .factorize import _solve_normal
from .packing import _pack
from .quantize import Quantizer, _fit
from .sketch import _gaussian

__all__ = ["FACTORS", "Encoder", "FitResult", "fit", "SAMPLE_ROWS"]

FACTORS = ("orthonormal", "lstsq")
#: rows sampled (seeded, without replacement) for the mean and the quantizer ranges
SAMPLE_ROWS = 1 << 14




class _EncoderBase:
    """What both encoders (scalar here, grouped in :mod:`lplr_index.vq`) share:
    ``prepare`` and the cache of their derived matrices on a frozen instance."""

    def _cached(self, key: str, make: Callable[[], np.ndarray]) -> np.ndarray:
        value = self.__dict__.get(key)
        if value is None:
            value = make()
            object.__setattr__(self, key, value)
        return value

    @property
    def RT(self) -> np.ndarray:
        """``R^T`` (dim x rank) float32, contiguous (cached): latent coordinates ``q R^T`` of queries."""
        return self._cached("_RT", lambda: np.ascontiguousarray(self.R.T))

    def prepare(self, X: np.ndarray) -> np.ndarray:
        """``X`` as the encoder sees it: normalised (cosine) and centred."""
        if self.normalize:
            X = _normalize(X)
        return X - self.mean


@dataclass(frozen=True, eq=False)
class Encoder(_EncoderBase):
    """The trained state: how a vector becomes codes and how codes decode.

    A vector ``x`` (unit-normalised first when ``normalize``) is encoded as
    ``Q_L((x - mean) T)`` and decodes to ``mean + L R``. Frozen and small: a
    shard, a worker or a loaded file gets the same encoder.

    Attributes
    ----------
    mean : ndarray of shape (dim,), float32
        Offset removed before encoding (zeros when not centred).
    lq : Quantizer
        Quantizer of the per-vector codes (``rank`` columns).
    rcodes : ndarray of shape (rank, dim), uint8
        Codes of the shared factor, unpacked.
    rq : Quantizer
        Quantizer of the shared factor.
    kind : {"sketch", "pinv"}
        ``T`` is the Gaussian sketch of ``seed`` or ``pinv(R)``.
    seed : int
    normalize : bool
        Vectors are unit-normalised before encoding (cosine metric).
    orthonormal : bool
        The shared factor used is the decoded one with its rows orthonormalised
        (QR, a deterministic function of the stored codes): ``R R^T = I``, so
        ``||x_hat - mean|| = ||l||`` and the latent distance ranks exactly.
    """

    mean: np.ndarray
    lq: Quantizer
    rcodes: np.ndarray
    rq: Quantizer
    kind: str
    seed: int
    normalize: bool = False
    orthonormal: bool = False
    codec = "scalar"

    @property
    def rank(self) -> int:
        return int(self.rcodes.shape[0])

    @property
    def n_codes(self) -> int:
        """Codes per vector: one per latent direction."""
        return self.rank

    @property
    def dim(self) -> int:
        return int(self.rcodes.shape[1])

    @property
    def R(self) -> np.ndarray:
        """Decoded shared factor, (rank, dim) float32 (cached)."""
        return self._cached("_R", self._decoded_factor)

    def _decoded_factor(self) -> np.ndarray:
        R = self.rq.decode(self.rcodes)
        return _orthonormal_rows(R) if self.orthonormal else R

    @property
    def T(self) -> np.ndarray:
        """Encoder matrix, (dim, rank) float32 (cached)."""
        return self._cached("_T", self._make_T)

    def _make_T(self) -> np.ndarray:
        if self.orthonormal and self.kind == "pinv":
            return self.RT  # the pseudo-inverse of orthonormal rows (one cached copy for both)
        return _encoder_matrix(self.kind, self.R, self.seed)

    def encode(self, X: np.ndarray) -> tuple[np.ndarray, int]:
        """Packed codes of a block of raw vectors and the count of clipped entries."""
        codes, clipped = self.lq.encode(self.prepare(X) @ self.T, return_clipped=True)
        return _pack(codes, self.lq.bits), clipped


def _encoder_matrix(kind: str, R: np.ndarray, seed: int) -> np.ndarray:
    """The dim x rank matrix T with which a (centred) vector x is encoded as ``Q(x T)``."""
    if kind == "sketch":
        return _gaussian(R.shape[1], R.shape[0], seed)
    with one_blas_thread():
        return np.linalg.pinv(R.astype(np.float64)).astype(np.float32)


def _signed_q(A: np.ndarray) -> np.ndarray:
    """The Q of ``A``'s QR with signs making the diagonal of R non-negative (Gram-Schmidt's Q)."""
    with one_blas_thread():  # d x d or rank x d: small, see lplr_index._threads
        Q, r = np.linalg.qr(A)
    d = np.diag(r)
    return Q * np.sign(np.where(d == 0, 1, d))


def _orthonormal_rows(R: np.ndarray) -> np.ndarray:
    """The rows of ``R`` orthonormalised by QR (Gram-Schmidt order, signs kept), float32."""
    return _signed_q(R.T.astype(np.float64)).T.astype(np.float32)


def haar(m: int, *key: int) -> np.ndarray:
    """A Haar-random m x m orthogonal matrix (float64, read-only) regenerated from the integers ``key``.

    The QR of an m x m Gaussian costs O(m^3) (about 0.5 s at m = 1280): rotations up to
    16 MiB are cached, since every build and every loaded encoder of the same shape and
    seed needs the same one (a 3,000 x 1,280 build: 2.6 s, half of it these rotations).
    """
    if 8 * m * m <= _HAAR_CACHE_BYTES:
        return _haar_cached(m, key)
    return _haar(m, key)


_HAAR_CACHE_BYTES = 1 << 24


def _haar(m: int, key: tuple) -> np.ndarray:
    Q = _signed_q(np.random.default_rng(list(key)).standard_normal((m, m)))
    Q.flags.writeable = False
    return Q


_haar_cached = functools.lru_cache(maxsize=4)(_haar)  # at most 64 MiB held


def _random_rotation(m: int, seed: int) -> np.ndarray:
    """The rotation of the orthonormal factor's basis."""
    return haar(m, seed, 0x0A7E)


def sample_rows(n: int, seed: int, size: int = SAMPLE_ROWS) -> np.ndarray:
    """Sorted row indices of the seeded sample (all rows when ``n <= size``)."""
    if n <= size:
        return np.arange(n)
    return np.sort(np.random.default_rng([seed, 0x5A]).choice(n, size, replace=False))


# ------------------------------------------------------------------ block maps
# Top-level functions of (block, broadcast arguments), so that a cluster can run them.
def round_stats(block, normalize, mean, T, lq):
    """Sums of one refinement round over a block: ``L^T L``, ``L^T Xc``, ``||Xc||^2``."""
    Xc = (_normalize(block) if normalize else block) - mean
    L = lq.decode(lq.encode(Xc @ T))
    G = L.T.astype(np.float64) @ L.astype(np.float64)
    B = (Xc.T.astype(np.float64) @ L.astype(np.float64)).T
    return G, B, float(np.einsum("ij,ij->", Xc, Xc, dtype=np.float64))


def encode_stats(block, encoder: Encoder):
    """Packed codes of a block plus the sums that give the fit error."""
    X = _normalize(block) if encoder.normalize else block
    Xc = X - encoder.mean
    codes = encoder.lq.encode(Xc @ encoder.T)
    L = encoder.lq.decode(codes)
    G = L.T.astype(np.float64) @ L.astype(np.float64)
    B = (Xc.T.astype(np.float64) @ L.astype(np.float64)).T
    xx_c = float(np.einsum("ij,ij->", Xc, Xc, dtype=np.float64))
    xx = float(np.einsum("ij,ij->", X, X, dtype=np.float64))
    return _pack(codes, encoder.lq.bits), G, B, xx_c, xx


def _reduce(parts, n_out: int):
    """Add up tuples of partial sums in order (the first ``n_out`` entries)."""
    total = None
    for part in parts:
        part = part[:n_out]
        total = list(part) if total is None else [a + b for a, b in zip(total, part)]
    return total


def _pair_error(G, B, xx, R) -> float:
    """``||Xc - L R||^2`` from ``G = L^T L``, ``B = L^T Xc`` and ``xx = ||Xc||^2``."""
    R = R.astype(np.float64)
    return float(xx - 2 * np.sum(B * R) + np.sum(G * (R @ R.T)))


@dataclass(frozen=True, eq=False)
class FitResult:
    encoder: Encoder
    codes: np.ndarray  # (n, row_bytes) uint8, packed
    error: float  # relative Frobenius error ||X - X_hat|| / ||X||


def fit(
    executor,
    rank: int,
    bits_l: int,
    bits_r: int,
    scheme: str,
    seed: int,
    refine_iters: int,
    *,
    factor: str = "orthonormal",
    normalize: bool = False,
    on_pass: Callable[[str], None] | None = None,
) -> FitResult:
    """Fit an :class:`Encoder` on the rows ``executor`` serves and encode them.

    ``executor`` has ``n``, ``dim``, ``take(rows)`` and ``imap(fn, *args)``
    (``fn(block, *args)`` per canonical block, results in block order):
    :class:`lplr_index._blocks.LocalExecutor` or the Dask one. Passes:
    ``1 + refine_iters`` fitting passes and one encoding pass; ``on_pass(name)``
    is called before each.
    """
    n, dim = executor.n, executor.dim
    sample = executor.take(sample_rows(n, seed))
    if normalize:
        sample = _normalize(sample)
    center = factor == "orthonormal"
    mean = sample.mean(axis=0, dtype=np.float64).astype(np.float32) if center else np.zeros(dim, np.float32)
    Xs = sample - mean

    T, kind, R_prev = _gaussian(dim, rank, seed), "sketch", None
    best = None  # (error, kind, T, lq, rcodes, rq)
    for r in range(1 + refine_iters):
        if on_pass is not None:
            on_pass("fit" if r == 0 else f"refine {r}")
        lq = _fit(Xs @ T, bits_l, scheme, seed)
        G, B, xx = _reduce(executor.imap(round_stats, normalize, mean, T, lq), 3)
        if R_prev is not None:  # this round's codes against the factor they were encoded on
            err = _pair_error(G, B, xx, R_prev[2])
            if best is None or err < best[0]:
                best = (err, kind, T, lq, R_prev[0], R_prev[1])
        W = _solve_normal(G, B)
        rq = _fit(W, bits_r, scheme, seed)
        rcodes = rq.encode(W)
        R = rq.decode(rcodes)
        if r == 0:
            best = (_pair_error(G, B, xx, R), kind, T, lq, rcodes, rq)
        T, kind, R_prev = _encoder_matrix("pinv", R, seed), "pinv", (rcodes, rq, R)

    _, kind, T, lq, rcodes, rq = best
    if factor == "orthonormal":
        R = rq.decode(rcodes).astype(np.float64)
        Qb, _ = np.linalg.qr(R.T)  # dim x rank, orthonormal columns spanning R's rows
        basis = (Qb @ _random_rotation(Qb.shape[1], seed)).T.astype(np.float32)
        rq = _fit(basis, bits_r, scheme, seed)
        rcodes = rq.encode(basis)
        kind = "pinv"
        T = np.ascontiguousarray(_orthonormal_rows(rq.decode(rcodes)).T)  # pinv of orthonormal rows
        lq = _fit(Xs @ T, bits_l, scheme, seed)
    encoder = Encoder(mean, lq, rcodes, rq, kind, seed, normalize, factor == "orthonormal")
    object.__setattr__(encoder, "_T", T)
    if on_pass is not None:
        on_pass("encode")
    blocks, sums = [], None
    for packed, *part in executor.imap(encode_stats, encoder):
        blocks.append(packed)
        sums = part if sums is None else [a + b for a, b in zip(sums, part)]
    codes = np.concatenate(blocks)
    G, B, xx_c, xx = sums
    err2 = max(_pair_error(G, B, xx_c, encoder.R), 0.0)
    return FitResult(encoder, codes, float(np.sqrt(err2 / (xx or 1.0))))


def fit_array(X, rank, bits_l, bits_r, scheme, seed, refine_iters, **kw) -> FitResult:
    """:func:`fit` on an in-memory or memory-mapped array (a local executor)."""
    from ._blocks import ArraySource

    return fit(LocalExecutor(ArraySource(X)), rank, bits_l, bits_r, scheme, seed, refine_iters, **kw)
