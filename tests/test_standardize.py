"""encoders.<m>.standardize: frozen features scaled per dimension with training statistics, which
are fitted once, saved with the model and used by prediction and export alike."""
from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from mmfuse import Predictor
from mmfuse.errors import ConfigError


def test_frozen_features_are_standardised_with_training_statistics(tmp_path, shapes_csv):
    config = tiny_config(tmp_path, shapes_csv, **{"encoders.text": {"name": "tiny_text", "trainable": False,
                                                                    "standardize": True}})
    predictor = Predictor(config).fit()
    scaler = predictor.model.scalers["text"]
    train = predictor._dataset(predictor.splits()["train"])
    raw = train.columns["text"].features.pooled
    assert torch.allclose(scaler.mean, raw.mean(0), atol=1e-5)
    batch = train[list(range(len(train)))]
    scaled = predictor.model.encode(batch)["text"].pooled
    rows = batch.modalities["text"].present
    assert not torch.allclose(scaled[rows], batch.modalities["text"].features.pooled[rows])
    predictor.save(tmp_path / "model")
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "model" / "model.safetensors"))
    torch.testing.assert_close(saved["scalers.text.std"], scaler.std)


def test_standardize_needs_a_frozen_encoder(tmp_path, shapes_csv):
    config = tiny_config(tmp_path, shapes_csv, **{"encoders.text": {"name": "tiny_text", "trainable": True,
                                                                    "standardize": True}})
    with pytest.raises(ConfigError, match="encoders.text.standardize needs a frozen encoder"):
        Predictor(config).fit()


def test_feature_dropout_and_noise_apply_in_training_only(tmp_path, shapes_csv):
    spec = {"name": "tiny_text", "trainable": False, "standardize": True, "feature_dropout": 0.5, "feature_noise": 0.5}
    predictor = Predictor(tiny_config(tmp_path, shapes_csv, **{"encoders.text": spec})).fit()
    model = predictor.model
    train = predictor._dataset(predictor.splits()["train"])
    batch = train[list(range(len(train)))]
    rows = batch.modalities["text"].present
    with torch.no_grad():
        model.train()
        first, second = (model.encode(batch)["text"].pooled[rows] for _ in range(2))
        model.eval()
        clean, again = (model.encode(batch)["text"].pooled[rows] for _ in range(2))
    assert not torch.allclose(first, second)  # a fresh draw each step
    assert torch.equal(clean, again)
    dropped = (first == 0).float().mean().item()  # dropout zeroes ~half; noise is then added to every value
    assert dropped < 0.05 and (first - clean).std() > 0.5  # noise of 0.5 sd on top of dropout's rescaling
    # no weights of its own: the same state dict as the model without augmentation
    from mmfuse.config import parse_config
    from mmfuse.model import build_model

    plain = parse_config(tiny_config(tmp_path, shapes_csv, **{"encoders.text": {**spec, "feature_dropout": 0.0,
                                                                                 "feature_noise": 0.0}}))
    unaugmented = build_model(plain, len(predictor.labels), encoders=dict(model.encoders))
    assert "text" in model.augment and not len(unaugmented.augment)
    assert set(model.state_dict()) == set(unaugmented.state_dict())
