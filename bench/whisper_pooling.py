"""How Whisper's frames are pooled, and how the fusion is kept from learning the heard voices by
heart: question recognition on `easy_vqa_spoken` clips (107 questions), fitted on the 58 heard voice
variants' clips and scored on the 4 held-out variants' (428 clips).

    python bench/whisper_pooling.py [--epochs 60]

Probes: a logistic regression on standardised pooled features (for each pooling), and an MLP shaped
like FiLM's generator (features -> 128 -> 256 -> questions, AdamW) on the thirds, with each training
regulariser. Extracts every clip with `whisper_tiny` three times (~5 min on 2 cores).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from torch import nn  # noqa: E402

from mmfuse.config import DataConfig  # noqa: E402
from mmfuse.data.datasets import _load_easy_vqa  # noqa: E402
from mmfuse.data.spoken import cache_folder, clip_path, load_easy_vqa_spoken, voice_variants  # noqa: E402
from mmfuse.encoders import create_encoder  # noqa: E402
from mmfuse.modalities import MODALITIES  # noqa: E402

POOLINGS = {"mean + mean absolute deviation": {"segments": 1, "deviation": True},
            "means of the clip's thirds": {"segments": 3},
            "thirds + mean absolute deviation": {"segments": 3, "deviation": True}}
# (input dropout, Gaussian noise in sd, weight decay) of the MLP probe
REGULARISERS = {"nothing": (0, 0, 0), "input dropout 0.5": (0.5, 0, 0), "noise 0.5 sd": (0, 0.5, 0),
                "weight decay 0.1": (0, 0, 0.1), "dropout 0.5 + noise 0.5 (shipped)": (0.5, 0.5, 0)}


def pooled(options: dict, paths: list[str]) -> np.ndarray:
    encoder = create_encoder("audio", "whisper_tiny", **options).eval()
    out = []
    with torch.no_grad():
        for first in range(0, len(paths), 16):
            waves = MODALITIES["audio"].load(paths[first:first + 16], DataConfig())
            out.append(encoder(encoder.prepare(waves)).pooled.numpy())
    return np.concatenate(out)


def mlp_probe(x: np.ndarray, label: np.ndarray, heard: np.ndarray, rates: tuple, epochs: int) -> np.ndarray:
    dropout, noise, decay = rates
    torch.manual_seed(0)
    scaled = torch.tensor(StandardScaler().fit(x[heard]).transform(x), dtype=torch.float32)
    target = torch.tensor(label)
    net = nn.Sequential(nn.Dropout(dropout), nn.Linear(x.shape[1], 128), nn.ReLU(), nn.Linear(128, 256), nn.ReLU(),
                        nn.Linear(256, int(label.max()) + 1))
    optimiser = torch.optim.AdamW(net.parameters(), 3e-3, weight_decay=decay)
    train_x, train_y = scaled[heard], target[heard]
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(len(train_x)).split(64):
            inputs = train_x[batch] + noise * torch.randn_like(train_x[batch])
            loss = nn.functional.cross_entropy(net(inputs), train_y[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    with torch.no_grad():
        return net.eval()(scaled[~heard]).argmax(-1).numpy()


def shares(predicted: np.ndarray, label: np.ndarray, voice: np.ndarray) -> str:
    right = predicted == label
    by_voice = " / ".join(f"{right[voice == v].mean():.3f}" for v in sorted(set(voice)))
    return f"{right.mean():.4f} | {by_voice}"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=int, default=60)
    args = parser.parse_args()
    torch.set_num_threads(2)
    load_easy_vqa_spoken()  # the clips, synthesised if missing
    questions = sorted(set(_load_easy_vqa()["question"]))
    items = [(v, q) for v in voice_variants() for q in questions]
    paths = [str(clip_path(cache_folder(), v, q)) for v, q in items]
    label = np.array([questions.index(q) for _, q in items])
    heard = np.array([v.heard for v, _ in items])
    held_voices = np.array([v.name for v, _ in items])[~heard]
    features = {name: pooled(options, paths) for name, options in POOLINGS.items()}
    print(f"\n{heard.sum()} heard clips, {(~heard).sum()} held-out clips ({', '.join(sorted(set(held_voices)))})\n")
    print("| pooling | logistic regression | by held-out voice |\n|---|---|---|")
    for name, x in features.items():
        scaler = StandardScaler().fit(x[heard])
        model = LogisticRegression(max_iter=3000).fit(scaler.transform(x[heard]), label[heard])
        print(f"| {name} | {shares(model.predict(scaler.transform(x[~heard])), label[~heard], held_voices)} |")
    print("\n| MLP on the thirds, in training | held-out clips | by held-out voice |\n|---|---|---|")
    for name, rates in REGULARISERS.items():
        predicted = mlp_probe(features["means of the clip's thirds"], label, heard, rates, args.epochs)
        print(f"| {name} | {shares(predicted, label[~heard], held_voices)} |")


if __name__ == "__main__":
    main()
