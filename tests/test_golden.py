"""Frozen files of every format version stay loadable and answer as when written.

``tests/data/format_v1/`` holds version-1 files written by lplr-index 0.1.0 and
what that library returned for them (see its README.md); ``format_v2/`` the same for
version 2 (0.2.0), ``format_v3/`` for version 3 (0.3.0: the grouped ``vq`` codes in
both bases, and the scalar codes) and ``format_v4/`` for version 4 (0.4.0: two-level
grouped codes). They are never rewritten.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from lplr_index import IndexFileError, LPLRIndex
from lplr_index.fileformat import FORMAT_VERSION, container_to_bytes, read_container
from lplr_index.settings import HEADER_KEYS, IndexSettings

V1 = Path(__file__).parent / "data" / "format_v1"
CASES = sorted(p.stem for p in V1.glob("*.lplr"))


def assert_answers_as_written(D, I, De, Ie, mode, index=None, Q=None):
    """Distances as written; ids too, except among results whose distances tie (the added
    copies of the first vectors tie with them under cosine) and, given the ``index`` and
    its queries ``Q``, where the id returned and the id written score the same (a tie at
    the last place with a vector past it, as codes of a low rank often make)."""
    np.testing.assert_allclose(D, De, rtol=1e-4, atol=1e-4)
    ties = (np.abs(De[:, :, None] - De[:, None, :]) < 1e-5).sum(axis=2) > 1
    differ = (I != Ie) & ~ties
    if index is not None and differ.any():
        q, _ = np.nonzero(differ)
        got, written = (index.reconstruct(ids).astype(np.float64) for ids in (I[differ], Ie[differ]))
        Qd = Q[q].astype(np.float64)
        if index.metric == "cosine":
            Qd, got, written = (A / np.linalg.norm(A, axis=1, keepdims=True) for A in (Qd, got, written))
        if index.metric == "l2":
            s_got, s_written = ((Qd - got) ** 2).sum(1), ((Qd - written) ** 2).sum(1)
        else:
            s_got, s_written = (Qd * got).sum(1), (Qd * written).sum(1)
        np.testing.assert_allclose(s_got, s_written, rtol=1e-4, atol=1e-4, err_msg=mode)
        return
    assert not differ.any(), mode


def load_frozen(folder, name, version, mmap):
    """The frozen file's container (checked to be of ``version``) and the index loaded from it."""
    path = folder / f"{name}.lplr"
    container = read_container(path)
    assert container.version == version
    return container, LPLRIndex.load(path, mmap=mmap)


def resaved(path, tmp_path):
    """The frozen file and its re-save by today's library: same version, settings and arrays."""
    LPLRIndex.load(path).save(tmp_path / "again.lplr")
    old, new = read_container(path), read_container(tmp_path / "again.lplr")
    assert new.version == old.version and sorted(new.arrays) == sorted(old.arrays)
    assert new.header["settings"] == old.header["settings"]
    for key, arr in old.arrays.items():
        assert new.arrays[key].dtype == arr.dtype, key
        np.testing.assert_array_equal(new.arrays[key], arr)
    return old, new


def assert_searches_as_written(index, folder, name):
    """Live ids, reconstruction and the 5-NN of the folder's queries in both modes as the writer's."""
    expected = np.load(folder / f"{name}.expected.npz")
    Q = np.load(folder / "queries.npy")
    np.testing.assert_array_equal(index.live_ids, expected["ids"])
    np.testing.assert_allclose(index.reconstruct(expected["ids"][:40]), expected["reconstruction"],
                               rtol=1e-5, atol=1e-5)
    for mode, key in (("auto", ""), ("factored", "factored_")):
        D, I = index.search(Q, 5, mode=mode)
        assert_answers_as_written(D, I, expected[f"{key}distances"], expected[f"{key}indices"], mode, index, Q)


def test_the_frozen_files_are_there():
    assert CASES == ["cosine_b4", "ip_b2", "l2_b2", "paper_rank8"]


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_version_1_files_load_and_search_as_written(name, mmap):
    path = V1 / f"{name}.lplr"
    assert read_container(path).version == 1
    index = LPLRIndex.load(path, mmap=mmap)
    assert index.factor == "lstsq" and index.ntotal == 2005
    expected = np.load(V1 / f"{name}.expected.npz")
    Q = np.load(V1 / "queries.npy")
    np.testing.assert_allclose(index.reconstruct(np.arange(40)), expected["reconstruction"], rtol=1e-5, atol=1e-5)
    for mode in ("auto", "factored", "reconstructed"):
        D, I = index.search(Q, 5, mode=mode)
        assert_answers_as_written(D, I, expected["distances"], expected["indices"], mode)
        assert (np.sort(I, axis=1) == np.sort(expected["indices"], axis=1)).mean() > 0.9


