"""The served path's speed-ups give the same answers: the in-memory feature LRU, decoded images."""
from __future__ import annotations

import pandas as pd
import pytest
import torch
from PIL import Image

from conftest import tiny_config, write_shapes_csv
from mmfuse import Predictor
from mmfuse.data.manifest import DecodedImage
from mmfuse.data.media import open_image
from mmfuse.encoders import create_encoder
from mmfuse.serve.feature_lru import FeatureLRU
from mmfuse.serve.runner import ModelRunner

QUESTIONS = ["what color is the square?", "is there a circle?", "what shape is it?", "is it red?"]


def as_is(values):
    return values


@pytest.fixture(scope="module")
def frozen(tmp_path_factory) -> tuple[Predictor, list[dict]]:
    """A tiny model whose encoders are both frozen, so both go through the feature caches."""
    folder = tmp_path_factory.mktemp("frozen")
    frame = pd.read_csv(write_shapes_csv(folder))
    config = tiny_config(folder, folder / "table.csv", **{"encoders.image.trainable": False,
                                                         "encoders.text.trainable": False})
    # Not saved and reloaded: a frozen tiny encoder is random, so it cannot be rebuilt from an artifact.
    predictor = Predictor(config).fit()
    rows = [{"image": str(folder / path), "question": question} for path, question in zip(frame["image"], frame["question"])]
    return predictor, rows


def bow_encoder() -> torch.nn.Module:
    encoder = create_encoder("text", "tiny_text", trainable=False)
    encoder.fit(QUESTIONS)
    return encoder.eval()


def test_lru_features_equal_the_encoders_own_and_are_reused():
    encoder, lru = bow_encoder(), FeatureLRU()
    first = lru.features(encoder, QUESTIONS, as_is)
    assert lru.last_stats["computed"] == 4 and len(lru) == 4
    with torch.no_grad():
        direct = encoder(encoder.prepare(QUESTIONS))
    assert torch.allclose(first.pooled, direct.pooled, atol=1e-6)
    assert torch.equal(first.mask, direct.mask)
    assert torch.allclose(first.tokens[first.mask], direct.tokens[direct.mask], atol=1e-6)

    again = lru.features(encoder, QUESTIONS[::-1], as_is)
    assert lru.last_stats == pytest.approx({"computed": 0, "reused": 4, "seconds": lru.last_stats["seconds"]})
    assert torch.equal(again.pooled, first.pooled.flip(0))


def test_lru_stays_within_its_byte_budget_and_drops_the_oldest():
    encoder = bow_encoder()
    one = FeatureLRU()
    one.features(encoder, QUESTIONS[:1], as_is)
    lru = FeatureLRU(max_bytes=2 * one.bytes + 1)  # room for about two entries
    lru.features(encoder, QUESTIONS, as_is)
    assert 0 < lru.bytes <= lru.max_bytes and len(lru) < len(QUESTIONS)
    lru.features(encoder, QUESTIONS[-1:], as_is)  # the newest is still held
    assert lru.last_stats["computed"] == 0
    lru.features(encoder, QUESTIONS[:1], as_is)  # the oldest was dropped
    assert lru.last_stats["computed"] == 1


def test_lru_keys_on_the_encoders_fingerprint():
    lru, encoder = FeatureLRU(), bow_encoder()
    lru.features(encoder, QUESTIONS, as_is)
    other = bow_encoder()
    torch.nn.init.normal_(other.embed.weight)  # different weights: nothing may be reused
    other._fingerprint = None
    feats = lru.features(other, QUESTIONS, as_is)
    assert lru.last_stats["computed"] == 4
    with torch.no_grad():
        assert torch.allclose(feats.pooled, other(other.prepare(QUESTIONS)).pooled, atol=1e-6)


def test_predictions_with_the_lru_equal_those_without(frozen):
    frozen_predictor, table = frozen
    rows = table[:12] + [{"question": QUESTIONS[0]}, {"image": table[0]["image"]}]
    frozen_predictor.small_request_cache = None
    _, plain = frozen_predictor.predict_scores(rows)
    lru = FeatureLRU()
    frozen_predictor.small_request_cache = lru
    try:
        _, cold = frozen_predictor.predict_scores(rows)
        assert lru.last_stats["computed"] > 0
        _, warm = frozen_predictor.predict_scores(rows)
        assert lru.last_stats["computed"] == 0 and lru.last_stats["reused"] > 0
    finally:
        frozen_predictor.small_request_cache = None
    assert torch.allclose(cold, plain, atol=1e-5) and torch.equal(warm, cold)
    assert torch.equal(warm.argmax(-1), plain.argmax(-1))


def test_the_model_runner_installs_an_lru(frozen):
    frozen_predictor = frozen[0]
    runner = ModelRunner(frozen_predictor)
    try:
        assert isinstance(frozen_predictor.small_request_cache, FeatureLRU)
    finally:
        frozen_predictor.small_request_cache = None
    assert runner.predictor is frozen_predictor


