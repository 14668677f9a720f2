"""Semi-supervised training (mmfuse.semi_supervised): unlabelled rows, thresholds, the loss, a run."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from mmfuse.config import SemiSupervisedConfig, parse_config
from mmfuse.data.batching import GroupBatchSampler
from mmfuse.errors import ConfigError
from mmfuse.predictor import Predictor
from mmfuse.semi_supervised import (DistributionAlignment, FixedThreshold, FlexMatchThreshold, FreeMatchThreshold,
                                    PairedSampler, PseudoLabelling, UNKNOWN, UNSEEN, partition, pseudo_label_loss, truth_targets)

from conftest import make_shapes_table, tiny_config

PROBS = torch.tensor([[0.70, 0.20, 0.10],
                      [0.10, 0.85, 0.05],
                      [0.30, 0.30, 0.40],
                      [0.96, 0.02, 0.02]])


def blanked_table(tmp_path, every: int = 3) -> pd.DataFrame:
    """The shapes table with every `every`-th row's answer emptied (its truth kept in label_hidden)."""
    frame = make_shapes_table(tmp_path / "images")
    frame["image"] = str(tmp_path / "images") + "/" + frame["image"]
    frame["label_hidden"] = frame["answer"]
    frame.loc[frame.index % every == 0, "answer"] = None
    return frame


def test_empty_labels_are_bad_rows_without_the_section(tmp_path):
    frame = blanked_table(tmp_path)
    predictor = Predictor(tiny_config(tmp_path, "unused.csv"))
    good = predictor.read(frame)
    assert len(good) == len(frame) - 24 and len(predictor.bad_rows) == 24
    assert all(bad.reason == "missing label" for bad in predictor.bad_rows)


def test_empty_labels_become_unlabelled_rows_with_the_section(tmp_path, caplog):
    frame = blanked_table(tmp_path)
    predictor = Predictor(tiny_config(tmp_path, "unused.csv", semi_supervised={}))
    rows = predictor.read(frame, unlabelled=True)
    assert len(rows) == len(frame) and not predictor.bad_rows
    with caplog.at_level("INFO"):
        labelled, unlabelled = partition(rows)
    assert (len(labelled), len(unlabelled)) == (48, 24)
    assert "48 labelled, 24 unlabelled" in caplog.text
    labels = sorted(set(labelled["label"]))
    assert "red" not in labels  # every red square's colour question is unlabelled
    truth = truth_targets(frame, "label_hidden", unlabelled["row"], labels)
    assert truth.tolist() == [labels.index(v) if v in labels else UNSEEN for v in frame["label_hidden"][::3]]


def test_unlabelled_val_and_test_rows_are_dropped_and_counted(tmp_path, caplog):
    frame = blanked_table(tmp_path)
    frame.to_csv(tmp_path / "table.csv", index=False)
    with caplog.at_level("WARNING"):
        parts = Predictor(tiny_config(tmp_path, tmp_path / "table.csv", semi_supervised={})).splits()
    assert parts["train"]["label"].isna().any()
    assert parts["val"]["label"].notna().all() and parts["test"]["label"].notna().all()
    assert "unlabelled val row(s) dropped" in caplog.text and "unlabelled test row(s) dropped" in caplog.text
    blank = sum(parts[name]["label"].isna().sum() for name in parts)
    assert blank + len(parts["val"]) + len(parts["test"]) + parts["train"]["label"].notna().sum() < len(frame)


def test_fixed_threshold_masks_below_tau():
    assert FixedThreshold(0.8, 3).mask(PROBS, torch.arange(4)).tolist() == [False, True, False, True]


def test_freematch_threshold_by_hand():
    m = 0.9
    threshold = FreeMatchThreshold(3, momentum=m)
    mask = threshold.mask(PROBS, torch.arange(4))
    global_t = m / 3 + (1 - m) * (0.70 + 0.85 + 0.40 + 0.96) / 4
    class_mean = [m / 3 + (1 - m) * PROBS[:, c].mean().item() for c in range(3)]
    local = [global_t * c / max(class_mean) for c in class_mean]
    assert threshold.per_class().tolist() == pytest.approx(local)
    # row -> its max probability against its class's threshold
    assert mask.tolist() == [0.70 >= local[0], 0.85 >= local[1], 0.40 >= local[2], 0.96 >= local[0]]
    # a second batch moves the averages again
    threshold.mask(PROBS[:1], torch.arange(1))
    assert float(threshold.global_threshold) == pytest.approx(m * global_t + (1 - m) * 0.70)


