"""The pointing game for `mmfuse explain`'s heatmaps (Zhang et al. 2016): on held-out `shape_scenes`
questions that name one shape ("what color is the triangle?"), does the heatmap's peak fall inside
that shape's box? The generator knows every box (`mmfuse.data.scenes.scenes` replays it).

    .venv/bin/python bench/pointing.py [--model runs/shape_scenes_default/model] [--rows 300]

Without --model it first trains the default model's network (the `make demo` config: small CNN
16-32-64-128, MiniLM frozen, FiLM with sum pooling, 12 epochs) on shape_scenes. Rows: the first
--rows test questions of that kind. Beside the trained model: the same network with random
weights, and a uniform map (its peak is anywhere: the expected hit rate is the box's share of the
image). The model-randomisation check (Adebayo et al. 2018): Spearman rank correlation between
each row's trained and random-weight maps (low: the map depends on what the model learned).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy.stats import spearmanr

from mmfuse import Predictor
from mmfuse.data.scenes import SIZE, load_shape_scenes, scenes
from mmfuse.explain import grad_cam, row_scores

NAMES_ONE_SHAPE = re.compile(r"what color is the (\w+)\?")
DEFAULT_RUN = Path("runs/shape_scenes_default")


def train_default() -> Path:
    command = [sys.executable, "-m", "mmfuse.cli", "train", "configs/shape_scenes.yaml",
               "--set", "encoders.image.options={channels: [16, 32, 64, 128]}", "--set", "train.epochs=12",
               "--set", f"output_dir={DEFAULT_RUN}", "--set", "train.progress_bar=false"]
    print("training:", " ".join(command), flush=True)
    subprocess.run(command, check=True)
    return DEFAULT_RUN / "model"


def peak(grid: list[list[float]]) -> tuple[int, int]:
    """(x, y) of the map's maximum after the bilinear upsampling the overlay uses."""
    heat = Image.fromarray((np.asarray(grid, dtype=np.float32) * 255).astype(np.uint8)).resize((SIZE, SIZE),
                                                                                                Image.BILINEAR)
    y, x = np.unravel_index(np.asarray(heat).argmax(), (SIZE, SIZE))
    return int(x), int(y)


def inside(point: tuple[int, int], box: tuple[int, int, int, int]) -> bool:
    x, y = point
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def randomised(model_dir: Path, seed: int = 123) -> Predictor:
    predictor = Predictor.load(model_dir)
    torch.manual_seed(seed)
    for module in predictor.model.modules():
        if hasattr(module, "reset_parameters") and module is not predictor.model:
            module.reset_parameters()
    return predictor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--rows", type=int, default=300)
    args = parser.parse_args()
    model_dir = args.model or train_default()
    trained, random_weights = Predictor.load(model_dir), randomised(model_dir)
    folder = Path(load_shape_scenes()["image"].iloc[0]).parents[1]  # generated on first use
    rows = []
    for name, objects, _image, questions in scenes(0):
        if not name.startswith("test/"):
            continue
        for question, answer in questions:
            match = NAMES_ONE_SHAPE.fullmatch(question)
            if match:
                box = next(o["box"] for o in objects if o["shape"] == match.group(1))
                rows.append({"image": str(folder / name), "text": question, "answer": answer, "box": box})
        if len(rows) >= args.rows:
            break
    rows = rows[: args.rows]
    hits = {"trained": 0, "random weights": 0}
    correlations, correct, area = [], 0, 0.0
    start = time.perf_counter()
    for row in rows:
        inputs = {"image": row["image"], "text": row["text"]}
        scores = row_scores(trained, [inputs])[0]
        target = int(scores.argmax())
        correct += trained.labels[target] == row["answer"]
        maps = {"trained": grad_cam(trained, inputs, target)["image"],
                "random weights": grad_cam(random_weights, inputs, target)["image"]}
        for kind, grid in maps.items():
            hits[kind] += inside(peak(grid), row["box"])
        correlations.append(spearmanr(np.ravel(maps["trained"]), np.ravel(maps["random weights"])).statistic)
        x0, y0, x1, y1 = row["box"]
        area += (x1 - x0 + 1) * (y1 - y0 + 1) / SIZE**2
    seconds = time.perf_counter() - start
    n = len(rows)
    print(f"\n## Pointing game: {n} held-out shape_scenes rows naming one shape ({model_dir})\n")
    print("| map | peak inside the named shape's box |")
    print("|---|---|")
    for kind, count in hits.items():
        print(f"| Grad-CAM, {kind} | {count / n:.3f} ({count}/{n}) |")
    print(f"| uniform map (expected: the box's share of the image) | {area / n:.3f} |")
    print(f"\nmodel answers correctly on these rows: {correct / n:.3f}")
    finite = [c for c in correlations if np.isfinite(c)]
    print(f"model-randomisation check: Spearman(trained map, random-weight map) mean {np.mean(finite):.3f}, "
          f"median {np.median(finite):.3f} over {len(finite)} rows")
    print(f"{seconds / n * 1000:.0f} ms per row for both maps and the prediction")


if __name__ == "__main__":
    main()