def test_a_decoded_image_is_used_as_given_not_read_again(frozen, tmp_path):
    predictor, table = frozen
    predictor.small_request_cache = None  # so the image goes through the dataset's loader
    first, second = table[0]["image"], next(r["image"] for r in table if r["image"] != table[0]["image"])
    # The file says `first`, the decoded pixels are `second`: the pixels must win.
    swapped = DecodedImage(first, open_image(second, max_pixels=10**6))
    _, got = predictor.predict_scores([{"image": swapped, "question": QUESTIONS[0]}])
    _, want = predictor.predict_scores([{"image": second, "question": QUESTIONS[0]}])
    _, other = predictor.predict_scores([{"image": first, "question": QUESTIONS[0]}])
    assert torch.allclose(got, want, atol=1e-6) and not torch.allclose(got, other, atol=1e-6)


def test_a_decoded_image_over_the_pixel_cap_is_a_bad_row(frozen, tmp_path):
    predictor, table = frozen
    path = tmp_path / "wide.png"
    Image.new("RGB", (3000, 20)).save(path)
    predictor.config.data.max_pixels, cap = 50_000, predictor.config.data.max_pixels
    try:
        frame, scores = predictor.predict_scores([{"image": DecodedImage(str(path), open_image(path, max_pixels=10**6)),
                                                   "question": QUESTIONS[0]}, {"question": QUESTIONS[1]}])
        problems = [str(bad) for bad in predictor.bad_rows]
    finally:
        predictor.config.data.max_pixels = cap
        predictor.bad_rows.clear()
    assert frame["row"].tolist() == [2] and scores.shape[0] == 1
    assert len(problems) == 1 and "row 1, image column 'image': image too large: 3000×20" in problems[0]


# ----- the served forward pass (ModelRunner's direct path) ------------------------------------------

@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A trained tiny model (trainable CNN with batch norm), its runner, and upload rows."""
    from mmfuse.serve.inputs import make_row
    from mmfuse.serve.settings import ServeSettings
    from test_serve import build_tiny_model

    folder = tmp_path_factory.mktemp("served")
    model_dir, images = build_tiny_model(folder)
    predictor = Predictor.load(model_dir)
    runner = ModelRunner(predictor)
    limits = {**ServeSettings(model_dir=model_dir).limits(), **runner.encoder_options}
    uploads = folder / "uploads"
    uploads.mkdir()

    def row(image=None, text=None):
        values = {"image": None if image is None else image.read_bytes(), "text": text}
        return make_row({k: v for k, v in values.items() if v is not None}, where="", limits=limits, folder=uploads)

    return predictor, runner, images, row


def test_the_served_forward_equals_predict_scores(served):
    predictor, runner, images, row = served
    rows = [row(images[0], QUESTIONS[0]), row(images[1]), row(text=QUESTIONS[1]), row(images[0], QUESTIONS[2])]
    results = runner(rows)
    table = [{"image": str(images[0]), "question": QUESTIONS[0]}, {"image": str(images[1])},
             {"question": QUESTIONS[1]}, {"image": str(images[0]), "question": QUESTIONS[2]}]
    _, want = predictor.predict_scores(table)
    assert torch.allclose(torch.stack([r.scores for r in results]), want, atol=1e-5)
    assert all(r.fused is not None for r in results)


def test_the_served_model_folds_batch_norm_into_a_copy(served):
    predictor, runner, _, _ = served
    assert runner.direct and runner.model is not predictor.model
    norms = lambda model: sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # noqa: E731
    assert norms(predictor.model.encoders["image"]) > 0  # the Predictor's own model is untouched
    assert norms(runner.model.encoders["image"]) == 0
    assert runner.model.head is predictor.model.head and runner.model.fusion is predictor.model.fusion
    pixels = {"pixels": torch.randint(0, 255, (5, 3, 16, 16), dtype=torch.uint8)}
    with torch.no_grad():
        want = predictor.model.encoders["image"](pixels).pooled
        got = runner.model.encoders["image"](pixels).pooled
    assert torch.allclose(got, want, atol=1e-5)


def test_one_batch_encodes_each_uploaded_image_once(served):
    _, runner, images, row = served
    seen: list[int] = []
    hook = runner.model.encoders["image"].register_forward_pre_hook(
        lambda module, args: seen.append(args[0]["pixels"].shape[0]))
    try:
        # Five requests, two distinct images (each upload its own temp file): two images encoded.
        results = runner([row(images[0], q) for q in QUESTIONS] + [row(images[1], QUESTIONS[0])])
    finally:
        hook.remove()
    assert seen == [2]
    alone = runner([row(images[0], QUESTIONS[3])])[0]
    assert torch.allclose(results[3].scores, alone.scores, atol=1e-6)
