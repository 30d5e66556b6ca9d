"""The fortunes text corpus: the loader on fortune files written here, and ``--dataset fortunes``
wired into the experiment with a stand-in embedder (no model, no real corpus needed)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from pipelines import experiment
from pipelines.datasets import (
    DEFAULT_FORTUNES_DIR,
    FORTUNES_FILES,
    FORTUNES_TEST_SIZE,
    load_fortunes,
)


def _write(folder: Path, name: str, entries: list[str]) -> Path:
    """A fortune file as fortune-mod writes it: entries separated by lines holding only '%'."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n%\n".join(entries) + "\n%\n", encoding="utf-8")
    return path


@pytest.fixture
def small_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "fortunes"
    _write(folder, "zeta", [
        "The early bird\ngets the worm,\n\tbut the second mouse gets the cheese.",
        "Too short",                                   # 2 words: dropped
        "A penny saved is a penny earned.",
        "Brevity is the soul of wit.",
    ])
    _write(folder, "alpha", [
        "brevity IS the soul    of wit.",              # same as zeta's, ignoring case and spaces
        "_\bU_\bn_\bd_\be_\br_\bl_\bi_\bn_\be_\bd words and a bell\x07 here.",
        "one two three four five six seven eight nine ten",
    ])
    _write(folder, "mid", ["Only one passage in this file."])
    (folder / "alpha.dat").write_bytes(b"\x00\x00\x00\x02")  # strfile index: skipped
    (folder / "alpha.u8").symlink_to("alpha")                # link: skipped
    _write(folder / "off", "rude", ["A fortune of the offensive sub-folder, never read."])
    return folder


def test_passages_order_dedup_and_labels(small_folder):
    data = load_fortunes(small_folder, files=None, min_class_size=1)
    assert data.class_names == ["alpha", "mid", "zeta"] and data.name == "fortunes"
    assert data.ids == ["alpha/0", "alpha/1", "alpha/2", "mid/0", "zeta/0", "zeta/2"]
    assert data.texts[0] == "brevity IS the soul of wit."  # first copy in sorted file order kept
    assert data.texts[1] == "Underlined words and a bell here."  # overstrikes and control characters gone
    assert data.texts[4] == "The early bird gets the worm, but the second mouse gets the cheese."
    np.testing.assert_array_equal(data.labels, [0, 0, 0, 1, 2, 2])
    assert data.labels.dtype == np.int64 and data.source == str(small_folder)
    again = load_fortunes(small_folder, files=None, min_class_size=1)
    assert again.texts == data.texts and again.ids == data.ids


def test_word_limits_class_size_and_file_selection(small_folder):
    cut = load_fortunes(small_folder, files=None, min_class_size=1, max_words=4)
    assert cut.texts[cut.ids.index("alpha/2")] == "one two three four"
    assert "zeta/1" in load_fortunes(small_folder, files=None, min_class_size=1, min_words=2).ids
    kept = load_fortunes(small_folder, files=None, min_class_size=2)
    assert kept.class_names == ["alpha", "zeta"] and "mid/0" not in kept.ids
    picked = load_fortunes(small_folder, files=["zeta", "mid"], min_class_size=1)
    assert picked.class_names == ["mid", "zeta"] and picked.ids[-1] == "zeta/3"  # no alpha: zeta keeps its copy


@pytest.mark.parametrize("kwargs, message", [
    ({"min_words": 0}, "min_words"),
    ({"min_words": 5, "max_words": 4}, "min_words"),
    ({"min_class_size": 0}, "min_class_size"),
    ({"min_class_size": 99}, "no fortune file has 99 or more passages"),
])
def test_bad_settings(small_folder, kwargs, message):
    with pytest.raises(ValueError, match=message):
        load_fortunes(small_folder, files=None, **kwargs)


def test_missing_corpus_names_the_debian_packages(tmp_path, small_folder):
    with pytest.raises(FileNotFoundError, match=r"apt-get install fortunes fortunes-min"):
        load_fortunes(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"fortune files missing in .*: art, ascii-art, computers"):
        load_fortunes(small_folder)  # the default file set of the Debian packages
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no fortune files"):
        load_fortunes(tmp_path / "empty", files=None)


@pytest.mark.skipif(not (DEFAULT_FORTUNES_DIR / "zippy").is_file()
                    or not (DEFAULT_FORTUNES_DIR / "riddles").is_file(),
                    reason="Debian's fortunes / fortunes-min not installed")
