"""Regenerate the example inputs the README uses (run from the repository root):

    .venv/bin/python examples/make_examples.py

Every file is drawn or written here (no download): 64x64 flat-coloured shapes on white in
easy-VQA's palette, small CSV tables over them, a config, and one spoken question made with
espeak-ng (skipped, with a message, where espeak-ng is not installed).
"""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
SIZE = 64
# easy-VQA's colours (mmfuse.align.captions.EASY_VQA_PALETTE), so the shapes look like its images.
PALETTE = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "teal": (0, 128, 128), "gray": (128, 128, 128)}
SHAPES = ("circle", "rectangle", "triangle")
QUESTION = "what color is the shape?"

MY_YAML = """\
task: classification           # or multilabel ("a|b" labels) or regression
data:
  source: examples/my_table.csv  # image paths may be relative to the table's folder
  columns: {image: img_path, text: question, label: answer, split: null}
  val_fraction: 0.1            # seeded split, all rows of one image on the same side
  test_fraction: 0.1
  labels: null                 # or a fixed list: rows with other labels are bad rows
  confine_paths: false         # true: paths resolving outside the table's folder are bad rows
encoders:
  image: {name: efficientnet_lite0, image_size: 128}   # frozen + cached by default
  text: {name: minilm}
fusion: {name: concat}
"""


def draw(shape: str, color: str, path: Path, offset: int = 0) -> None:
    """One flat shape on a white square; `offset` moves and resizes it a little."""
    image = Image.new("RGB", (SIZE, SIZE), (255, 255, 255))
    pen = ImageDraw.Draw(image)
    lo, hi = 10 + offset % 7, 54 - offset % 5
    fill = PALETTE[color]
    if shape == "circle":
        pen.ellipse((lo, lo, hi, hi), fill=fill)
    elif shape == "rectangle":
        pen.rectangle((lo, lo + 6, hi, hi - 6), fill=fill)
    else:
        pen.polygon([((lo + hi) // 2, lo), (hi, hi), (lo, hi)], fill=fill)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, optimize=True)


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)


def spoken_question(path: Path) -> None:
    """`question.wav`: QUESTION spoken by espeak-ng, as 16 kHz mono 16-bit PCM."""
    if shutil.which("espeak-ng") is None:
        print(f"espeak-ng not found: {path.name} not regenerated (apt-get install espeak-ng)", file=sys.stderr)
        return
    import numpy as np
    import soundfile
    import soxr

    with tempfile.TemporaryDirectory() as folder:
        raw = Path(folder) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(raw), QUESTION], check=True)
        wave, rate = soundfile.read(raw, dtype="float32")
    if wave.ndim > 1:
        wave = wave.mean(axis=1)
    wave = soxr.resample(wave, rate, 16_000)
    soundfile.write(path, np.clip(wave, -1, 1), 16_000, subtype="PCM_16")


def main() -> None:
    draw("triangle", "red", HERE / "shape.png")
    draw("circle", "blue", HERE / "query.png", offset=3)
    gallery = []
    for number, (color, shape) in enumerate((c, s) for c in PALETTE for s in SHAPES):
        name = f"images/{color}_{shape}.png"
        draw(shape, color, HERE / name, offset=number)
        gallery.append([name, f"a {color} {shape}"])
    # images.csv and more.csv: image, caption (18 images: an index built from the first and grown
    # by the second holds ids 0..17).
    write_csv(HERE / "images.csv", ["image", "caption"], gallery[:12])
    write_csv(HERE / "more.csv", ["image", "caption"], gallery[12:])
    # new.csv: image, question -- the columns a model trained on configs/easy_vqa.yaml reads.
    write_csv(HERE / "new.csv", ["image", "question"], [
        ["shape.png", QUESTION],
        ["shape.png", "what shape is in the image?"],
        ["query.png", "is there a blue shape in the image?"],
        ["images/green_rectangle.png", "what is the green shape?"],
    ])
    # my_table.csv: img_path, question, answer (the column names the README's "Your own data"
    # config binds); the last row names a file that does not exist, so `data check` shows a bad row.
    rows = []
    for name, caption in gallery[:9]:
        color, shape = caption.split()[1:]
        rows.append([name, "what color is the shape?", color])
        rows.append([name, "what is the shape?", shape])
    rows.append(["images/missing.png", "what color is the shape?", "red"])
    write_csv(HERE / "my_table.csv", ["img_path", "question", "answer"], rows)
    (HERE / "my.yaml").write_text(MY_YAML)
    spoken_question(HERE / "question.wav")


if __name__ == "__main__":
    main()
