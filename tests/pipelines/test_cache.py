"""The embedding cache reuses entries by key and survives damaged files."""

from __future__ import annotations

import numpy as np

from pipelines.embedding_cache import EmbeddingCache


def _computer(calls, n=5, d=3):
    def compute():
        calls.append(1)
        return np.arange(n * d, dtype=np.float32).reshape(n, d), np.arange(n) % 2
    return compute


def test_second_lookup_is_a_hit(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    key = {"dataset": "toy", "split": "train", "model": "m", "weights_id": "sha256:ab", "resolution": 32}
    calls: list[int] = []
    first = cache.get_or_compute(key, _computer(calls))
    second = cache.get_or_compute(dict(reversed(list(key.items()))), _computer(calls))  # key order is irrelevant
    assert (first.hit, second.hit, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(first.embeddings, second.embeddings)
    assert second.labels.dtype == np.int64 and second.metadata["key"] == key
    assert first.path.with_suffix(".json").is_file() and first.path.name.startswith("toy-train-")


def test_any_key_change_recomputes(tmp_path):
    cache = EmbeddingCache(tmp_path)
    calls: list[int] = []
    base = {"dataset": "toy", "split": "train", "resolution": 32, "weights_id": "a"}
    cache.get_or_compute(base, _computer(calls))
    for change in ({"resolution": 64}, {"weights_id": "b"}, {"split": "test"}):
        assert not cache.get_or_compute({**base, **change}, _computer(calls)).hit
    assert len(calls) == 4


def test_damaged_entry_is_recomputed(tmp_path):
    cache = EmbeddingCache(tmp_path)
    key = {"dataset": "toy", "split": "train"}
    calls: list[int] = []
    entry = cache.get_or_compute(key, _computer(calls))
    entry.path.write_bytes(entry.path.read_bytes()[:40])
    again = cache.get_or_compute(key, _computer(calls))
    assert not again.hit and len(calls) == 2
    assert cache.get_or_compute(key, _computer(calls)).hit
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary files left behind