def test_the_debian_corpus():
    data = load_fortunes()
    assert len(data) == 14931 and len(data.class_names) == 38
    assert min(np.bincount(data.labels)) == 50 and max(np.bincount(data.labels)) == 1240
    assert len({t.casefold() for t in data.texts}) == len(data)


# --------------------------------------------------------------------------- experiment wiring


class _FakeEmbedder:
    """Stands in for TextEmbedder: hashed bag of words, L2-normalised, 64-d."""

    calls: list[int] = []

    def __init__(self, model=None, *, batch_size=32, num_threads=None, progress=True, **_):
        self.model_name = "fake-bow"

    def describe(self):
        return {"model": self.model_name, "weights": "none", "weights_id": "fake", "max_seq_length": None,
                "normalize": True}

    def embed(self, texts, *, desc=""):
        type(self).calls.append(len(texts))
        X = np.zeros((len(texts), 64), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in text.lower().split():
                X[i, int(hashlib.md5(word.encode()).hexdigest(), 16) % 64] += 1
        return X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)


@pytest.fixture
def debian_like_folder(tmp_path: Path) -> Path:
    """Every file of FORTUNES_FILES; three of them large enough to be classes."""
    folder = tmp_path / "games-fortunes"
    topics = {"computers": "kernel compiler bug program disk", "science": "atom physics energy theory cell",
              "startrek": "captain kirk spock enterprise warp"}
    for name in FORTUNES_FILES:
        if name in topics:
            words = topics[name].split()
            entries = [f"The {words[i % 5]} and the {words[(i + 2) % 5]} number {i}." for i in range(60)]
        else:
            entries = [f"A lone fortune from {name}."]
        _write(folder, name, entries)
    return folder


def test_dataset_choice_and_default_test_size():
    assert "fortunes" in experiment.DATASETS and experiment.DEFAULT_TEST_SIZE["fortunes"] == FORTUNES_TEST_SIZE == 1000
    args = experiment.build_parser().parse_args(["--dataset", "fortunes"])
    assert args.fortunes_dir == DEFAULT_FORTUNES_DIR and args.test_size is None
    assert experiment._test_size(args, "fortunes") == 1000 and experiment._test_size(args, "bbc") == 500
    args = experiment.build_parser().parse_args(["--dataset", "fortunes", "--test-size", "7"])
    assert experiment._test_size(args, "fortunes") == 7


def test_load_dataset_embeddings_fortunes(debian_like_folder, tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "TextEmbedder", _FakeEmbedder)
    _FakeEmbedder.calls = []
    flags = ["--fortunes-dir", str(debian_like_folder), "--test-size", "30", "--cache-dir", str(tmp_path / "cache"),
             "--threads", "1", "--no-progress"]
    data = experiment.load_dataset_embeddings("fortunes", flags)
    assert data.name == "fortunes" and data.class_names == ["computers", "science", "startrek"]
    assert data.X_train.shape == (150, 64) and data.X_test.shape == (30, 64)
    np.testing.assert_array_equal(np.bincount(data.y_test), [10, 10, 10])  # stratified
    assert _FakeEmbedder.calls == [180] and not data.info["splits"]["all"]["cache_hit"]
    again = experiment.load_dataset_embeddings("fortunes", flags)
    assert _FakeEmbedder.calls == [180] and again.info["splits"]["all"]["cache_hit"]
    np.testing.assert_array_equal(again.X_test, data.X_test)
    out = tmp_path / "res"
    assert experiment.main(["--dataset", "fortunes", *flags, "--seeds", "0", "--bits-nq", "4",
                            "--methods", "unquantized", "--scopes", "whole", "--out-dir", str(out), "--quiet"]) == 0
    payload = json.loads((out / "fortunes-150x30-fake-bow.json").read_text())
    assert payload["dataset"]["n_classes"] == 3 and payload["dataset"]["splits"]["all"]["cache_hit"]
    assert payload["summary"][0]["accuracy_mean"] > 0.8


def test_missing_fortunes_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(experiment, "TextEmbedder", _FakeEmbedder)
    rc = experiment.main(["--dataset", "fortunes", "--fortunes-dir", str(tmp_path / "none"),
                          "--cache-dir", str(tmp_path / "cache"), "--out-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and err.count("\n") == 1
    assert "apt-get install fortunes fortunes-min" in err
    with pytest.raises(FileNotFoundError, match="fortunes-min"):
        experiment.load_dataset_embeddings("fortunes", ["--fortunes-dir", str(tmp_path / "none")])
