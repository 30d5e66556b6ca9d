"""Fuzz the loader: every mutated index file is rejected cleanly or loads as a correct index.

The mutations (byte damage, and checksum-valid edits of the header, the array table
and the array contents) and the worker processes that load them under a memory limit
live in ``tests/fuzz_long.py``, which is also the long-mode script::

    python tests/fuzz_long.py --cases 10000      # or: pytest -m fuzz tests/test_fuzz.py

CI runs 2,000 seeded cases (about 5 s here). A failure lists each failure class
(an exception other than a ``ValueError`` naming the file, a wrong search answer, a
worker that died or hung) with reproducers.
"""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import pytest

import fuzz_long
from lplr_index import LPLRIndex
from lplr_index.fileformat import IndexFileError, read_container

CI_CASES = 2000
LONG_CASES = 10_000


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("bases")
    return {name: path.read_bytes() for name, path in fuzz_long.build_bases(folder).items()}


def test_fuzz_ci(tmp_path):
    result = fuzz_long.fuzz(CI_CASES, seed=0, batch=500, folder=tmp_path)
    counts = Counter()
    for outcomes in result["counts"].values():
        counts.update(outcomes)
    assert sum(counts.values()) == CI_CASES
    assert not result["failures"], fuzz_long.summary_text(result, per_class=3)
    # the suite is not vacuous: some mutated files still load and get searched
    assert counts["loaded"] >= CI_CASES // 20, counts  # observed: 191 of 2,000


@pytest.mark.fuzz
def test_fuzz_long(tmp_path, request):
    if "fuzz" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("long mode: run with -m fuzz")
    result = fuzz_long.fuzz(LONG_CASES, seed=1, batch=1000, workers=2, folder=tmp_path)
    text = fuzz_long.summary_text(result, per_class=3)
    print(text)
    assert not result["failures"], text


# ------------------------------------------------- the fuzzer itself is sound
def test_cases_are_reproducible(bases):
    for case in range(40):
        assert fuzz_long.make_case(bases, 3, case) == fuzz_long.make_case(bases, 3, case)
    assert fuzz_long.make_case(bases, 3, 0)[2] != fuzz_long.make_case(bases, 4, 0)[2]


def test_every_mutation_changes_the_file(bases):
    for case in range(300):
        base, kind, data, desc = fuzz_long.make_case(bases, 0, case)
        assert data != bases[base], (case, kind, desc)


@pytest.mark.parametrize("kind", [k for k in fuzz_long.VALID_KINDS if k != "table-edit"])
def test_checksum_valid_edits_pass_the_container_checks(bases, kind):
    # these edits must reach the index's content checks, not stop at a checksum
    rng = np.random.default_rng(5)
    passed = 0
    for i in range(40):
        base = sorted(bases)[i % len(bases)]
        data, desc = fuzz_long.MUTATORS[kind](rng, bases[base])
        try:
            read_container(data)
        except IndexFileError as exc:
            assert kind == "combo", f"{kind} {desc}: {exc}"  # combo may stack a table edit
            continue
        passed += 1
    assert passed >= (20 if kind == "combo" else 40)


def test_raw_damage_is_caught_by_the_container(bases):
    rng = np.random.default_rng(6)
    for i in range(100):
        kind = fuzz_long.RAW_KINDS[i % len(fuzz_long.RAW_KINDS)]
        data, desc = fuzz_long.MUTATORS[kind](rng, bases["l2"])
        with pytest.raises(IndexFileError):
            read_container(data)


# ------------------------------------------------ the checks can fail
class FakeIndex:
    """An index double whose search returns the given arrays (for k = 10 and k = 13)."""

    def __init__(self, metric="l2", ntotal=10, D=None, I=None, removed=()):
        self.metric, self.ntotal, self.dim = metric, ntotal, 4
        self._D, self._I = D, I
        self.live_ids = np.setdiff1d(np.arange(ntotal), removed)

    def __len__(self):
        return self.ntotal

    def search(self, Q, k):
        sign = 1.0 if self.metric == "l2" else -1.0
        n = min(k, self.ntotal)
        I = np.full((len(Q), k), -1, np.int64)
        D = np.full((len(Q), k), sign * np.inf, np.float32)
        I[:, :n] = np.arange(n)
        D[:, :n] = sign * np.linspace(0.1, 0.9, n, dtype=np.float32)
        if self._D is not None:
            D = self._D(D)
        if self._I is not None:
            I = self._I(I)
        return D, I


def _set(col, value):
    def change(a):
        a = a.copy()
        if a.shape[1] > col:
            a[:, col] = value
        return a

    return change


BROKEN = {
    "nan-distance": (FakeIndex(D=_set(0, np.nan)), "non-finite"),
    "id-out-of-range": (FakeIndex(I=_set(1, 10)), "ids neither live ids nor -1: \\[10, 10, 10\\]"),
    "removed-id": (FakeIndex(I=_set(1, 3), removed=[3]), "ids neither live ids nor -1: \\[3"),
    "missing-result": (FakeIndex(I=_set(9, -1)), "results per query"),
    "repeated-id": (FakeIndex(I=_set(1, 0)), "repeated ids"),
    "unsorted": (FakeIndex(D=_set(0, 5.0)), "not sorted"),
    "cosine-above-one": (FakeIndex("cosine", D=_set(0, 1.01)), "outside \\[-1, 1\\]"),
    "wrong-padding": (FakeIndex(D=lambda D: np.nan_to_num(D, posinf=0.0)), "padding distances"),
    "wrong-dtype": (FakeIndex(D=lambda D: D.astype(np.float64)), "dtypes"),
}


