import pytest

from mmfuse.config import apply_overrides, dump_config, load_config, parse_config
from mmfuse.errors import ConfigError


def test_defaults_are_the_easy_vqa_demo_model():
    config = parse_config({})
    assert config.fusion.name == "film" and config.encoders.image.name == "small_cnn"
    assert config.modalities() == ["image", "text"]


def test_misspelt_field_names_the_field():
    with pytest.raises(ConfigError, match=r"train\.epoch"):
        parse_config({"train": {"epoch": 3}})


def test_bad_literal_lists_allowed_values():
    with pytest.raises(ConfigError, match="classification"):
        parse_config({"task": "segmentation"})


def test_unknown_fusion_lists_available():
    with pytest.raises(ConfigError, match="concat"):
        parse_config({"fusion": {"name": "magic"}})


def test_text_encoder_in_image_slot_is_refused():
    with pytest.raises(ConfigError, match="text encoder"):
        parse_config({"encoders": {"image": {"name": "minilm"}}})


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("fusion: {name: concat}\n")
    config = load_config(path, ["train.epochs=3", "fusion.options={}", "encoders.text=null", "data.labels=[a, b]"])
    assert config.train.epochs == 3 and config.encoders.text is None and config.data.labels == ["a", "b"]
    assert config.modalities() == ["image"]


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["train.epochs"])


def test_dump_round_trips():
    config = parse_config({"fusion": {"name": "late", "dim": 32}})
    import yaml

    assert parse_config(yaml.safe_load(dump_config(config))) == config


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
