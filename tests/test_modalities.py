"""The modality registry: every registered modality is tested by being registered — its table cells
read and checked, its cache keyed by content, its absence masked, its encoder config in the tree."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from mmfuse.config import Config, DataConfig, load_config
from mmfuse.data.manifest import load_manifest
from mmfuse.dataset import build_dataset
from mmfuse.encoders import available_encoders, create_encoder
from mmfuse.encoders.cache import FeatureCache, content_hash
from mmfuse.errors import ConfigError
from mmfuse.modalities import MODALITIES

NAMES = list(MODALITIES)


def tiny_encoder(modality: str):
    """Each modality ships a tiny random encoder named tiny_<modality> for tests (no download)."""
    assert f"tiny_{modality}" in available_encoders(modality)
    return create_encoder(modality, f"tiny_{modality}", trainable=False)


def example(modality: str, folder: Path, index: int = 0):
    value = MODALITIES[modality].example_file(folder, index)
    return str(value) if isinstance(value, Path) else value


@pytest.mark.parametrize("modality", NAMES)
def test_config_tree_has_the_modality(modality):
    config = Config()
    assert hasattr(config.data.columns, modality) and hasattr(config.encoders, modality)
    spec = MODALITIES[modality]
    assert getattr(config.encoders, modality).name in available_encoders(modality)
    for field, (_, default, _) in spec.limits.items():
        assert getattr(config.data, field) == default
    with pytest.raises(ConfigError, match=f"encoders.{modality}"):
        load_config(None, [f"encoders.{modality}.nonsense=1"])


@pytest.mark.parametrize("modality", NAMES)
def test_cells_are_read_and_checked(modality, tmp_path):
    spec = MODALITIES[modality]
    good = example(modality, tmp_path)
    rows = [{modality: good, "label": "a"}, {modality: None, "label": "b"}]
    if spec.is_file:
        garbage = tmp_path / "garbage.bin"
        garbage.write_text("<html><body>not found</body></html>")
        rows += [{modality: str(garbage), "label": "c"}, {modality: str(tmp_path / "missing"), "label": "d"}]
    data = DataConfig(columns={m: (m if m == modality else None) for m in NAMES})
    manifest = load_manifest(pd.DataFrame(rows), data, task="classification", modalities=[modality])
    assert manifest.frame["label"].tolist() == ["a"]  # the row without the modality has nothing
    reasons = {bad.row: (bad.field, bad.reason) for bad in manifest.bad_rows}
    assert reasons[2] == ("row", f"no {modality}")
    if spec.is_file:
        assert reasons[3][0] == modality and "HTML" in reasons[3][1]
        assert reasons[4][0] == modality and "not found" in reasons[4][1]


@pytest.mark.parametrize("modality", NAMES)
def test_cache_is_keyed_by_content_not_name(modality, tmp_path):
    spec = MODALITIES[modality]
    if not spec.is_file:
        assert content_hash(modality, "a b") != content_hash(modality, "a c")
        return
    first = Path(example(modality, tmp_path, 0))
    renamed = tmp_path / ("renamed" + first.suffix)
    shutil.copy(first, renamed)
    assert content_hash(modality, first) == content_hash(modality, renamed)
    encoder = tiny_encoder(modality)
    cache = FeatureCache(tmp_path / "cache")
    load = lambda values: spec.load(values, DataConfig())  # noqa: E731
    before = cache.features(encoder, [str(first)], load).pooled
    assert cache.last_stats["computed"] == 1
    again = cache.features(encoder, [str(renamed)], load).pooled
    assert cache.last_stats["computed"] == 0 and torch.equal(before, again)
    (tmp_path / "other").mkdir()
    shutil.copy(example(modality, tmp_path / "other", 1), first)
    changed = cache.features(encoder, [str(first)], load).pooled  # same name, new content: recomputed
    assert cache.last_stats["computed"] == 1 and not torch.equal(before, changed)


@pytest.mark.parametrize("modality", NAMES)
@pytest.mark.parametrize("trainable", [False, True])
def test_absent_rows_are_masked_never_zero_filled(modality, trainable, tmp_path):
    encoder = tiny_encoder(modality).set_trainable(trainable)
    frame = pd.DataFrame({modality: [example(modality, tmp_path, 0), None, example(modality, tmp_path, 1)],
                          "label": [None] * 3})
    dataset = build_dataset(frame, {modality: encoder}, task="classification", labels=[], data=DataConfig(),
                            cache=FeatureCache(tmp_path / "cache"), group_by_image=False)
    batch = dataset[[0, 1, 2]]
    assert batch.modalities[modality].present.tolist() == [True, False, True]
