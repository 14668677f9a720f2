"""Every registered fusion strategy, checked against the Fusion contract.

Parametrized over available_fusions(): a new strategy is tested by being registered.
"""
from __future__ import annotations

import pytest
import torch

from mmfuse.errors import ConfigError
from mmfuse.features import Features
from mmfuse.fusion import Fusion, available_fusions, create_fusion
from mmfuse.fusion.base import MissingEmbedding

B, DIM = 5, 16
IN_DIMS = {"image": 12, "text": 10}
TEXT_LENGTHS = [6, 3, 5, 2, 4]  # text padded to T=6
ABSENT_ROWS = [1, 3]
FUSIONS = available_fusions()


def make_feats(seed: int = 0, *, tokens: bool = True, grad: bool = False,
               audio: bool = False) -> dict[str, Features]:
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=g).requires_grad_(grad)  # noqa: E731
    text_mask = torch.arange(6)[None, :] < torch.tensor(TEXT_LENGTHS)[:, None]
    feats = {
        "image": Features(rand(B, 12), rand(B, 4, 12) if tokens else None),
        "text": Features(rand(B, 10), rand(B, 6, 10) if tokens else None, text_mask if tokens else None),
    }
    if audio:
        feats["audio"] = Features(rand(B, 7))  # a third modality, pooled only
    return feats


def build(name: str, in_dims: dict[str, int] = IN_DIMS, **options) -> Fusion:
    torch.manual_seed(0)
    return create_fusion(name, in_dims=in_dims, dim=DIM, **options)


def absent(feats: dict[str, Features], modality: str, rows: list[int]) -> dict[str, Features]:
    present = torch.ones(B, dtype=torch.bool)
    present[rows] = False
    return {**feats, modality: feats[modality].with_present(present)}


def perturb(f: Features, rows: list[int], seed: int = 1) -> Features:
    """Large random values written into `rows` of pooled and tokens."""
    g = torch.Generator().manual_seed(seed)
    pooled, tokens = f.pooled.clone(), None if f.tokens is None else f.tokens.clone()
    pooled[rows] = 1e3 * torch.randn(pooled[rows].shape, generator=g)
    if tokens is not None:
        tokens[rows] = 1e3 * torch.randn(tokens[rows].shape, generator=g)
    return Features(pooled, tokens, f.mask, f.present)


