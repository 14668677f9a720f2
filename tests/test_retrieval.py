"""Retrieval metrics against hand-computed cases (relevance by equal captions, pessimistic ties)."""
import numpy as np
import pytest

from mmfuse.align.retrieval import (caption_relevance, first_relevant_rank, pair_retrieval_metrics,
                                    retrieval_metrics)


def test_ranks_of_a_hand_made_similarity_matrix():
    # 3 texts x 3 images, text t describes image t.
    sim = np.array([[0.9, 0.1, 0.2],    # text 0: image 0 first            -> rank 1
                    [0.8, 0.3, 0.5],    # text 1: images 0, 2 ahead of it  -> rank 3
                    [0.1, 0.7, 0.6]])   # text 2: image 1 ahead            -> rank 2
    metrics = retrieval_metrics(sim, np.eye(3, dtype=bool), ks=(1, 2))
    assert metrics["t2i_R@1"] == pytest.approx(1 / 3)
    assert metrics["t2i_R@2"] == pytest.approx(2 / 3)
    assert metrics["t2i_medR"] == 2.0
    # image -> text reads the columns: image 0 [.9 .8 .1] -> 1; image 1 [.1 .3 .7] -> 2 (text 2 ahead);
    # image 2 [.2 .5 .6] -> 1.
    assert metrics["i2t_R@1"] == pytest.approx(2 / 3)
    assert metrics["i2t_medR"] == 1.0


def test_an_image_is_relevant_to_every_equal_caption():
    captions = ["a red circle", "a red circle", "a blue square"]
    relevant = caption_relevance(captions, [["a red circle"], ["a blue square"], ["a red circle"]])
    assert relevant.tolist() == [[True, False, True], [True, False, True], [False, True, False]]
    # Text 1 ("a red circle") scores image 2 (also a red circle) highest: that is a hit at rank 1,
    # although image 2 is not the image it was paired with.
    sim = np.array([[0.9, 0.5, 0.1], [0.2, 0.5, 0.9], [0.3, 0.8, 0.4]])
    assert first_relevant_rank(sim, relevant).tolist() == [1, 1, 1]


def test_ties_with_irrelevant_items_count_against_the_query():
    # A constant embedding must not look perfect: every query ties with all 3 irrelevant items.
    ranks = first_relevant_rank(np.zeros((4, 4)), np.eye(4, dtype=bool))
    assert ranks.tolist() == [4, 4, 4, 4]
    assert retrieval_metrics(np.zeros((4, 4)), np.eye(4, dtype=bool))["t2i_R@1"] == 0.0


def test_pair_metrics_deduplicate_images_and_caption_strings():
    # Pairs: two images of "a", one of "b"; the embeddings make image 'y' look like "b".
    images = ["x", "y", "z"]
    captions = ["a", "a", "b"]
    image_vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    text_vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    metrics = pair_retrieval_metrics(image_vectors, text_vectors, images, captions, ks=(1,))
    # text->image: both "a" queries find x first (hit); "b" ties y (irrelevant) with z -> rank 2.
    assert metrics["t2i_R@1"] == pytest.approx(2 / 3)
    # image->text over the 2 distinct captions: x -> "a" (hit), y -> "b" first (miss), z -> "b" (hit).
    assert metrics["i2t_R@1"] == pytest.approx(2 / 3)
    assert metrics["i2t_medR"] == 1.0


def test_a_query_without_a_relevant_item_is_an_error():
    with pytest.raises(ValueError, match="relevant"):
        first_relevant_rank(np.zeros((2, 2)), np.array([[True, False], [False, False]]))
