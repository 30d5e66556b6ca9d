"""IndexSettings: the one place where index parameters are defaulted and validated."""

from __future__ import annotations

import dataclasses
import inspect
import re

import numpy as np
import pytest

from lplr_index import LPLRIndex
from lplr_index.fileformat import FORMAT_VERSION, SUPPORTED_VERSIONS, read_container
from lplr_index.settings import (
    DEFAULT_BITS_PER_COORDINATE,
    DEFAULTS,
    HEADER_KEYS,
    MAX_BITS_PER_COORDINATE,
    VERSION_DEFAULTS,
    IndexSettings,
)

pytestmark = pytest.mark.usefixtures("blas_single_thread")


def test_defaults_are_the_fields_defaults_and_the_index_signature():
    fields = {f.name: f.default for f in dataclasses.fields(IndexSettings) if f.name != "dim"}
    assert DEFAULTS == fields
    assert DEFAULTS == {
        "bits_per_coordinate": None, "rank": None, "bits_l": None, "bits_r": 8,
        "metric": "l2", "quantizer": "mse-col", "refine_iters": 2, "seed": 0, "factor": "orthonormal",
        "codec": "auto", "nlist": None,
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
    # format version 6 writes nlist for every index (null: exhaustive)
    assert written == {"nlist": None, **s.to_header(rank=index.rank)}
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


def test_from_header_with_a_version_wants_every_key_that_version_wrote():
    s = IndexSettings(8, bits_per_coordinate=2, metric="cosine", seed=5)
    header = s.to_header(rank=3)
    assert IndexSettings.from_header(header, version=4) == s
    for key in header:  # 0.8.0 gave a missing metric or seed its default
        with pytest.raises(ValueError, match=rf"settings lack '{key}', which every version-4 file holds"):
            IndexSettings.from_header({k: v for k, v in header.items() if k != key}, version=4)
    two = {k: v for k, v in header.items() if k not in ("metric", "seed")}
    with pytest.raises(ValueError, match="settings lack 'metric', 'seed'"):
        IndexSettings.from_header(two, version=4)
    with pytest.raises(ValueError, match=r"settings hold 'codec', which a version-2 file cannot hold \(its keys: "):
        IndexSettings.from_header(header, version=2)
    v1 = {k: v for k, v in header.items() if k not in ("codec", "factor")}
    assert IndexSettings.from_header(v1, version=1) == dataclasses.replace(s, factor="lstsq", codec="scalar")
    with pytest.raises(ValueError, match="format version must be one of"):
        IndexSettings.from_header(header, version=9)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [("dim", 8.0, "must be an integer, got 8.0 (float)"), ("dim", True, "must be an integer, got True (bool)"),
     ("rank", None, "must be an integer, got None"), ("bits_l", "4", "must be an integer or null, got '4' (str)"),
     ("bits_per_coordinate", "2", "must be a number or null, got '2' (str)"),
     ("bits_per_coordinate", False, "must be a number or null, got False (bool)"),
     ("metric", 2, "must be a string, got 2 (int)"), ("seed", [0], "must be an integer, got [0] (list)"),
     ("codec", None, "must be a string, got None (NoneType)")],
)
def test_from_header_with_a_version_checks_the_json_types(key, value, words):
    header = IndexSettings(8, bits_per_coordinate=2).to_header(rank=3)
    with pytest.raises(ValueError, match=re.escape(f"settings key {key!r} {words}")):
        IndexSettings.from_header({**header, key: value}, version=4)
    assert IndexSettings.from_header({**header, "bits_per_coordinate": 2}, version=4).bits_per_coordinate == 2.0


def test_the_newest_version_writes_every_setting():
    fields = [f.name for f in dataclasses.fields(IndexSettings)]
    assert sorted(HEADER_KEYS[FORMAT_VERSION]) == sorted(fields)
    assert sorted(HEADER_KEYS) == sorted(SUPPORTED_VERSIONS)
    for version, defaults in VERSION_DEFAULTS.items():  # defaults only for keys that version lacked
        assert not set(defaults) & set(HEADER_KEYS[version])


def test_budget_range_is_checked_with_the_range_in_the_message():
    assert IndexSettings(8, bits_per_coordinate=MAX_BITS_PER_COORDINATE).bits_per_coordinate == 1e6
    for bad in (1e308, float("inf"), 2e6, 10**400, 0, -1e-9):
        with pytest.raises(ValueError, match=r"bits_per_coordinate must be a finite number > 0 and <= 1e\+06, got "):
            IndexSettings(8, bits_per_coordinate=bad)
    # 0.8.0: accepted, then the choice of bits_l overflowed (cannot convert float infinity to integer)
    assert IndexSettings(8, bits_per_coordinate=1e6, codec="scalar").bits_l_used == 8