@pytest.mark.parametrize("case", BROKEN, ids=str)
def test_search_check_catches(case):
    index, words = BROKEN[case]
    problem = fuzz_long.check_search(index, np.random.default_rng(0))
    assert problem is not None and __import__("re").search(words, problem), problem


def test_search_check_accepts_a_correct_answer():
    for metric in ("l2", "ip", "cosine"):
        assert fuzz_long.check_search(FakeIndex(metric), np.random.default_rng(0)) is None


def test_a_case_that_kills_its_worker_is_named(monkeypatch):
    # the batch worker dies at case 2 (as after a segfault): cases 0-1 keep their results,
    # case 2 is re-run alone and reported, case 3 is re-run alone and passes
    calls = []

    def fake_spawn(lines, timeout):
        cases = [int(line.split(",")[0].strip("[")) for line in lines]
        calls.append(cases)
        done = {}
        for case in cases:
            if case == 2:
                return done, "worker exited with -11: "
            done[case] = ("rejected", "")
        return done, ""

    monkeypatch.setattr(fuzz_long, "_spawn", fake_spawn)
    out = fuzz_long.run_batch([(c, f"case-{c}.lplr", "read") for c in range(4)])
    assert out == {0: ("rejected", ""), 1: ("rejected", ""), 2: ("worker-died-or-hung", "worker exited with -11: "),
                   3: ("rejected", "")}
    assert calls == [[0, 1, 2, 3], [2], [3]]


def test_worker_loads_under_a_memory_limit_in_another_process(tmp_path):
    foreign = tmp_path / "foreign.lplr"
    foreign.write_bytes(b"hello\n")
    out = fuzz_long.run_batch([(0, str(foreign), "read"), (1, str(tmp_path / "missing.lplr"), "mmap"),
                               (2, str(foreign), "bytes")])
    assert out[0] == ("rejected", ": not an lplr-index file (wrong magic bytes)")
    assert out[1] == ("rejected", ": no such file")
    assert out[2] == ("rejected", ": not an lplr-index file (wrong magic bytes)")


# ---------------------------------------- settings checked against the file's version
def test_every_deleted_settings_key_is_refused_naming_it(bases):
    # Regression (0.8.0): a checksum-valid header without a settings key loaded with the
    # default (no metric: an l2 index from a cosine file; no seed: other answers)
    for name, data in sorted(bases.items()):
        version, doc, _ = fuzz_long.split(data)
        for key in sorted(doc["settings"]):
            edited = json.loads(json.dumps(doc))
            del edited["settings"][key]
            with pytest.raises(IndexFileError, match=rf"settings lack '{key}', which every version-{version} file"):
                LPLRIndex.load(fuzz_long.with_header(data, edited))
        edited = json.loads(json.dumps(doc))
        edited["settings"]["extra"] = 1
        with pytest.raises(IndexFileError, match=rf"settings hold 'extra', which a version-{version} file cannot"):
            LPLRIndex.load(fuzz_long.with_header(data, edited))


def test_fuzzed_header_edits_that_delete_or_retype_a_setting_never_load(bases):
    # the fuzzer's own header edits: a deleted settings key, or a value of another JSON type
    # (a string for a number, a number for a string, ...), is refused naming the key
    rng = np.random.default_rng(12)
    refused = 0
    for i in range(600):
        base = sorted(bases)[i % len(bases)]
        data, desc = fuzz_long.m_header_value(rng, bases[base])
        found = re.fullmatch(r"settings/(\w+): (.*) -> (.*)", desc)
        if found is None:
            continue
        key = found.group(1)
        new = fuzz_long.split(data)[1]["settings"].get(key, fuzz_long._DELETE)
        if new is fuzz_long._DELETE:
            words = f"settings lack '{key}'"
        elif key in SETTING_KINDS and json_kind(new) not in SETTING_KINDS[key]:
            words = f"settings key '{key}' must be"
        else:
            continue
        with pytest.raises(IndexFileError, match=re.escape(words)):
            LPLRIndex.load(data)
        refused += 1
    assert refused >= 20, refused  # the fuzzer does make such edits


#: the JSON types each settings key may hold
SETTING_KINDS = {"dim": {"int"}, "rank": {"int"}, "bits_r": {"int"}, "refine_iters": {"int"}, "seed": {"int"},
                 "bits_l": {"int", "NoneType"}, "bits_per_coordinate": {"int", "float", "NoneType"},
                 "metric": {"str"}, "quantizer": {"str"}, "factor": {"str"}, "codec": {"str"}}


def json_kind(value) -> str:
    return type(value).__name__


def test_a_loaded_file_that_lost_a_setting_is_a_failure(bases):
    assert fuzz_long.judged("header-value", "settings/metric: 'cosine' -> 'deleted'", "loaded") == \
        "loaded-without-a-setting"
    assert fuzz_long.judged("header-value", "settings/metric: 'cosine' -> 'deleted'", "rejected") == "rejected"
    assert fuzz_long.judged("header-value", "settings/metric: 'cosine' -> 'l2'", "loaded") == "loaded"
    assert fuzz_long.judged("header-value", "ntotal: 300 -> 'deleted'", "loaded") == "loaded"
    # the fuzzer's own edits do delete settings keys, and such files are rejected
    rng = np.random.default_rng(3)
    deleted = 0
    for i in range(300):
        data, desc = fuzz_long.m_header_value(rng, bases[sorted(bases)[i % len(bases)]])
        if fuzz_long._SETTING_DELETED.fullmatch(desc):
            deleted += 1
            with pytest.raises(IndexFileError, match="settings lack"):
                LPLRIndex.load(data)
    assert deleted >= 3, deleted
