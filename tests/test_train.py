import torch

from mmfuse.config import parse_config
from mmfuse.data.batching import Batch, ModalityBatch
from mmfuse.errors import ConfigError
from mmfuse.features import Features
from mmfuse.train import drop_modalities, validation_score

import pytest


def batch_of(n: int, image_present: torch.Tensor) -> Batch:
    text = Features(pooled=torch.randn(n, 3))
    return Batch(rows=torch.arange(n), target=None, modalities={
        "image": ModalityBatch(present=image_present, prepared={"pixels": torch.zeros(1, 3, 2, 2)},
                               inverse=torch.zeros(n, dtype=torch.long)),
        "text": ModalityBatch(present=torch.ones(n, dtype=torch.bool), features=text),
    })


def test_modality_dropout_rates_and_never_an_empty_row():
    torch.manual_seed(0)
    image_present = torch.rand(4000) > 0.1
    out = drop_modalities(batch_of(4000, image_present), {"image": 0.3, "text": 0.3})
    image, text = out.modalities["image"].present, out.modalities["text"].present
    assert (image | text).all()                      # nobody loses everything
    assert not (image & ~image_present).any()        # absent stays absent
    assert torch.equal(out.modalities["text"].features.present, text)  # cached features agree
    # both-present rows: each modality dropped ~30% minus the restored both-dropped ~9%
    assert 0.17 < 1 - text.float().mean().item() < 0.27


def test_modality_dropout_is_checked_in_config():
    with pytest.raises(ConfigError, match="modality_dropout.audio"):
        parse_config({"train": {"modality_dropout": {"audio": 0.3}}})
    with pytest.raises(ConfigError, match=r"not in \[0, 1\)"):
        parse_config({"train": {"modality_dropout": {"image": 1.0}}})


def test_validation_scores():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]])
    assert validation_score("classification", logits, torch.tensor([0, 1, 1])) == pytest.approx(2 / 3)
    assert validation_score("regression", torch.tensor([1.0, 3.0]), torch.tensor([1.0, 1.0])) == pytest.approx(2.0)