@pytest.mark.parametrize("name", CASES)
def test_version_1_index_resaved_keeps_its_layout_and_arrays(name, tmp_path):
    path = V1 / f"{name}.lplr"
    LPLRIndex.load(path).save(tmp_path / "again.lplr")
    old, new = read_container(path), read_container(tmp_path / "again.lplr")
    assert new.version == 1 and sorted(new.arrays) == sorted(old.arrays)
    for key, arr in old.arrays.items():
        np.testing.assert_array_equal(new.arrays[key], arr)
    assert new.header["settings"] == {**old.header["settings"], "factor": "lstsq"}


def test_version_1_index_accepts_added_vectors(tmp_path):
    index = LPLRIndex.load(V1 / "l2_b2.lplr")
    Q = np.load(V1 / "queries.npy")
    index.add(Q)
    _, I = index.search(Q, 1)
    # each query is vector i plus noise: it finds itself (added as 2005 + i) or vector i
    assert np.isin(I[:, 0] - np.arange(12), [0, 2005]).all()
    index.save(tmp_path / "more.lplr")
    assert LPLRIndex.load(tmp_path / "more.lplr").ntotal == 2017


# ------------------------------------------------------------------ version 2
V2 = Path(__file__).parent / "data" / "format_v2"
CASES_V2 = sorted(p.stem for p in V2.glob("*.lplr"))


def test_the_frozen_version_2_files_are_there():
    assert CASES_V2 == ["cosine_b4", "ip_b1_ids", "l2_b2", "lstsq_rank8"]


@pytest.mark.parametrize("name", CASES_V2)
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_version_2_files_load_and_search_as_written(name, mmap):
    path = V2 / f"{name}.lplr"
    assert read_container(path).version == 2
    index = LPLRIndex.load(path, mmap=mmap)
    assert index.codec == "scalar" and index.settings.codec == "scalar"
    assert_searches_as_written(index, V2, name)


@pytest.mark.parametrize("name", CASES_V2)
def test_version_2_index_resaved_keeps_its_layout(name, tmp_path):
    old, new = resaved(V2 / f"{name}.lplr", tmp_path)
    assert new.version == 2 and "codec" not in new.header["settings"]  # version 2 had none


# ------------------------------------------------------------------ version 3
V3 = Path(__file__).parent / "data" / "format_v3"
CASES_V3 = sorted(p.stem for p in V3.glob("*.lplr"))
#: how each version-3 file codes a vector (``index.layout`` when it was written, see its README.md)
LAYOUTS_V3 = {
    "scalar_l2_b2": {"codec": "scalar", "encoder": "pinv", "rank": 14, "codes_per_vector": 14, "bits_per_code": 4},
    "vq_cosine_b4": {"codec": "vq", "encoder": "rotation", "rank": 31, "codes_per_vector": 30, "bits_per_code": 4,
                     "groups": [[1, 29], [2, 1]]},
    "vq_ip_b2_ids": {"codec": "vq", "encoder": "pca", "rank": 12, "codes_per_vector": 12, "bits_per_code": 4,
                     "groups": [[1, 12]]},
    "vq_l2_b1": {"codec": "vq", "encoder": "pca", "rank": 8, "codes_per_vector": 6, "bits_per_code": 4,
                 "groups": [[1, 4], [2, 2]]},
}
#: the arrays that hold each basis of the grouped codes: 8-bit basis codes (pca) or the
#: int32 directions of the seeded rotation
VQ_ARRAYS = {"pca": {"vq_groups", "vq_codebooks", "r_codes", "r_lo", "r_hi"},
             "rotation": {"vq_groups", "vq_codebooks", "vq_dirs"}}


def assert_layout_as_written(index, name):
    """``index.layout`` as when the file was written; of the groups only ``[size, count]``
    per class, what a version-3 file stores (later libraries may describe a class further)."""
    layout, written = dict(index.layout), dict(LAYOUTS_V3[name])
    assert index.codec == written["codec"]
    if "groups" in written:
        assert [g[:2] for g in layout.pop("groups")] == written.pop("groups")
    assert layout == written


