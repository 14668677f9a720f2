"""Caption metrics that agree with the COCO caption evaluation code (pycocoevalcap 1.2).

Our own implementation of what `pycocoevalcap`'s scorers compute, so that numbers reported by
mmfuse can be put beside published COCO numbers without installing Java or pycocoevalcap:

- BLEU-1..4 as `Bleu(4)`: corpus-level modified n-gram precision (Papineni et al. 2002) with the
  "closest" reference length and pycocoevalcap's smoothing of zero counts;
- ROUGE-L as `Rouge`: the LCS-based F-measure (Lin 2004) with beta = 1.2;
- CIDEr-D as `Cider` (which, despite its name, is CIDEr-D of Vedantam et al. 2015: clipped
  tf-idf n-gram vectors and a Gaussian length penalty, sigma = 6, times 10; idf from the
  references of the corpus being evaluated);
- METEOR only through pycocoevalcap's own `Meteor` (a Java program), when `java` is on PATH.

Inputs are as pycocoevalcap takes them: `candidates = {image_id: [caption]}` (exactly one) and
`references = {image_id: [caption, ...]}` (at least one), every caption already tokenised — lower
case, tokens separated by single spaces, no punctuation. `tokenize` does that for plain ASCII
captions the way pycocoevalcap's PTB tokenizer does (tests/test_caption_metrics.py checks both
the scores and the tokenizer against pycocoevalcap).
"""
from __future__ import annotations

import math
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from typing import Hashable, Mapping, Sequence

import numpy as np

__all__ = ["CaptionScores", "bleu", "caption_scores", "cider_d", "meteor", "ngram_counts", "rouge_l",
           "tokenize"]

Captions = Mapping[Hashable, Sequence[str]]

# ---------------------------------------------------------------------------------------------
# Tokenisation
# ---------------------------------------------------------------------------------------------

# What Stanford's PTBTokenizer (-lowerCase) writes for brackets. pycocoevalcap's punctuation list
# has these in upper case only, so after lower-casing they survive as tokens: we keep that quirk.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_CLITICS = ("n't", "'s", "'re", "'ve", "'ll", "'d", "'m")
_PUNCTUATION = "\"'`.,;:!?-"


def tokenize(text: str) -> str:
    """A caption as pycocoevalcap's PTBTokenizer + punctuation removal leaves it.

    Lower case; clitics split off as PTB does ("don't" -> "do n't", "it's" -> "it 's"); brackets
    become PTB's escapes; punctuation is dropped except inside a word or number ("well-known",
    "3.5", "1,000" stay whole). Checked against the Java tokenizer on ASCII text made of letters,
    digits, spaces and . , ; : ! ? ' " - ( ) [ ] { }. Known differences outside that: PTB keeps
    runs such as "?!" as a token, and the trailing period of abbreviations ("u.s."), and splits
    some words at an inner apostrophe.
    """
    text = text.lower()
    for bracket, escape in _BRACKETS.items():
        text = text.replace(bracket, f" {escape} ")
    text = re.sub(r"(?<=\w)n't\b", " n't", text)
    text = re.sub(r"(?<=\w)('s|'re|'ve|'ll|'d|'m)\b", r" \1", text)
    # , ; : ! ? end a token unless they sit between two digits (1,000).
    text = re.sub(r"(?<!\d)[,;:!?]|[,;:!?](?!\d)", " ", text)
    tokens = []
    for token in text.split():
        if token not in _CLITICS and token not in _BRACKETS.values():
            token = token.strip(_PUNCTUATION)
        if token:
            tokens.append(token)
    return " ".join(tokens)


# ---------------------------------------------------------------------------------------------
# Shared helpers
# ---------------------------------------------------------------------------------------------