@pytest.mark.parametrize("name", FUSIONS)
def test_shape_and_finite(name):
    fusion = build(name)
    out = fusion(make_feats())
    assert out.shape == (B, fusion.out_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("tokens", [True, False], ids=["tokens", "pooled_only"])
@pytest.mark.parametrize("name", FUSIONS)
def test_every_modality_gets_gradient(name, tokens):
    fusion = build(name, dropout=0.0)
    feats = make_feats(tokens=tokens, grad=True)
    weights = torch.randn(B, fusion.out_dim, generator=torch.Generator().manual_seed(2))
    (fusion(feats) * weights).sum().backward()
    for m, f in feats.items():
        grads = [t.grad for t in (f.pooled, f.tokens) if t is not None and t.grad is not None]
        assert any(grad.abs().sum() > 0 for grad in grads), f"{name}: no gradient reaches {m}"


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("name", FUSIONS)
def test_absent_modality_is_ignored_but_not_forgotten(name, modality):
    fusion = build(name).eval()
    feats = make_feats()
    with torch.no_grad():
        full = fusion(feats)
        missing = absent(feats, modality, ABSENT_ROWS)
        out = fusion(missing)
        garbage = {**missing, modality: perturb(missing[modality], ABSENT_ROWS)}
        out_garbage = fusion(garbage)
    # absent values are never read, on any row
    torch.testing.assert_close(out_garbage, out)
    # rows that have the modality are untouched by other rows lacking it
    kept = [r for r in range(B) if r not in ABSENT_ROWS]
    torch.testing.assert_close(out[kept], full[kept])
    # ... and absence does change the rows that lack it
    for r in ABSENT_ROWS:
        assert not torch.allclose(out[r], full[r]), f"{name}: absent {modality} on row {r} changed nothing"


# Low-rank tensor fusion models absence as TFN does, by the input [0...0; 1], so there an absent
# modality and an all-zero one coincide by construction.
ABSENCE_IS_ZERO_INPUT = {"low_rank_tensor"}


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("name", FUSIONS)
def test_absent_is_not_zeros_posing_as_data(name, modality):
    """Masking, not zero-filling: an absent row differs from a present row of all-zero values."""
    if name in ABSENCE_IS_ZERO_INPUT:
        pytest.skip("absence is the zero input by this strategy's definition")
    fusion = build(name).eval()
    feats = make_feats()
    f = feats[modality]
    pooled, tokens = f.pooled.clone(), f.tokens.clone()
    pooled[ABSENT_ROWS] = 0.0
    tokens[ABSENT_ROWS] = 0.0
    with torch.no_grad():
        out_absent = fusion(absent(feats, modality, ABSENT_ROWS))
        out_zeros = fusion({**feats, modality: Features(pooled, tokens, f.mask)})
    for r in ABSENT_ROWS:
        assert not torch.allclose(out_absent[r], out_zeros[r]), \
            f"{name}: absent {modality} == zeros on row {r}"


def pad(f: Features, extra: int) -> Features:
    """The same Features with `extra` more padded (mask False) tokens of large random values."""
    noise = 1e3 * torch.randn(f.batch_size, extra, f.dim, generator=torch.Generator().manual_seed(4))
    mask = torch.cat([f.mask, torch.zeros(f.batch_size, extra, dtype=torch.bool)], dim=1)
    return Features(f.pooled, torch.cat([f.tokens, noise], dim=1), mask, f.present)


@pytest.mark.parametrize("name", FUSIONS)
def test_padding_length_does_not_matter(name):
    """More padding (on both modalities, rows absent or not) changes nothing: pooling and
    attention count real tokens only."""
    fusion = build(name).eval()
    feats = absent(make_feats(), "image", ABSENT_ROWS)
    with torch.no_grad():
        out = fusion(feats)
        out_padded = fusion({m: pad(f, 3) for m, f in feats.items()})
    torch.testing.assert_close(out_padded, out)


@pytest.mark.parametrize("name", FUSIONS)
def test_nan_in_absent_rows_and_padding_stays_out_of_outputs_and_gradients(name):
    fusion = build(name, dropout=0.0)
    feats = absent(make_feats(), "image", ABSENT_ROWS)
    image, text = feats["image"], feats["text"]
    image.pooled[ABSENT_ROWS] = float("nan")
    image.tokens[ABSENT_ROWS] = float("nan")
    text.tokens[~text.mask] = float("nan")
    fusion(feats).square().sum().backward()
    for pname, param in fusion.named_parameters():
        assert param.grad is None or torch.isfinite(param.grad).all(), f"{name}: NaN gradient in {pname}"


@pytest.mark.parametrize("name", FUSIONS)
def test_padded_text_tokens_are_ignored(name):
    fusion = build(name).eval()
    feats = make_feats()
    text = feats["text"]
    noisy = text.tokens.clone()
    noisy[~text.mask] = 1e3 * torch.randn(int((~text.mask).sum()), 10, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = fusion(feats)
        out_noisy = fusion({**feats, "text": Features(text.pooled, noisy, text.mask)})
    torch.testing.assert_close(out_noisy, out)


@pytest.mark.parametrize("modality", ["image", "text"])
@pytest.mark.parametrize("name", FUSIONS)
def test_one_modality(name, modality):
    fusion = build(name, in_dims={modality: IN_DIMS[modality]})
    out = fusion({modality: make_feats()[modality]})
    assert out.shape == (B, fusion.out_dim) and torch.isfinite(out).all()


@pytest.mark.parametrize("name", FUSIONS)
def test_modality_missing_from_input_counts_as_absent(name):
    fusion = build(name).eval()
    feats = make_feats()
    with torch.no_grad():
        out = fusion({"image": feats["image"]})
        expected = fusion(absent(feats, "text", list(range(B))))
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("name", FUSIONS)
def test_third_modality_works(name):
    """Every strategy fuses three modalities (two-role ones take the others as contexts)."""
    fusion = build(name, in_dims={**IN_DIMS, "audio": 7})
    feats = make_feats(audio=True)
    feats["audio"].pooled.requires_grad_(True)
    out = fusion(feats)
    assert out.shape == (B, fusion.out_dim) and torch.isfinite(out).all()
    out.square().sum().backward()
    assert feats["audio"].pooled.grad.abs().sum() > 0


CONFIGS = [{**IN_DIMS, "audio": 7}, IN_DIMS, {"image": 12}, {"text": 10}]


@pytest.mark.parametrize("name", FUSIONS)
def test_learned_missing_vectors_are_used(name):
    """Where a strategy has "missing" vectors, absent rows really read them (in every
    configuration of modalities the strategy accepts)."""
    checked = 0
    for in_dims in CONFIGS:
        try:
            fusion = build(name, in_dims=in_dims).eval()
        except ConfigError:
            continue
        missing = [module for module in fusion.modules() if isinstance(module, MissingEmbedding)]
        if not missing:
            continue
        feats = {m: f for m, f in make_feats(audio=True).items() if m in in_dims}
        for m, rows in zip(sorted(feats), [[0, 3], [1, 3], [2, 3]]):  # row 3: nothing present
            feats = absent(feats, m, rows)
        with torch.no_grad():
            out = fusion(feats)
            for module in missing:
                for vector in module.vectors.values():
                    vector.add_(1.0)
            moved = fusion(feats)
        assert not torch.allclose(out, moved), f"{name} {sorted(in_dims)}: missing vectors unused"
        checked += 1
    if not checked:
        pytest.skip("no learned missing vectors")


def test_gated_one_present_modality_passes_through():
    """The gate renormalises over present modalities: alone, a modality gets gate 1."""
    fusion = build("gated").eval()
    feats = absent(make_feats(), "text", list(range(B)))
    with torch.no_grad():
        expected = torch.tanh(fusion.hidden["image"](feats["image"].pooled))
        torch.testing.assert_close(fusion(feats), expected)


def test_low_rank_tensor_equals_the_full_tensor_contraction():
    """LMF's factored product is TFN's weight applied to the outer product of [x_m; 1]."""
    fusion = build("low_rank_tensor", dropout=0.0)
    feats = absent(make_feats(), "text", ABSENT_ROWS)
    with torch.no_grad():
        ones = torch.ones(B, 1)
        x_i = torch.cat([feats["image"].pooled, ones], 1)
        x_t = torch.cat([torch.where(feats["text"].present[:, None], feats["text"].pooled, 0.0), ones], 1)
        factors = fusion.factors
        weight = torch.einsum("r,rid,rjd->ijd", fusion.rank_weights, factors["image"], factors["text"])
        expected = torch.einsum("bi,bj,ijd->bd", x_i, x_t, weight) + fusion.bias
        torch.testing.assert_close(fusion(feats), expected)


@pytest.mark.parametrize("name", FUSIONS)
def test_modality_weights_are_a_distribution(name):
    weights = build(name).modality_weights()
    if name in ("late", "weighted_sum"):
        assert weights is not None
    if weights is not None:
        assert sorted(weights) == sorted(IN_DIMS)
        assert sum(weights.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["weighted_sum", "late"])
def test_modality_weights_can_be_biased_or_fixed(name):
    prior = {m: w for m, w in zip(sorted(IN_DIMS), (0.2, 0.8))}
    biased = build(name, weights=prior)
    assert biased.modality_weights() == pytest.approx(prior)
    fixed = build(name, weights=prior, fixed_weights=True)
    for fusion in (biased, fixed):
        optimizer = torch.optim.SGD([p for p in fusion.parameters() if p.requires_grad], lr=1.0)
        fusion(make_feats()).pow(2).sum().backward()
        optimizer.step()
    assert fixed.modality_weights() == pytest.approx(prior)  # fixed: not learned
    assert biased.modality_weights() != pytest.approx(prior)  # a prior only: still learned


def test_modality_weights_must_name_every_modality():
    with pytest.raises(ConfigError, match="one weight per modality"):
        build("weighted_sum", weights={sorted(IN_DIMS)[0]: 1.0})
    with pytest.raises(ConfigError, match="positive"):
        build("weighted_sum", weights={m: -1.0 for m in IN_DIMS})


def test_late_wants_a_linear_head():
    assert build("late").wants_linear_head
    assert not build("film").wants_linear_head


@pytest.mark.parametrize("pool", ["sum", "mean", "attention"])
def test_film_pools(pool):
    fusion = build("film", pool=pool)
    out = fusion(make_feats())
    assert out.shape == (B, DIM) and torch.isfinite(out).all()


def test_film_image_absent_rows_come_from_the_text():
    fusion = build("film").eval()
    feats = make_feats()
    with torch.no_grad():
        no_image = fusion(absent(feats, "image", list(range(B))))
        other_text = fusion(absent(make_feats(seed=3), "image", list(range(B))))
    assert not torch.allclose(no_image, other_text)  # depends on the text


# Computed once from the implementation below; update only for an intended change to film.
GOLDEN_FILM_SUM = 25.1007  # re-pinned when film moved onto TargetContextFusion (init order changed)


def test_film_without_text_is_the_plain_image_path():
    """Text absent on a row: gamma = beta = 0, i.e. what the model computes when its FiLM layer
    outputs zeros for every row."""
    fusion = build("film").eval()
    feats = make_feats()
    with torch.no_grad():
        no_text = fusion(absent(feats, "text", list(range(B))))
        last = fusion.film["text"][-1]
        last.weight.zero_()
        last.bias.zero_()
        plain = fusion(feats)
    torch.testing.assert_close(no_text, plain)


def test_film_golden_value():
    """Pins the default model: a silent change in film's computation or init fails here."""
    torch.manual_seed(0)
    fusion = create_fusion("film", in_dims=IN_DIMS, dim=DIM).eval()
    with torch.no_grad():
        out = fusion(make_feats(seed=0))
    assert out.sum().item() == pytest.approx(GOLDEN_FILM_SUM, abs=1e-3)


@pytest.mark.parametrize("name", FUSIONS)
def test_tokens_a_fusion_says_it_does_not_read_change_nothing(name):
    """token_modalities() decides which cached tokens are loaded: leaving the others out must not
    change the output."""
    fusion = build(name, in_dims={**IN_DIMS, "audio": 7}).eval()
    feats = make_feats(audio=True)
    kept = {m: f if m in fusion.token_modalities() else Features(f.pooled, present=f.present)
            for m, f in feats.items()}
    with torch.no_grad():
        torch.testing.assert_close(fusion(kept), fusion(feats))


def test_two_role_fusion_refuses_a_modality_without_a_role():
    with pytest.raises(ConfigError, match="'audio' has none"):
        build("film", in_dims={**IN_DIMS, "audio": 7}, context="text")


def test_film_contexts_add_up_and_each_counts_alone():
    """Text and audio both modulate the image: dropping either changes the output, and a row
    with neither is the plain image path."""
    fusion = build("film", in_dims={**IN_DIMS, "audio": 7}).eval()
    feats = make_feats(audio=True)
    with torch.no_grad():
        both = fusion(feats)
        no_audio = fusion(absent(feats, "audio", list(range(B))))
        no_text = fusion(absent(feats, "text", list(range(B))))
        neither = fusion(absent(absent(feats, "audio", list(range(B))), "text", list(range(B))))
        for head in fusion.film.values():
            head[-1].weight.zero_()
            head[-1].bias.zero_()
        plain = fusion(feats)
    assert not torch.allclose(both, no_audio) and not torch.allclose(both, no_text)
    torch.testing.assert_close(neither, plain)


def test_unknown_fusion_names_the_available_ones():
    with pytest.raises(ConfigError, match="available: .*film"):
        create_fusion("nope", in_dims=IN_DIMS)


@pytest.mark.parametrize("options", [{"poool": "sum"}, {"pool": "max"}, {"target": "audio"},
                                     {"target": "text", "context": "text"}, {"heads": 5}])
def test_bad_options_raise_config_error(options):
    name = "transformer" if "heads" in options else "film"
    with pytest.raises(ConfigError):
        create_fusion(name, in_dims=IN_DIMS, dim=DIM, **options)


def test_empty_in_dims_raises_config_error():
    with pytest.raises(ConfigError):
        create_fusion("concat", in_dims={})
