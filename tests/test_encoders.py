import torch
from PIL import Image

from mmfuse.encoders import available_encoders, create_encoder


def images(n: int, size: int = 20) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), (i * 40 % 255, 100, 200)) for i in range(n)]


def test_small_cnn_tokens_are_the_spatial_grid():
    encoder = create_encoder("image", "small_cnn", image_size=64)
    feats = encoder(encoder.prepare(images(2, 70)))
    assert feats.tokens.shape == (2, 16, 128) and feats.pooled.shape == (2, 128)
    assert torch.allclose(feats.pooled, feats.tokens.mean(1), atol=1e-6)
    assert encoder.trainable  # from scratch: trains by default


def test_prepare_keeps_uint8_pixels_at_the_configured_size():
    encoder = create_encoder("image", "tiny_image", image_size=16)
    prepared = encoder.prepare(images(3, 40))
    assert prepared["pixels"].dtype == torch.uint8 and prepared["pixels"].shape == (3, 3, 16, 16)


def test_fingerprint_changes_with_preprocessing_and_weights():
    a = create_encoder("image", "tiny_image", image_size=16, trainable=False)
    torch.manual_seed(0)
    b = create_encoder("image", "tiny_image", image_size=24, trainable=False)
    assert a.fingerprint() != b.fingerprint()
    c = create_encoder("image", "tiny_image", image_size=16, trainable=False)
    c.load_state_dict(a.state_dict())
    assert c.fingerprint() == a.fingerprint()


def test_trainable_flag_controls_gradients():
    frozen = create_encoder("image", "tiny_image", trainable=False)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_bow_vocabulary_round_trips_through_extra_state():
    encoder = create_encoder("text", "bow", dim=8)
    encoder.fit(["what colour is it", "what shape is it", "is it red"])
    prepared = encoder.prepare(["what colour is it", "unknown words here"])
    assert prepared["input_ids"][1].tolist() == [1, 1, 1, 0]  # all unknown, then padding
    again = create_encoder("text", "bow", dim=8)
    again.load_extra_state(encoder.extra_state())
    again.load_state_dict(encoder.state_dict())
    assert torch.equal(again.prepare(["what colour is it"])["input_ids"], prepared["input_ids"][:1])
    feats = again(again.prepare(["what colour is it", "red"]))
    assert feats.mask.tolist() == [[True] * 4, [True, False, False, False]]


def test_gru_masks_padding():
    encoder = create_encoder("text", "gru", dim=8)
    encoder.fit(["a b c d", "a"])
    feats = encoder(encoder.prepare(["a b c d", "a"]))
    alone = encoder(encoder.prepare(["a"]))
    assert torch.allclose(feats.pooled[1], alone.pooled[0], atol=1e-5)  # padding does not leak in


def write_tiny_bert(folder):
    """A tiny random BERT and its tokenizer, saved the way a hub or package folder holds them."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "what", "color", "is", "the", "shape", "?"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(vocab))
    BertTokenizerFast(vocab_file=str(folder / "vocab.txt")).save_pretrained(folder)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)
    return folder


def test_hf_encoder_loads_a_local_model(tmp_path):
    """The real transformers loading path, on a tiny random BERT written to disk here."""
    write_tiny_bert(tmp_path)
    encoder = create_encoder("text", f"hf:{tmp_path}", max_tokens=8)
    assert not encoder.trainable and encoder.out_dim == 16
    feats = encoder(encoder.prepare(["what color is the shape?", "shape"]))
    assert feats.tokens.shape[0] == 2 and feats.mask.sum(1).tolist() == [8, 3]  # truncated to 8 tokens


def test_timm_encoder_builds_any_timm_model():
    encoder = create_encoder("image", "timm:test_resnet", image_size=32, pretrained=False)
    feats = encoder(encoder.prepare(images(2)))
    assert feats.tokens.dim() == 3 and feats.pooled.shape == (2, encoder.out_dim)


def test_packaged_backbones_give_real_features():
    """The ImageNet EfficientNet-Lite0 and MiniLM that ship inside PyPI packages."""
    image = create_encoder("image", "efficientnet_lite0", image_size=64)
    feats = image(image.prepare(images(2, 64)))
    assert feats.pooled.shape == (2, 1280) and feats.tokens.shape == (2, 4, 1280)
    text = create_encoder("text", "minilm")
    out = text(text.prepare(["what color is the shape?", "what is the color of the shape?", "is there a cat?"]))
    sims = torch.nn.functional.normalize(out.pooled, dim=-1) @ torch.nn.functional.normalize(out.pooled, dim=-1).T
    assert sims[0, 1] > sims[0, 2]  # paraphrases are closer than another question


def test_registry_lists_encoders_per_modality():
    assert {"small_cnn", "efficientnet_lite0", "timm", "tiny_image"} <= set(available_encoders("image"))
    assert {"minilm", "hf", "bow", "gru", "tiny_text"} <= set(available_encoders("text"))


def test_frozen_transformer_is_loaded_only_to_compute_new_features(tmp_path):
    """A run whose texts are all cached never loads the model (MiniLM: 6.7 s and ~90 MB); the
    fingerprint hashes the model's files, so new weights still mean new features."""
    from mmfuse.encoders.cache import FeatureCache

    model = write_tiny_bert(tmp_path / "bert")
    cache = FeatureCache(tmp_path / "cache")
    texts = ["what color is the shape?", "shape"]
    first_encoder = create_encoder("text", f"hf:{model}")
    first = cache.features(first_encoder, texts, list)
    assert cache.last_stats["computed"] == 2 and first_encoder.model is not None
    first_encoder.release()
    assert first_encoder.model is None and not first_encoder.state_dict()

    again_encoder = create_encoder("text", f"hf:{model}")
    again = cache.features(again_encoder, texts, list)
    assert cache.last_stats["computed"] == 0 and torch.equal(again.pooled, first.pooled)
    assert again_encoder.model is None  # everything came from the cache
    # Loaded again when a new text needs it, with the same outputs.
    direct = again_encoder.eval()(again_encoder.prepare(texts))
    assert torch.allclose(direct.pooled, first.pooled, atol=1e-6)
    # A model saved before file fingerprints recorded the hash of the weights in memory: still accepted.
    assert again_encoder.matches_fingerprint(again_encoder.weights_digest())
    assert not again_encoder.matches_fingerprint("0123456789abcdef")
    again_encoder.release()
    again_encoder.load_weights()  # what a server does before it says it is ready
    assert again_encoder.model is not None and again_encoder.model.training == again_encoder.training

    # Other weights under the same folder: another fingerprint, features computed anew.
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    BertModel(BertConfig(vocab_size=11, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(model)
    changed = create_encoder("text", f"hf:{model}")
    assert changed.fingerprint() != again_encoder.fingerprint()
    cache.features(changed, texts, list)
    assert cache.last_stats["computed"] == 2


def test_gelu_without_onednn_state_equals_torch_gelu():
    """mmfuse.activations.gelu is exact GELU (heads run it on a new row count every batch)."""
    from mmfuse.activations import GELU, gelu

    x = torch.randn(517, 256, dtype=torch.float64) * 4
    assert torch.allclose(gelu(x), torch.nn.functional.gelu(x), atol=1e-12)
    x32 = torch.randn(300, 64, requires_grad=True)
    gelu(x32).sum().backward()
    reference = x32.detach().clone().requires_grad_(True)
    torch.nn.functional.gelu(reference).sum().backward()
    assert torch.allclose(x32.grad, reference.grad, atol=1e-6)
    assert GELU().state_dict() == {} and torch.nn.GELU().state_dict() == {}