def test_flexmatch_threshold_by_hand():
    threshold = FlexMatchThreshold(0.8, 3, rows=10)
    # No row confident yet: beta = 0 everywhere, so this batch's threshold is 0 (FlexMatch's warm start).
    assert threshold.mask(PROBS, torch.tensor([0, 1, 2, 3])).all()
    # rows 1 (class 1, 0.85) and 3 (class 0, 0.96) cleared tau; 8 rows have none yet:
    # beta = counts / max(8, 1, 1) -> [1/8, 1/8, 0]
    beta = torch.tensor([1 / 8, 1 / 8, 0.0])
    assert threshold.learning.tolist() == pytest.approx(beta.tolist())
    expected = 0.8 * beta / (2 - beta)
    assert threshold.per_class().tolist() == pytest.approx(expected.tolist())
    mask = threshold.mask(PROBS[2:3], torch.tensor([4]))  # class 2 never claimed: threshold 0
    assert mask.tolist() == [True]
    # Once the rows with none are fewer than the largest class, beta is normalised by that class.
    threshold.selected[:] = torch.tensor([0, 0, 0, 0, 1, 1, -1, -1, 2, 0])
    threshold.update()
    assert threshold.learning.tolist() == pytest.approx([5 / 5, 2 / 5, 1 / 5])


def test_distribution_alignment_by_hand():
    m = 0.5
    align = DistributionAlignment(torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2]), 3, momentum=m)
    target = torch.tensor([4.0, 3.0, 5.0]) / 12  # labelled counts [3, 2, 4], one added to each
    aligned = align(PROBS)
    model_mean = m / 3 + (1 - m) * PROBS.mean(0)
    expected = PROBS * target / model_mean
    assert torch.allclose(aligned, expected / expected.sum(-1, keepdim=True))
    assert aligned.sum(-1).tolist() == pytest.approx([1.0] * 4)
    # The model claims class 0 most (running mean 0.42 against a labelled share of 1/3): its rows lose confidence.
    assert (aligned[:, 0] < PROBS[:, 0]).all()
    align(PROBS)  # a second batch moves the running mean again
    assert align.model_mean.tolist() == pytest.approx((m * model_mean + (1 - m) * PROBS.mean(0)).tolist())


def test_pseudo_label_loss_masks_rows_below_threshold():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.5, 3.0]])
    pseudo = torch.tensor([0, 2, 2])
    mask = torch.tensor([True, False, True])
    ce = lambda row, c: -math.log(math.exp(logits[row, c]) / sum(math.exp(v) for v in logits[row]))  # noqa: E731
    expected = (ce(0, 0) + 0.0 + ce(2, 2)) / 3  # averaged over every row, masked ones count zero
    assert float(pseudo_label_loss(logits, pseudo, mask)) == pytest.approx(expected)
    assert float(pseudo_label_loss(logits, pseudo, torch.zeros(3, dtype=torch.bool))) == 0.0
    assert float(pseudo_label_loss(logits, pseudo, torch.ones(3, dtype=torch.bool))) == pytest.approx(
        float(F.cross_entropy(logits, pseudo)))


def test_epoch_figures_by_hand():
    semi = SemiSupervisedConfig(threshold=0.8, warmup_epochs=1)
    figures = PseudoLabelling(semi, num_classes=3, rows=4, steps_per_epoch=1, truth=torch.tensor([0, 2, UNKNOWN, 0]))
    mask = figures.threshold.mask(PROBS, torch.arange(4))  # [F, T, F, T]
    figures.count(PROBS.argmax(-1), mask, figures.truth)  # pseudo-labels [0, 1, 2, 0]
    epoch = figures.end_epoch(0)
    assert epoch == {"epoch": 1, "warmup": True, "threshold": pytest.approx(0.8), "mask_rate": 0.5,
                     "pseudo_label_accuracy": 0.5, "pseudo_label_accuracy_all": pytest.approx(2 / 3)}
    assert figures.end_epoch(1)["mask_rate"] is None  # the tallies start again each epoch


def test_paired_sampler_cycles_the_smaller_side_deterministically():
    labelled = GroupBatchSampler(np.arange(6), 4, shuffle=True, seed=0)
    unlabelled = GroupBatchSampler(np.arange(40), 8, shuffle=True, seed=1)
    sampler = PairedSampler(labelled, unlabelled)
    first = list(sampler)
    assert len(first) == len(sampler) == 5
    assert sorted(r for _, rows in first for r in rows) == list(range(40))  # one pass over the larger side
    assert first == list(sampler)  # same epoch, same batches
    sampler.set_epoch(1)
    assert list(sampler) != first


