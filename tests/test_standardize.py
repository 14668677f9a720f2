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