def ngram_counts(tokens: Sequence[str], n: int = 4) -> Counter:
    """How often each 1..n-gram (a tuple of tokens) occurs."""
    return Counter(tuple(tokens[i:i + k]) for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


def _check(candidates: Captions, references: Captions) -> list[Hashable]:
    """The image ids, in the references' order (pycocoevalcap iterates `gts.keys()`)."""
    if set(candidates) != set(references):
        missing, extra = set(references) - set(candidates), set(candidates) - set(references)
        raise ValueError(f"candidates and references must have the same image ids "
                         f"(no candidate for {sorted(map(str, missing))[:5]}, "
                         f"no references for {sorted(map(str, extra))[:5]})")
    for image, caption in candidates.items():
        if isinstance(caption, str) or len(caption) != 1:
            raise ValueError(f"image {image!r}: give exactly one candidate caption, in a list")
    for image, refs in references.items():
        if isinstance(refs, str) or len(refs) < 1:
            raise ValueError(f"image {image!r}: give at least one reference caption, in a list")
    return list(references)


# ---------------------------------------------------------------------------------------------
# BLEU
# ---------------------------------------------------------------------------------------------

# pycocoevalcap's smoothing: p_k = (correct + TINY) / (guessed + SMALL), so a zero count gives a
# tiny precision (BLEU ~ 0) instead of log(0), and nothing is divided by zero.
_TINY, _SMALL = 1e-15, 1e-9


@dataclass
class _BleuCounts:
    length: int            # candidate length c
    ref_length: int        # "closest" reference length r
    guessed: list[int]     # candidate k-grams, k = 1..n
    correct: list[int]     # of those, clipped by the most any one reference has

    def __add__(self, other: "_BleuCounts") -> "_BleuCounts":
        return _BleuCounts(self.length + other.length, self.ref_length + other.ref_length,
                           [a + b for a, b in zip(self.guessed, other.guessed)],
                           [a + b for a, b in zip(self.correct, other.correct)])


def _bleu_counts(candidate: str, refs: Sequence[str], n: int) -> _BleuCounts:
    tokens = candidate.split()
    counts = ngram_counts(tokens, n)
    most_in_a_reference = Counter()
    for ref in refs:
        most_in_a_reference |= ngram_counts(ref.split(), n)  # Counter | Counter: the maximum
    correct = [0] * n
    for gram, count in counts.items():
        correct[len(gram) - 1] += min(count, most_in_a_reference[gram])
    # "closest": the reference length nearest the candidate's, the shorter one on a tie.
    ref_length = min((len(ref.split()) for ref in refs), key=lambda r: (abs(r - len(tokens)), r))
    return _BleuCounts(len(tokens), ref_length, [max(0, len(tokens) - k) for k in range(n)], correct)


def _bleu_from(counts: _BleuCounts) -> list[float]:
    """BLEU-1..n: the geometric mean of p_1..p_k times the brevity penalty exp(1 - r/c) if c < r."""
    scores, product = [], 1.0
    for k, (correct, guessed) in enumerate(zip(counts.correct, counts.guessed), start=1):
        product *= (correct + _TINY) / (guessed + _SMALL)
        scores.append(product ** (1.0 / k))
    ratio = (counts.length + _TINY) / (counts.ref_length + _SMALL)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores


def bleu(candidates: Captions, references: Captions,
         n: int = 4) -> tuple[list[float], dict[Hashable, list[float]]]:
    """(corpus BLEU-1..n, {image: its own BLEU-1..n}) as pycocoevalcap's `Bleu(n)`.

    The corpus score sums the counts (and the candidate and closest reference lengths) over all
    images before dividing, as BLEU is defined; the per-image scores are what pycocoevalcap
    returns beside it (same formula on one image's counts).
    """
    images = _check(candidates, references)
    per_image = {image: _bleu_counts(candidates[image][0], references[image], n) for image in images}
    total = sum(per_image.values(), _BleuCounts(0, 0, [0] * n, [0] * n))
    return _bleu_from(total), {image: _bleu_from(counts) for image, counts in per_image.items()}


# ---------------------------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------------------------

def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming, one row at a time)."""
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def _rouge_l_one(candidate: str, refs: Sequence[str], beta: float) -> float:
    # pycocoevalcap splits on single spaces, so "" is one empty token (length 1, not 0).
    tokens = candidate.split(" ")
    precisions, recalls = [], []
    for ref in refs:
        ref_tokens = ref.split(" ")
        common = lcs_length(ref_tokens, tokens)
        precisions.append(common / len(tokens))
        recalls.append(common / len(ref_tokens))
    # The best precision and the best recall over the references, each on its own (they may come
    # from different references), then F_beta = (1 + b^2) P R / (R + b^2 P).
    p, r = max(precisions), max(recalls)
    if p == 0 or r == 0:
        return 0.0
    return ((1 + beta ** 2) * p * r) / (r + beta ** 2 * p)


def rouge_l(candidates: Captions, references: Captions, beta: float = 1.2) -> tuple[float, dict[Hashable, float]]:
    """(mean over images, {image: ROUGE-L}) as pycocoevalcap's `Rouge` (beta = 1.2)."""
    images = _check(candidates, references)
    per_image = {image: _rouge_l_one(candidates[image][0], references[image], beta) for image in images}
    return float(np.mean(list(per_image.values()))), per_image


# ---------------------------------------------------------------------------------------------
# CIDEr-D
# ---------------------------------------------------------------------------------------------

@dataclass
class _TfIdf:
    vectors: list[dict[tuple, float]]  # one tf-idf vector per n-gram order
    norms: list[float]
    length: int


def _tfidf(counts: Counter, document_frequency: Counter, log_images: float, n: int) -> _TfIdf:
    """g_k(s) = tf * idf with idf = log(N images / max(1, df)); tf is the raw count (the paper
    divides by the caption's n-gram total, which cancels in the cosine)."""
    vectors: list[dict[tuple, float]] = [{} for _ in range(n)]
    for gram, count in counts.items():
        vectors[len(gram) - 1][gram] = count * (log_images - math.log(max(1.0, document_frequency[gram])))
    norms = [math.sqrt(sum(w * w for w in vector.values())) for vector in vectors]
    # The length the penalty compares is pycocoevalcap's: its count of *bigrams* (words - 1, and
    # 0 for an empty caption). Differences of it equal differences in words, except against "".
    length = sum(c for gram, c in counts.items() if len(gram) == 2)
    return _TfIdf(vectors, norms, length)


