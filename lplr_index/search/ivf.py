"""Partitioned fast-scan search (issue 27): coarse lists over the latent space holding the
index's own 4-bit codes in faiss's IVF fast-scan layout, re-ranked exactly.

The exhaustive fast-scan backend (:mod:`lplr_index.search.fastscan`) scores every row; this one
scores the rows of the ``nprobe`` lists nearest the query. It is built over the codes an index
already stores, without re-encoding anything:

- a coarse quantizer: ``nlist`` k-means centroids (faiss, seeded sample of rows) of the rows'
  decoded latent coordinates ``l`` (``x_hat = mean + l R``), laid out as fast-scan's
  sub-vectors (grouped codes zero-padded to the widest group, as fast-scan pads them);
- each stored row goes to the list of its nearest centroid (largest inner product for
  ``metric="ip"``, as faiss's IVF with an inner-product quantizer does); from
  :data:`GROUPED_MIN_NLIST` lists (l2, cosine) the nearest among the centroids of the three
  groups nearest it (:class:`CentroidGroups`: nearly always the nearest one, at a sixth of the
  cost);
- a faiss ``IndexIVFPQFastScan`` (``by_residual=False``: a list holds the codes themselves, not
  residuals) whose product quantizer's centroids are the index's 16 levels per latent coordinate
  (scalar codes) or its 16 centroids per group (grouped codes), exactly the table the exhaustive
  fast-scan index gets; its block inverted lists receive our codes in faiss's pq4 block layout
  (:class:`BlockLayout`: the layout of ``BlockInvertedLists.packer``, checked against it, packed in
  numpy for many blocks at once), written into each list after ``resize``: what faiss's
  ``IndexIVFFastScan::add_with_ids`` does with ``pq4_pack_codes_range``, which faiss's Python
  module does not expose.

Routes that do NOT work (faiss 1.15.1), kept here so nobody tries them again:
``IndexIVF.add_sa_codes`` takes codes *prefixed by their list number* (``sa_code_size`` =
coarse code + code), so handing it plain codes reads past the array (seen: heap corruption);
``BlockInvertedLists.add_entries`` takes codes already in pq4's block layout (flat codes give
wrong neighbours), and when the list already holds a positive multiple of ``block_size``
entries it copies ``(total blocks) * block_size`` bytes to the list's end, past its buffer
(``o % block_size`` where ``o % n_per_block`` was meant), so it is safe only on empty lists:
this module never calls it.

With ``nprobe = nlist`` the first stage scores every row with the same 8-bit tables as the
exhaustive ``IndexPQFastScan`` (for up to 257 sub-quantizers faiss's IVF and flat fast-scan
quantize the tables alike) and returns the same candidates with the same distances (ties in the
16-bit sums may come in another order). The candidates are then re-scored exactly from their
codes as the exhaustive backend does: with an orthonormal factor by a faiss ``IndexRefine``
over a flat ``IndexPQ`` copy of the whole codes (``nprobe`` travels in
``IndexRefineSearchParameters.base_index_params``), otherwise by
:func:`lplr_index.search.blas.rerank`. A filter (rows allowed) is an ``IDSelectorBitmap`` that
faiss's IVF fast-scan applies inside the scan (the flat fast-scan index has no filter).

What it costs, besides the codes: faiss keeps a 64-bit id per row in its lists (here: the row
number), ``nlist`` float32 centroids of the latent width, and pads every list to a multiple of
32 codes in memory (:meth:`IVFScorer.storage`). A file need not store the ids: rows written in
list order plus the list sizes give every row's list, and a permutation of ``ceil(log2 n)`` bits
a row maps list positions back to insertion order (:meth:`IVFScorer.list_order`,
:meth:`IVFScorer.from_list_order`); or the rows stay in insertion order and each row's list
number is stored, ``ceil(log2 nlist)`` bits a row (:meth:`IVFScorer.assignment`,
:meth:`IVFScorer.from_assignment`); or nothing is stored and the rows are assigned again.

Searches never change what a scorer answers (``nprobe`` and the filter are per-search
parameters), so concurrent searches are safe. A loaded scorer fills each list when a search first
probes it, under its lock (:meth:`IVFScorer._fill`). :meth:`IVFScorer.extended` returns a new
scorer holding added rows and leaves this one as it is. faiss is imported here only, when a
scorer is built.
"""

from __future__ import annotations

import math
import time

import numpy as np

from .._threads import shared_one_blas_thread
from .._validation import check_int
from ..settings import MAX_NLIST
from .fastscan import (ByteDecoder, Projection, RefiningScorer, decoder_nbytes, exact_codes, exact_index, faiss_search,
                       flat_codes, in_query_chunks, pad_positions, pq_table)
from .metrics import CodeView, prepare_queries

__all__ = ["IVFScorer", "BlockLayout", "supported", "default_nlist", "BBS", "DEFAULT_NITER", "TRAIN_PER_LIST", "list_bits",
           "pack_lists", "unpack_lists", "latent_centroids", "padded_centroids", "choose_nprobe", "predicted_nbytes",
           "train_centroids", "nearest_centroids", "CentroidGroups", "TWO_LEVEL_MIN_NLIST", "GROUPED_MIN_NLIST", "SHORT_NPROBE_GROWTH",
           "GROUPS_PROBED"]

#: codes per fast-scan block (faiss's ``bbs``)
BBS = 32
#: k-means iterations of the coarse quantizer
DEFAULT_NITER = 10
#: rows sampled per list to train the coarse quantizer (faiss warns below 39)
TRAIN_PER_LIST = 64
#: code rows assigned and added per block
_ADD_ROWS = 1 << 16
#: queries whose probed lists held too few candidates search again with this many times more
#: lists (:meth:`IVFScorer.search_widening`)
SHORT_NPROBE_GROWTH = 4
#: from this many lists the coarse quantizer is trained in two levels (:func:`train_centroids`).
#: Measured at 10^6 x 384, 1 b/c, 1,024 lists, 1 thread (``benchmarks/bench_ivf_build.py``): one
#: k-means took 6.2 s of an 18.8 s build (the exhaustive build: 9.8 and 7.9 s), two levels took
#: the build to 12.7 s (8.5-9.2 s), recall 10@10 at nprobe 1 / 2 / 4 / 8 (the default) from
#: 0.4441 / 0.5396 / 0.5866 / 0.5974 to 0.4355 / 0.5387 / 0.5845 / 0.5962
TWO_LEVEL_MIN_NLIST = 1024
#: from this many lists rows are assigned in two steps (:class:`CentroidGroups`; l2 and cosine).
#: Not from 1,024: in the same measurement the grouped assignment (64 groups, 3 probed) took 3 s
#: off the build but recall at nprobe 1 / 8 to 0.4366 / 0.5935
GROUPED_MIN_NLIST = 2048
#: groups of centroids a row's list is looked for in (:class:`CentroidGroups`)
GROUPS_PROBED = 3
#: rows per centroid faiss's k-means subsamples to at the first of two levels (its default)
_TOP_POINTS_PER_CENTROID = 256
#: scores one assignment block holds (rows x lists, float32: 64 MiB)
_ASSIGN_SCORES = 1 << 24
#: rows :meth:`CentroidGroups.nearest` takes at a time
_GROUPED_ROWS = 1 << 14
#: search parameters kept per scorer (:meth:`IVFScorer._params`: one per ``nprobe`` searched)
_PARAMS_CACHED = 64
#: a batch of at least PREASSIGN_MIN_QUERIES queries over at least PREASSIGN_MIN_NLIST lists gets
#: its coarse search from one product and a heap (:meth:`IVFScorer._coarse`), faiss scans the lists
#: it is given, and the candidates are re-scored from their decoded codes (:meth:`IVFScorer._rescore`).
#: Measured at 10^6 x 384, 1 b/c, both paths alternating in one process (median of 7), recall equal
#: (one tie apart), nprobe 1-16: 4,096 lists, batches of 1,000 / 64 queries, 1.49-1.61x / 1.52-1.61x
#: the q/s (1 faiss thread), 1.21-1.32x / 1.21-1.22x (2), 1.54-1.85x / 1.58-1.78x (1, another
#: process keeping a core busy); 1,024 lists 1.08-1.15x. Batches of 16 gained 1.07-1.34x at 4,096
#: lists and lost at 1,024 (0.95-0.96x), hence 64
PREASSIGN_MIN_NLIST = 1024
PREASSIGN_MIN_QUERIES = 64
#: working memory of one chunk of queries' centroid scores (:meth:`IVFScorer._coarse`) or decoded
#: candidates (:meth:`IVFScorer._rescore`)
_COARSE_CHUNK_BYTES = 1 << 26
#: a loaded scorer fills all of its lists once those still waiting hold at most this share of
#: the rows (:meth:`IVFScorer._fill_lists`)
_FILL_REST_FRACTION = 1 / 16
#: the clock of a loaded scorer's second coarse searches and list fills (:meth:`IVFScorer._probe`)
_clock = time.perf_counter


