"""Why a model answered as it did, for one row:

- a heatmap over each spatial modality's tokens (image regions): Grad-CAM (Selvaraju et al. 2017)
  on the tokens the fusion reads — the gradient of the predicted class's logit, averaged over the
  tokens, weighs each channel; the weighted sum per token, clipped at zero, is the map;
- an attribution per word of each worded modality (text), by occlusion: the predicted class's
  probability with the word minus without it (exact for this model, no baseline to choose);
- exact Shapley values of the modalities, by masking: the predicted class's probability with each
  subset of modalities present (2^n forward passes; n <= 3 here), so they sum to
  p(all present) - p(none present).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .features import Features
from .modalities import MODALITIES


@dataclass
class Explanation:
    prediction: str
    probability: float
    heatmaps: dict[str, list[list[float]]] = field(default_factory=dict)  # modality -> grid in [0, 1]
    words: dict[str, list[tuple[str, float]]] = field(default_factory=dict)  # modality -> (word, attribution)
    shapley: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"prediction": self.prediction, "probability": self.probability, "heatmaps": self.heatmaps,
                "words": {m: [{"word": w, "attribution": a} for w, a in ws] for m, ws in self.words.items()},
                "shapley": self.shapley}


def explain_row(predictor, row: dict[str, Any]) -> Explanation:
    """`row`: {modality: value} for one input (absent modalities left out)."""
    if predictor.config.task != "classification":
        raise ValueError("explain covers classification models (the predicted class is what is explained)")
    scores = _scores(predictor, [row])[0]
    target = int(scores.argmax())
    explanation = Explanation(prediction=predictor.labels[target], probability=float(scores[target]))
    explanation.heatmaps = grad_cam(predictor, row, target)
    for modality, value in row.items():
        if MODALITIES[modality].worded and isinstance(value, str) and value.strip():
            explanation.words[modality] = word_occlusion(predictor, row, modality, target)
    explanation.shapley = modality_shapley(predictor, row, target)
    return explanation


def _frame(predictor, rows: list[dict[str, Any]]):
    columns = predictor.config.data.resolved_columns()
    return [{columns[m]: rows_value for m, rows_value in row.items()} for row in rows]


def _scores(predictor, rows: list[dict[str, Any]]) -> torch.Tensor:
    """Class probabilities of each row, in order (a row that fails to read raises)."""
    frame, scores = predictor.predict_scores(_frame(predictor, rows))
    if len(frame) != len(rows):
        raise ValueError("; ".join(b.reason for b in predictor.bad_rows[-(len(rows) - len(frame)):]))
    return scores


def grad_cam(predictor, row: dict[str, Any], target: int) -> dict[str, list[list[float]]]:
    model = predictor.model.eval()
    frame = predictor.read(_frame(predictor, [row]), labelled=False)
    dataset = predictor._dataset(frame.assign(label=None), cache=False)
    batch = dataset[list(range(len(dataset)))]
    feats = model.encode(batch)
    leaves = {}
    for modality, part in feats.items():
        if MODALITIES[modality].spatial and part.tokens is not None and part.present.all():
            leaves[modality] = part.tokens.detach().requires_grad_(True)
            feats[modality] = Features(part.pooled, leaves[modality], part.mask, part.present)
    if not leaves:
        return {}
    logit = model.head(model.fusion(feats))[0, target]
    grads = torch.autograd.grad(logit, list(leaves.values()), allow_unused=True)
    maps = {}
    for (modality, tokens), grad in zip(leaves.items(), grads):
        if grad is None:  # the fusion does not read this modality's tokens
            continue
        weights = grad[0].mean(0)                             # (C,) per channel
        cam = torch.relu(tokens[0].detach() @ weights)         # (T,)
        side = math.isqrt(cam.numel())
        if side * side != cam.numel():
            continue
        cam = cam / cam.max() if cam.max() > 0 else cam
        maps[modality] = cam.reshape(side, side).tolist()
    return maps


def word_occlusion(predictor, row: dict[str, Any], modality: str, target: int) -> list[tuple[str, float]]:
    words = row[modality].split()
    variants = [{**row, modality: " ".join(words[:i] + words[i + 1:]) or None} for i in range(len(words))]
    variants = [{m: v for m, v in variant.items() if v is not None} for variant in variants]
    scores = _scores(predictor, [row, *variants])[:, target]
    return [(word, float(scores[0] - scores[i + 1])) for i, word in enumerate(words)]


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
    """The target's probability with only each row's modalities present; the empty row is scored
    with every input masked (the model's answer prior)."""
    out = []
    for row in rows:
        if row:
            out.append(float(_scores(predictor, [row])[0, target]))
        else:
            out.append(float(_prior(predictor)[target]))
    return out


@torch.no_grad()
def _prior(predictor) -> torch.Tensor:
    """Class probabilities with every modality absent (masked, never zero-filled data)."""
    model = predictor.model.eval()
    feats = {m: Features(pooled=torch.zeros(1, e.out_dim), present=torch.zeros(1, dtype=torch.bool))
             for m, e in model.encoders.items()}
    return model.head.scores(model.head(model.fusion(model.scale(feats))))[0]


def overlay(image, grid: list[list[float]], alpha: float = 0.5):
    """The image with the heatmap (red = high) blended over it, at the image's size."""
    from PIL import Image

    heat = np.asarray(grid, dtype=np.float32)
    heat_image = Image.fromarray((heat * 255).astype(np.uint8)).resize(image.size, Image.BILINEAR)
    level = np.asarray(heat_image, dtype=np.float32) / 255.0
    colour = np.stack([level * 255, np.zeros_like(level), (1 - level) * 255], axis=-1).astype(np.uint8)
    return Image.blend(image.convert("RGB"), Image.fromarray(colour), alpha)