def _cider_similarity(candidate: _TfIdf, ref: _TfIdf, sigma: float) -> np.ndarray:
    """Per n: the clipped cosine sum min(g_c, g_r) g_r / (|g_c| |g_r|), times the length penalty
    exp(-(l_c - l_r)^2 / (2 sigma^2)) (the "-D" of CIDEr-D, with the clipping)."""
    penalty = math.exp(-((candidate.length - ref.length) ** 2) / (2 * sigma ** 2))
    values = np.zeros(len(candidate.vectors))
    for k, (cand_vector, ref_vector) in enumerate(zip(candidate.vectors, ref.vectors)):
        value = sum(min(weight, ref_vector.get(gram, 0.0)) * ref_vector.get(gram, 0.0)
                    for gram, weight in cand_vector.items())
        if candidate.norms[k] != 0 and ref.norms[k] != 0:
            value /= candidate.norms[k] * ref.norms[k]
        values[k] = value * penalty
    return values


def cider_d(candidates: Captions, references: Captions, n: int = 4,
            sigma: float = 6.0) -> tuple[float, dict[Hashable, float]]:
    """(mean over images, {image: CIDEr-D}) as pycocoevalcap's `Cider` (n = 4, sigma = 6).

    The idf comes from the references given here: an n-gram's document frequency is the number of
    images with a reference containing it, out of N images. One image alone scores 0 (log 1 = 0).
    """
    images = _check(candidates, references)
    ref_counts = {image: [ngram_counts(ref.split(), n) for ref in references[image]] for image in images}
    document_frequency = Counter(gram for image in images for gram in set().union(*ref_counts[image]))
    log_images = math.log(len(images))
    per_image = {}
    for image in images:
        candidate = _tfidf(ngram_counts(candidates[image][0].split(), n), document_frequency, log_images, n)
        summed = sum(_cider_similarity(candidate, _tfidf(counts, document_frequency, log_images, n), sigma)
                     for counts in ref_counts[image])
        # The mean over n-gram orders, the mean over references, times 10.
        per_image[image] = float(np.mean(summed)) / len(ref_counts[image]) * 10.0
    return float(np.mean(list(per_image.values()))), per_image


# ---------------------------------------------------------------------------------------------
# METEOR (Java) and everything together
# ---------------------------------------------------------------------------------------------

def meteor(candidates: Captions,
           references: Captions) -> tuple[float | None, dict[Hashable, float] | None, str | None]:
    """(METEOR, {image: METEOR}, None) from pycocoevalcap's Meteor 1.5 jar, or (None, None, why not).

    METEOR needs WordNet synonyms and a paraphrase table, so it is not reimplemented: it runs
    only where Java and pycocoevalcap are installed (it starts a JVM, a few seconds).
    """
    images = _check(candidates, references)
    if shutil.which("java") is None:
        return None, None, "METEOR needs Java: no `java` on PATH"
    try:
        from pycocoevalcap.meteor.meteor import Meteor
    except ImportError:
        return None, None, "METEOR needs pycocoevalcap (pip install pycocoevalcap)"
    scorer = Meteor()
    try:
        score, scores = scorer.compute_score({i: list(references[i]) for i in images},
                                             {i: list(candidates[i]) for i in images})
    finally:
        scorer.meteor_p.kill()  # its __del__ would too, but only when collected
        scorer.meteor_p.wait()
    return float(score), dict(zip(images, map(float, scores))), None


@dataclass
class CaptionScores:
    corpus: dict[str, float]                                  # metric -> corpus score
    per_image: dict[str, dict[Hashable, float]]               # metric -> {image: score}
    skipped: dict[str, str] = field(default_factory=dict)     # metric -> why it is not there


def caption_scores(candidates: Captions, references: Captions, with_meteor: bool = True) -> CaptionScores:
    """BLEU-1..4, ROUGE-L, CIDEr-D (and METEOR when Java is there) of tokenised captions."""
    corpus: dict[str, float] = {}
    per_image: dict[str, dict[Hashable, float]] = {}
    bleus, bleu_images = bleu(candidates, references, 4)
    for k in range(4):
        corpus[f"BLEU-{k + 1}"] = bleus[k]
        per_image[f"BLEU-{k + 1}"] = {image: scores[k] for image, scores in bleu_images.items()}
    corpus["ROUGE-L"], per_image["ROUGE-L"] = rouge_l(candidates, references)
    corpus["CIDEr-D"], per_image["CIDEr-D"] = cider_d(candidates, references)
    skipped = {}
    if not with_meteor:
        skipped["METEOR"] = "not asked for"
    else:
        score, scores, why_not = meteor(candidates, references)
        if why_not is None:
            corpus["METEOR"], per_image["METEOR"] = score, scores
        else:
            skipped["METEOR"] = why_not
    return CaptionScores(corpus, per_image, skipped)
