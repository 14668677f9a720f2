"""Pixel augmentation (mmfuse.image_augment): answers about counts, sides and colours survive it."""
from __future__ import annotations

import pytest
import torch

from mmfuse.image_augment import augment_batch, augment_pixels, border_colour

BACKGROUND = (235, 236, 240)
RED, BLUE = (220, 40, 40), (40, 80, 220)


def scene(count: int = 8) -> torch.Tensor:
    """`count` 64 px images: a red square on the left, a blue one on the right, a light background."""
    images = torch.tensor(BACKGROUND, dtype=torch.uint8)[None, :, None, None].repeat(count, 1, 64, 64)
    images[:, :, 20:36, 6:22] = torch.tensor(RED, dtype=torch.uint8)[:, None, None]
    images[:, :, 24:40, 40:56] = torch.tensor(BLUE, dtype=torch.uint8)[:, None, None]
    return images


def columns_of(image: torch.Tensor, colour: tuple[int, int, int]) -> torch.Tensor:
    """Mean x position of the pixels whose dominant channel is that of `colour`."""
    channel = max(range(3), key=lambda c: colour[c])
    others = [c for c in range(3) if c != channel]
    mask = (image[channel].int() - image[others].int().max(0).values) > 60
    return mask.nonzero()[:, 1].float().mean()


def test_border_colour_is_the_median_of_the_outer_pixels():
    assert border_colour(scene(1)[0]) == [float(v) for v in BACKGROUND]


@pytest.mark.parametrize("strength", ["weak", "strong"])
def test_augmented_images_keep_shape_sides_and_colours(strength):
    torch.manual_seed(0)
    images = scene()
    out = augment_pixels(images, strength)
    assert out.shape == images.shape and out.dtype == torch.uint8
    assert not torch.equal(out, images)
    for image in out:
        assert columns_of(image, RED) < columns_of(image, BLUE)  # left stays left: no flips
        # The objects stay inside the frame and keep their hue: each colour still covers most of its area.
        for colour in (RED, BLUE):
            channel = max(range(3), key=lambda c: colour[c])
            others = [c for c in range(3) if c != channel]
            area = ((image[channel].int() - image[others].int().max(0).values) > 30).sum()
            # 256 px before; the strong view may shrink by up to 15% a side (0.72 of the area) and blur the edge.
            assert 150 <= area <= 330, (strength, colour, int(area))


def test_weak_shift_fills_uncovered_corners_with_the_border_colour():
    torch.manual_seed(0)
    blank = torch.tensor(BACKGROUND, dtype=torch.uint8)[None, :, None, None].repeat(16, 1, 32, 32)
    out = augment_pixels(blank, "weak")
    assert torch.equal(out, blank)  # no black corners: a shifted blank image is still blank


def test_normalised_float_pixels_are_refused_by_name():
    from mmfuse.errors import MmfuseError

    with pytest.raises(MmfuseError, match="train.image_augment.*8-bit.*torch.float32"):
        augment_pixels(torch.zeros(2, 3, 16, 16), "weak")


def test_augment_batch_touches_pixels_only():
    from mmfuse.data.batching import Batch, ModalityBatch
    from mmfuse.features import Features

    present = torch.ones(4, dtype=torch.bool)
    text = Features(pooled=torch.ones(4, 8), tokens=None, present=present)
    pixels = scene(2)
    batch = Batch(rows=torch.arange(4), target=None, modalities={
        "text": ModalityBatch(present=present, features=text),
        "image": ModalityBatch(present=present, prepared={"pixels": pixels}, inverse=torch.arange(4) % 2)})
    out = augment_batch(batch, "weak")
    assert out.modalities["text"] is batch.modalities["text"]
    assert out.modalities["image"].prepared["pixels"].shape == pixels.shape
    assert torch.equal(batch.modalities["image"].prepared["pixels"], pixels)  # the input batch is not changed


@pytest.mark.parametrize("semi", [False, True])
def test_train_image_augment_shifts_training_batches_only(tmp_path, monkeypatch, semi):
    """train.image_augment: every labelled training batch gets the weak shift (and, with
    semi_supervised, the unlabelled weak view too); validation batches never do."""
    import mmfuse.semi_supervised as semi_module
    import mmfuse.train as train_module
    from conftest import make_shapes_table, tiny_config
    from mmfuse.predictor import Predictor

    calls: list[str] = []

    def counting(batch, strength):
        calls.append(strength)
        return augment_batch(batch, strength)

    monkeypatch.setattr(train_module, "augment_batch", counting)
    monkeypatch.setattr(semi_module, "augment_batch", counting)
    frame = make_shapes_table(tmp_path / "images")
    frame["image"] = str(tmp_path / "images") + "/" + frame["image"]
    overrides = {"train.epochs": 2, "train.image_augment": True}
    if semi:
        frame.loc[frame.index % 3 == 0, "answer"] = None
        overrides["semi_supervised"] = {"threshold": 0.5, "ratio": 1, "warmup_epochs": 0, "modality_dropout": 0.0}
    predictor = Predictor(tiny_config(tmp_path, "unused.csv", **overrides)).fit(frame)
    assert calls and set(calls) == ({"weak", "strong"} if semi else {"weak"})
    if semi:  # per step: the labelled batch and the weak view (weak), the strong view (strong)
        assert calls.count("weak") == 2 * calls.count("strong")
    before = len(calls)
    predictor.evaluate(frame[frame["answer"].notna()])
    assert len(calls) == before  # evaluation sees the images as they are


def test_train_image_augment_with_a_frozen_image_encoder_says_it_changes_nothing(tmp_path, caplog):
    from conftest import make_shapes_table, tiny_config
    from mmfuse.predictor import Predictor

    frame = make_shapes_table(tmp_path / "images")
    frame["image"] = str(tmp_path / "images") + "/" + frame["image"]
    config = tiny_config(tmp_path, "unused.csv", **{"train.epochs": 1, "train.image_augment": True,
                                                    "encoders.image.trainable": False})
    with caplog.at_level("WARNING", logger="mmfuse.train"):
        Predictor(config).fit(frame)
    assert "train.image_augment: no trainable image encoder" in caplog.text
