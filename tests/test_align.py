"""Alignment: every objective learns, captions are read and derived, the model round-trips,
open_clip towers build from a tiny local config, zero-shot bookkeeping."""
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import make_shapes_table, tiny_config
from mmfuse.align import AlignedModel, available_objectives, classify, train_alignment
from mmfuse.align.captions import _facts, easy_vqa_pairs, load_captions, read_captions
from mmfuse.align.objectives import AlignBatch, create_objective
from mmfuse.align.objectives.adversarial import ReverseGradient
from mmfuse.align.objectives.dcca import canonical_correlations
from mmfuse.align.train import (PairFeatures, build_objectives, embed_pairs, fit_heads, fit_readout,
                                fit_standardisation, make_batch, wants_cca)
from mmfuse.align.zero_shot import held_out_accuracy
from mmfuse.config import AlignConfig, parse_config
from mmfuse.encoders import create_encoder
from mmfuse.errors import ArtifactError, ConfigError, DataError

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def make_caption_table(folder: Path, n_images: int = 36, seed: int = 0) -> Path:
    """The conftest shapes (coloured squares), one caption each: "a red square" ..."""
    frame = make_shapes_table(folder / "images", n_images=n_images, seed=seed).drop_duplicates("image")
    table = pd.DataFrame({"image": "images/" + frame["image"], "caption": "a " + frame["answer"] + " square"})
    path = folder / "captions.csv"
    table.to_csv(path, index=False)
    return path


def align_config(tmp_path: Path, captions: Path, **align) -> dict:
    config = tiny_config(tmp_path, "unused")
    config["align"] = {"captions": str(captions), "dim": 8, "epochs": 40, "batch_size": 16, "lr": 0.01,
                       "test_fraction": 0.25, **align}
    return config


# ----- objectives on a tiny paired set --------------------------------------------------------

def synthetic_pairs(n: int, seed: int) -> PairFeatures:
    """Image and text features that are two different noisy linear views of one latent code."""
    g = torch.Generator().manual_seed(0)
    to_image, to_text = torch.randn(4, 16, generator=g), torch.randn(4, 16, generator=g)
    latent = torch.randn(n, 4, generator=torch.Generator().manual_seed(seed))
    noise = torch.Generator().manual_seed(seed + 1)
    image = latent @ to_image + 0.1 * torch.randn(n, 16, generator=noise)
    text = latent @ to_text + 0.1 * torch.randn(n, 16, generator=noise)
    frame = pd.DataFrame({"image": [f"i{k}" for k in range(n)], "text": [f"t{k}" for k in range(n)]})
    return PairFeatures(frame, image, text, torch.arange(n), torch.arange(n))


def tiny_aligned(tmp_path, objectives: dict) -> AlignedModel:
    config = parse_config(align_config(tmp_path, tmp_path / "unused.csv", objectives=objectives, epochs=60,
                                       batch_size=64))
    encoders = {"image": create_encoder("image", "tiny_image", trainable=False),
                "text": create_encoder("text", "tiny_text", trainable=False)}
    return AlignedModel(config, encoders)


def full_loss(model, objectives, data) -> float:
    model.eval()
    for objective in objectives.values():
        objective.eval()
    with torch.no_grad():
        batch = make_batch(model, data, torch.arange(len(data)))
        return sum(float(o(batch)) for o in objectives.values())


@pytest.mark.parametrize("name", available_objectives())
def test_each_objective_lowers_its_loss_and_aligns_matched_pairs(tmp_path, name):
    torch.manual_seed(0)
    train, test = synthetic_pairs(256, seed=1), synthetic_pairs(64, seed=2)
    model = tiny_aligned(tmp_path, {name: 1.0})
    fit_standardisation(model, train)
    align = model.config.align
    objectives = build_objectives(align, {"image": 16, "text": 16})
    before = full_loss(model, objectives, train)
    fit_heads(model, objectives, align.objectives, train, align, echo=lambda _: None)
    assert full_loss(model, objectives, train) < before - 0.05
    if wants_cca(align, objectives):
        fit_readout(model, train)
    image, text = embed_pairs(model, test)  # pairs never seen in training
    similarity = image @ text.T
    matched = np.diag(similarity).mean()
    unmatched = similarity[~np.eye(len(similarity), dtype=bool)].mean()
    assert matched > unmatched + 0.3, (name, matched, unmatched)
    # Retrieval among 64 held-out pairs: the matched image comes first for a text far more often
    # than by chance (1/64; measured: contrastive 1.0, autoencoder 0.48, dcca 0.31, adversarial 0.19).
    top1 = (similarity.argmax(0) == np.arange(len(similarity))).mean()
    assert top1 > 10 / 64, (name, top1)