def test_the_frozen_version_3_files_are_there():
    assert CASES_V3 == ["scalar_l2_b2", "vq_cosine_b4", "vq_ip_b2_ids", "vq_l2_b1"]
    assert CASES_V3 == sorted(LAYOUTS_V3)


@pytest.mark.parametrize("name", CASES_V3)
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_version_3_files_load_and_search_as_written(name, mmap):
    container, index = load_frozen(V3, name, 3, mmap)
    layout = LAYOUTS_V3[name]
    assert_layout_as_written(index, name)
    assert index.settings.codec == container.header["settings"]["codec"]
    if layout["codec"] == "vq":
        assert VQ_ARRAYS[layout["encoder"]] <= set(container.arrays)
        assert not ({"l_lo", "l_hi"} & set(container.arrays))
        assert container.arrays["vq_groups"].dtype == np.int32
        np.testing.assert_array_equal(container.arrays["vq_groups"], layout["groups"])
        if layout["encoder"] == "rotation":
            assert container.arrays["vq_dirs"].dtype == np.int32 and "r_codes" not in container.arrays
    assert_searches_as_written(index, V3, name)


@pytest.mark.parametrize("name", CASES_V3)
def test_version_3_index_resaved_keeps_its_layout(name, tmp_path):
    old, new = resaved(V3 / f"{name}.lplr", tmp_path)  # (codec "auto" stays "auto")
    assert new.version == 3
    # the rest of the header too (encoder, bits_l_used, fit_error, counts), but for the writer's version
    assert {**new.header, "library_version": None} == {**old.header, "library_version": None}


@pytest.mark.parametrize("name", ["scalar_l2_b2", "vq_cosine_b4", "vq_l2_b1"])
def test_version_3_index_accepts_added_vectors(name, tmp_path):
    index = LPLRIndex.load(V3 / f"{name}.lplr")
    Q = np.load(V3 / "queries.npy")
    index.add(Q)
    assert_layout_as_written(index, name)
    _, I = index.search(Q, 1)
    # each query is vector i plus noise: it finds itself (added as 2005 + i) or vector i
    assert np.isin(I[:, 0] - np.arange(12), [0, 2005]).all()
    index.save(tmp_path / "more.lplr")
    again = LPLRIndex.load(tmp_path / "more.lplr")
    assert again.ntotal == 2017
    assert_layout_as_written(again, name)


# ------------------------------------------------------------------ version 4
V4 = Path(__file__).parent / "data" / "format_v4"
CASES_V4 = sorted(p.stem for p in V4.glob("*.lplr"))
#: ``index.layout`` of each version-4 file when it was written (see its README.md)
LAYOUTS_V4 = {
    "scalar_l2_b4": {"codec": "scalar", "encoder": "pinv", "rank": 15, "codes_per_vector": 15, "bits_per_code": 8},
    "vq2_ip_b3_ids": {"codec": "vq", "encoder": "pca", "rank": 14, "codes_per_vector": 12, "bits_per_code": 4,
                      "groups": [[2, 5, 2], [4, 1, 2]]},
    "vq2_l2_b4": {"codec": "vq", "encoder": "pca", "rank": 21, "codes_per_vector": 21, "bits_per_code": 4,
                  "groups": [[1, 5, 2], [2, 4, 2], [4, 1, 2], [4, 1, 1]]},
    "vq_cosine_b1": {"codec": "vq", "encoder": "pca", "rank": 9, "codes_per_vector": 6, "bits_per_code": 4,
                     "groups": [[1, 3, 1], [2, 3, 1]]},
}


def test_the_frozen_version_4_files_are_there():
    assert CASES_V4 == sorted(LAYOUTS_V4) == ["scalar_l2_b4", "vq2_ip_b3_ids", "vq2_l2_b4", "vq_cosine_b1"]


@pytest.mark.parametrize("name", CASES_V4)
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_version_4_files_load_and_search_as_written(name, mmap):
    container, index = load_frozen(V4, name, 4, mmap)
    assert index.layout == LAYOUTS_V4[name]
    if index.codec == "vq":
        groups = container.arrays["vq_groups"]
        assert groups.dtype == np.int32 and groups.tolist() == LAYOUTS_V4[name]["groups"]  # levels stored
    assert_searches_as_written(index, V4, name)


@pytest.mark.parametrize("name", CASES_V4)
def test_version_4_index_resaved_keeps_its_layout(name, tmp_path):
    old, new = resaved(V4 / f"{name}.lplr", tmp_path)
    assert new.version == 4
    assert {**new.header, "library_version": None} == {**old.header, "library_version": None}


