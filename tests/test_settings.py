"""IndexSettings: the one place where index parameters are defaulted and validated."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from lplr_index import LPLRIndex
from lplr_index.fileformat import read_container
from lplr_index.settings import DEFAULT_BITS_PER_COORDINATE, DEFAULTS, IndexSettings

pytestmark = pytest.mark.usefixtures("blas_single_thread")


def test_defaults_are_the_fields_defaults_and_the_index_signature():
    fields = {f.name: f.default for f in dataclasses.fields(IndexSettings) if f.name != "dim"}
    assert DEFAULTS == fields
    assert DEFAULTS == {
        "bits_per_coordinate": None, "rank": None, "bits_l": None, "bits_r": 8,
        "metric": "l2", "quantizer": "mse-col", "refine_iters": 2, "seed": 0, "factor": "orthonormal",
        "codec": "auto",
    }
    params = inspect.signature(LPLRIndex.__init__).parameters
    index_defaults = {name: p.default for name, p in params.items() if name in DEFAULTS}
    assert index_defaults == {name: DEFAULTS[name] for name in index_defaults}
    assert DEFAULT_BITS_PER_COORDINATE > 0


#: id -> (keyword arguments, exception type); dim=16 unless given
INVALID = {
    "dim-zero": (dict(dim=0, rank=1), ValueError),
    "dim-float": (dict(dim=16.0, rank=1), TypeError),
    "dim-bool": (dict(dim=True, rank=1), TypeError),
    "neither-budget-nor-rank": (dict(), ValueError),
    "both-budget-and-rank": (dict(bits_per_coordinate=1.0, rank=4), ValueError),
    "budget-zero": (dict(bits_per_coordinate=0), ValueError),
    "budget-negative": (dict(bits_per_coordinate=-1.0), ValueError),
    "budget-nan": (dict(bits_per_coordinate=float("nan")), ValueError),
    "budget-inf": (dict(bits_per_coordinate=float("inf")), ValueError),
    "budget-string": (dict(bits_per_coordinate="1"), TypeError),
    "rank-zero": (dict(rank=0), ValueError),
    "rank-above-dim": (dict(rank=17), ValueError),
    "rank-float": (dict(rank=2.0), TypeError),
    "bits_l-zero": (dict(rank=4, bits_l=0), ValueError),
    "bits_l-nine": (dict(rank=4, bits_l=9), ValueError),
    "bits_r-zero": (dict(rank=4, bits_r=0), ValueError),
    "bits_r-none": (dict(rank=4, bits_r=None), TypeError),
    "metric-unknown": (dict(rank=4, metric="manhattan"), ValueError),
    "quantizer-unknown": (dict(rank=4, quantizer="lloyd"), ValueError),
    "refine_iters-negative": (dict(rank=4, refine_iters=-1), ValueError),
    "refine_iters-huge": (dict(rank=4, refine_iters=101), ValueError),
    "seed-negative": (dict(rank=4, seed=-1), ValueError),
    "seed-none": (dict(rank=4, seed=None), ValueError),
    "seed-float": (dict(rank=4, seed=1.5), TypeError),
    "codec-unknown": (dict(rank=4, codec="pq"), ValueError),
    "codec-vq-with-8-bit": (dict(bits_per_coordinate=1.0, bits_l=8, codec="vq"), ValueError),
    "codec-vq-with-lstsq": (dict(bits_per_coordinate=1.0, factor="lstsq", codec="vq"), ValueError),
}


@pytest.mark.parametrize("case", INVALID, ids=str)
def test_invalid_settings_raise_the_index_error(case):
    kwargs, exc_type = INVALID[case]
    kwargs = {"dim": 16, **kwargs}
    with pytest.raises(exc_type) as from_settings:
        IndexSettings(**kwargs)
    dim = kwargs.pop("dim")
    with pytest.raises(exc_type) as from_index:
        LPLRIndex(dim, **kwargs)
    assert str(from_settings.value) == str(from_index.value)  # one message, wherever it is raised
    name = {"budget": "bits_per_coordinate"}.get(case.split("-")[0], case.split("-")[0])
    if name not in ("neither", "both"):
        assert str(from_settings.value).startswith(name)


def test_values_are_normalised():
    s = IndexSettings(np.int64(16), bits_per_coordinate=np.float32(2), bits_r=np.uint8(4), seed=np.int32(3))
    assert (type(s.dim), type(s.bits_per_coordinate), type(s.bits_r), type(s.seed)) == (int, float, int, int)
    assert (s.dim, s.bits_per_coordinate, s.bits_r, s.seed) == (16, 2.0, 4, 3)


def test_frozen_and_replace_validates():
    s = IndexSettings(16, rank=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.rank = 5
    assert dataclasses.replace(s, rank=5).rank == 5
    with pytest.raises(ValueError, match=r"rank must be an integer in \[1, 16\], got 17"):
        dataclasses.replace(s, rank=17)


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        (dict(rank=4), 8),
        (dict(rank=4, bits_l=3), 3),
        (dict(bits_per_coordinate=0.5), 4),
        (dict(bits_per_coordinate=2.5), 4),  # grouped codes: always 4-bit
        (dict(bits_per_coordinate=2.5, codec="scalar"), 5),
        (dict(bits_per_coordinate=7.0, codec="scalar"), 8),
        (dict(bits_per_coordinate=1.0, bits_l=2), 2),
        (dict(rank=4, codec="vq"), 4),
    ],
    ids=["rank", "rank-bits_l", "budget-0.5", "budget-2.5", "scalar-budget-2.5", "scalar-budget-7", "budget-bits_l",
         "vq-rank"],
)
def test_bits_l_used_is_the_index_choice(kwargs, expected):
    assert IndexSettings(16, **kwargs).bits_l_used == expected
    assert LPLRIndex(16, **kwargs).bits_l == expected


@pytest.mark.parametrize(
    "kwargs",
    [dict(bits_per_coordinate=2), dict(rank=3, bits_l=4, metric="cosine", quantizer="minmax", refine_iters=0, seed=7)],
    ids=["budget", "rank"],
)
def test_header_round_trip_matches_a_saved_index(tmp_path, small_embeddings, kwargs):
    s = IndexSettings(32, **kwargs)
    assert IndexSettings.from_header(s.to_header()) == s
    index = LPLRIndex(32, **kwargs).build(small_embeddings[:300])
    index.save(tmp_path / "i.lplr")
    header = read_container(tmp_path / "i.lplr").header
    written = header["settings"]
    assert written == s.to_header(rank=index.rank)
    assert IndexSettings.from_header(written) == s  # the budget's rank is not a setting


def test_from_header_defaults_missing_fields_and_rejects_the_rest():
    assert IndexSettings.from_header({"dim": 8, "rank": 2}) == IndexSettings(8, rank=2)
    with pytest.raises(ValueError, match=r"unknown names \['flavour'\]"):
        IndexSettings.from_header({"dim": 8, "rank": 2, "flavour": "x"})
    with pytest.raises(ValueError, match="lack 'dim'"):
        IndexSettings.from_header({"rank": 2})
    with pytest.raises(ValueError, match="JSON object, got list"):
        IndexSettings.from_header([8, 2])
    with pytest.raises(ValueError, match="rank must be an integer"):
        IndexSettings.from_header({"dim": 8, "rank": 9})


def test_to_header_checks_the_built_rank():
    s = IndexSettings(8, bits_per_coordinate=1)
    assert s.to_header(rank=3)["rank"] == 3
    assert s.to_header()["rank"] is None
    with pytest.raises(ValueError, match="rank"):
        s.to_header(rank=9)