@pytest.mark.parametrize(("adaptive", "extra"), [
    ("none", {}), ("freematch", {}), ("flexmatch", {}),
    ("none", {"distribution_alignment": True})])
def test_tiny_run_reports_pseudo_labels_per_epoch(tmp_path, adaptive, extra):
    frame = blanked_table(tmp_path)
    semi = {"adaptive": adaptive, "ratio": 2, "warmup_epochs": 1, "truth_column": "label_hidden",
            "modality_dropout": 0.3, **extra}
    if adaptive != "freematch":
        semi["threshold"] = 0.5
    config = tiny_config(tmp_path, "unused.csv", semi_supervised=semi, **{"train.epochs": 3})
    predictor = Predictor(config).fit(frame)  # tiny_image is trainable: the strong view jitters pixels
    summary = predictor.fit_summary["semi_supervised"]
    assert (summary["labelled"], summary["unlabelled"]) == (48, 24)
    assert [e["epoch"] for e in summary["epochs"]] == [1, 2, 3]
    assert [e["warmup"] for e in summary["epochs"]] == [True, False, False]
    for epoch in summary["epochs"]:
        assert 0.0 <= epoch["mask_rate"] <= 1.0 and 0.0 <= epoch["pseudo_label_accuracy_all"] <= 1.0
        assert 0.0 <= epoch["threshold"] <= 1.0
    assert predictor.evaluate(frame[frame["answer"].notna()])["metrics"]["accuracy"] >= 0.0


@pytest.mark.parametrize(("section", "field"), [
    ({"ratio": 0}, "semi_supervised.ratio"),
    ({"adaptive": "mean"}, "semi_supervised.adaptive"),
    ({"threshold": 1.5}, "semi_supervised.threshold"),
    ({"adaptive": "freematch", "threshold": 0.9}, "threshold: FreeMatch sets its own"),
    ({"ema": 0.99}, "ema: read by adaptive freematch and distribution_alignment only"),
    ({"warmup": 2}, "semi_supervised.warmup"),
])
def test_config_errors_name_the_field(tmp_path, section, field):
    with pytest.raises(ConfigError, match=field):
        parse_config(tiny_config(tmp_path, "t.csv", semi_supervised=section))


def test_the_section_needs_classification(tmp_path):
    with pytest.raises(ConfigError, match="semi_supervised: pseudo-labels need task: classification"):
        parse_config(tiny_config(tmp_path, "t.csv", task="regression", semi_supervised={}))
    parse_config(tiny_config(tmp_path, "t.csv", task="regression", semi_supervised={"enabled": False}))


def test_strong_view_drops_features_and_jitters_pixels_but_keeps_rows():
    from mmfuse.data.batching import Batch, ModalityBatch
    from mmfuse.features import Features
    from mmfuse.semi_supervised import strong_view

    torch.manual_seed(0)
    present = torch.ones(64, dtype=torch.bool)
    text = Features(pooled=torch.ones(64, 32), tokens=torch.ones(64, 5, 32), present=present)
    pixels = torch.full((2, 3, 16, 16), 100, dtype=torch.uint8)
    pixels[:, :, 4:12, 4:12] = 250
    batch = Batch(rows=torch.arange(64), target=None, modalities={
        "text": ModalityBatch(present=present, features=text),
        "image": ModalityBatch(present=present, prepared={"pixels": pixels}, inverse=torch.arange(64) % 2)})
    semi = SemiSupervisedConfig(modality_dropout=0.0, feature_dropout=0.5, image_augment=True)
    strong = strong_view(batch, semi)
    pooled = strong.modalities["text"].features.pooled
    assert set(pooled.unique().tolist()) == {0.0, 2.0}  # inverted dropout: kept values scaled by 1 / (1 - p)
    assert 0.35 < (pooled == 0).float().mean().item() < 0.65
    assert strong.modalities["text"].present.all() and strong.rows.tolist() == batch.rows.tolist()
    assert not torch.equal(strong.modalities["image"].prepared["pixels"], pixels)  # moved / re-lit
    assert strong.modalities["image"].prepared["pixels"].shape == pixels.shape
    plain = strong_view(batch, SemiSupervisedConfig(modality_dropout=0.0, image_augment=False))
    assert torch.equal(plain.modalities["text"].features.pooled, text.pooled)  # feature_dropout 0: untouched
