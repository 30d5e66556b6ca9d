"""Every parameter of an index, defaulted and validated in one place.

:class:`IndexSettings` is the one definition of the index's parameters: their
defaults (also in :data:`DEFAULTS`), their checks (run when an instance is
made, with the messages of :mod:`lplr_index._validation`) and their round trip
through the ``"settings"`` object of the file header. The index, the
scikit-learn classifier and the command line all read their defaults here
instead of copying the literals.

Adding a parameter is adding a field with its default, a line in
``__post_init__`` that checks it and, if it is written to files, a new format
version whose entry in :data:`HEADER_KEYS` lists it (with the value older
files mean in :data:`VERSION_DEFAULTS`): :meth:`IndexSettings.from_header`
checks a file's settings against the keys its version always wrote.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Mapping

from ._common import METRICS
from ._validation import (
    check_bits,
    check_choice,
    check_int,
    check_positive_float,
    check_seed,
)
from .quantize import SCHEMES
from .train import FACTORS

__all__ = ["IndexSettings", "DEFAULTS", "DEFAULT_BITS_PER_COORDINATE", "METRICS", "SCHEMES"]

#: Budget (bits per coordinate) used by front ends that need one when the user
#: gives neither a budget nor a rank (the scikit-learn classifier). The index
#: itself has no default budget: it asks for exactly one of the two.
DEFAULT_BITS_PER_COORDINATE = 1.0

#: How vectors become codes (see ``IndexSettings.codec``).
CODECS = ("auto", "vq", "scalar")

#: Highest number of coarse lists (``nlist``) accepted.
MAX_NLIST = 1 << 20

#: Highest number of refinement rounds accepted.
MAX_REFINE_ITERS = 100

#: Highest dimension accepted: directions are stored as int32 (``vq_dirs``, ``vq_groups``)
#: and faiss takes dimensions as a C int.
MAX_DIM = 2**31 - 1

#: Highest budget accepted, in bits per coordinate. The largest any file needs is far
#: below (one vector of dimension 1 with a user id: about 9,000, nearly all of it the
#: header), and it keeps ``budget * n * dim`` finite for any data.
MAX_BITS_PER_COORDINATE = 1e6

_V1_KEYS = ("bits_l", "bits_per_coordinate", "bits_r", "dim", "metric", "quantizer", "rank", "refine_iters", "seed")
#: Keys of the ``"settings"`` header object that every writer of a format version wrote:
#: version 1 (0.1.0) nine, version 2 (0.2.0) added ``factor``, version 3 (0.3.0) ``codec``;
#: version 4 (0.4.0) has the same keys as 3; version 5 (partitioned search) added ``nlist``; version 6
#: (the measured re-rank depth, a key of the header itself) has the same keys as 5. A file of that
#: version lacking one is damaged.
HEADER_KEYS: dict[int, tuple[str, ...]] = {
    1: _V1_KEYS,
    2: _V1_KEYS + ("factor",),
    3: _V1_KEYS + ("factor", "codec"),
    4: _V1_KEYS + ("factor", "codec"),
    5: _V1_KEYS + ("factor", "codec", "nlist"),
    6: _V1_KEYS + ("factor", "codec", "nlist"),
}
#: Keys a version's file may hold without every writer writing them: since 0.2.0 a
#: re-saved version-1 index (which keeps its layout) carries ``factor``.
OPTIONAL_HEADER_KEYS: dict[int, tuple[str, ...]] = {1: ("factor",)}
#: Values of the settings a format version did not have: version 1 held only the
#: paper's uncentred least-squares factor, versions 1 and 2 only the scalar codes.
VERSION_DEFAULTS: dict[int, dict[str, Any]] = {1: {"factor": "lstsq", "codec": "scalar"}, 2: {"codec": "scalar"}}
_INT, _NUMBER, _STR = ((int,), "an integer"), ((int, float), "a number"), ((str,), "a string")
#: JSON type of each header key: (Python types, words) and whether null is allowed
#: (``bool`` is never an integer here).
_HEADER_TYPES: dict[str, tuple[tuple[tuple[type, ...], str], bool]] = {
    "dim": (_INT, False), "bits_per_coordinate": (_NUMBER, True), "rank": (_INT, False),
    "bits_l": (_INT, True), "bits_r": (_INT, False), "metric": (_STR, False), "quantizer": (_STR, False),
    "refine_iters": (_INT, False), "seed": (_INT, False), "factor": (_STR, False), "codec": (_STR, False),
    "nlist": (((int, str), "an integer or a string"), True),
}


@dataclass(frozen=True)
class IndexSettings:
    """The settings of an :class:`~lplr_index.LPLRIndex`, checked when made.

    Making an instance validates every field and stores it normalised
    (``bits_per_coordinate`` as a float, the integers as ``int``); an invalid
    value raises ``TypeError`` or ``ValueError`` naming the parameter, what is
    allowed and what was given. Instances are frozen: use
    :func:`dataclasses.replace` to change a field (which validates again).

    Parameters
    ----------
    dim : int
        Dimension of the vectors, 1 to ``2**31 - 1``.
    bits_per_coordinate : float, default=None
        Storage budget in bits per stored coordinate, > 0 and at most 10^6
        (:data:`MAX_BITS_PER_COORDINATE`). Give this or ``rank``, not both.
    rank : int, default=None
        Explicit rank, 1 to ``dim``.
    bits_l : int, default=None
        Bits of each per-vector code, 1 to 8; None lets the index choose
        (see :attr:`bits_l_used`).
    bits_r : int, default=8
        Bits of each entry of the shared factor, 1 to 8.
    metric : {"l2", "ip", "cosine"}, default="l2"
    quantizer : {"minmax", "minmax-col", "mse-col"}, default="mse-col"
    refine_iters : int, default=2
        Alternating refinement rounds, 0 to 100.
    seed : int, default=0
        Seed of the sketch, >= 0 (None is refused: the sketch is regenerated
        from it when a file is loaded).
    factor : {"orthonormal", "lstsq"}, default="orthonormal"
        Form of the shared factor (see :mod:`lplr_index.train`): an orthonormal,
        randomly rotated basis of the LPLR subspace with centred vectors (what
        fast-scan search needs), or the paper's least-squares factor.
        Used by the scalar codec.
    codec : {"auto", "vq", "scalar"}, default="auto"
        How vectors become codes. ``"vq"`` (:mod:`lplr_index.vq`): rates that
        follow the spectrum, groups of principal (or randomly rotated)
        directions sharing 4-bit k-means codes (or, for the strongest, two:
        coarse and fine), the design chosen at build time
        by its recall on a sample; with ``rank``, one 4-bit code on each of the
        top ``rank`` principal directions. ``"scalar"``: the paper's LPLR with
        one ``bits_l``-bit code per latent direction (:mod:`lplr_index.train`).
        ``"auto"`` is ``"vq"`` with a budget, unless ``bits_l`` (other than 4)
        or ``factor="lstsq"`` asks for the scalar codes; with a rank it is
        ``"scalar"`` (the paper's settings). See :attr:`codec_used`; at 6
        bits per coordinate and more the index also tries the scalar 8-bit
        codes on a sample and keeps the better.
    nlist : int, "auto" or None, default=None
        Partitioned search (:mod:`lplr_index.search.ivf`): the number of coarse
        lists, 1 to 2^20, trained at build time; ``"auto"`` chooses it from the
        rows built on (no partition below
        :data:`lplr_index.index.AUTO_NLIST_MIN_ROWS`, else
        :func:`lplr_index.search.ivf.default_nlist`); None: exhaustive search.
        Needs 4-bit codes.

    Examples
    --------
    >>> s = IndexSettings(64, bits_per_coordinate=1)
    >>> s.bits_per_coordinate, s.bits_l_used, s.metric
    (1.0, 4, 'l2')
    >>> IndexSettings.from_header(s.to_header()) == s
    True
    >>> IndexSettings(64, rank=100)
    Traceback (most recent call last):
    ...
    ValueError: rank must be an integer in [1, 64], got 100
    """

    dim: int
    bits_per_coordinate: float | None = None
    rank: int | None = None
    bits_l: int | None = None
    bits_r: int = 8
    metric: str = "l2"
    quantizer: str = "mse-col"
    refine_iters: int = 2
    seed: int = 0
    factor: str = "orthonormal"
    codec: str = "auto"
    nlist: int | str | None = None

    def __post_init__(self) -> None:
        # Same order and messages as LPLRIndex.__init__ had, so errors do not change.
        dim = check_int(self.dim, "dim", low=1, high=MAX_DIM)
        if (self.bits_per_coordinate is None) == (self.rank is None):
            raise ValueError(
                "give exactly one of bits_per_coordinate (a storage budget) or rank, got "
                f"bits_per_coordinate={self.bits_per_coordinate!r} and rank={self.rank!r}"
            )
        budget = (
            None
            if self.bits_per_coordinate is None
            else check_positive_float(self.bits_per_coordinate, "bits_per_coordinate", high=MAX_BITS_PER_COORDINATE)
        )
        rank = None if self.rank is None else check_int(self.rank, "rank", low=1, high=dim)
        bits_l = None if self.bits_l is None else check_bits(self.bits_l, "bits_l")
        refine_iters = check_int(self.refine_iters, "refine_iters", low=0, high=MAX_REFINE_ITERS)
        bits_r = check_bits(self.bits_r, "bits_r")
        metric = check_choice(self.metric, "metric", METRICS)
        quantizer = check_choice(self.quantizer, "quantizer", SCHEMES)
        factor = check_choice(self.factor, "factor", FACTORS)
        codec = check_choice(self.codec, "codec", CODECS)
        if codec == "vq" and bits_l not in (None, 4):
            raise ValueError(f"codec='vq' stores 4-bit codes: bits_l must be None or 4, got bits_l={bits_l}")
        if codec == "vq" and factor != "orthonormal":
            raise ValueError(f"codec='vq' uses an orthonormal basis: factor must be 'orthonormal', got {factor!r}")
        nlist = self.nlist
        if nlist is not None:
            if isinstance(nlist, str):
                if nlist != "auto":
                    raise ValueError(f"nlist must be None, 'auto' or an integer in [1, {MAX_NLIST}], got {nlist!r}")
            else:
                nlist = check_int(nlist, "nlist", low=1, high=MAX_NLIST)
            four = codec == "vq" or bits_l == 4 or (bits_l is None and dataclasses.replace(
                self, nlist=None).bits_l_used == 4)
            if not four:
                raise ValueError(f"nlist={nlist!r} (partitioned search) needs 4-bit codes, these settings give "
                                 f"{bits_l or dataclasses.replace(self, nlist=None).bits_l_used}-bit codes "
                                 "(use bits_l=4, a budget of at most 2 bits per coordinate, or nlist=None)")
        seed = check_seed(self.seed)
        if seed is None:
            raise ValueError("seed must be an integer >= 0 (the sketch is regenerated from it), got None")
        for name, value in (
            ("dim", dim),
            ("bits_per_coordinate", budget),
            ("rank", rank),
            ("bits_l", bits_l),
            ("refine_iters", refine_iters),
            ("bits_r", bits_r),
            ("metric", metric),
            ("quantizer", quantizer),
            ("seed", seed),
            ("factor", factor),
            ("codec", codec),
            ("nlist", nlist),
        ):
            object.__setattr__(self, name, value)

    # ------------------------------------------------------------ derived
    @property
    def codec_used(self) -> str:
        """``codec``, or the index's choice for ``"auto"``: ``"vq"`` with a budget,
        ``bits_l`` None or 4 and the orthonormal factor; otherwise ``"scalar"``."""
        if self.codec != "auto":
            return self.codec
        vq = self.bits_per_coordinate is not None and self.bits_l in (None, 4) and self.factor == "orthonormal"
        return "vq" if vq else "scalar"

    @property
    def bits_l_used(self) -> int:
        """``bits_l``, or the index's choice when it is None.

        Grouped codes (:attr:`codec_used` ``"vq"``): 4. Scalar codes with a
        budget ``B``: ``min(8, max(4, ceil(2 B)))``, which keeps the rank
        near ``dim / 4 .. dim / 2``; with an explicit rank: 8 (the paper's).
        """
        if self.bits_l is not None:
            return self.bits_l
        if self.codec_used == "vq":
            return 4
        if self.bits_per_coordinate is None:
            return 8
        return int(min(8, max(4, math.ceil(2 * self.bits_per_coordinate))))

    # ------------------------------------------------------------- header
    def to_header(self, *, rank: int | None = None) -> dict[str, Any]:
        """The ``"settings"`` object of the file header (JSON-ready, fixed key order).

        Parameters
        ----------
        rank : int, default=None
            Rank the index was built with, written in place of the setting
            (an index built from a budget records the rank the budget gave).

        Returns
        -------
        dict
            One entry per field, in field order.
        """
        header = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if header["nlist"] is None:  # format version 5 wrote it for partitioned indexes only (6: always)
            header.pop("nlist")
        if rank is not None:
            header["rank"] = check_int(rank, "rank", low=1, high=self.dim)
        return header

    @classmethod
    def from_header(cls, header: Mapping[str, Any], version: int | None = None) -> "IndexSettings":
        """Settings from the ``"settings"`` object of a file header, validated.

        With the file's format ``version``, ``header`` must hold every key of
        :data:`HEADER_KEYS` for it, each of its JSON type, and no other (but
        :data:`OPTIONAL_HEADER_KEYS`); only the settings that version did not
        have get values, those of :data:`VERSION_DEFAULTS`. Without a version,
        fields missing from ``header`` get their defaults. When the header holds a
        budget, its ``rank`` is the rank the budget gave at build time, not a
        setting, and is dropped.

        Raises
        ------
        ValueError
            ``header`` is not a mapping, lacks ``dim`` (or, with ``version``, any key
            that version always wrote), holds names that are not settings (a newer
            library wrote it) or that the version never wrote, holds a value of the
            wrong JSON type (with ``version``), or holds an invalid value.
        TypeError
            A value has the wrong type (without ``version``).
        """
        if not isinstance(header, Mapping):
            raise ValueError(f"settings must be a JSON object, got {type(header).__name__}")
        if version is not None:
            header = _checked_header_keys(header, version)
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(header) - set(names))
        if unknown:
            raise ValueError(
                f"settings hold unknown names {unknown} (known: {names}); "
                "a newer version of lplr-index may have written them"
            )
        if "dim" not in header:
            raise ValueError("settings lack 'dim'")
        values = dict(header)
        if values.get("bits_per_coordinate") is not None:
            values["rank"] = None
        return cls(**values)


def _checked_header_keys(header: Mapping[str, Any], version: int) -> dict[str, Any]:
    """``header`` checked against the keys and JSON types format ``version`` wrote, with the
    :data:`VERSION_DEFAULTS` of the settings that version did not have."""
    if version not in HEADER_KEYS:
        raise ValueError(f"format version must be one of {sorted(HEADER_KEYS)}, got {version!r}")
    written, optional = HEADER_KEYS[version], OPTIONAL_HEADER_KEYS.get(version, ())
    missing = [k for k in written if k not in header]
    if missing:
        raise ValueError(f"settings lack {', '.join(map(repr, missing))}, which every version-{version} "
                         "file holds")
    unknown = sorted(set(header) - set(written) - set(optional))
    if unknown:
        known = sorted(set(written) | set(optional))
        raise ValueError(f"settings hold {', '.join(map(repr, unknown))}, which a version-{version} file "
                         f"cannot hold (its keys: {', '.join(known)})")
    for key in sorted(header):
        value, ((types, words), nullable) = header[key], _HEADER_TYPES[key]
        if not ((value is None and nullable) or (isinstance(value, types) and not isinstance(value, bool))):
            raise ValueError(f"settings key {key!r} must be {words}{' or null' if nullable else ''}, "
                             f"got {value!r:.60} ({type(value).__name__})")
    return {**VERSION_DEFAULTS.get(version, {}), **header}


#: name -> default of every optional setting (everything but ``dim``).
DEFAULTS: dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(IndexSettings)
    if f.default is not dataclasses.MISSING
}