# ------------------------------------------------------------------ version 5
V5 = Path(__file__).parent / "data" / "format_v5"
CASES_V5 = sorted(p.stem for p in V5.glob("*.lplr"))
#: (nlist setting, lists stored, default nprobe) of each version-5 file (see its README.md)
IVF_V5 = {"auto_vq_l2_b1": ("auto", None, None), "ivf_scalar_ip_ids": (24, 24, 8),
          "ivf_vq_cosine_b2": (8, 8, 4), "ivf_vq_l2_b1": (16, 16, 4)}


def test_the_frozen_version_5_files_are_there():
    assert CASES_V5 == sorted(IVF_V5)


@pytest.mark.parametrize("name", CASES_V5)
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_version_5_files_load_and_search_as_written(name, mmap):
    container, index = load_frozen(V5, name, 5, mmap)
    assert (index.settings.nlist, index.nlist, index.nprobe) == IVF_V5[name]
    assert ("ivf_centroids" in container.arrays) == (index.nlist is not None)
    assert_searches_as_written(index, V5, name)
    expected = np.load(V5 / f"{name}.expected.npz")
    Q = np.load(V5 / "queries.npy")
    D, I = index.search(Q, 5, nprobe=2) if index.nlist else index.search(Q, 5)
    assert_answers_as_written(D, I, expected["nprobe2_distances"], expected["nprobe2_indices"], "nprobe=2", index, Q)


@pytest.mark.parametrize("name", CASES_V5)
def test_version_5_index_resaved_keeps_its_layout(name, tmp_path):
    old, new = resaved(V5 / f"{name}.lplr", tmp_path)
    assert new.version == 5
    assert {**new.header, "library_version": None} == {**old.header, "library_version": None}


def test_files_before_version_6_search_at_the_default_depth():
    # no measured depth: 4 candidates a result, 16 for two-level codes
    for path, factor in ((V5 / "ivf_vq_l2_b1.lplr", 4), (V4 / "vq2_l2_b4.lplr", 16), (V4 / "vq_cosine_b1.lplr", 4)):
        assert LPLRIndex.load(path).rerank_factor == factor, path


# ------------------------------------------------------------------ version 6
V6 = Path(__file__).parent / "data" / "format_v6"
CASES_V6 = sorted(p.stem for p in V6.glob("*.lplr"))
#: (nlist, default nprobe, rerank_factor) of each version-6 file (see its README.md)
FACTS_V6 = {"ivf_vq_l2_b1": (16, 4, 2), "scalar8_ip": (None, None, 4), "vq2_cosine_b4_ids": (None, None, 6),
            "vq_l2_b1": (None, None, 2)}


def test_the_frozen_version_6_files_are_there():
    assert CASES_V6 == sorted(FACTS_V6)


@pytest.mark.parametrize("name", CASES_V6)
@pytest.mark.parametrize("mmap", [False, True], ids=["read", "mmap"])
def test_version_6_files_load_and_search_as_written(name, mmap):
    container, index = load_frozen(V6, name, 6, mmap)
    assert (index.nlist, index.nprobe, index.rerank_factor) == FACTS_V6[name]
    assert container.header["rerank_factor"] == index.rerank_factor
    assert_searches_as_written(index, V6, name)
    expected = np.load(V6 / f"{name}.expected.npz")
    Q = np.load(V6 / "queries.npy")
    D, I = index.search(Q, 5, nprobe=2) if index.nlist else index.search(Q, 5)
    assert_answers_as_written(D, I, expected["nprobe2_distances"], expected["nprobe2_indices"], "nprobe=2", index, Q)


@pytest.mark.parametrize("name", CASES_V6)
def test_version_6_index_resaved_keeps_its_layout(name, tmp_path):
    old, new = resaved(V6 / f"{name}.lplr", tmp_path)
    assert new.version == 6
    assert {**new.header, "library_version": None} == {**old.header, "library_version": None}


@pytest.mark.parametrize("value", [0, -3, 2.5, "4", True, 1 << 21])
def test_a_bad_rerank_factor_is_refused(value):
    c = read_container(V6 / "vq_l2_b1.lplr")
    with pytest.raises(IndexFileError, match="rerank_factor"):
        LPLRIndex.load(container_to_bytes(dict(c.header, rerank_factor=value), c.arrays, version=6))
    header = dict(c.header)
    del header["rerank_factor"]
    with pytest.raises(IndexFileError, match="rerank_factor"):
        LPLRIndex.load(container_to_bytes(header, c.arrays, version=6))
    # null: the encoder's default
    again = LPLRIndex.load(container_to_bytes(dict(c.header, rerank_factor=None), c.arrays, version=6))
    assert again.rerank_factor == 4


