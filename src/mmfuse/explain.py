"""Why a model answered as it did, for one row:

- a heatmap over each spatial modality's regions: gradient x activation of the predicted class's
  logit (the per-region form of Grad-CAM, Selvaraju et al. 2017), summed over channels and clipped
  at zero, on a CNN encoder's 16x16 feature map (or the tokens the fusion reads);
- an attribution per word of each worded modality (text), by one of three methods (WORD_METHODS):
  - counterfactual (the default for a model that kept its word substitutes): the largest drop in
    the predicted class's log-odds (log p / (1 - p)) over the word's edits - deleting it, or
    replacing it by a word the training texts use between the same neighbours
    (mmfuse.word_substitutes) - with the edit that drops it most and the answer it then gets. The
    edits stay texts of the kind the model was trained on, where a blank or a deletion asks it
    about texts it never saw;
  - Integrated Gradients (Sundararajan et al. 2017, Captum's LayerIntegratedGradients) of the
    log-odds on the text encoder's token embeddings, from a baseline whose word tokens are all the
    encoder's neutral token, summed over each word's tokens; the attributions sum to the log-odds'
    change from the baseline (the default for older models);
  - occlusion: the log-odds with the word minus without it (encoders without token embeddings);
- exact Shapley values of the modalities, by masking: the predicted class's probability with each
  subset of modalities present (2^n forward passes; n <= 3 here), so they sum to
  p(all present) - p(none present).
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .features import Features
from .inference import predict_outputs
from .modalities import MODALITIES


@dataclass
class Explanation:
    prediction: str
    probability: float
    heatmaps: dict[str, list[list[float]]] = field(default_factory=dict)  # modality -> grid in [0, 1]
    words: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # modality -> (word, attribution)
    word_method: dict[str, str] = field(default_factory=dict)  # modality -> the method that gave `words`
    # modality -> per word, its most decisive edit: {"word", "edit" (the edited text), "answer"} (counterfactual)
    edits: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    shapley: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"prediction": self.prediction, "probability": self.probability, "heatmaps": self.heatmaps,
                "words": {m: [{"word": w, "attribution": a} for w, a in ws] for m, ws in self.words.items()},
                "word_method": self.word_method, "edits": self.edits, "shapley": self.shapley}


def explain_row(predictor, row: dict[str, Any], words: str = "auto") -> Explanation:
    """`row`: {modality: value} for one input (absent modalities left out); `words`: a WORD_METHODS
    name, or "auto" (counterfactual where the model kept its word substitutes, else gradients)."""
    from .tasks import create_task

    if not create_task(predictor.config.task).explainable:
        raise ValueError("explain covers classification models (the predicted class is what is explained)")
    if predictor.config.privacy.mask_pii:  # explained as the model reads it: personal data masked
        masker = predictor._pii_masker()
        row = {m: MODALITIES[m].mask_personal([v], masker)[0] for m, v in row.items()}
    scores = row_scores(predictor, [row])[0]
    target = int(scores.argmax())
    explanation = Explanation(prediction=predictor.labels[target], probability=float(scores[target]))
    explanation.heatmaps = grad_cam(predictor, row, target)
    for modality, value in row.items():
        if MODALITIES[modality].worded and isinstance(value, str) and value.strip():
            method = word_method(predictor, modality, words)
            if method == "counterfactual":
                explanation.words[modality], explanation.edits[modality] = word_counterfactuals(
                    predictor, row, modality, target)
            else:
                explanation.words[modality] = WORD_METHODS[method](predictor, row, modality, target)
            explanation.word_method[modality] = method
    explanation.shapley = modality_shapley(predictor, row, target)
    return explanation


def _frame(predictor, rows: list[dict[str, Any]]):
    columns = predictor.config.data.resolved_columns()
    return [{columns[m]: rows_value for m, rows_value in row.items()} for row in rows]


def row_scores(predictor, rows: list[dict[str, Any]]) -> torch.Tensor:
    """Class probabilities of each row, in order (a row that fails to read raises)."""
    return row_logits(predictor, rows).softmax(-1)


def _row_dataset(predictor, rows: list[dict[str, Any]]):
    """The rows read, checked and encoded as a dataset in order (a row that fails to read raises)."""
    frame = predictor.read(_frame(predictor, rows), labelled=False)
    if len(frame) != len(rows):
        raise ValueError("; ".join(b.reason for b in predictor.bad_rows[-(len(rows) - len(frame)):]))
    return predictor._dataset(frame.assign(label=None), cache=False)


def row_logits(predictor, rows: list[dict[str, Any]]) -> torch.Tensor:
    dataset = _row_dataset(predictor, rows)
    return predict_outputs(predictor.model, dataset, predictor.config, predictor.device)


def grad_cam(predictor, row: dict[str, Any], target: int, min_side: int = 16) -> dict[str, list[list[float]]]:
    """Per spatial modality, a map in [0, 1]: gradient x activation summed over channels, clipped at
    zero, on the encoder's deepest feature map at least `min_side` regions wide (a CNN's 16x16
    block rather than its final 4x4 tokens, whose 16 px cells are as large as a shape: on held-out
    shape_scenes rows the peak fell inside the named shape 88.3% of the time at 8x8, 93.3% at 16x16,
    bench/pointing.py), else on the tokens the fusion reads (cached features of a frozen encoder)."""
    model = predictor.model.eval()
    batch = _row_dataset(predictor, [row])[[0]]
    spatial = [m for m in model.modalities if MODALITIES[m].spatial and row.get(m) is not None]
    captured: dict[str, list[torch.Tensor]] = {m: [] for m in spatial}
    hooks = [module.register_forward_hook(lambda _m, _i, out, m=m: captured[m].append(out))
             for m in spatial for module in model.encoders[m].modules()
             if module is not model.encoders[m] and not list(module.children())]
    try:
        feats = model.encode(batch)
    finally:
        for hook in hooks:
            hook.remove()
    # modality -> activations in the graph, and how to lay them out as (side, side, channels)
    maps_in: dict[str, tuple[torch.Tensor, Any]] = {}
    for modality in spatial:
        part = feats[modality]
        grids = [o for o in captured[modality] if isinstance(o, torch.Tensor) and o.dim() == 4
                 and o.requires_grad and o.shape[-1] == o.shape[-2] >= min_side]
        if grids:
            maps_in[modality] = (grids[-1], lambda t: t[0].permute(1, 2, 0))  # the deepest fine-enough map
        elif part.tokens is not None:
            leaf = part.tokens.detach().requires_grad_(True)
            feats[modality] = Features(part.pooled, leaf, part.mask, part.present)
            side = math.isqrt(leaf.shape[1])
            if side * side == leaf.shape[1]:
                maps_in[modality] = (leaf, lambda t, side=side: t[0].reshape(side, side, -1))
    if not maps_in:
        return {}
    logit = model.head(model.fusion(feats))[0, target]
    grads = torch.autograd.grad(logit, [a for a, _ in maps_in.values()], allow_unused=True)
    maps = {}
    for (modality, (activation, layout)), grad in zip(maps_in.items(), grads):
        if grad is None:  # the fusion does not read this modality's regions
            continue
        cam = torch.relu((layout(activation.detach()) * layout(grad)).sum(-1))
        maps[modality] = (cam / cam.max() if cam.max() > 0 else cam).tolist()
    return maps


def word_method(predictor, modality: str, asked: str = "auto") -> str:
    """The word attribution method used for `modality`: `asked`, or for "auto" the best this model allows."""
    substitutes = predictor.word_substitutes.get(modality)
    if asked == "auto":
        if substitutes is not None and substitutes.places:  # with no alternative anywhere it is occlusion
            return "counterfactual"
        return "integrated-gradients" if hasattr(predictor.model.encoders[modality], "token_spans") else "occlusion"
    if asked not in WORD_METHODS:
        raise ValueError(f"word attributions: {asked!r} is not one of auto, {', '.join(WORD_METHODS)}")
    if asked == "counterfactual" and substitutes is None:
        raise ValueError("counterfactual word attributions need the word substitutes that training writes "
                         "(word_substitutes.json in the model directory); this model has none: train it again, "
                         "or use --words integrated-gradients")
    if asked == "integrated-gradients" and not hasattr(predictor.model.encoders[modality], "token_spans"):
        raise ValueError(f"the {modality} encoder has no token embeddings for Integrated Gradients; "
                         "use --words occlusion")
    return asked


def word_counterfactuals(predictor, row: dict[str, Any], modality: str,
                         target: int) -> tuple[list[tuple[str, float]], list[dict[str, str]]]:
    """Per word: the largest drop of the target's log-odds over its edits (deleted, or replaced by a
    word the training texts use in its place), and that edit {"word", "edit", "answer"}. Positive:
    some edit of the word takes support from the answer; negative: every edit adds to it."""
    words = row[modality].split()
    substitutes = predictor.word_substitutes[modality]
    edits = [(i, words[:i] + words[i + 1:]) for i in range(len(words))]
    edits += [(i, words[:i] + [other] + words[i + 1:])
              for i in range(len(words)) for other in substitutes.alternatives(words, i)]
    variants = [{m: v for m, v in {**row, modality: " ".join(edit) or None}.items() if v is not None}
                for _, edit in edits]
    logits = row_logits(predictor, [row, *variants])
    drops = (log_odds(logits, target)[0] - log_odds(logits[1:], target)).tolist()
    answers = logits[1:].argmax(-1).tolist()
    best: dict[int, int] = {}  # word position -> its edit with the largest drop
    for n, (i, _) in enumerate(edits):
        if i not in best or drops[n] > drops[best[i]]:
            best[i] = n
    attributions = [(word, drops[best[i]]) for i, word in enumerate(words)]
    decisive = [{"word": word, "edit": " ".join(edits[best[i]][1]), "answer": predictor.labels[answers[best[i]]]}
                for i, word in enumerate(words)]
    return attributions, decisive


IG_BATCH = 8  # interpolation steps per pass through the text encoder: bounds the memory it holds for gradients


def integrated_gradients(predictor, row: dict[str, Any], modality: str, target: int,
                         steps: int = 32) -> list[tuple[str, float]]:
    from captum.attr import LayerIntegratedGradients  # only when explaining

    model = predictor.model.eval()
    encoder = model.encoders[modality]
    text = row[modality]
    others = {m: f for m, f in model.encode(_row_dataset(predictor, [row])[[0]]).items() if m != modality}
    prepared = encoder.prepare([text])
    ids = prepared["input_ids"]
    spans = encoder.token_spans(text)
    baseline = torch.where(torch.tensor([span is None for span in spans]).unsqueeze(0), ids,
                           torch.full_like(ids, encoder.neutral_token_id))

    def log_scores(token_ids: torch.Tensor) -> torch.Tensor:
        n = token_ids.shape[0]
        inputs = {k: token_ids if k == "input_ids" else v.expand(n, *v.shape[1:]) for k, v in prepared.items()}
        feats = {m: f.select(torch.zeros(n, dtype=torch.long)) for m, f in others.items()}
        feats.update(model.scale({modality: encoder(inputs)}))
        return log_odds(model.head(model.fusion(feats)), target)

    token_scores = LayerIntegratedGradients(log_scores, encoder.word_embeddings()).attribute(
        ids, baselines=baseline, n_steps=steps, internal_batch_size=IG_BATCH)[0].sum(-1)
    return _per_word(text, spans, token_scores.tolist())


def log_odds(logits: torch.Tensor, target: int) -> torch.Tensor:
    """log p / (1 - p) of the target class, from the logits: unlike log p, it does not flatten out
    at 0 when the model is sure (log p of 1 - 1e-6 and of 1 - 1e-9 are both ~0; log-odds 13.8 and 20.7)."""
    others = torch.cat([logits[:, :target], logits[:, target + 1:]], dim=1)
    return logits[:, target] - others.logsumexp(-1)


def _per_word(text: str, spans: list[tuple[int, int] | None], token_scores: list[float]) -> list[tuple[str, float]]:
    """Token attributions summed over the whitespace-separated word each token lies in."""
    words = [(match.group(), match.start(), match.end()) for match in re.finditer(r"\S+", text)]
    totals = [0.0] * len(words)
    for span, score in zip(spans, token_scores):
        word = None if span is None else next((i for i, (_, a, b) in enumerate(words) if a <= span[0] < b), None)
        if word is not None:
            totals[word] += score
    return [(word, total) for (word, _, _), total in zip(words, totals)]


def word_occlusion(predictor, row: dict[str, Any], modality: str, target: int) -> list[tuple[str, float]]:
    words = row[modality].split()
    variants = [{**row, modality: " ".join(words[:i] + words[i + 1:]) or None} for i in range(len(words))]
    variants = [{m: v for m, v in variant.items() if v is not None} for variant in variants]
    # Log-odds: a confident model's probability moves from 0.9999 to 0.999 without a word that
    # matters and not at all without one that does not; log-odds keep them apart.
    scores = log_odds(row_logits(predictor, [row, *variants]), target)
    return [(word, float(scores[0] - scores[i + 1])) for i, word in enumerate(words)]


WORD_METHODS = {"counterfactual": word_counterfactuals, "integrated-gradients": integrated_gradients,
                "occlusion": word_occlusion}


def modality_shapley(predictor, row: dict[str, Any], target: int) -> dict[str, float]:
    present = [m for m in predictor.model.modalities if row.get(m) is not None]
    subsets = [frozenset(s) for k in range(len(present) + 1) for s in itertools.combinations(present, k)]
    rows = [{m: row[m] for m in subset} for subset in subsets]
    value = dict(zip(subsets, _subset_scores(predictor, rows, target)))
    n = len(present)
    shapley = {}
    for m in present:
        total = 0.0
        for subset in subsets:
            if m in subset:
                continue
            weight = math.factorial(len(subset)) * math.factorial(n - len(subset) - 1) / math.factorial(n)
            total += weight * (value[subset | {m}] - value[subset])
        shapley[m] = total
    return shapley


def _subset_scores(predictor, rows: list[dict[str, Any]], target: int) -> list[float]:
    """The target's probability with only each row's modalities present (one forward pass for all);
    the empty row is scored with every input masked (the model's answer prior)."""
    given = [row for row in rows if row]
    scores = iter(row_scores(predictor, given)[:, target].tolist() if given else [])
    return [next(scores) if row else float(_prior(predictor)[target]) for row in rows]


@torch.no_grad()
def _prior(predictor) -> torch.Tensor:
    """Class probabilities with every modality absent (masked, never zero-filled data)."""
    model = predictor.model.eval()
    feats = {m: Features(pooled=torch.zeros(1, e.out_dim), present=torch.zeros(1, dtype=torch.bool))
             for m, e in model.encoders.items()}
    return model.head.scores(model.head(model.fusion(model.scale(feats))))[0]


def overlay(image, grid: list[list[float]], strength: float = 0.7):
    """The image with the heatmap over it, at the image's size: transparent where the map is 0,
    through yellow to opaque red where it is highest (the image stays visible where nothing is)."""
    from PIL import Image

    heat = np.asarray(grid, dtype=np.float32)
    heat_image = Image.fromarray((heat * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    level = np.asarray(heat_image, dtype=np.float32) / 255.0
    colour = np.stack([np.full_like(level, 255), (1 - level) * 255, np.zeros_like(level),
                       level * strength * 255], axis=-1).astype(np.uint8)
    return Image.alpha_composite(image.convert("RGBA"), Image.fromarray(colour, "RGBA")).convert("RGB")
