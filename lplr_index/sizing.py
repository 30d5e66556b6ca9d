"""Sizing an index before building it: :func:`plan` and the peak-memory models.

:func:`plan` answers what :meth:`LPLRIndex.plan <lplr_index.LPLRIndex.plan>` promises
(an :class:`IndexPlan`): the layout a build chooses, the exact size of its file (from the
accounting the file itself uses, :mod:`lplr_index.layout`), and the peak memory of the
build and of a first search, from models of their buffers calibrated with
:mod:`tracemalloc` (:func:`build_peak`, :func:`fastscan_search_peak`,
:func:`factored_search_peak`). :func:`rank_for_budget` is the scalar codes' rank for a
budget, which the build uses too. Grouped codes from a budget need the data to choose their
design; the caller runs that choice on a sample (:func:`lplr_index.builder.fit_design`)
and hands the result in.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import layout
from .fileformat import container_nbytes
from .packing import packed_nbytes
from .search import blas
from .search import ivf as ivf_search
from .search.fastscan import projection_nbytes
from .search.router import DEFAULT_RERANK_FACTOR
from .settings import IndexSettings
from .train import SAMPLE_ROWS
from .vq import TWO_LEVEL_RERANK_FACTOR, VQEncoder, two_level_tried

__all__ = ["IndexPlan", "plan", "rank_for_budget", "build_peak", "fastscan_search_peak", "factored_search_peak"]


@dataclass(frozen=True)
class IndexPlan:
    """What :meth:`LPLRIndex.plan` predicts for a build: without data, or from a sample of it.

    Attributes
    ----------
    n, dim : int
        Vectors and their dimension.
    rank, bits_l : int
        Rank and code width a build chooses (from the budget, or as given). With
        grouped codes from a budget (``codec="vq"``) the data decide the rank: with
        ``sample``, the rank of the design the sample chose (:attr:`design`); without,
        an upper bound (``min(dim, 8 x`` the 4-bit codes the budget holds: groups of 8
        directions per code). Grouped codes are 4-bit.
    file_bytes : int
        Size of the saved file, equal to :attr:`LPLRIndex.nbytes` after the build
        (exactly for ``factor="orthonormal"`` or ``refine_iters=0``; otherwise at
        most a few bytes more, the encoder's name in the header). With grouped codes
        from a budget and a ``sample``: the exact size of the file of the design the
        sample chose (the build's when :attr:`exact`); without a sample: the budget
        itself, an upper bound, not a prediction (:attr:`exact` is False).
    bits_per_coordinate : float
        ``8 * file_bytes / (n * dim)``.
    build_peak_bytes : int
        Peak of the memory :meth:`LPLRIndex.build` allocates (as :mod:`tracemalloc`
        counts it) for a float32, C-contiguous ``X`` already in memory (``X`` not
        counted): the row sample, the buffers of one canonical block and the codes.
    search_peak_bytes : int
        Peak of the memory the first :meth:`LPLRIndex.search` of ``n_queries``
        queries for ``k`` neighbours allocates (tracemalloc; the index itself not
        counted, the caches it builds counted), for vectors stored in random order,
        without filter or rescoring.
    n_queries, k : int
        The query batch and k of ``search_peak_bytes``.
    search_mode : {"fastscan", "factored"}
        The mode of that search.
    fastscan : bool
        Whether ``mode="auto"`` searches with fast-scan (4-bit codes, orthonormal factor).
    fastscan_bytes : int
        What faiss holds for fast-scan: its copy of the codes in block layout, and
        with an orthonormal factor the flat codes its re-rank scores and the
        projection ``R`` (float32); for a partitioned index (``nlist``) the lists
        instead of the flat blocks: a 64-bit id a row, each list padded to whole
        blocks of 32 codes (half a block a list counted) and the coarse centroids
        (:func:`lplr_index.search.ivf.predicted_nbytes`); allocated by the first
        fast-scan search outside Python's allocator (so not in
        ``search_peak_bytes``); 0 when fast-scan is not used.
    codec : {"vq", "scalar"}
        The codes a build makes (``codec="auto"`` at 6+ bits per coordinate may
        also build the scalar 8-bit codes: the data decide; with ``sample``, the
        sample decided).
    exact : bool
        Whether ``file_bytes``, ``rank`` and :attr:`design` are what the build will
        give: True for the scalar codes, grouped codes with a rank, and grouped codes
        from a budget planned with a ``sample`` holding all ``n`` rows (in the order
        the build gets them: the design choice is the build's). False for grouped
        codes from a budget without a sample (``file_bytes`` the budget, ``rank`` an
        upper bound, the peaks estimates from the largest layout the budget allows)
        or with a sample of fewer rows (the design the sample chose, sized exactly
        for ``n`` rows; the build chooses from all rows' spectrum, most often alike).
    design : dict or None
        With grouped codes from a budget and a ``sample``: the design the sample chose,
        ``{"basis": "pca" | "rotation", "groups": [[group size, groups, levels], ...]}``
        (as :attr:`LPLRIndex.layout` reports it after the build), or
        ``{"basis": "scalar"}`` when the scalar 8-bit codes won; otherwise None.
    """

    n: int
    dim: int
    rank: int
    bits_l: int
    file_bytes: int
    bits_per_coordinate: float
    build_peak_bytes: int
    search_peak_bytes: int
    n_queries: int
    k: int
    search_mode: str
    fastscan: bool
    fastscan_bytes: int
    codec: str = "scalar"
    exact: bool = True
    design: dict | None = None


def rank_for_budget(s: IndexSettings, n: int, bits_l: int, *, ids: tuple[str, int] | None = None) -> int:
    """Largest rank whose file (with user ids saved as ``ids``) fits ``budget * n * dim`` bits."""
    limit = s.bits_per_coordinate * n * s.dim
    lo, hi, best = 1, min(s.dim, n), 0
    while lo <= hi:  # storage grows with rank: binary search
        mid = (lo + hi) // 2
        if 8 * layout.file_nbytes(s, n, mid, bits_l, ids=ids) <= limit:
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    if best == 0:
        need = 8 * layout.file_nbytes(s, n, 1, bits_l, ids=ids) / (n * s.dim)
        with_ids = " and their user ids" if ids is not None else ""
        raise ValueError(
            f"bits_per_coordinate={s.bits_per_coordinate:g} cannot hold even a rank-1 index of {n} "
            f"vectors of dimension {s.dim}{with_ids} with bits_l={bits_l}, bits_r={s.bits_r}: "
            f"that needs {need:.3f} bits per coordinate (add more vectors, lower bits_r, or "
            f"raise the budget)"
        )
    return best


def plan(s: IndexSettings, n: int, n_queries: int, k: int, mode: str, chosen: VQEncoder | str | None = None,
         exact: bool = True) -> IndexPlan:
    """The :class:`IndexPlan` of a build of ``n`` rows with the settings ``s`` and of a first
    search of ``n_queries`` queries for ``k`` neighbours in ``mode`` (all checked by the caller).

    ``chosen``: for grouped codes from a budget, the design a sample chose (its encoder, or
    ``"scalar"`` when the scalar 8-bit codes won there), ``exact`` whether that sample held
    all ``n`` rows; None: no sample (grouped codes from a budget are then bounded, not sized).
    """
    bits_l = s.bits_l_used
    design = None
    if isinstance(chosen, str):  # codec="auto" at 6+ bits per coordinate: the scalar 8-bit codes won
        design, bits_l = {"basis": "scalar"}, dataclasses.replace(s, codec="scalar").bits_l_used
    elif chosen is not None:
        return _plan_design(s, n, n_queries, k, mode, chosen, exact)
    elif s.codec_used == "vq":
        return _plan_vq(s, n, n_queries, k, mode)
    dim = s.dim
    if s.bits_per_coordinate is not None:
        rank = rank_for_budget(s, n, bits_l)
    else:
        rank = s.rank
        if rank > n:
            raise ValueError(f"rank={rank} needs at least {rank} vectors to build on, got n={n}")
    # the orthonormal factor always ends with the pinv encoder; lstsq without
    # refinement keeps the sketch; otherwise the data decides: the longer name
    kind = "pinv" if s.factor == "orthonormal" else "sketch"
    version, nlist = layout.fresh_version(s), layout.nlist_for(s, n)
    nlist = None if nlist is None else min(nlist, n)
    header = layout.header(s, n, rank, bits_l, n, 0, kind, 0.0, version=version, nprobe=nlist,
                           rerank_factor=layout.widest_rerank_factor())
    file_bytes = container_nbytes(header, layout.arrays_meta(s, n, rank, bits_l, version, ivf=nlist))
    fast = bits_l == 4 and s.factor == "orthonormal"
    if mode == "fastscan" and bits_l != 4:
        raise ValueError(f"mode='fastscan' needs 4-bit codes, this plan has bits_l={bits_l}")
    search_mode = ("fastscan" if fast else "factored") if mode == "auto" else mode
    k_eff = min(k, n)
    row_bytes = packed_nbytes(rank, bits_l)
    if search_mode == "fastscan":
        orthonormal = s.factor == "orthonormal"
        search = fastscan_search_peak(n, s.dim, rank, n_queries, k_eff, orthonormal, metric=s.metric)
        # fast-scan's blocks, and for faiss's re-rank (an orthonormal factor) the projection
        # (fastscan.projection_nbytes: R^T, dim x rank float32; the codes are read in place)
        fs_bytes = _fastscan_nbytes(s, n, rank, rank, projection_nbytes(s.dim, rank, n_queries) if orthonormal else 0,
                                    n_queries)
    else:
        search = factored_search_peak(n, dim, rank, bits_l, n_queries, k_eff, s.metric)
        fs_bytes = 0
    return IndexPlan(
        n=n, dim=s.dim, rank=rank, bits_l=bits_l, file_bytes=file_bytes,
        bits_per_coordinate=8 * file_bytes / (n * s.dim),
        build_peak_bytes=build_peak(n, s.dim, rank, row_bytes, s.metric),
        search_peak_bytes=search, n_queries=n_queries, k=k, search_mode=search_mode,
        fastscan=fast, fastscan_bytes=fs_bytes, exact=exact, design=design,
    )


def _plan_vq(s: IndexSettings, n: int, n_queries: int, k: int, mode: str) -> IndexPlan:
    """:func:`plan` of grouped codes without a sample: exact with a rank, bounds and estimates
    with a budget alone."""
    dim = s.dim
    if s.rank is not None:
        if s.rank > n:
            raise ValueError(f"rank={s.rank} needs at least {s.rank} vectors to build on, got n={n}")
        rank = n_codes = s.rank
        file_bytes = layout.file_nbytes(s, n, rank, 4, vq=("pca", np.array([[1, rank, 1]], np.int32)))
    else:
        fixed = layout.file_nbytes(s, n, 1, 4, vq=("rotation", np.zeros((0, 3), np.int32)))
        file_bytes = int(s.bits_per_coordinate * n * dim // 8)
        n_codes = int(2 * (file_bytes - fixed) // n)  # 4-bit codes a vector can hold at most
        if n_codes < 1:
            raise ValueError(
                f"bits_per_coordinate={s.bits_per_coordinate:g} cannot hold even a rank-1 index of {n} vectors "
                f"of dimension {dim} (one 4-bit code per vector): that needs "
                f"{8 * (fixed + -(-n // 2)) / (n * dim):.3f} bits per coordinate")
        rank = min(dim, 8 * n_codes)  # at most: groups of 8 directions per code
    # the latent width the search decodes: between n_codes (one code per direction) and
    # 8 n_codes (groups of 8); estimated as 3 n_codes
    width = min(dim, 3 * n_codes) if s.rank is None else rank
    search_mode = "fastscan" if mode in ("auto", "fastscan") else "factored"
    k_eff = min(k, n)
    if search_mode == "fastscan":
        # the re-rank depth is the design's: 4 k candidates, 16 k for two-level codes
        two = s.rank is None and two_level_tried(s.bits_per_coordinate, n)
        depth = TWO_LEVEL_RERANK_FACTOR if two else DEFAULT_RERANK_FACTOR
        search = fastscan_search_peak(n, dim, width, n_queries, k_eff, True, depth, s.metric, two)
        # fast-scan's blocks (at most n_codes coarse codes), and for faiss's re-rank the flat
        # codes of two-level codes (one byte per coarse code: a bound) and the projection (R^T,
        # dim x rank float32; rank a bound); a partitioned index's centroids: 8 coordinates a
        # code, a bound
        fs_bytes = _fastscan_nbytes(s, n, n_codes, 8 * n_codes, projection_nbytes(dim, rank, n_queries), n_queries,
                                    two)
    else:
        search = factored_search_peak(n, dim, width, 8, n_queries, k_eff, s.metric)
        fs_bytes = 0
    # measured (tracemalloc): the sample's copies while the designs are compared dominate,
    # about 7 float32 copies of it (29 bytes per sampled coordinate)
    build = int(29 * min(n, SAMPLE_ROWS) * dim + 48 * dim * dim + 2 * n * packed_nbytes(n_codes, 4))
    return IndexPlan(
        n=n, dim=dim, rank=rank, bits_l=4, file_bytes=file_bytes, bits_per_coordinate=8 * file_bytes / (n * dim),
        build_peak_bytes=build, search_peak_bytes=search, n_queries=n_queries, k=k, search_mode=search_mode,
        fastscan=True, fastscan_bytes=fs_bytes, codec="vq", exact=s.rank is not None,
    )


def _plan_design(s: IndexSettings, n: int, n_queries: int, k: int, mode: str, enc: VQEncoder,
                 exact: bool) -> IndexPlan:
    """:meth:`plan` of the grouped codes of ``enc`` (a design chosen on a sample) for ``n`` rows:
    the file exactly; faiss's fast-scan bytes exactly (its blocks of the ``M`` coarse codes, the
    flat codes its re-rank scores, ``M`` bytes a row for two-level codes, and ``R``); the peaks
    from the models with this design's latent width and re-rank depth."""
    dim = s.dim
    groups, rank, M, two = enc.lq.groups, enc.rank, enc.lq.n_coarse, enc.lq.two_level
    file_bytes = layout.file_nbytes(s, n, rank, 4, vq=(enc.basis, groups))
    search_mode = "fastscan" if mode in ("auto", "fastscan") else "factored"
    k_eff = min(k, n)
    if search_mode == "fastscan":
        depth = TWO_LEVEL_RERANK_FACTOR if two else DEFAULT_RERANK_FACTOR
        search = fastscan_search_peak(n, dim, rank, n_queries, k_eff, True, depth, s.metric, two)
        fs_bytes = _fastscan_nbytes(s, n, M, M * enc.lq.dsub, projection_nbytes(dim, rank, n_queries), n_queries, two)
    else:
        search = factored_search_peak(n, dim, rank, 8, n_queries, k_eff, s.metric)
        fs_bytes = 0
    build = int(29 * min(n, SAMPLE_ROWS) * dim + 48 * dim * dim + 2 * n * packed_nbytes(enc.n_codes, 4))
    return IndexPlan(
        n=n, dim=dim, rank=rank, bits_l=4, file_bytes=file_bytes, bits_per_coordinate=8 * file_bytes / (n * dim),
        build_peak_bytes=build, search_peak_bytes=search, n_queries=n_queries, k=k, search_mode=search_mode,
        fastscan=True, fastscan_bytes=fs_bytes, codec="vq", exact=exact,
        design={"basis": enc.basis, "groups": groups.tolist()},
    )


def _fastscan_nbytes(s: IndexSettings, n: int, M: int, d: int, projection: int, n_queries: int,
                     two_level: bool = False) -> int:
    """:attr:`IndexPlan.fastscan_bytes` of ``n`` rows of ``M`` 4-bit fast-scan codes
    (sub-vectors ``d`` wide in all), the flat codes faiss's re-rank holds itself (``two_level``
    codes: a byte a group; one-level codes are read where they lie,
    :func:`lplr_index.search.fastscan.flat_view`) and ``projection`` bytes of query projection:
    fast-scan's blocks of 32 rows, or for a partitioned index (``nlist``) its lists, after a
    first search of ``n_queries`` (:func:`lplr_index.search.ivf.predicted_nbytes`)."""
    exact_row = M if two_level else 0
    nlist = layout.nlist_for(s, n)
    if nlist is not None:
        return ivf_search.predicted_nbytes(n, min(nlist, n), M, d, exact_row, projection, n_queries, two_level)
    return -(-n // 32) * 32 * ((M + 1) // 2) + n * exact_row + projection


# ----------------------------------------------------------- memory model
# Peak bytes of a build and a first search, as tracemalloc counts them. Each
# term is a buffer of the code it models; the fitted constants come from
# tracemalloc measurements of 84 first searches, twice (n = 50,000 to 200,000,
# dim 64 and 128, ranks 16 to 48, 4- and 8-bit codes, every metric, 100 to
# 1,000 queries, k = 10 to 100; random-order data).

def build_peak(n: int, dim: int, rank: int, row_bytes: int, metric: str) -> int:
    """:func:`lplr_index.train.fit` on float32 rows in memory.

    The sample and its centred copy stay alive through the fit; each pass holds
    one canonical block's buffers (the centred block, its float64 transpose,
    the latent block and its codes: 12 bytes per entry of ``B x (dim + rank)``,
    plus the normalised block for cosine while encoding); the encoding pass
    also holds the codes so far, and their concatenation doubles them.
    """
    from ._blocks import BLOCK_ROWS

    S, B = min(n, SAMPLE_ROWS), min(n, BLOCK_ROWS)
    sample = 2 * S * dim * 4
    block = 12 * B * (dim + rank) + (4 * B * dim if metric == "cosine" else 0)
    codes = n * row_bytes
    small = 8 * (dim * rank * 6 + rank * rank * 4)  # sketch, factors, Gram sums
    return int(sample + max(block + codes, 2 * codes) + small)


def fastscan_search_peak(n: int, dim: int, rank: int, nq: int, k: int, orthonormal: bool = True,
                          factor: float = DEFAULT_RERANK_FACTOR, metric: str = "l2", two_level: bool = False) -> int:
    """First fast-scan search: the larger of building faiss's copies and the search.

    Building hands faiss the packed codes 65,536 rows at a time (a contiguous copy
    of their first ``rank`` codes; for two-level codes also their unpacked codes and
    the re-rank's bytes; faiss's own memory is outside tracemalloc's view and counted
    in ``fastscan_bytes``). ``factor * k`` candidates per query. Where faiss re-ranks
    (an orthonormal factor, :class:`fastscan.FastScanScorer`) the search holds the
    queries' latent rows, faiss's (nq, factor k) scores and ids and the results: a
    non-negative least-squares fit to 10 measured l2 and ip shapes (n 50,000-80,000, dim 64
    and 128, rank 16-48, 100-1,000 queries, k 10-100; refitted when the re-rank's results
    became views of faiss's arrays), raised 2.6 % to bound them all (over by 1-11 %); cosine
    first computes the rows' norms (kept: 4 bytes a row) from decoded blocks, about 13.4
    bytes per decoded entry (five measured shapes: over by 1-12 %, 62 % on one with
    2,000 queries). Otherwise (another factor) it re-ranks up to 256 queries at a time
    (:func:`blas.rerank_chunk`), decoding their candidates (about 8 bytes per candidate
    code with the Gram product): a least-squares fit to measured shapes, raised to bound
    them all.
    """
    block = min(n, 1 << 16)
    build = block * ((rank + 1) // 2) + (block * 3 * rank if two_level else 0)
    kc = min(n, int(factor * k))
    if orthonormal:
        search = 1.026 * (14.48 * nq * kc + 3.86 * nq * rank + 16.5e3)
        if metric == "cosine":  # the rows' norms (kept), computed first from decoded blocks
            search = 4 * n + max(search, 13.4 * min(n, blas.BLOCK_ROWS) * rank)
    else:
        chunk = min(nq, blas.chunk_for(4 * kc * rank))
        search = 7.988 * chunk * kc * rank + 9.21 * nq * kc + 0.93e6
    return int(max(build, search))


def factored_search_peak(n: int, dim: int, rank: int, bits_l: int, nq: int, k: int, metric: str) -> int:
    """First factored search: the BLAS scan over the first canonical block.

    Held: the row norms (l2, cosine), the query projections, the decoded block
    (``B x (width + 1)`` floats), the (chunk, B) scores and their comparison
    (about 5 bytes a score); then the streaming top-k gathers every score above
    each query's running k-th best: in the first block about ``k / c0`` of the
    ``B - c0`` scores after the ``c0`` that seed the threshold (random order;
    about 42 bytes a hit), into a buffer as wide as the largest count per query
    (the fraction is Beta-distributed: the largest of ``nq`` is about
    ``1 + sqrt(2 ln nq / k)`` times the mean; about 17 bytes a slot).
    """
    from .search.blas import QUERY_CHUNK, _decoded_width

    B = min(n, blas.BLOCK_ROWS)
    nqc = min(nq, QUERY_CHUNK)
    w = _decoded_width(bits_l, rank)
    c0 = min(B, max(4 * k, 256))
    mean_hits = (B - c0) * min(1.0, k / c0)
    widest = mean_hits * (1 + np.sqrt(2 * np.log(max(nqc, 2)) / k))
    held = (n * 4 if metric != "ip" else 0) + nq * (w + 1) * 4 + B * (w + 1) * 4 + nq * dim * 4
    scan = 5.259 * nqc * B + 41.63 * nqc * mean_hits + 17.23 * nqc * widest - 9.35e4
    return int(held + max(scan, 4.0 * nqc * B))
