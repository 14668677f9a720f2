"""Captioning: the metrics so far (BLEU-1..4, ROUGE-L, CIDEr-D as pycocoevalcap computes them,
METEOR through pycocoevalcap when Java is there). The captioning model itself is not built yet;
docs/captioning.md says what is here.
"""
from .metrics import CaptionScores, bleu, caption_scores, cider_d, meteor, rouge_l, tokenize

__all__ = ["CaptionScores", "bleu", "caption_scores", "cider_d", "meteor", "rouge_l", "tokenize"]
