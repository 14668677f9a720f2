"""Captioning shape_scenes: the trained captioner against two baselines on the 600 test images.

    .venv/bin/python bench/captioning.py [--config configs/shape_scenes_caption.yaml] [--set k=v ...]
    .venv/bin/python bench/captioning.py --model runs/shape_scenes_caption/model   # no training

Trains the config's captioner (the same path as `mmfuse train`; small CNN at 64 px + Transformer
decoder, on the 2,850 training images with 150 held out for choosing the epoch), then scores on
the test split: BLEU-1..4, ROUGE-L, CIDEr-D (pycocoevalcap's definitions, mmfuse.captioning.metrics)
and factual accuracy (mmfuse.data.scene_captions: every count, colour, kind and order true, every
object named) with the problems of the non-factual captions, for
- the model, greedy and beam search (caption.beam_size, caption.length_penalty);
- the nearest training image's caption (its first one), nearest by cosine of the captioner's own
  trained CNN's pooled features (mean of its spatial tokens);
- the majority template: the most frequent training caption, for every image.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

# bench/ holds easy_vqa.py, which would shadow the easy_vqa package: drop the script's folder.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from mmfuse.captioning.artifact import load_captioner  # noqa: E402
from mmfuse.captioning.baselines import majority_caption, nearest_captions, pooled_features  # noqa: E402
from mmfuse.captioning.evaluate import score_captions  # noqa: E402
from mmfuse.captioning.model import caption_images  # noqa: E402
from mmfuse.captioning.train import prepare_data, train_captioner  # noqa: E402
from mmfuse.config import load_config  # noqa: E402

SHOWN = ["BLEU-1", "BLEU-4", "ROUGE-L", "CIDEr-D", "factual"]


def table(rows: dict[str, dict]) -> str:
    lines = ["| captions | " + " | ".join(SHOWN) + " | problems of the non-factual |",
             "|---|" + "---:|" * len(SHOWN) + "---|"]
    for name, scores in rows.items():
        problems = ", ".join(f"{k} {v}" for k, v in sorted(scores.get("problems", {}).items(), key=lambda kv: -kv[1]))
        lines.append(f"| {name} | " + " | ".join(f"{scores[k]:.3f}" for k in SHOWN) + f" | {problems or '-'} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/shape_scenes_caption.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="config override a.b=c")
    parser.add_argument("--model", help="score this trained caption model instead of training one")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.model:
        model, config = load_captioner(args.model)
        summary = json.loads((Path(args.model) / "metrics.json").read_text())
    else:
        config = load_config(args.config, ["train.progress_bar=false", *args.overrides])
        model, summary = train_captioner(config)
    sets = prepare_data(config, model.encoder.prepare)
    train, test = sets["train"], sets["test"]
    beam, alpha = config.caption.beam_size, config.caption.length_penalty

    rows, seconds = {}, {}
    for size in sorted({1, beam}):
        start = time.perf_counter()
        candidates = caption_images(model, test.pixels, beam_size=size)
        seconds[size] = time.perf_counter() - start
        name = "model, greedy" if size == 1 else f"model, beam {size} (length penalty {alpha:g})"
        rows[name] = score_captions(candidates, test.captions, test.images)
    nearest = nearest_captions(pooled_features(model, train.pixels), train.captions, pooled_features(model, test.pixels))
    rows["nearest training image (same CNN, pooled, cosine)"] = score_captions(nearest, test.captions, test.images)
    majority = majority_caption(train.captions)
    rows[f"majority template ({majority!r})"] = score_captions([majority] * len(test), test.captions, test.images)

    print(f"\n## Captioning shape_scenes: {len(test)} test images, {sum(map(len, test.captions))} references\n")
    print(table(rows))
    caption = config.caption
    print(f"\nmodel: small CNN ({config.encoders.image.name}, {config.encoders.image.image_size} px) + {caption.layers}-layer "
          f"decoder, d={caption.dim}, conditioning {caption.conditioning}, tokenizer {caption.tokenizer} "
          f"({model.tokenizer.vocab_size} ids); {config.train.epochs} epochs, {caption.captions_per_step or 'all'} "
          f"captions per image per step")
    # Models saved before caption.monitor existed have only best_val_cider.
    chosen = (f"epoch {summary.get('chosen_epoch', '?')} chosen by val {summary.get('monitor', 'cider')}: "
              f"CIDEr-D {summary['best_val_cider']:.3f}"
              + (f", factual {summary['best_val_factual']:.3f}" if summary.get("best_val_factual") is not None else ""))
    print(f"model: caption.coordinates {caption.coordinates}, caption.monitor {caption.monitor}")
    print(f"training: {summary['train_seconds']:.0f} s on this machine ({summary['epochs']} epochs; {chosen}); "
          "decoding the test images: " + ", ".join(f"beam {k} {v:.1f} s" for k, v in seconds.items()))


if __name__ == "__main__":
    main()
