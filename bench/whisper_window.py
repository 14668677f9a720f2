"""Whisper tiny.en features: the full padded 30 s window against a window trimmed to the clip.

For the easy_vqa_spoken clips of some heard voices and of the four held-out voices: clips per second
of `whisper_tiny` (2 threads, batches of 16) in each window, and how well the pooled features tell
the questions apart — a logistic regression fitted on the heard voices' clips, scored on the
held-out voices' clips (question recognition, chance 1/questions).

    python bench/whisper_window.py [--heard 12] [--questions 107]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from mmfuse.config import DataConfig  # noqa: E402
from mmfuse.data.datasets import _load_easy_vqa  # noqa: E402
from mmfuse.data.spoken import cache_folder, clip_path, load_easy_vqa_spoken, voice_variants  # noqa: E402
from mmfuse.encoders import create_encoder  # noqa: E402
from mmfuse.modalities import MODALITIES  # noqa: E402


def pooled(encoder, waves: list[np.ndarray]) -> tuple[np.ndarray, float]:
    out, start = [], time.perf_counter()
    with torch.no_grad():
        for first in range(0, len(waves), 16):
            out.append(encoder(encoder.prepare(waves[first:first + 16])).pooled.numpy())
    return np.concatenate(out), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--heard", type=int, default=12, help="heard voices to fit on")
    parser.add_argument("--questions", type=int, default=107, help="questions (a seeded sample)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    load_easy_vqa_spoken()  # the clips, synthesised if missing
    questions = sorted(set(_load_easy_vqa()["question"]))
    questions = sorted(np.random.default_rng(0).choice(questions, min(args.questions, len(questions)), replace=False))
    variants = voice_variants()
    heard = [v for v in variants if v.heard][:: max(1, sum(v.heard for v in variants) // args.heard)][:args.heard]
    held = [v for v in variants if not v.heard]
    folder = cache_folder()
    items = [(v, q) for v in heard + held for q in questions]
    waves = MODALITIES["audio"].load([str(clip_path(folder, v, q)) for v, q in items], DataConfig())
    label = np.array([questions.index(q) for _, q in items])
    is_heard = np.array([v.heard for v, _ in items])
    print(f"{len(items)} clips ({len(heard)} heard voices, {len(held)} held-out), "
          f"mean {np.mean([len(w) for w in waves]) / 16000:.2f} s\n")
    print("| window | clips/s | question recognised, held-out voices |\n|---|---|---|")
    for window in ("trimmed", "full"):
        encoder = create_encoder("audio", "whisper_tiny", window=window).eval()
        feats, seconds = pooled(encoder, waves)
        scaler = StandardScaler().fit(feats[is_heard])
        model = LogisticRegression(max_iter=2000, C=1.0).fit(scaler.transform(feats[is_heard]), label[is_heard])
        accuracy = model.score(scaler.transform(feats[~is_heard]), label[~is_heard])
        print(f"| {window} | {len(items) / seconds:.1f} | {accuracy:.4f} |")


if __name__ == "__main__":
    main()
