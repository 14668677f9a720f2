import shutil

import torch
from PIL import Image

from mmfuse.data.media import open_image
from mmfuse.encoders import create_encoder
from mmfuse.encoders.cache import FeatureCache


def write_images(folder, n):
    folder.mkdir()
    paths = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.new("RGB", (16, 16), (i * 30, 0, 0)).save(path)
        paths.append(str(path))
    return paths


def load(paths):
    return [open_image(p, max_pixels=10**6) for p in paths]


def test_frozen_features_are_computed_once_and_reused(tmp_path):
    paths = write_images(tmp_path / "img", 5)
    encoder = create_encoder("image", "tiny_image", trainable=False)
    cache = FeatureCache(tmp_path / "cache")
    first = cache.features(encoder, paths, load)
    assert cache.last_stats["computed"] == 5
    again = cache.features(encoder, paths[::-1], load)
    assert cache.last_stats["computed"] == 0 and cache.last_stats["reused"] == 5
    assert torch.equal(again.pooled, first.pooled.flip(0))
    direct = encoder.eval()(encoder.prepare(load(paths)))
    assert torch.allclose(first.tokens, direct.tokens, atol=1e-6)


def test_key_is_content_not_path(tmp_path):
    paths = write_images(tmp_path / "img", 2)
    copy = tmp_path / "copy.png"
    shutil.copy(paths[0], copy)
    encoder = create_encoder("image", "tiny_image", trainable=False)
    cache = FeatureCache(tmp_path / "cache")
    cache.features(encoder, paths, load)
    cache.features(encoder, [str(copy)], load)
    assert cache.last_stats["computed"] == 0


def test_changed_preprocessing_recomputes(tmp_path):
    paths = write_images(tmp_path / "img", 3)
    cache = FeatureCache(tmp_path / "cache")
    encoder = create_encoder("image", "tiny_image", image_size=16, trainable=False)
    cache.features(encoder, paths, load)
    bigger = create_encoder("image", "tiny_image", image_size=24, trainable=False)
    bigger.load_state_dict(encoder.state_dict())
    feats = cache.features(bigger, paths, load)
    assert cache.last_stats["computed"] == 3 and feats.tokens.shape[1] == 36  # 24 px -> 6x6 tokens after 2 pools


def test_variable_length_text_tokens_are_padded_with_a_mask(tmp_path):
    encoder = create_encoder("text", "tiny_text", trainable=False)
    encoder.fit(["a b c", "a"])
    cache = FeatureCache(tmp_path / "cache")
    feats = cache.features(encoder, ["a b c", "a"], lambda v: v)
    assert feats.mask.tolist() == [[True, True, True], [True, False, False]]


def test_noisy_features_are_cached_in_their_own_variant(tmp_path):
    """A deterministic perturbation's features are cached apart from the clean ones and reused."""
    import pandas as pd

    from mmfuse.config import DataConfig
    from mmfuse.dataset import build_dataset
    from mmfuse.robustness import perturbation

    paths = write_images(tmp_path / "img", 4)
    frame = pd.DataFrame({"image": paths, "label": [None] * 4})
    encoder = create_encoder("image", "tiny_image", trainable=False)
    cache = FeatureCache(tmp_path / "cache")

    def dataset(perturb, use_cache=True):
        return build_dataset(frame, {"image": encoder}, task="classification", labels=[], data=DataConfig(),
                             cache=cache if use_cache else None, group_by_image=False, perturb=perturb)

    clean = dataset(None).columns["image"].features.pooled
    noise = perturbation("image", "gaussian", 0.5, seed=3)
    noisy = dataset({"image": noise}).columns["image"].features.pooled
    assert cache.last_stats["computed"] == 4  # not served the clean entries
    assert not torch.allclose(noisy, clean)
    assert (tmp_path / "cache" / f"image-{encoder.fingerprint()}-gaussian-0.5-s3").is_dir()
    again = dataset({"image": noise}).columns["image"].features.pooled
    assert cache.last_stats["computed"] == 0 and torch.equal(again, noisy)
    # Uncached, the same noise gives the same features: the cache variant holds what it claims.
    prepared = dataset({"image": noise}, use_cache=False).columns["image"].prepared
    direct = encoder.eval()(prepared).pooled
    assert torch.allclose(direct, noisy, atol=1e-5)
    # A perturbation without a cache name cannot be cached: it bypasses the cache.
    anonymous = dataset({"image": lambda image, key: noise(image, key)}).columns["image"]
    assert anonymous.features is None and anonymous.prepared is not None