def test_contrastive_does_not_push_equal_captions_apart():
    # Two pairs sharing one caption: their texts are positives of both images, so embedding both
    # images on that caption costs no more than the entropy of the (uniform) target.
    contrastive = create_objective("contrastive", dim=2, image_dim=2, text_dim=2)
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    batch = AlignBatch(same, same, same, same, positives=torch.ones(2, 2, dtype=torch.bool))
    assert float(contrastive(batch)) == pytest.approx(np.log(2), abs=1e-4)


def test_dcca_finds_perfect_correlation_and_gradient_reversal_flips_sign():
    a = torch.randn(200, 3, generator=torch.Generator().manual_seed(0))
    b = a @ torch.tensor([[0.0, 2.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -3.0]]) + 5.0
    assert canonical_correlations(a, b, reg=1e-6).tolist() == pytest.approx([1.0, 1.0, 1.0], abs=1e-3)
    x = torch.ones(3, requires_grad=True)
    ReverseGradient.apply(x, 0.5).sum().backward()
    assert x.grad.tolist() == [-0.5, -0.5, -0.5]


def test_objective_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="unknown alignment objective 'clip'.*contrastive"):
        build_objectives(AlignConfig(objectives={"clip": 1.0}), {"image": 4, "text": 4})
    with pytest.raises(ConfigError, match="align.options.dcca"):
        build_objectives(AlignConfig(objectives={"dcca": 1.0}, options={"dcca": {"nope": 1}}), {"image": 4, "text": 4})
    with pytest.raises(ConfigError, match="align.options: contrastive"):
        build_objectives(AlignConfig(objectives={"dcca": 1.0}, options={"contrastive": {}}), {"image": 4, "text": 4})


# ----- captions -----------------------------------------------------------------------------------

def test_easy_vqa_facts_from_questions_and_answers():
    assert _facts("what is the red shape?", "triangle") == ({"red", "triangle"}, set())
    assert _facts("is there not a blue shape?", "no") == ({"blue"}, set())
    assert _facts("does the image contain a circle?", "no") == (set(), {"circle"})
    assert _facts("is no yellow shape present?", "yes") == (set(), {"yellow"})
    assert len(easy_vqa_pairs()) == 24


def test_easy_vqa_captions_cover_every_image():
    captions = read_captions("easy_vqa")
    assert len(captions) == 5000 and captions["caption"].notna().all()
    assert captions.groupby("split").size().to_dict() == {"test": 1000, "train": 4000}
    assert set(captions["label"]) == set(easy_vqa_pairs())
    assert captions["caption"].iloc[0] == "a " + captions["label"].iloc[0]


def test_coco_captions_and_bad_rows(tmp_path):
    make_shapes_table(tmp_path / "pics", n_images=3)
    coco = {"images": [{"id": 7, "file_name": "img0.png"}, {"id": 8, "file_name": "img1.png"},
                       {"id": 9, "file_name": "gone.png"}],
            "annotations": [{"image_id": 7, "caption": "a red square"}, {"image_id": 7, "caption": "red box"},
                            {"image_id": 8, "caption": "a green square"}, {"image_id": 9, "caption": "lost"}]}
    path = tmp_path / "captions.json"
    path.write_text(json.dumps(coco))
    manifest = load_captions(path, image_root=tmp_path / "pics")
    assert manifest.frame["text"].tolist() == ["a red square", "red box", "a green square"]
    assert [(bad.row, bad.field) for bad in manifest.bad_rows] == [(4, "image")]
    table = tmp_path / "bad.csv"
    pd.DataFrame({"image": ["x.png"], "text": ["t"]}).to_csv(table, index=False)
    with pytest.raises(DataError, match="bad.csv: .*needs columns image and caption; missing caption"):
        load_captions(table)


