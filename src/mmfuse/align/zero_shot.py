"""Zero-shot classification with an aligned model: each label becomes a prompt ("a photo of a
{label}"), and an image gets the label whose prompt embedding is nearest.

No classifier is trained, so labels (and pairs of attributes) never seen in alignment training
can still be predicted; `held_out_accuracy` reports them apart from the seen ones.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def prompts_for(labels: Sequence[str], template: str = "a photo of a {label}") -> list[str]:
    if "{label}" not in template:
        raise ValueError(f"prompt template {template!r} has no {{label}} placeholder")
    return [template.format(label=label) for label in labels]


def nearest_label(image_vectors: np.ndarray, prompt_vectors: np.ndarray,
                  labels: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(predicted label per image, (n_images, n_labels) cosine scores)."""
    scores = np.asarray(image_vectors) @ np.asarray(prompt_vectors).T
    return [labels[i] for i in scores.argmax(1)], scores


def classify(model, images: Sequence, labels: Sequence[str],
             template: str = "a photo of a {label}") -> tuple[list[str], np.ndarray]:
    """Zero-shot labels for images (paths or PIL images) with an AlignedModel."""
    labels = list(labels)
    return nearest_label(model.embed_images(images), model.embed_texts(prompts_for(labels, template)), labels)


def held_out_accuracy(predicted: Sequence[str], truth: Sequence[str], held_out: set[str],
                      n_labels: int) -> dict[str, float]:
    """Accuracy on images whose true label was held out of training, on the others, and chance."""
    predicted, truth = np.asarray(predicted, dtype=object), np.asarray(truth, dtype=object)
    unseen = np.array([t in held_out for t in truth], dtype=bool)
    correct = predicted == truth

    def mean(mask: np.ndarray) -> float:
        return float(correct[mask].mean()) if mask.any() else float("nan")

    return {"held_out_acc": mean(unseen), "seen_acc": mean(~unseen), "held_out_images": int(unseen.sum()),
            "seen_images": int((~unseen).sum()), "chance": 1.0 / n_labels}