def supported(view: CodeView) -> bool:
    """IVF fast-scan needs 4-bit codes (scalar per column, or grouped)."""
    return view.encoder.lq.bits == 4


def default_nlist(n: int) -> int:
    """A list count for ``n`` rows: the power of two nearest ``sqrt(n)`` (256 at 65,536 rows, 1,024
    at 10^6, 4,096 at 10^7), at least 1 and at most ``n / 39``.

    Measured (``benchmarks/bench_ivf.py``, clustered 384-d synthetic data, 1 b/c, 1 thread):
    at 10^6 rows, 1,024 lists (one k-means) reached recall 10@10 0.444 / 0.540 / 0.587 at nprobe
    1 / 2 / 4 and 34,865 / 32,925 / 24,210 q/s, where 4,096 lists (``4 sqrt(n)``, the default before) reached
    0.304 / 0.515 / 0.568 at nprobe 1 / 4 / 8 and 15,819 / 16,642 / 15,023 q/s, and 2,048 lay
    between; at 10^7, 4,096 lists 0.439 / 0.4715 / 0.481 at nprobe 4 / 8 / 16 and 7,401 / 6,149 /
    4,840 q/s, 16,384 lists 0.4715 at nprobe 32 and 3,189 q/s. Fewer lists cost less coarse
    search a query (every centroid is scored) and lose fewer neighbours at the lists' borders;
    faiss's own IVF fast-scan was best at 1,024 lists of the four tried at 10^6."""
    n = check_int(n, "n", low=1)
    target = math.sqrt(n)
    p = 2 ** int(round(math.log2(target)))
    return int(max(1, min(p, n // 39)))


def predicted_nbytes(n: int, nlist: int, M: int, d: int, exact_row_bytes: int, projection: int,
                     n_queries: int = 0, two_level: bool = False) -> int:
    """:meth:`IVFScorer.nbytes` of ``n`` rows in ``nlist`` lists before the lists exist (for
    :meth:`lplr_index.LPLRIndex.plan`): ``M`` 4-bit fast-scan codes a row in blocks of
    :data:`BBS`, a 64-bit id a row, ``nlist x d`` float32 centroids (``d``: the padded
    sub-vector width), ``exact_row_bytes`` a row of flat codes faiss's re-rank holds itself (0
    without a re-rank or where it reads the codes in place), ``projection`` bytes of query
    projection (0 without a re-rank), and after a first search of ``n_queries`` that scores the
    centroids itself (:meth:`IVFScorer._preassigns`: not ``two_level`` codes), their transform
    (``nlist x (d + 1)`` float32) and, where it re-ranks (``projection``), the re-score's
    decoding table (:func:`fastscan.decoder_nbytes`). The padding of each list to whole blocks
    depends on the list sizes: counted as half a block a list (at most ``n`` rows' worth)."""
    code = (M + 1) // 2
    padding = min(n, nlist * (BBS // 2)) * code
    batched = nlist >= PREASSIGN_MIN_NLIST and n_queries >= PREASSIGN_MIN_QUERIES and not two_level
    scores = 4 * nlist * (d + 1) + (decoder_nbytes(M, d // M) if projection else 0) if batched else 0
    return int(n * (code + 8 + exact_row_bytes) + padding + 4 * nlist * d + projection + scores)


def train_centroids(L: np.ndarray, nlist: int, *, seed: int, niter: int) -> np.ndarray:
    """``nlist`` k-means centroids (faiss) of the rows ``L`` (float32, C-contiguous).

    Below :data:`TWO_LEVEL_MIN_NLIST` lists, one k-means. From it, two levels (faiss's
    ``contrib.clustering.two_level_clustering`` does the same): ``round(sqrt(nlist))`` coarse
    centroids (trained on faiss's usual subsample, 256 rows a centroid: they only share out the
    lists), then each coarse cell's rows clustered into a share of the ``nlist`` proportional
    to its rows (at least one, at most its rows). One k-means costs ``rows x nlist`` distances
    an iteration, two levels about ``rows x 2 sqrt(nlist)``. Measured at 10^6 x 384, 1 b/c,
    4,096 lists trained on 262,144 sampled rows, 1 thread (``benchmarks/bench_ivf.py``): one
    k-means took 67.6 s of a 108-129 s build, the whole build took 31.6 s with two levels
    (the exhaustive index: 8-9 s), and recall 10@10 at nprobe 1 to 128 moved by -0.003 to
    +0.008. The first level's subsample then took its k-means from 2.0 to 0.15 s (and rows
    assigned by :class:`CentroidGroups`, the build from 34.3 to 18.7 s). Deterministic for a seed."""
    import faiss

    n, d = L.shape

    def kmeans(X, k, per_centroid=None):
        # per_centroid None: every row (no second subsample in faiss)
        km = faiss.Kmeans(d, k, niter=niter, seed=seed, verbose=False,
                          max_points_per_centroid=per_centroid or -(-len(X) // k) + 1)
        km.train(X)
        return np.array(km.centroids, np.float32)

    if nlist < TWO_LEVEL_MIN_NLIST or n < 2 * nlist:
        return kmeans(L, nlist)
    nc1 = int(round(math.sqrt(nlist)))
    top = kmeans(L, nc1, _TOP_POINTS_PER_CENTROID)  # the cells only share out the lists
    cell = nearest_centroids(L, top, "l2")
    counts = np.bincount(cell, minlength=nc1)
    share = _apportion(counts, nlist)
    parts = []
    for c in np.flatnonzero(share):
        rows = L[cell == c]
        parts.append(rows if share[c] == len(rows) else kmeans(rows, int(share[c])))
    return np.ascontiguousarray(np.concatenate(parts), np.float32)


def _apportion(counts: np.ndarray, total: int) -> np.ndarray:
    """``total`` split over cells in proportion to ``counts`` (largest remainders, ties to the lower
    cell): at least one for every non-empty cell, at most its count."""
    counts = np.asarray(counts, np.int64)
    if total > counts.sum():
        raise ValueError(f"cannot split {total} lists over {int(counts.sum())} rows")
    share = np.minimum(counts, np.maximum(counts > 0, counts * total // max(int(counts.sum()), 1)))
    while share.sum() != total:
        left = total - int(share.sum())
        want = counts * total / counts.sum() - share  # how far below (above) its share each cell is
        room = share < counts if left > 0 else share > (counts > 0)
        order = np.argsort(-want if left > 0 else want, kind="stable")
        pick = order[room[order]][: abs(left)]
        share[pick] += 1 if left > 0 else -1
    return share


def nearest_centroids(L: np.ndarray, centroids: np.ndarray, metric: str) -> np.ndarray:
    """The nearest centroid (int64) of each row of ``L``: least squared distance (l2, cosine),
    largest inner product (ip), as faiss's flat quantizer ranks them; by blocks of BLAS
    products (measured, 65,536 x 89 rows to 4,096 centroids, 1 thread: 1.0 s against 1.56 s
    through faiss's ``IndexFlat.search``)."""
    C = np.ascontiguousarray(centroids, np.float32)
    c2 = None if metric == "ip" else np.einsum("ij,ij->i", C, C)
    out = np.empty(len(L), np.int64)
    step = max(1, _ASSIGN_SCORES // max(len(C), 1))
    for s in range(0, len(L), step):
        S = np.asarray(L[s : s + step], np.float32) @ C.T
        if c2 is None:
            out[s : s + len(S)] = S.argmax(axis=1)
        else:
            S *= -2
            S += c2
            out[s : s + len(S)] = S.argmin(axis=1)
    return out


class CentroidGroups:
    """Many centroids in ``round(2 sqrt(nlist))`` groups (faiss k-means of the centroids, seeded),
    to find a row's nearest centroid (l2) among the members of the :data:`GROUPS_PROBED` groups
    whose centres are nearest it: ``groups + 3 nlist / groups`` distances a row instead of ``nlist``
    (224 against 4,096). Not exact: a row whose nearest centroid sits in a fourth group gets the
    nearest one of the three, a near one. Measured at 10^6 x 384, 1 b/c, 4,096 lists, 1 thread,
    on 200,000 rows: 0.9959 of the rows get their nearest centroid (0.9920 with 2 groups probed,
    0.9972 with 4; 64 groups and 3 probed: 0.9738), in 0.48 s against 2.1 s for every centroid.
    Deterministic for the centroids: the groups depend on nothing else."""

    def __init__(self, centroids: np.ndarray, seed: int = 0):
        import faiss

        C = np.ascontiguousarray(centroids, np.float32)
        nlist, d = C.shape
        ng = int(min(nlist, round(2 * math.sqrt(nlist))))
        km = faiss.Kmeans(d, ng, niter=20, seed=seed, verbose=False, max_points_per_centroid=nlist,
                          min_points_per_centroid=1)
        km.train(C)
        member = nearest_centroids(C, np.asarray(km.centroids, np.float32), "l2")
        #: the centroids sorted by group (``order[i]``: the list of sorted centroid ``i``)
        self.order = np.argsort(member, kind="stable")
        self.bounds = np.searchsorted(member[self.order], np.arange(ng + 1))
        self.centres = np.array(km.centroids, np.float32)
        self.sorted = C[self.order]
        self.sorted2 = np.einsum("ij,ij->i", self.sorted, self.sorted)

    def nearest(self, L: np.ndarray, probe: int = GROUPS_PROBED) -> np.ndarray:
        """The nearest centroid (int64) of each row of ``L`` among the members of its ``probe``
        nearest groups (least squared distance)."""
        ng = len(self.centres)
        probe = min(probe, ng)
        out = np.empty(len(L), np.int64)
        for s in range(0, len(L), _GROUPED_ROWS):
            X = np.asarray(L[s : s + _GROUPED_ROWS], np.float32)
            B = len(X)
            near = nearest_k(X, self.centres, probe).ravel()  # (row, group) pairs, row-major
            by_group = np.argsort(near, kind="stable")
            cuts = np.searchsorted(near[by_group], np.arange(ng + 1))
            Xp = X[by_group // probe]
            best = np.empty(B * probe, np.float32)
            arg = np.empty(B * probe, np.int64)
            for g in np.flatnonzero(np.diff(cuts)):
                a, b, c0, c1 = cuts[g], cuts[g + 1], self.bounds[g], self.bounds[g + 1]
                D = Xp[a:b] @ self.sorted[c0:c1].T
                D *= -2
                D += self.sorted2[c0:c1]
                j = D.argmin(axis=1)
                best[by_group[a:b]] = D[np.arange(b - a), j]
                arg[by_group[a:b]] = self.order[c0 + j]
            pick = best.reshape(B, probe).argmin(axis=1)
            out[s : s + B] = arg.reshape(B, probe)[np.arange(B), pick]
        return out


def nearest_k(X: np.ndarray, centres: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` nearest centres (least squared distance) of each row of ``X``, in no order."""
    S = X @ centres.T
    S *= -2
    S += np.einsum("ij,ij->i", centres, centres)
    return np.argpartition(S, k - 1, axis=1)[:, :k] if k < S.shape[1] else np.broadcast_to(
        np.arange(S.shape[1]), S.shape)


class BlockLayout:
    """faiss's pq4 block layout (``BlockInvertedLists.packer``) in numpy: :meth:`pack` and
    :meth:`unpack` of many blocks of :data:`BBS` flat codes at once, where faiss's Python module
    reaches only ``CodePacker.pack_all``, one block a call (measured, the first search after a
    memory-mapped load of 10^6 rows in 4,096 lists, 1 b/c, 1 thread: 33,276 calls took 0.46 of
    its 0.94 s).

    The layout (faiss's ``pq4_pack_codes``): code byte ``b`` (sub-quantizers ``2b``, ``2b + 1``)
    of the block's 32 codes becomes 32 bytes, the first 16 holding sub-quantizer ``2b``'s nibbles,
    the last 16 ``2b + 1``'s; byte ``j`` of each half holds code ``PERM0[j]`` in its low nibble and
    code ``PERM0[j] + 16`` in its high one. A layout is checked once per code size against the
    packer itself (:meth:`from_packer`: a block of random codes packed and unpacked both ways);
    where they differ (another faiss), every block goes through the packer."""

    #: the code order within a half block (faiss's ``perm0``)
    PERM0 = np.array([0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15])
    #: blocks packed or unpacked at a time (bounds the temporaries; measured at 10^6 codes of 24
    #: bytes, 1 thread, the best of 3: 0.045-0.06 s at 64 to 2,048 blocks, against 0.22 s through
    #: ``pack_all``)
    CHUNK_BLOCKS = 256

    def __init__(self, code_size: int, packer=None):
        self.code_size = int(code_size)
        #: faiss's packer where this layout is not its own (every block a ``pack_all`` call)
        self.packer = packer
        self.block_size = BBS * self.code_size if packer is None else int(packer.block_size)

    @classmethod
    def from_packer(cls, packer) -> "BlockLayout":
        """The layout of a faiss ``CodePacker`` of :data:`BBS` codes a block, checked against it
        (cached per code size)."""
        import faiss

        cs, bs = int(packer.code_size), int(packer.block_size)
        if int(packer.nvec) != BBS:
            raise RuntimeError(f"faiss's packer holds {packer.nvec} codes a block, expected {BBS}")
        got = _LAYOUTS.get((cs, bs))
        if got is None:
            got = cls(cs)
            flat = np.random.default_rng(0).integers(0, 256, (BBS, cs), dtype=np.uint8)
            ref, back = np.empty((1, bs), np.uint8), np.empty_like(flat)
            packer.pack_all(faiss.swig_ptr(flat), faiss.swig_ptr(ref))
            packer.unpack_all(faiss.swig_ptr(ref), faiss.swig_ptr(back))
            if bs != got.block_size or not (np.array_equal(got.pack(flat), ref)
                                            and np.array_equal(got.unpack(ref), back)):
                got = cls(cs, packer)  # not the layout above: faiss packs every block
            _LAYOUTS[(cs, bs)] = got
        return got

    def pack(self, flat: np.ndarray) -> np.ndarray:
        """Blocks ``(len(flat) / BBS, block_size)`` of flat codes ``(k BBS, code_size)`` (uint8)."""
        nb, cs = len(flat) // BBS, self.code_size
        if self.packer is not None:
            return self._through_packer(flat, nb, "pack_all")
        out = np.empty((nb, cs, BBS), np.uint8)
        for s in range(0, nb, self.CHUNK_BLOCKS):
            f = flat[s * BBS : (s + self.CHUNK_BLOCKS) * BBS].reshape(-1, BBS, cs)
            A, B = f[:, self.PERM0], f[:, self.PERM0 + 16]  # (blocks, 16, code_size)
            o = out[s : s + len(f)]
            o[..., :16] = ((A & 15) | (B << 4)).transpose(0, 2, 1)
            o[..., 16:] = ((A >> 4) | (B & 0xF0)).transpose(0, 2, 1)
        return out.reshape(nb, self.block_size)

    def unpack(self, blocks: np.ndarray) -> np.ndarray:
        """Flat codes ``(len(blocks) BBS, code_size)`` of blocks ``(k, block_size)``: :meth:`pack`
        undone."""
        nb, cs = len(blocks), self.code_size
        if self.packer is not None:
            return self._through_packer(blocks, nb, "unpack_all")
        out = np.empty((nb, BBS, cs), np.uint8)
        for s in range(0, nb, self.CHUNK_BLOCKS):
            o = blocks[s : s + self.CHUNK_BLOCKS].reshape(-1, cs, BBS)
            lo, hi = o[..., :16].transpose(0, 2, 1), o[..., 16:].transpose(0, 2, 1)
            part = out[s : s + len(o)]
            part[:, self.PERM0] = (lo & 15) | (hi << 4)
            part[:, self.PERM0 + 16] = (lo >> 4) | (hi & 0xF0)
        return out.reshape(nb * BBS, cs)

    def _through_packer(self, src: np.ndarray, nb: int, how: str) -> np.ndarray:
        import faiss

        src = np.ascontiguousarray(src)
        packing = how == "pack_all"
        out = np.empty((nb, self.block_size) if packing else (nb * BBS, self.code_size), np.uint8)
        step_in, step_out = (BBS, 1) if packing else (1, BBS)
        call = getattr(self.packer, how)
        for b in range(nb):
            call(faiss.swig_ptr(src[b * step_in :]), faiss.swig_ptr(out[b * step_out :]))
        return out


#: :meth:`BlockLayout.from_packer`'s layouts by ``(code_size, block_size)``
_LAYOUTS: dict[tuple[int, int], BlockLayout] = {}


class IVFScorer(RefiningScorer):
    """Coarse lists over the codes of a :class:`CodeView`, scored by faiss's IVF fast-scan.

    Parameters
    ----------
    view : CodeView
        The encoder, packed 4-bit codes and metric of an index (``LPLRIndex``'s snapshot view).
    nlist : int
        Number of lists (1 to 2^20); training needs at least ``nlist`` rows unless
        ``centroids`` are given.
    seed : int, default=0
        Seed of the training sample and of faiss's k-means.
    niter : int, default=DEFAULT_NITER
        k-means iterations.
    train_rows : int, default=None
        Rows sampled to train (``nlist`` to ``view.ntotal``); None: ``TRAIN_PER_LIST * nlist``
        (all rows when fewer).
    centroids : array-like of shape (nlist, d), default=None
        Trained centroids to reuse (a loaded or merged index), in the latent layout
        (``d`` = :attr:`d`); None trains them.

    Attributes
    ----------
    index : faiss.IndexIVFPQFastScan
        The lists (ids are row numbers of the view).
    centroids : ndarray of shape (nlist, d), float32
    ntotal : int
        Rows held (the view's first ``ntotal``).
    refines : bool
        Whether the exact re-rank runs in faiss (orthonormal factor).
    """

    def __init__(self, view: CodeView, nlist: int, *, seed: int = 0, niter: int = DEFAULT_NITER,
                 train_rows: int | None = None, centroids=None, _add_rows: bool = True):
        import faiss

        if not isinstance(view, CodeView):
            raise TypeError(f"view must be a CodeView (encoder, codes, metric), got {type(view).__name__}")
        if not supported(view):
            raise ValueError(
                f"IVF fast-scan needs 4-bit codes, this view has {view.encoder.lq.bits}-bit codes")
        nlist = check_int(nlist, "nlist", low=1, high=MAX_NLIST)
        enc = view.encoder
        table = pq_table(enc)
        self.M, _, self.dsub = table.shape
        self.d = self.M * self.dsub
        self.nlist = nlist
        self.metric = view.metric
        self._faiss_metric = faiss.METRIC_INNER_PRODUCT if view.metric == "ip" else faiss.METRIC_L2
        self._table = table.ravel()
        self._two_level = enc.codec == "vq" and enc.lq.two_level
        self.refines = bool(enc.orthonormal)
        self.project = Projection(enc)  # queries and latent rows to the sub-vector layout
        if centroids is None:
            seed = check_int(seed, "seed", low=0, high=(1 << 31) - 1)
            niter = check_int(niter, "niter", low=1, high=10_000)
            n = view.ntotal
            if n < nlist:
                raise ValueError(
                    f"nlist={nlist} lists need at least {nlist} rows to train the coarse quantizer, "
                    f"the view holds {n} (use a smaller nlist, or pass trained centroids=)")
            if train_rows is None:
                train_rows = min(n, TRAIN_PER_LIST * nlist)
            train_rows = check_int(train_rows, "train_rows", low=nlist, high=n)
            centroids = self._train(view, nlist, seed, niter, train_rows)
        else:
            centroids = np.asarray(centroids)
            if centroids.shape != (nlist, self.d) or centroids.dtype.kind != "f":
                raise ValueError(
                    f"centroids must be a float array of shape (nlist, d) = ({nlist}, {self.d}), "
                    f"got shape {centroids.shape} and dtype {centroids.dtype}")
            if not np.isfinite(centroids).all():
                raise ValueError("centroids must be finite")
        self.centroids = np.array(centroids, np.float32, order="C")  # a copy: frozen below
        self.centroids.flags.writeable = False
        quantizer = (faiss.IndexFlatIP if view.metric == "ip" else faiss.IndexFlatL2)(self.d)
        quantizer.add(self.centroids)
        index = faiss.IndexIVFPQFastScan(quantizer, self.d, nlist, self.M, 4, self._faiss_metric, BBS)
        index.by_residual = False
        faiss.copy_array_to_vector(self._table, index.pq.centroids)
        index.is_trained = True
        self._quantizer = quantizer  # the IVF index holds a raw pointer to it
        self.index = index
        self.exact = None  # the flat IndexPQ of the whole codes the re-rank scores (_extend_exact)
        self._groups = None  # :meth:`_centroid_groups`
        self._scores = None  # :meth:`_centroid_scores`, made by the first batch that needs it
        self._decoder = None  # :meth:`_byte_decoder`, likewise
        #: lists not filled yet (a loaded index: :meth:`_fill`), or None
        self._pending = None
        self._param_cache = {}  # :meth:`_params` without a filter, by (nprobe, refine)
        self._filter_params = None  # (mask, {(nprobe, refine): params}): the last read-only filter's
        self._lazy()
        self.view = view
        self.ntotal = 0
        if _add_rows:
            self.extend(view)

    # ------------------------------------------------------------------ building
    def _latent(self, packed: np.ndarray) -> np.ndarray:
        """Decoded latent rows (whole codes) in fast-scan's sub-vector layout, float32."""
        L = self.view.decode_latent(packed) if packed.size else np.zeros((0, self.view.encoder.rank), np.float32)
        return self.project.lay_out(L)

    def _train(self, view: CodeView, nlist: int, seed: int, niter: int, rows: int) -> np.ndarray:
        n = view.ntotal
        rng = np.random.default_rng(seed)
        sample = np.arange(n) if rows >= n else np.sort(rng.choice(n, rows, replace=False))
        self.view = view
        return train_centroids(self._latent(np.asarray(view.codes[sample])), nlist, seed=seed, niter=niter)

    def _flat(self, packed: np.ndarray) -> np.ndarray:
        """faiss's flat codes of packed rows (:func:`fastscan.flat_codes`)."""
        return flat_codes(packed, self.M)

    def _exact_index(self):
        """An empty flat ``IndexPQ`` scoring the whole codes (:func:`fastscan.exact_index`)."""
        return exact_index(self.view.encoder, self._table, self.M, self.d, self._faiss_metric)

    def _exact_codes(self, packed: np.ndarray) -> np.ndarray:
        return exact_codes(self.view.encoder, packed, self.M)

    def _lists(self):
        import faiss

        return faiss.downcast_InvertedLists(self.index.invlists)

    def assign(self, packed: np.ndarray) -> np.ndarray:
        """The list (int64) of each packed code row: its nearest centroid (largest inner product
        for ``ip``), from :data:`GROUPED_MIN_NLIST` lists (l2, cosine) the nearest among three
        groups of centroids (:class:`CentroidGroups`)."""
        packed = np.asarray(packed)
        out = np.empty(len(packed), np.int64)
        groups = self._centroid_groups()
        for s in range(0, len(packed), _ADD_ROWS):
            L = self._latent(packed[s : s + _ADD_ROWS])
            out[s : s + len(L)] = (nearest_centroids(L, self.centroids, self.metric) if groups is None
                                   else groups.nearest(L))
        return out

    def _centroid_groups(self) -> CentroidGroups | None:
        """The centroids' groups that :meth:`assign` looks in (l2 and cosine, from
        :data:`GROUPED_MIN_NLIST` lists; None: every centroid is scored), made at the first
        assignment. Only a scorer not yet shared assigns (:meth:`extend`), so no lock."""
        if self.metric == "ip" or self.nlist < GROUPED_MIN_NLIST:
            return None
        if self._groups is None:
            self._groups = CentroidGroups(self.centroids)
        return self._groups

    def _add(self, lists: np.ndarray, packed: np.ndarray, ids: np.ndarray, *, new_rows: bool = True) -> None:
        """Append rows to their lists: the new codes of every list touched, after the codes of its
        partly filled last block, packed at once (:class:`BlockLayout`), then each list resized
        and its new blocks and ids written. ``new_rows``: count them in faiss's ``ntotal`` (False:
        rows of a loaded index, counted already, :meth:`_fill`)."""
        import faiss

        flat = self._flat(packed)
        bil = self._lists()
        layout = BlockLayout.from_packer(bil.packer)
        cs, bs = layout.code_size, layout.block_size
        if cs != flat.shape[1]:
            raise RuntimeError(f"faiss's packer holds {cs}-byte codes, expected {flat.shape[1]}")
        order = self._by_list(lists)
        ls = lists[order]
        starts = np.flatnonzero(np.r_[True, ls[1:] != ls[:-1]]) if len(ls) else np.zeros(0, np.int64)
        touched = ls[starts]
        counts = np.diff(np.r_[starts, len(ls)])
        old = np.array([bil.list_size(int(lst)) for lst in touched], np.int64)
        head = old % BBS  # codes already in each list's last, partly filled block
        nblk = -(-(head + counts) // BBS)
        first = np.r_[0, np.cumsum(nblk)]  # each list's blocks in ``buf``
        buf = np.zeros((int(first[-1]) * BBS, cs), np.uint8)
        buf[np.repeat(first[:-1] * BBS + head - starts, counts) + np.arange(len(order))] = flat[order]
        partly = np.flatnonzero(head)
        if len(partly):
            tails = np.empty((len(partly), bs), np.uint8)
            for j, i in enumerate(partly.tolist()):
                b0 = int(old[i]) // BBS * bs
                tails[j] = faiss.rev_swig_ptr(bil.get_codes(int(touched[i])), b0 + bs)[b0:]
            codes = layout.unpack(tails).reshape(len(partly), BBS, cs)
            for j, i in enumerate(partly.tolist()):
                buf[first[i] * BBS : first[i] * BBS + head[i]] = codes[j, : head[i]]
        blocks = layout.pack(buf)
        new_ids = ids[order]
        for i, lst in enumerate(touched.tolist()):
            o, c = int(old[i]), int(counts[i])
            bil.resize(lst, o + c)  # the new bytes are zero
            b0 = o // BBS
            end = (b0 + int(nblk[i])) * bs
            faiss.rev_swig_ptr(bil.get_codes(lst), end)[b0 * bs :] = blocks[first[i] : first[i + 1]].ravel()
            faiss.rev_swig_ptr(bil.get_ids(lst), o + c)[o:] = new_ids[starts[i] : starts[i] + c]
        if new_rows:
            self.index.ntotal = int(self.index.ntotal) + len(ids)

    def _by_list(self, lists: np.ndarray) -> np.ndarray:
        """The rows in list order, each list's rows ascending: a stable argsort of the list numbers
        as 16-bit integers where they fit (numpy's radix sort; measured on the first search after
        loading 10^6 rows in 4,096 lists, 1 thread: the sorts took 0.23 of its 1.08 s as int64)."""
        return np.argsort(lists.astype(np.uint16 if self.nlist <= 1 << 16 else np.int32), kind="stable")

    def extend(self, view: CodeView, lists: np.ndarray | None = None) -> None:
        """Add the rows of ``view`` past those held, in place (only while this scorer is not
        shared; a shared one is extended by :meth:`extended`); ``lists``: the new rows' lists
        (:meth:`assign` when None).

        The rows go in list order, a block of 65,536 rows at a time, so each list is opened
        about once: added in row order, every block opened every list it touched, ``nlist``
        times ``n / 65,536`` list visits, which at 10^6 rows and 4,096 lists made a build, and
        the first search after a load, take seconds more. Within a list the rows keep their
        row order."""
        if view.metric != self.metric or view.codes.shape[1] != self.view.codes.shape[1]:
            raise ValueError(f"extend: the view must be of this scorer's index (metric {self.metric!r}, "
                             f"{self.view.codes.shape[1]}-byte code rows), got metric {view.metric!r} "
                             f"and {view.codes.shape[1]}-byte rows")
        start = self.ntotal
        if lists is not None and len(lists) != view.ntotal - start:
            raise ValueError(f"extend: lists must hold one list per new row ({view.ntotal - start}), got {len(lists)}")
        self.view = view
        if lists is None:
            lists = np.empty(view.ntotal - start, np.int64)
            for s in range(start, view.ntotal, _ADD_ROWS):
                got = self.assign(np.asarray(view.codes[s : s + _ADD_ROWS]))
                lists[s - start : s - start + len(got)] = got
        lists = np.asarray(lists, np.int64)
        order = self._by_list(lists)  # list after list, rows ascending within each
        for s in range(0, len(order), _ADD_ROWS):
            part = np.sort(order[s : s + _ADD_ROWS])  # read in file order (memory-mapped codes)
            self._add(lists[part], np.asarray(view.codes[start + part]), start + part)
        if self.refines:
            self._extend_exact(view, start)
        self.ntotal = view.ntotal

    def extended(self, view: CodeView, lists: np.ndarray | None = None) -> "IVFScorer":
        """A scorer of ``view`` whose first :attr:`ntotal` rows are this one's: copies of faiss's
        indexes (``faiss.clone_index``; nothing re-encoded) with the new rows added to their
        lists. This scorer is left as it is."""
        import faiss

        self._fill_all()  # the copies hold every list
        new = object.__new__(IVFScorer)
        new.__dict__.update(self.__dict__)
        new._lazy()
        new.index = faiss.clone_index(self.index)  # the clone owns a copy of the quantizer
        new._quantizer = faiss.downcast_index(new.index.quantizer)
        new.exact = self._exact_copy()
        new.extend(view, lists)
        return new

    # ------------------------------------------------------- the list-order layout
    def list_order(self) -> tuple[np.ndarray, np.ndarray]:
        """``(order, sizes)``: the rows (ids) of every list, list after list, and the list sizes:
        a file that writes the codes in this order needs only ``sizes`` (and, to give rows back in
        insertion order, ``order`` as a permutation of ``ceil(log2 n)`` bits a row)."""
        import faiss

        pending = self._pending
        if pending is not None:
            return pending.rows.copy(), pending.sizes.copy()
        bil = self._lists()
        sizes = np.array([bil.list_size(i) for i in range(self.nlist)], np.int64)
        order = np.empty(int(sizes.sum()), np.int64)
        o = 0
        for i, s in enumerate(sizes.tolist()):
            if s:
                order[o : o + s] = faiss.rev_swig_ptr(bil.get_ids(i), s)
                o += s
        return order, sizes

    def assignment(self) -> np.ndarray:
        """The list of every row (int64, length :attr:`ntotal`), read back from faiss's lists: what a
        file stores in ``ceil(log2 nlist)`` bits a row to rebuild the lists without re-assigning
        (:meth:`from_assignment`)."""
        order, sizes = self.list_order()
        out = np.empty(self.ntotal, np.int64)
        out[order] = np.repeat(np.arange(self.nlist, dtype=np.int64), sizes)
        return out

    @classmethod
    def from_assignment(cls, view: CodeView, centroids, lists) -> "IVFScorer":
        """A scorer whose row ``i`` goes to list ``lists[i]`` (no nearest-centroid search), with the
        centroids as given: the lists of a loaded file."""
        centroids = np.asarray(centroids)
        lists = np.asarray(lists)
        nlist = len(centroids) if centroids.ndim == 2 else -1
        if lists.shape != (view.ntotal,) or lists.dtype.kind not in "iu" or (
                len(lists) and (lists.min() < 0 or lists.max() >= nlist)):
            raise ValueError(f"lists must hold one list number in [0, {nlist}) per row of the view "
                             f"({view.ntotal}), got shape {lists.shape} and dtype {lists.dtype}")
        self = cls(view, nlist, centroids=centroids, _add_rows=False)
        self._fill(view, lists.astype(np.int64))
        return self

    def _fill(self, view: CodeView, lists: np.ndarray) -> None:
        """Hold every row of ``view`` in the given lists (a scorer made with ``_add_rows=False``),
        each list filled when a search first probes it (:meth:`_fill_lists`).

        A loaded index is searched before all of its lists are needed: filling every list at once
        (faiss's block layout of every code) made the first search after a memory-mapped load of
        10^7 rows in 16,384 lists take 7-10 s, most of it in memory first touched. Until every
        list is filled, a search also runs the coarse search once itself, to learn which lists
        faiss will probe (:meth:`_probe`, which fills the rest once those searches have cost
        what filling it would). The flat codes of the exact re-rank are the view's
        codes where they lie (one-level codes, :func:`fastscan.flat_view`), or two-level codes'
        bytes filled with their lists, into one array sized for every row at once."""
        if self.ntotal != 0:
            raise ValueError(f"_fill: the scorer must be empty, it holds {self.ntotal} rows")
        self.view = view
        n = view.ntotal
        rows = self._by_list(lists)
        offsets = np.zeros(self.nlist + 1, np.int64)
        np.cumsum(np.bincount(lists, minlength=self.nlist), out=offsets[1:])
        if self.refines:
            self.exact = self._viewed_exact(view)  # one-level codes: read in place
            if self.exact is None:
                self.exact = self._exact_index()
                self.exact.codes.resize(n * int(self.exact.code_size))  # zero until its rows' lists fill
                self.exact.ntotal = n
        self.index.ntotal = n
        self.ntotal = n
        self._pending = _Pending(rows, offsets) if n else None

    def _probe(self, P: np.ndarray, nprobe: int) -> None:
        """Fill the lists faiss will probe for the projected queries ``P`` (its coarse search,
        run here first), while some list is not filled yet.

        Queries that never reach some lists (a part of the space nobody asks about) would keep
        paying this second coarse search for good. So once these searches' time, summed, reaches
        what filling every waiting list is estimated to take (their rows at the rate measured
        filling lists so far), the rest is filled at once: the rent-or-buy rule, which spends
        at most twice what knowing the queries in advance would have."""
        pending = self._pending
        if pending is None:
            return
        if nprobe >= self.nlist:
            self._fill_all()
            return
        t0 = _clock()
        _, near = self._quantizer.search(np.ascontiguousarray(P, np.float32), int(nprobe))
        pending.probe_s += _clock() - t0
        if pending.filled and pending.probe_s >= pending.waiting * (pending.fill_s / pending.filled):
            self._fill_all()
            return
        self._fill_lists(np.unique(near[near >= 0]))

    def _fill_all(self) -> None:
        """Fill every list not filled yet (a scorer about to be copied or read list by list)."""
        pending = self._pending
        if pending is not None:
            self._fill_lists(np.flatnonzero(pending.unfilled))

    def _fill_lists(self, wanted: np.ndarray) -> None:
        """Fill the ``wanted`` lists not filled yet: their rows' codes packed into faiss's lists
        (:meth:`_add`, :data:`_ADD_ROWS` rows at a time) and, where faiss re-ranks, copied into
        the flat codes. Under the scorer's lock; a list counts as filled once all of it is
        written, so a concurrent search that sees it filled reads it whole."""
        import faiss

        with self._lock:
            pending = self._pending
            if pending is None:
                return
            todo = wanted[pending.unfilled[wanted]]
            if not len(todo):
                return
            off, sizes = pending.offsets, pending.sizes
            if pending.waiting - sizes[todo].sum() <= self.ntotal * _FILL_REST_FRACTION:
                todo = np.flatnonzero(pending.unfilled)  # the last few: no more coarse searches twice
            t0 = _clock()
            rows = np.concatenate([pending.rows[off[lst] : off[lst + 1]] for lst in todo.tolist()])
            lists = np.repeat(todo, sizes[todo])
            exact = None
            if self.exact is not None and not self._exact_is_view():
                cs = int(self.exact.code_size)
                exact = faiss.rev_swig_ptr(self.exact.codes.data(), self.ntotal * cs).reshape(self.ntotal, cs)
            for s in range(0, len(rows), _ADD_ROWS):
                part = rows[s : s + _ADD_ROWS]
                packed = np.asarray(self.view.codes[part])
                self._add(lists[s : s + _ADD_ROWS], packed, part, new_rows=False)
                if exact is not None:
                    exact[part] = self._exact_codes(packed)
            pending.unfilled[todo] = False
            pending.fill_s += _clock() - t0
            pending.filled += len(rows)
            pending.waiting -= len(rows)
            if not pending.unfilled.any():
                self._pending = None

    @classmethod
    def from_list_order(cls, view: CodeView, centroids, sizes) -> "IVFScorer":
        """A scorer over a view whose rows are already in list order (list ``l`` holds rows
        ``offsets[l]:offsets[l + 1]``, ``offsets = [0, cumsum(sizes)]``): no assignment, the
        centroids as given; ids are the view's row numbers."""
        sizes = np.asarray(sizes)
        if sizes.ndim != 1 or sizes.dtype.kind not in "iu" or (sizes < 0).any():
            raise ValueError(f"sizes must be a 1-D array of list sizes >= 0, got shape {sizes.shape}, "
                             f"dtype {sizes.dtype}")
        if int(sizes.sum()) != view.ntotal:
            raise ValueError(f"sizes must sum to the view's {view.ntotal} rows, they sum to {int(sizes.sum())}")
        centroids = np.asarray(centroids)
        self = cls(view, len(sizes), centroids=centroids, _add_rows=False)
        self._fill(view, np.repeat(np.arange(len(sizes), dtype=np.int64), sizes))
        return self

    def codes_match(self) -> bool:
        """Whether every list holds exactly the view's codes of its ids (read back through faiss's
        packer), and every row is in exactly one list."""
        import faiss

        self._fill_all()
        bil = self._lists()
        packer = bil.packer
        cs, bs = int(packer.code_size), int(packer.block_size)
        seen = np.zeros(self.ntotal, np.int64)
        buf = np.empty((BBS, cs), np.uint8)
        for lst in range(self.nlist):
            size = int(bil.list_size(lst))
            if not size:
                continue
            ids = faiss.rev_swig_ptr(bil.get_ids(lst), size).copy()
            if ids.min() < 0 or ids.max() >= self.ntotal:
                return False
            seen[ids] += 1
            blocks = faiss.rev_swig_ptr(bil.get_codes(lst), -(-size // BBS) * bs)
            got = np.empty((-(-size // BBS) * BBS, cs), np.uint8)
            for b in range(len(got) // BBS):
                packer.unpack_all(faiss.swig_ptr(blocks[b * bs :]), faiss.swig_ptr(buf))
                got[b * BBS : (b + 1) * BBS] = buf
            if not np.array_equal(got[:size], self._flat(np.asarray(self.view.codes)[ids])):
                return False
        return bool((seen == 1).all())

    # ------------------------------------------------------------------ storage
    def storage(self) -> dict[str, float]:
        """What the partition costs beside the codes, in bytes (``*_bytes``) and in bits per row:
        faiss's 64-bit ids, the centroids (float32 of the latent rank, as a file would store them;
        faiss holds them padded to the sub-vector layout: ``centroid_memory``), the list sizes
        (32 bits each), the two alternatives to stored ids: rows in list order plus a permutation
        (``ceil(log2 n)`` bits a row) or rows in insertion order plus each row's list
        (``ceil(log2 nlist)`` bits a row), and the padding of the lists to whole blocks of 32 codes
        in faiss's memory. (A third alternative costs no bits: assign the rows again when loading,
        :meth:`assign`, a nearest-centroid search of every row.)"""
        n = max(self.ntotal, 1)
        order, sizes = self.list_order()
        code_bytes = int(self._lists().packer.code_size)
        padded = int((-(-sizes // BBS) * BBS).sum())
        out = {
            "rows": self.ntotal,
            "nlist": self.nlist,
            "ids_bytes": 8 * self.ntotal,
            "centroid_bytes": 4 * self.nlist * int(self.view.encoder.rank),
            "centroid_memory_bytes": 4 * self.nlist * self.d,
            "list_size_bytes": 4 * self.nlist,
            "permutation_bytes": -(-self.ntotal * max(1, math.ceil(math.log2(n))) // 8),
            "assignment_bytes": -(-self.ntotal * max(1, math.ceil(math.log2(max(self.nlist, 2)))) // 8),
            "block_padding_bytes": (padded - self.ntotal) * code_bytes,
        }
        for key in ("ids", "centroid", "centroid_memory", "list_size", "permutation", "assignment",
                    "block_padding"):
            out[f"{key}_bits_per_row"] = 8 * out[f"{key}_bytes"] / n
        return out

    def nbytes(self) -> int:
        """Bytes faiss holds for the search: the lists' blocks and ids, the centroids, where it
        re-ranks a flat copy of two-level codes (one-level codes are read in place) and the
        projection, and :meth:`_centroid_scores` and :meth:`_byte_decoder` once made."""
        s = self.storage()
        held = s["ids_bytes"] + s["centroid_memory_bytes"] + (self.ntotal * int(self._lists().packer.code_size)
                                                       + s["block_padding_bytes"])
        held += self._exact_nbytes()
        if self.refines:
            held += self.project.nbytes()
        if self._scores is not None:  # C^T and the bias
            held += sum(a.nbytes for a in self._scores)
        if self._decoder is not None:
            held += self._decoder.nbytes
        return int(held)

    # ------------------------------------------------------------------ search
    def _check(self, Q, nprobe, allowed):
        Q = np.asarray(Q)
        dim = self.view.encoder.RT.shape[0]
        if Q.ndim != 2 or Q.shape[1] != dim or Q.shape[0] == 0 or Q.dtype.kind not in "fiu":
            raise ValueError(f"queries must be a 2-D numeric array of shape (n_queries >= 1, {dim}), "
                             f"got shape {Q.shape} and dtype {Q.dtype}")
        Q = np.ascontiguousarray(Q, np.float32)
        if not np.isfinite(Q).all():
            raise ValueError("queries must be finite")
        nprobe = check_int(nprobe, "nprobe", low=1, high=self.nlist)
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.shape != (self.ntotal,) or allowed.dtype != bool:
                raise ValueError(f"allowed must be a boolean mask over the {self.ntotal} rows, "
                                 f"got shape {allowed.shape} and dtype {allowed.dtype}")
        return Q, nprobe, allowed

    def _params(self, nprobe: int, allowed, *, refine: bool = False):
        """faiss's IVF search parameters (nprobe, filter), wrapped in ``IndexRefineSearchParameters``
        when ``refine``, and the objects they point to. Without a filter they are made once per
        ``nprobe`` and shared by every search (faiss only reads them): each SWIG object and
        attribute set from Python took 15-20 us of a 130 us single query (10^6 rows, 4,096
        lists, nprobe 1, 1 thread; cProfile). So are those of a read-only filter, for as long as
        searches keep passing that same array: a snapshot's live rows
        (:meth:`lplr_index.snapshot.Snapshot.live`), which every search of an index with removed
        vectors passes. Packing the mask's bits is work in proportion to the rows: made at every
        search, a single query at 10^6 rows with 0.1 % of them removed took 484 us, now 157 us (1
        thread, both codes alternating in one process; 1,024 lists, nprobe 1)."""
        import faiss

        key = (int(nprobe), refine)
        cache = self._param_cache
        if allowed is not None:
            if allowed.flags.writeable:  # a filter of this search alone
                cache = None
            else:
                entry = self._filter_params
                if entry is None or entry[0] is not allowed:
                    entry = self._filter_params = (allowed, {})
                cache = entry[1]
        if cache is not None:
            got = cache.get(key)
            if got is not None:
                return got
        p = faiss.SearchParametersIVF()
        p.nprobe = int(nprobe)
        keep = [p]
        if allowed is not None:
            bits = np.packbits(allowed, bitorder="little")
            sel = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            p.sel = sel
            keep += [bits, sel]
        if refine:
            rp = faiss.IndexRefineSearchParameters()
            rp.k_factor = 1.0
            rp.base_index_params = p
            keep.append(rp)
            p = rp
        if cache is not None:
            if len(cache) >= _PARAMS_CACHED:
                cache.clear()
            cache[key] = (p, keep)
        return p, keep

    def _queries(self, Q: np.ndarray) -> np.ndarray:
        """Prepared queries (:func:`prepare_queries`) projected to the latent layout:
        ``(q - mean) R^+`` (l2, cosine), ``q R^T`` (ip)."""
        view = self.view
        enc = view.encoder
        if view.metric == "ip":
            P = Q @ enc.RT
        else:
            P = (Q - enc.mean) @ self.project.least_squares()
        return self.project.lay_out(P)

    def first_stage(self, Q, kprime: int, *, nprobe: int, allowed=None) -> tuple[np.ndarray, np.ndarray]:
        """faiss's fast-scan distances and ids ``(nq, kprime)`` over the ``nprobe`` nearest lists
        (quantized table sums, as the exhaustive ``IndexPQFastScan`` returns them); -1 where the
        probed (allowed) rows are fewer."""
        Q, nprobe, allowed = self._check(Q, nprobe, allowed)
        kprime = check_int(kprime, "kprime", low=1, high=max(1, self.ntotal))
        p, keep = self._params(nprobe, allowed)
        P = self._queries(prepare_queries(self.view, Q))
        D, I = self._scan(P, int(kprime), nprobe, p)
        del keep
        return D, I

    def candidates(self, Q, kprime: int, *, nprobe: int, allowed=None) -> np.ndarray:
        """Ids of :meth:`first_stage`."""
        return self.first_stage(Q, kprime, nprobe=nprobe, allowed=allowed)[1]

    def search(self, Q, kc: int, keep: int, *, nprobe: int, norms2: np.ndarray | None = None,
               allowed=None):
        """Both stages: ``kc`` candidates from the ``nprobe`` nearest lists, re-scored exactly from
        their codes, the ``keep`` best kept.

        Returns ``(D, I, short)`` as :meth:`FastScanScorer.search` does: distances (l2: squared,
        ascending) or similarities (ip, cosine), row ids (-1 past the rows found), and per query
        whether the probed lists gave fewer than ``kc`` candidates. ``norms2``: the rows' squared
        norms (:func:`lplr_index.search.blas.row_norms2`), which cosine's re-rank in faiss needs
        (without them cosine re-ranks in numpy). ``allowed``: boolean mask of the rows that may be
        returned (applied inside faiss's scan).
        """
        Q, nprobe, allowed = self._check(Q, nprobe, allowed)
        keep = check_int(keep, "keep", low=1)
        kc = check_int(kc, "kc", low=keep, high=max(keep, self.ntotal))
        return self._search(Q, kc, keep, nprobe, norms2, allowed)

    def _search(self, Q: np.ndarray, kc: int, keep: int, nprobe: int, norms2, allowed):
        """:meth:`search` of queries and arguments already checked (:meth:`_check`; as
        :func:`lplr_index.search.router.search` checks them): checks a single query would pay
        twice (about 3 us of a 50 us query)."""
        from . import blas

        view = self.view
        Q = prepare_queries(view, Q)
        if not self.refines or (view.metric == "cosine" and norms2 is None):
            p, refs = self._params(nprobe, allowed)
            _, cand = self._scan(self._queries(Q), int(kc), nprobe, p)
            del refs
            D, I = blas.rerank(view, Q, cand, keep)
            return D, I, (cand < 0).any(axis=1)
        batched = self._preassigns(len(Q), nprobe)
        p, refs = self._params(nprobe, allowed, refine=not batched)

        def scan(P, k):
            if batched:  # the batch's coarse search, faiss's scan, the re-score from the codes
                return self._rescore(P, self._scan(P, k, nprobe, p)[1])
            return self._refined_scan(P, k, nprobe, p)

        D, I, short = self._search_refined(Q, kc, keep, norms2, scan=scan)
        del refs  # the filter's bitmap and selector, alive until faiss has searched
        return D, I, short

    def _refined_scan(self, P: np.ndarray, k: int, nprobe: int, params) -> tuple[np.ndarray, np.ndarray]:
        """faiss's coarse search and ``IndexRefine`` of projected queries ``P`` (``params``: from
        :meth:`_params` with ``refine``), the lists they probe filled first: ``k`` candidates a
        query re-scored exactly, sorted."""
        self._probe(P, nprobe)
        return faiss_search(self._refined(), P, k, params)

    def _preassigns(self, n_queries: int, nprobe: int) -> bool:
        """Whether a search of ``n_queries`` projected queries gets its coarse search from
        :meth:`_coarse` (from :data:`PREASSIGN_MIN_NLIST` lists, batches of
        :data:`PREASSIGN_MIN_QUERIES`, fewer lists than all, one-level codes) rather than from
        faiss.

        Two-level codes keep faiss's path: their candidates (6-16 per result, 8-bit codes over
        padded sub-vectors) cost more to re-score in numpy (:meth:`_rescore`) than faiss's
        ``IndexRefine`` and coarse search together. Measured (10^5 x 384, 4 b/c, 1,024 lists,
        173 groups of 692 padded coordinates, 60 candidates, 1,000 queries, 1 thread): the
        batched search at 0.54-0.68x faiss's path's speed at nprobe 1-16."""
        return (self.nlist >= PREASSIGN_MIN_NLIST and n_queries >= PREASSIGN_MIN_QUERIES and nprobe < self.nlist
                and not self._two_level)

    def _scan(self, P: np.ndarray, k: int, nprobe: int, params) -> tuple[np.ndarray, np.ndarray]:
        """faiss's fast-scan ``(D, I)``, ``k`` per projected query, over its ``nprobe`` nearest
        lists (their waiting rows filled first): found by faiss's coarse search, or for a batch
        (:meth:`_preassigns`) by :meth:`_coarse` and handed to faiss (``search_preassigned``)."""
        import faiss

        if not self._preassigns(len(P), nprobe):
            self._probe(P, nprobe)
            return faiss_search(self.index, P, k, params)
        Dq, Iq = self._coarse(P, nprobe)
        if self._pending is not None:
            self._fill_lists(np.unique(Iq[Iq >= 0]))
        n = len(P)
        D, I = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
        # faiss reads the scores only for codes of residuals (by_residual), which these are not
        self.index.search_preassigned_c(n, faiss.swig_ptr(P), k, faiss.swig_ptr(Iq), faiss.swig_ptr(Dq),
                                        faiss.swig_ptr(D), faiss.swig_ptr(I), False, params)
        return D, I

    def _coarse(self, P: np.ndarray, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``nprobe`` nearest lists of each projected query, nearest first (int64), and their
        scores (float32, the larger the nearer: ``<p, c> - ||c||^2 / 2`` for l2 and cosine,
        ``<p, c>`` for ip): one numpy product for a chunk of queries and every centroid, then
        faiss's heap keeps the best (``float_minheap_array_t``, as faiss's coarse search does).

        faiss's own coarse search scores the centroids query by query without BLAS below
        128,000 query coordinates (``distance_compute_blas_threshold``: 1,000 queries of 89
        coordinates), which at 4,096 lists was most of a query: measured at 10^6 x 384, 1 b/c,
        4,096 lists, 1,000 queries, 1 thread, faiss's coarse search 27 us a query against 8.4
        us for a product and a selection. The product is numpy's, on one BLAS thread
        (:class:`lplr_index._threads.shared_one_blas_thread`): faiss's own BLAS took 22 us a
        query for it (``LinearTransform``, measured on its generic kernels, before
        :mod:`lplr_index._faiss` chose this CPU's), numpy's 6."""
        import faiss

        n = len(P)
        Dq, Iq = np.empty((n, nprobe), np.float32), np.empty((n, nprobe), np.int64)
        CT, bias = self._centroid_scores()
        step = max(1, _COARSE_CHUNK_BYTES // (4 * self.nlist))
        for s in range(0, n, step):
            with shared_one_blas_thread():
                S = P[s : s + step] @ CT
            S += bias
            heap = faiss.float_minheap_array_t()  # a min-heap: keeps the largest scores
            heap.nh, heap.k = len(S), nprobe
            heap.val, heap.ids = faiss.swig_ptr(Dq[s : s + step]), faiss.swig_ptr(Iq[s : s + step])
            heap.heapify()
            heap.addn(self.nlist, faiss.swig_ptr(S), 0, 0, len(S))
            heap.reorder()
        return Dq, Iq

    def _centroid_scores(self) -> tuple[np.ndarray, np.ndarray]:
        """``(C^T, -||c||^2 / 2)`` (float32; the bias 0 for ip): what :meth:`_coarse` scores the
        centroids with, made once (two racing searches may both make it, alike)."""
        got = self._scores
        if got is None:
            C = np.asarray(self.centroids, np.float32)
            bias = np.zeros(self.nlist, np.float32) if self.metric == "ip" else -0.5 * np.einsum("ij,ij->i", C, C)
            got = (np.ascontiguousarray(C.T), bias.astype(np.float32))
            self._scores = got
        return got

    def _byte_decoder(self) -> ByteDecoder:
        """What :meth:`_rescore` decodes the candidates' codes with, made once (two racing
        searches may both make it, alike)."""
        got = self._decoder
        if got is None:
            got = self._decoder = ByteDecoder(self._table, self.M)
        return got

    def _rescore(self, P: np.ndarray, cand: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What faiss's ``IndexRefine`` gives, for candidates ``cand`` of the projected queries
        ``P`` found without it: each candidate's latent squared distance (l2, cosine) or inner
        product (ip) to its query, from its decoded whole codes (:class:`ByteDecoder`: the values
        faiss's ``sa_decode`` gives, 6x faster), best first; -1 (scored +-inf) last.

        Measured (10^6 x 384, 1 b/c, 1,024 lists, 1,000 queries of 20 candidates, 1 thread): the
        re-score takes 3.9 us a query; it took 10.6 with ``sa_decode``, 8.0 of them decoding."""
        nq, kc = cand.shape
        dec = self._byte_decoder()
        width = dec.width
        if width != P.shape[1]:  # an odd count of 4-bit codes decodes one zero sub-vector more
            P = np.pad(P, ((0, 0), (0, width - P.shape[1])))
        ip = self.metric == "ip"
        Dr = np.empty((nq, kc), np.float32)
        step = max(1, _COARSE_CHUNK_BYTES // (4 * kc * width))
        for s in range(0, nq, step):
            c = cand[s : s + step]
            Z = dec.decode(np.asarray(self.view.codes[np.maximum(c, 0).ravel()])).reshape(len(c), kc, width)
            if ip:
                Dr[s : s + step] = np.einsum("ijk,ik->ij", Z, P[s : s + step])
            else:
                Z -= P[s : s + step, None, :]
                Dr[s : s + step] = np.einsum("ijk,ijk->ij", Z, Z)
        Dr[cand < 0] = -np.inf if ip else np.inf
        order = np.argsort(-Dr if ip else Dr, axis=1, kind="stable")
        return np.take_along_axis(Dr, order, 1), np.take_along_axis(cand, order, 1)

    def search_widening(self, Q, kc: int, keep: int, *, nprobe: int, norms2: np.ndarray | None = None,
                        allowed=None):
        """:meth:`search` of checked queries (float32, C-contiguous, finite, of the index's
        dimension) and arguments, as the index's and the sharded searches check them, in query
        chunks (:func:`fastscan.in_query_chunks`), then the queries still short (their probed
        lists held fewer than ``kc`` allowed rows) search again with
        :data:`SHORT_NPROBE_GROWTH` times more lists, up to every list. Returns ``(D, I,
        short)``: queries short even with every list probed (a filter leaving fewer rows, or
        fast-scan's saturated sums) are the caller's (the exact scan). Measured (10^6 x 384,
        4,096 lists, 1 b/c, nprobe 1, 1 thread): sending the queries whose one list held fewer
        than 40 rows straight to the exact scan took the batch from 15,653 to 3,182 q/s once the
        lists were trained in two levels (:func:`train_centroids`: more small lists)."""
        def probe(q, p):
            return in_query_chunks(lambda c: self._search(c, kc, keep, p, norms2, allowed), q, kc)

        D, I, short = probe(Q, nprobe)
        while np.count_nonzero(short) and nprobe < self.nlist:
            nprobe = min(self.nlist, SHORT_NPROBE_GROWTH * nprobe)
            again = np.flatnonzero(short)
            D[again], I[again], short[again] = probe(np.asarray(Q)[again], nprobe)
        return D, I, short


class _Pending:
    """The lists of a loaded scorer not filled yet (:meth:`IVFScorer._fill`): every row in list
    order (``rows[offsets[l]:offsets[l + 1]]``, ascending: list ``l``'s rows), the list sizes and
    which lists wait; the rows waiting, and what :meth:`IVFScorer._probe` weighs: the seconds
    its coarse searches took, and the rows filled so far and their seconds."""

    def __init__(self, rows: np.ndarray, offsets: np.ndarray):
        self.rows = rows
        self.offsets = offsets
        self.sizes = np.diff(offsets)
        self.unfilled = self.sizes > 0
        self.waiting = len(rows)
        self.probe_s = 0.0
        self.filled = 0
        self.fill_s = 0.0


# ------------------------------------------------------------ what an index file stores
def list_bits(nlist: int) -> int:
    """Bits of one stored list number: ``ceil(log2 nlist)``, at least 1."""
    return max(1, math.ceil(math.log2(max(int(nlist), 2))))


def pack_lists(lists: np.ndarray, nlist: int) -> np.ndarray:
    """Every row's list number in :func:`list_bits` bits, little-endian bit order (uint8)."""
    b = list_bits(nlist)
    lists = np.asarray(lists, np.int64)
    out = np.zeros(-(-len(lists) * b // 8), np.uint8)
    step = 1 << 16  # rows per block: a multiple of 8, so every block starts on a byte
    shifts = np.arange(b, dtype=np.int64)
    for s in range(0, len(lists), step):
        part = lists[s : s + step]
        bits = ((part[:, None] >> shifts) & 1).astype(np.uint8).ravel()
        packed = np.packbits(bits, bitorder="little")
        out[s * b // 8 : s * b // 8 + len(packed)] = packed
    return out


def unpack_lists(packed: np.ndarray, nlist: int, n: int) -> np.ndarray:
    """:func:`pack_lists` read back: ``n`` list numbers (int64)."""
    b = list_bits(nlist)
    packed = np.asarray(packed)
    out = np.empty(n, np.int64)
    step = 1 << 16
    weights = (np.int64(1) << np.arange(b, dtype=np.int64))
    for s in range(0, n, step):
        m = min(step, n - s)
        part = packed[s * b // 8 : -(-(s + m) * b // 8)]
        bits = np.unpackbits(part, count=m * b, bitorder="little").reshape(m, b)
        out[s : s + m] = bits.astype(np.int64) @ weights
    return out


def latent_centroids(enc, centroids: np.ndarray) -> np.ndarray:
    """Centroids in fast-scan's (padded) layout as ``(nlist, rank)`` latent rows: what a file stores."""
    where = pad_positions(enc)
    if where is None:
        return np.ascontiguousarray(centroids, np.float32)
    out = np.zeros((len(centroids), enc.rank), np.float32)
    out[:, where[1]] = centroids[:, where[0]]
    return out


def padded_centroids(enc, centroids: np.ndarray) -> np.ndarray:
    """:func:`latent_centroids` undone: ``(nlist, rank)`` latent rows in fast-scan's layout."""
    c = np.asarray(centroids, np.float32)
    return np.ascontiguousarray(enc.lq.pad(c) if enc.codec == "vq" else c, np.float32)


def choose_nprobe(recall_at, nlist: int, tolerance: float) -> tuple[int, dict[int, float]]:
    """The smallest power of two ``nprobe`` (or ``nlist``) whose recall ``recall_at(nprobe)`` is
    within ``tolerance`` of ``recall_at(nlist)`` (the exhaustive first stage), and every recall
    measured."""
    measured = {nlist: float(recall_at(nlist))}
    target = measured[nlist] - tolerance
    p = 1
    while p < nlist:
        measured[p] = float(recall_at(p))
        if measured[p] >= target:
            return p, measured
        p *= 2
    return nlist, measured