# ----- the whole run, the artifact, open_clip, zero-shot ----------------------------------------------

def test_train_save_load_and_zero_shot(tmp_path):
    captions = make_caption_table(tmp_path)
    run = train_alignment(parse_config(align_config(tmp_path, captions)), echo=lambda _: None)
    assert run.summary["test_metrics"]["t2i_R@1"] >= 0.9
    assert run.summary["losses"][-1] < run.summary["losses"][0]
    run.model.save(tmp_path / "model", metrics=run.summary)
    loaded = AlignedModel.load(tmp_path / "model")
    image = tmp_path / "images" / "img0.png"  # a red square
    texts = ["a red square", "a green square", "a blue square"]
    assert np.allclose(loaded.embed_texts(texts), run.model.embed_texts(texts), atol=1e-6)
    assert np.allclose(np.linalg.norm(loaded.embed_images([image]), axis=1), 1.0)
    predicted, _ = classify(loaded, [image], ["red square", "green square", "blue square"], template="a {label}")
    assert predicted == ["red square"]
    with pytest.raises(DataError, match="nothing.png"):
        loaded.embed_images([tmp_path / "nothing.png"])
    (tmp_path / "model" / "encoders.json").unlink()
    with pytest.raises(ArtifactError, match="encoders.json"):
        AlignedModel.load(tmp_path / "model")


def test_holdout_captions_never_reach_training(tmp_path):
    captions = make_caption_table(tmp_path)
    config = parse_config(align_config(tmp_path, captions, holdout=["a blue square"], epochs=5))
    run = train_alignment(config, echo=lambda _: None)
    assert "a blue square" not in set(run.splits["train"]["text"])
    shot = run.summary["zero_shot"]
    assert shot["held_out_images"] > 0 and shot["chance"] == pytest.approx(1 / 3)
    with pytest.raises(ConfigError, match="align.holdout"):
        train_alignment(parse_config(align_config(tmp_path, captions, holdout=["a pink square"])))


def test_held_out_accuracy_by_hand():
    result = held_out_accuracy(["a", "b", "b", "c"], ["a", "b", "c", "c"], held_out={"c"}, n_labels=4)
    assert result == {"held_out_acc": 0.5, "seen_acc": 1.0, "held_out_images": 2, "seen_images": 2,
                      "chance": 0.25}


def test_open_clip_towers_from_a_tiny_local_config(tmp_path):
    pytest.importorskip("open_clip")
    config_file = tmp_path / "tiny-clip.json"
    config_file.write_text(json.dumps(TINY_CLIP))
    options = {"model_config": str(config_file)}
    captions = make_caption_table(tmp_path, n_images=24)
    config = align_config(tmp_path, captions, epochs=10)
    config["encoders"] = {"image": {"name": "open_clip:tiny-clip", "image_size": 32, "options": options},
                          "text": {"name": "open_clip:tiny-clip", "max_tokens": 16, "options": options}}
    run = train_alignment(parse_config(config), echo=lambda _: None)
    image_tower, text_tower = run.model.encoders["image"], run.model.encoders["text"]
    assert (type(image_tower).__name__, image_tower.out_dim) == ("OpenClipImage", 16)
    assert (type(text_tower).__name__, text_tower.out_dim) == ("OpenClipText", 16)
    assert not any(p.requires_grad for p in run.model.encoders.parameters())
    # Random towers cannot be rebuilt from a source: the artifact stores them and loads them back.
    run.model.save(tmp_path / "clip_model")
    loaded = AlignedModel.load(tmp_path / "clip_model")
    image = tmp_path / "images" / "img0.png"
    assert np.allclose(loaded.embed_images([image]), run.model.embed_images([image]), atol=1e-5)
    with pytest.raises(ConfigError, match="open_clip model 'no-such-clip' is unknown"):
        create_encoder("image", "open_clip:no-such-clip", image_size=32)
