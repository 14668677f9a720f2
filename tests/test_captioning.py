"""The captioner (mmfuse.captioning): search, training, saving, data errors, config. Tiny random
models built here (tiny_image encoder, MiniLM's WordPiece from its wheel): nothing downloads."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from mmfuse.captioning.artifact import load_captioner, save_captioner
from mmfuse.captioning.data import read_pairs
from mmfuse.captioning.model import Captioner, caption_images, pixels_of
from mmfuse.captioning.search import beam_search, greedy
from mmfuse.captioning.tokens import BOS, EOS, SPECIALS, CaptionTokenizer
from mmfuse.cli import app
from mmfuse.config import parse_config
from mmfuse.errors import ConfigError, DataError

COLOURS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (230, 200, 30)}
# Four images, each a square and a circle in some order: the captions need colour, kind and order.
SCENES = [("red", "blue"), ("blue", "red"), ("green", "yellow"), ("yellow", "green")]


def scene(left: str, right: str, size: int = 32) -> Image.Image:
    image = Image.new("RGB", (size, size), (245, 245, 245))
    draw = ImageDraw.Draw(image)
    half = size // 2
    draw.rectangle((2, half - 6, 13, half + 6), fill=COLOURS[left])
    draw.ellipse((half + 2, half - 6, half + 13, half + 6), fill=COLOURS[right])
    return image


def caption_of(left: str, right: str) -> str:
    return f"a {left} square to the left of a {right} circle"


def tiny_config(**caption) -> dict:
    return {"task": "caption", "encoders": {"image": {"name": "tiny_image", "image_size": 32}, "text": None},
            "caption": {"dim": 32, "layers": 1, "heads": 2, "dropout": 0.0, "max_length": 16, **caption},
            "train": {"epochs": 2, "batch_size": 4, "lr": 0.01, "progress_bar": False}}


def tiny_model(**caption) -> Captioner:
    torch.manual_seed(0)
    config = parse_config(tiny_config(**caption))
    tokenizer = CaptionTokenizer.fit("minilm", [caption_of(*s) for s in SCENES])
    return Captioner.build(config, tokenizer)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return pixels_of(tiny_model(), [scene(*s) for s in SCENES])


# ----- search --------------------------------------------------------------------------------

@pytest.mark.parametrize("conditioning", ["cross", "prefix"])
def test_beam_of_one_is_greedy(conditioning, pixels):
    model = tiny_model(conditioning=conditioning).eval()
    greedy_ids = model.generate_ids(pixels, beam_size=1)
    memory = model.memory(pixels)

    def step(tokens, rows):
        return model.decoder(memory[rows], tokens)[:, -1].log_softmax(-1)

    with torch.no_grad():
        assert beam_search(step, len(pixels), 16, beam_size=1, alpha=0.0) == greedy_ids
    assert all(ids[-1] == EOS and len(ids) <= 16 for ids in greedy_ids)


def test_beam_search_of_a_batch_is_that_of_each_image(pixels):
    model = tiny_model().eval()
    batch = model.generate_ids(pixels, beam_size=3, length_penalty=0.6)
    assert batch == [model.generate_ids(pixels[i:i + 1], beam_size=3, length_penalty=0.6)[0]
                     for i in range(len(pixels))]
    assert all(ids[-1] == EOS for ids in batch)


A, B = SPECIALS, SPECIALS + 1


def table_step(tokens: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """A hand-made model: BOS -> A; A -> EOS 0.6 or B 0.4; A B -> EOS. So "A" (p 0.6) is likelier
    than "A B" (p 0.4), and only a length penalty can prefer the longer one."""
    out = torch.full((len(tokens), SPECIALS + 2), -1e9)
    for n, row in enumerate(tokens.tolist()):
        if row[-1] == BOS:
            out[n, A] = 0.0
        elif row[-1] == A:
            out[n, EOS], out[n, B] = math.log(0.6), math.log(0.4)
        else:
            out[n, EOS] = 0.0
    return out


def test_length_penalty_changes_the_chosen_length():
    assert greedy(table_step, 1, 8) == [[A, EOS]]
    assert beam_search(table_step, 1, 8, beam_size=2, alpha=0.0) == [[A, EOS]]
    # ((5 + 3) / 6) ** 5 against ((5 + 2) / 6) ** 5: log 0.4 / 4.21 > log 0.6 / 2.16
    assert beam_search(table_step, 1, 8, beam_size=2, alpha=5.0) == [[A, B, EOS]]


def test_max_length_ends_every_caption():
    def never_ends(tokens, rows):
        out = torch.full((len(tokens), SPECIALS + 2), -1e9)
        out[:, A] = 0.0
        return out

    assert greedy(never_ends, 2, 5) == [[A, A, A, A, EOS]] * 2
    assert beam_search(never_ends, 2, 5, beam_size=3) == [[A, A, A, A, EOS]] * 2


# ----- training and saving --------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(pixels) -> Captioner:
    """A tiny model trained until it reproduces the four captions (teacher forcing, Adam)."""
    model = tiny_model()
    ids = model.tokenizer.encode([caption_of(*s) for s in SCENES], 16)
    owner = torch.arange(len(SCENES))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(300):
        optimizer.zero_grad()
        loss = model.loss(pixels, ids, owner)
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    return model


def test_a_tiny_model_learns_its_captions(trained, pixels):
    wanted = [caption_of(*s) for s in SCENES]
    assert caption_images(trained, pixels) == wanted
    assert caption_images(trained, pixels, beam_size=3) == wanted


def test_save_and_load_give_the_same_captions(trained, pixels, tmp_path):
    config = parse_config(tiny_config())
    save_captioner(trained, config, tmp_path / "model")
    loaded, loaded_config = load_captioner(tmp_path / "model")
    assert loaded_config.caption == config.caption
    assert caption_images(loaded, pixels) == caption_images(trained, pixels)
    assert caption_images(loaded, pixels, beam_size=2) == caption_images(trained, pixels, beam_size=2)


def test_tokenizer_round_trip_and_unknown_pieces():
    tokenizer = CaptionTokenizer.fit("minilm", ["a red square, from left to right"])
    ids = tokenizer.encode(["a red square, from left to right", "a purple square"], 16)
    assert ids[0, 0] == BOS
    assert tokenizer.decode(ids[0, 1:].tolist()) == "a red square, from left to right"
    assert tokenizer.decode(ids[1, 1:].tolist()) == "a [UNK] square"  # purple was never seen
    colon = CaptionTokenizer.fit("minilm", ["two shapes: a red square; a circle"])
    assert colon.decode(colon.encode(["two shapes: a red square; a circle"], 16)[0, 1:].tolist()) == \
        "two shapes: a red square; a circle"


# ----- data -----------------------------------------------------------------------------------

def write_images(folder, count=4) -> list[str]:
    names = []
    for i in range(count):
        name = f"img{i}.png"
        scene(*SCENES[i % len(SCENES)]).save(folder / name)
        names.append(name)
    return names


def test_bad_caption_input_names_row_and_column(tmp_path):
    names = write_images(tmp_path)
    pd.DataFrame({"image": names, "caption": ["a red square", "", "x", "y"]}).to_csv(tmp_path / "empty.csv", index=False)
    with pytest.raises(DataError, match=r"empty.csv row 2, column 'caption': empty caption"):
        read_pairs(str(tmp_path / "empty.csv"))
    pd.DataFrame({"image": names, "text": ["a"] * 4}).to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(DataError, match=r"nocol.csv.*missing caption"):
        read_pairs(str(tmp_path / "nocol.csv"))
    with pytest.raises(DataError, match=r"nothere.csv does not exist"):
        read_pairs(str(tmp_path / "nothere.csv"))
    pd.DataFrame({"image": [*names, "gone.png"], "caption": ["a red square"] * 5}).to_csv(tmp_path / "gone.csv",
                                                                                         index=False)
    manifest = read_pairs(str(tmp_path / "gone.csv"))  # skipped and counted
    assert len(manifest.frame) == 4 and len(manifest.bad_rows) == 1
    strict = parse_config({**tiny_config(), "data": {"strict": True}}).data
    with pytest.raises(DataError, match=r"gone.csv row 5, image column 'image'"):
        read_pairs(str(tmp_path / "gone.csv"), data=strict)


def test_coco_captions_are_read(tmp_path):
    names = write_images(tmp_path, 2)
    coco = {"images": [{"id": i, "file_name": n} for i, n in enumerate(names)],
            "annotations": [{"image_id": 0, "caption": "a red square"}, {"image_id": 0, "caption": "a square"},
                            {"image_id": 1, "caption": "a blue square"}]}
    (tmp_path / "coco.json").write_text(pd.io.json.ujson_dumps(coco))
    frame = read_pairs(str(tmp_path / "coco.json")).frame
    assert frame.groupby("image")["text"].agg(list).tolist() == [["a red square", "a square"], ["a blue square"]]


# ----- config and command line ------------------------------------------------------------------

def test_caption_config_is_validated():
    config = parse_config(tiny_config())
    assert config.task == "caption" and config.caption.dim == 32
    with pytest.raises(ConfigError, match="caption.conditioning"):
        parse_config(tiny_config(conditioning="sideways"))
    with pytest.raises(ConfigError, match="not a multiple of heads"):
        parse_config(tiny_config(dim=30, heads=4))
    with pytest.raises(ConfigError, match="read only with task: caption"):
        parse_config({"task": "classification", "caption": {}})
    with pytest.raises(ConfigError, match="available: .*caption"):
        parse_config({"task": "captions"})
    with pytest.raises(ConfigError, match="caption.tokenizer"):
        CaptionTokenizer.fit("/no/such/tokenizer", ["a"])


def test_train_command_trains_saves_and_captions(tmp_path):
    """`mmfuse train` on a caption config: Lightning loop, validation CIDEr-D, test scores, the
    saved model; `mmfuse caption` reads it back; `mmfuse export` refuses it in one line."""
    names = write_images(tmp_path, 8)
    rows = [{"image": n, "caption": caption_of(*SCENES[i % 4]), "split": "test" if i >= 6 else "train"}
            for i, n in enumerate(names)]
    pd.DataFrame(rows).to_csv(tmp_path / "caps.csv", index=False)
    config = tiny_config(captions=str(tmp_path / "caps.csv"), val_fraction=0.3)
    config["output_dir"] = str(tmp_path / "run")
    (tmp_path / "c.yaml").write_text(pd.io.json.ujson_dumps(config))  # JSON is YAML
    runner = CliRunner()
    result = runner.invoke(app, ["train", str(tmp_path / "c.yaml")])
    assert result.exit_code == 0, result.output
    assert "test (2 images, beam 1)" in result.output and "CIDEr-D" in result.output
    model = tmp_path / "run" / "model"
    assert {"config.yaml", "model.safetensors", "caption.json", "metrics.json"} <= {p.name for p in model.iterdir()}
    result = runner.invoke(app, ["caption", str(model), "--image", str(tmp_path / names[0]), "--beam-size", "2"])
    assert result.exit_code == 0 and result.output.startswith(str(tmp_path / names[0]) + "\t"), result.output
    result = runner.invoke(app, ["export", str(model)])
    assert result.exit_code != 0 and "captioning models are not exported" in str(result.exception)
    # A table (relative paths, a missing image skipped and counted), captioned in batches, as CSV.
    pd.DataFrame({"picture": [names[0], "gone.png", names[1], names[2]]}).to_csv(tmp_path / "todo.csv", index=False)
    result = runner.invoke(app, ["caption", str(model), "--images", str(tmp_path / "todo.csv"), "--image-column",
                                 "picture", "--batch-size", "2", "--beam-size", "2", "--out", str(tmp_path / "c.csv")])
    assert result.exit_code == 0, result.output
    assert "1 bad rows skipped" in result.output and "3 captions written" in result.output
    written = pd.read_csv(tmp_path / "c.csv", keep_default_na=False)
    assert written["image"].tolist() == [str((tmp_path / n).resolve()) for n in names[:3]]
    single = runner.invoke(app, ["caption", str(model), "--image", str(tmp_path / names[0]), "--beam-size", "2"])
    assert written["caption"][0] == single.output.split("\t", 1)[1].strip()
    # The commands and the API for classifiers say what the directory is, not "missing labels.json".
    from mmfuse import Predictor
    from mmfuse.errors import ArtifactError

    with pytest.raises(ArtifactError, match="is a caption model: caption images with `mmfuse caption"):
        Predictor.load(model)
    result = runner.invoke(app, ["predict", str(model), "--image", str(tmp_path / names[0])])
    assert result.exit_code != 0 and "is a caption model" in str(result.exception) + result.output


# ----- choosing the epoch, coordinates ---------------------------------------------------------

def test_factual_monitor_needs_images_with_known_scenes(tmp_path):
    from mmfuse.captioning.train import train_captioner

    names = write_images(tmp_path, 8)
    rows = [{"image": n, "caption": "a red square"} for n in names]
    pd.DataFrame(rows).to_csv(tmp_path / "caps.csv", index=False)
    config = tiny_config(captions=str(tmp_path / "caps.csv"), val_fraction=0.3, monitor="factual")
    config["output_dir"] = str(tmp_path / "run")
    with pytest.raises(ConfigError, match="caption.monitor: factual needs validation images whose scenes are known"):
        train_captioner(parse_config(config), echo=lambda _: None)
    with pytest.raises(Exception, match="monitor"):
        parse_config(tiny_config(monitor="bleu"))


def test_factual_monitor_picks_the_epoch_on_shape_scenes(tmp_path):
    """A one-epoch run on 8 shape_scenes images: val factual accuracy is computed and chooses."""
    from mmfuse.captioning.data import CaptionSet, shape_scenes_source
    from mmfuse.captioning.evaluate import shape_scenes_by_path
    from mmfuse.captioning.train import fit_captioner
    from mmfuse.data.media import open_image
    from mmfuse.data.scene_captions import phrasings

    shape_scenes_source()  # writes the scenes on first use
    paths, scenes = zip(*list(shape_scenes_by_path().items())[:8])
    config = parse_config({**tiny_config(monitor="factual"), "output_dir": str(tmp_path / "run")})
    config.train.epochs = 1
    captions = [phrasings(s)[:2] for s in scenes]
    tokenizer = CaptionTokenizer.fit("minilm", [c for caps in captions for c in caps])
    torch.manual_seed(0)
    model = Captioner.build(config, tokenizer)
    pixels = model.encoder.prepare([open_image(p, max_pixels=config.data.max_pixels) for p in paths])["pixels"]
    data = CaptionSet(list(paths), pixels, captions)
    summary = fit_captioner(model, data.subset(range(6)), data.subset(range(6, 8)), config, output_dir=tmp_path / "run")
    assert summary["monitor"] == "factual" and summary["chosen_epoch"] == 1
    assert summary["best_val_factual"] in (0.0, 0.5, 1.0) and summary["best_val_cider"] is not None


def test_coordinates_make_the_first_convolution_see_position(pixels, tmp_path):
    from mmfuse.captioning.model import CoordinateConv

    model = tiny_model(coordinates=True)
    first = model.encoder.body[0][0]
    assert isinstance(first, CoordinateConv)
    blank = first(torch.zeros(1, 3, 8, 8))[0, :, 1:-1, 1:-1]  # inside the padding: only x/y vary
    assert blank.flatten(1).std(1).max() > 0
    config = parse_config(tiny_config(coordinates=True))
    save_captioner(model, config, tmp_path / "model")  # the wrapped conv is rebuilt on load
    loaded, _ = load_captioner(tmp_path / "model")
    assert caption_images(loaded, pixels) == caption_images(model, pixels)