# ------------------------------------------- settings checked against the version
#: one frozen file of each version (the settings keys do not depend on the file)
FROZEN = {1: V1 / "cosine_b4.lplr", 2: V2 / "cosine_b4.lplr", 3: V3 / "vq_cosine_b4.lplr",
          4: V4 / "vq_cosine_b1.lplr", 5: V5 / "ivf_vq_l2_b1.lplr", 6: V6 / "vq_l2_b1.lplr"}
#: a value of the wrong JSON type for each settings key
WRONG_TYPE = {"dim": "24", "bits_per_coordinate": "2.0", "rank": 10.0, "bits_l": True, "bits_r": [8],
              "metric": 1, "quantizer": None, "refine_iters": 2.5, "seed": "0", "factor": {}, "codec": False,
              "nlist": 16.0}


def edited_settings(version: int, edit) -> bytes:
    """The frozen file of ``version`` with ``edit(settings)`` applied and its checksums
    recomputed as the writer does (what a hand edit or a buggy tool would leave)."""
    c = read_container(FROZEN[version])
    header = dict(c.header, settings=dict(c.header["settings"]))
    edit(header["settings"])
    return container_to_bytes(header, c.arrays, version=version)


def test_every_frozen_version_has_the_keys_its_writer_always_wrote():
    for version, path in FROZEN.items():
        assert sorted(read_container(path).header["settings"]) == sorted(HEADER_KEYS[version])
    for folder, version in ((V1, 1), (V2, 2), (V3, 3), (V4, 4), (V5, 5), (V6, 6)):
        for path in folder.glob("*.lplr"):
            assert sorted(read_container(path).header["settings"]) == sorted(HEADER_KEYS[version]), path
    assert set(HEADER_KEYS[FORMAT_VERSION]) == {f.name for f in dataclasses.fields(IndexSettings)}


@pytest.mark.parametrize("version,key", [(v, k) for v in sorted(HEADER_KEYS) for k in HEADER_KEYS[v]])
def test_a_missing_settings_key_is_refused_naming_it(version, key):
    # Regression (0.8.0): a missing key took its default (no metric: an l2 index from a cosine
    # file; no seed: other searches and reconstructions)
    data = edited_settings(version, lambda s: s.pop(key))
    with pytest.raises(IndexFileError, match=rf"settings lack '{key}', which every version-{version} file holds"):
        LPLRIndex.load(data)


@pytest.mark.parametrize("version,key", [(v, k) for v in sorted(HEADER_KEYS) for k in HEADER_KEYS[v]])
def test_a_settings_key_of_the_wrong_type_is_refused_naming_it(version, key):
    data = edited_settings(version, lambda s: s.update({key: WRONG_TYPE[key]}))
    with pytest.raises(IndexFileError, match=rf"settings key '{key}' must be "):
        LPLRIndex.load(data)


@pytest.mark.parametrize("version", sorted(HEADER_KEYS))
def test_an_unknown_settings_key_is_refused_naming_it(version):
    with pytest.raises(IndexFileError, match=rf"settings hold 'flavour', which a version-{version} file cannot hold"):
        LPLRIndex.load(edited_settings(version, lambda s: s.update(flavour="x")))
    if version < 3:  # the codec setting came with version 3
        with pytest.raises(IndexFileError, match=rf"settings hold 'codec', which a version-{version} file"):
            LPLRIndex.load(edited_settings(version, lambda s: s.update(codec="scalar")))


def test_settings_a_version_did_not_have_take_what_it_meant():
    # version 1: the paper's uncentred factor and the scalar codes; version 2: the scalar codes
    v1, v2 = LPLRIndex.load(FROZEN[1]), LPLRIndex.load(FROZEN[2])
    assert (v1.settings.factor, v1.settings.codec) == ("lstsq", "scalar")
    assert (v2.settings.factor, v2.settings.codec) == ("orthonormal", "scalar")
    # a re-saved version-1 file holds factor (since 0.2.0): accepted, of its type
    again = LPLRIndex.load(edited_settings(1, lambda s: s.update(factor="lstsq")))
    assert again.settings == v1.settings
    with pytest.raises(IndexFileError, match="settings key 'factor' must be a string"):
        LPLRIndex.load(edited_settings(1, lambda s: s.update(factor=1)))
