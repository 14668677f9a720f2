"""Greedy and beam search with a GNMT length penalty, over any next-token scorer.

`step(tokens, rows)` gives the next token's log-probabilities (N, V) for N hypotheses, `tokens`
(N, t) being each one's tokens so far (BOS first) and `rows` (N,) the batch item (image) each
belongs to. Keeping the model behind this one function lets the tests drive the search with a
hand-made table of probabilities, where the right answer is known.

Beam search keeps, per item, the `beam_size` best unfinished hypotheses by summed log-probability;
a hypothesis ending in EOS is set aside, scored log p / lp with lp = ((5 + length) / 6) ** alpha
(Wu et al. 2016; `length` counts the tokens after BOS, EOS included). alpha = 0 compares raw
log-probabilities (short captions win); a larger alpha favours longer ones. The search stops for
an item once it holds `beam_size` finished hypotheses and no unfinished one could still beat the
worst of them.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .tokens import BOS, EOS, PAD

Step = Callable[[Tensor, Tensor], Tensor]


def length_penalty(length: int | Tensor, alpha: float) -> float | Tensor:
    return ((5 + length) / 6) ** alpha


def greedy(step: Step, batch: int, max_length: int, device: torch.device | None = None) -> list[list[int]]:
    """The most likely token at each step until EOS (EOS is never the first token)."""
    tokens = torch.full((batch, 1), BOS, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for position in range(max_length):
        log_probs = step(tokens, rows)
        if position == 0:
            log_probs[:, EOS] = -torch.inf  # no empty caption
        if position == max_length - 1:
            chosen = torch.full((batch,), EOS, dtype=torch.long, device=device)  # the last place is EOS's
        else:
            chosen = log_probs.argmax(-1)
        chosen = torch.where(done, torch.full_like(chosen, PAD), chosen)
        tokens = torch.cat([tokens, chosen[:, None]], 1)
        done |= chosen == EOS
        if bool(done.all()):
            break
    return [_strip(row) for row in tokens[:, 1:].tolist()]


def _strip(ids: list[int]) -> list[int]:
    """Tokens up to and including the first EOS."""
    return ids[: ids.index(EOS) + 1] if EOS in ids else ids


def beam_search(step: Step, batch: int, max_length: int, beam_size: int, alpha: float = 0.0,
                device: torch.device | None = None) -> list[list[int]]:
    """The best finished hypothesis per item by log p / lp(length) (see the module docstring)."""
    k = beam_size
    tokens = torch.full((batch * k, 1), BOS, dtype=torch.long, device=device)
    rows = torch.arange(batch, device=device).repeat_interleave(k)
    # Only the first beam of each item is live at the start: the others would repeat it.
    scores = torch.full((batch, k), -torch.inf, device=device)
    scores[:, 0] = 0.0
    finished: list[list[tuple[float, list[int]]]] = [[] for _ in range(batch)]
    open_items = torch.ones(batch, dtype=torch.bool, device=device)
    for position in range(max_length):
        log_probs = step(tokens, rows).float()  # (batch * k, V)
        vocab = log_probs.shape[-1]
        if position == 0:
            log_probs[:, EOS] = -torch.inf
        if position == max_length - 1:  # the last place is EOS's: end every hypothesis
            forced = torch.full_like(log_probs, -torch.inf)
            forced[:, EOS] = log_probs[:, EOS]
            log_probs = forced
        total = (scores.reshape(-1, 1) + log_probs).reshape(batch, k * vocab)
        # 2k candidates: even if k of them end in EOS, k unfinished ones remain to go on with.
        top_scores, top_index = total.topk(min(2 * k, k * vocab), dim=-1)
        beam, token = top_index // vocab, top_index % vocab
        next_rows, next_tokens, next_scores = [], [], torch.full((batch, k), -torch.inf, device=device)
        for item in range(batch):
            if not open_items[item]:
                continue
            kept = 0
            for score, b, t in zip(top_scores[item].tolist(), beam[item].tolist(), token[item].tolist()):
                if score == -float("inf"):
                    break
                source = item * k + b
                if t == EOS:
                    if len(finished[item]) < k or _better(score, position + 1, alpha, finished[item]):
                        ids = tokens[source, 1:].tolist() + [EOS]
                        finished[item].append((score / length_penalty(position + 1, alpha), ids))
                        finished[item].sort(key=lambda pair: -pair[0])
                        del finished[item][k:]
                    continue
                if kept < k:
                    next_rows.append((item * k + kept, source, t))
                    next_scores[item, kept] = score
                    kept += 1
            open_items[item] = _still_open(next_scores[item], finished[item], k, position + 1, max_length, alpha)
        if not bool(open_items.any()):
            break
        new_tokens = tokens.new_full((batch * k, tokens.shape[1] + 1), PAD)
        for target, source, t in next_rows:
            new_tokens[target, :-1] = tokens[source]
            new_tokens[target, -1] = t
        tokens, scores = new_tokens, next_scores.masked_fill(~open_items[:, None], -torch.inf)
    return [max(hyps, key=lambda pair: pair[0])[1] if hyps else [EOS] for hyps in finished]


def _better(score: float, length: int, alpha: float, finished: list[tuple[float, list[int]]]) -> bool:
    return score / length_penalty(length, alpha) > finished[-1][0]


def _still_open(alive: Tensor, finished: list, k: int, length: int, max_length: int, alpha: float) -> bool:
    """Whether an unfinished hypothesis may still enter the item's k best finished ones. Log-probs
    only fall as a hypothesis grows, so its best future score is its score now over the largest
    length penalty it can reach (lengths length + 1 .. max_length)."""
    best = float(alive.max())
    if best == -float("inf"):
        return False
    if len(finished) < k:
        return True
    largest = max(length_penalty(length + 1, alpha), length_penalty(max_length, alpha))
    return best / largest > finished[-1][0]
