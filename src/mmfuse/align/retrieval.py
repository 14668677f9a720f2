"""Cross-modal retrieval metrics: Recall@K and median rank, text->image and image->text.

Relevance is a boolean matrix, not "the diagonal": an image is relevant to every caption equal to
its own (easy-VQA repeats captions; COCO gives an image five). The rank of a query is the
position of its best-scoring relevant item, counting ties with irrelevant items against the
query (1 + the number of irrelevant items scoring at least as high), so a constant embedding
scores badly instead of luckily.
"""
from __future__ import annotations

import numpy as np

KS = (1, 5, 10)


def first_relevant_rank(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """(q,) 1-based rank of the best relevant item of each query row (scores, relevant: (q, n))."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    if scores.shape != relevant.shape:
        raise ValueError(f"scores {scores.shape} and relevant {relevant.shape} differ in shape")
    if not relevant.any(1).all():
        raise ValueError("every query needs at least one relevant item")
    best = np.where(relevant, scores, -np.inf).max(1)
    ahead = (~relevant & (scores >= best[:, None])).sum(1)
    return ahead + 1


def rank_metrics(ranks: np.ndarray, prefix: str, ks: tuple[int, ...] = KS) -> dict[str, float]:
    metrics = {f"{prefix}_R@{k}": float(np.mean(ranks <= k)) for k in ks}
    metrics[f"{prefix}_medR"] = float(np.median(ranks))
    return metrics


def retrieval_metrics(similarity: np.ndarray, relevant: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """similarity, relevant: (n_texts, n_images). Returns t2i_R@k, t2i_medR, i2t_R@k, i2t_medR."""
    similarity, relevant = np.asarray(similarity), np.asarray(relevant, dtype=bool)
    return {**rank_metrics(first_relevant_rank(similarity, relevant), "t2i", ks),
            **rank_metrics(first_relevant_rank(similarity.T, relevant.T), "i2t", ks)}


def caption_relevance(captions: list[str], image_captions: list[list[str]]) -> np.ndarray:
    """(n_texts, n_images): text t is relevant to image i when it equals one of i's captions."""
    ids = {text: i for i, text in enumerate(dict.fromkeys(captions))}
    text_ids = np.array([ids[text] for text in captions])
    relevant = np.zeros((len(captions), len(image_captions)), dtype=bool)
    for column, own in enumerate(image_captions):
        relevant[:, column] = np.isin(text_ids, [ids[t] for t in own if t in ids])
    return relevant


def pair_retrieval_metrics(image_vectors: np.ndarray, text_vectors: np.ndarray, images: list[str],
                           captions: list[str], ks: tuple[int, ...] = KS) -> dict[str, float]:
    """Metrics over (image, caption) pairs; image_vectors[k] and text_vectors[k] belong to pair k.

    text->image: every caption is a query (COCO protocol) against the distinct images.
    image->text: every distinct image is a query against the distinct caption strings (a repeated
    caption is one gallery item: its copies would embed identically and only pad the ranks).
    """
    first_image: dict[str, int] = {}  # distinct image -> its first pair
    first_text: dict[str, int] = {}
    own: dict[str, list[str]] = {}  # image -> its captions
    for k, (path, caption) in enumerate(zip(images, captions)):
        first_image.setdefault(path, k)
        first_text.setdefault(caption, k)
        own.setdefault(path, []).append(caption)
    gallery = np.stack([image_vectors[k] for k in first_image.values()])
    texts = np.stack([text_vectors[k] for k in first_text.values()])
    owned = [own[path] for path in first_image]
    t2i = first_relevant_rank(np.asarray(text_vectors) @ gallery.T, caption_relevance(captions, owned))
    i2t = first_relevant_rank(gallery @ texts.T, caption_relevance(list(first_text), owned).T)
    return {**rank_metrics(t2i, "t2i", ks), **rank_metrics(i2t, "i2t", ks)}
