"""Captioning: the metrics (BLEU-1..4, ROUGE-L, CIDEr-D as pycocoevalcap computes them, METEOR
through pycocoevalcap when Java is there) and the captioner (`task: caption`): an image encoder
from mmfuse's registry and a small Transformer decoder (`decoder.py`), greedy and beam search
(`search.py`), MiniLM's WordPiece (`tokens.py`), training (`train.py`), saving (`artifact.py`).
docs/captioning.md says what is here. Only the metrics are imported here: they are numpy-only,
and `mmfuse.data.scene_captions` imports them.
"""
from .metrics import CaptionScores, bleu, caption_scores, cider_d, meteor, rouge_l, tokenize

__all__ = ["CaptionScores", "bleu", "caption_scores", "cider_d", "meteor", "rouge_l", "tokenize"]
