"""privacy.mask_pii end to end: a table whose questions are full of personal data trains, and no
original value is anywhere under the run directory or the feature cache afterwards."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from conftest import make_shapes_table, tiny_config
from mmfuse import Predictor

# Valid values of several kinds (checksums right), written so that a word-level vocabulary would
# keep each of them, or a distinctive piece of it, as one token.
PERSONAL = {
    "email": "quuxzyxw.private@example.org",
    "card": "4111111111111111",
    "iban": "GB82WEST12345698765432",
    "cn_resident_id": "11010519491231002X",
    "phone": "+14155552671",
    "secret": "sk-Zq8vLmN4tR7pW2xY9bC3dF6g",
}


def leaked(folder: Path) -> dict[str, list[str]]:
    """value -> files under `folder` whose bytes hold it (or its lower-case alphanumeric runs of
    length >= 8, which is how a vocabulary would keep it)."""
    needles = {}
    for value in PERSONAL.values():
        pieces = {value, value.lower(), *(run for run in re.findall(r"[a-z0-9]+", value.lower()) if len(run) >= 8)}
        needles[value] = [p.encode() for p in pieces]
    found: dict[str, list[str]] = {}
    for path in folder.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            for value, pieces in needles.items():
                if any(piece in data for piece in pieces):
                    found.setdefault(value, []).append(str(path.relative_to(folder)))
    return found


def train_on_personal_data(tmp_path: Path, mask: bool) -> tuple[Predictor, Path]:
    frame = make_shapes_table(tmp_path / "data" / "images")
    frame["image"] = "images/" + frame["image"]
    values = list(PERSONAL.values())
    frame["question"] = [f"{q} reply to {values[i % len(values)]}" for i, q in enumerate(frame["question"])]
    table = tmp_path / "data" / "table.csv"
    frame.to_csv(table, index=False)
    config = tiny_config(tmp_path / "work", table, **{"privacy.mask_pii": mask, "encoders.text.trainable": False})
    predictor = Predictor(config).fit()
    predictor.evaluate(report_dir=tmp_path / "work" / "run" / "report")
    predictor.save(tmp_path / "work" / "run" / "model")
    return predictor, tmp_path / "work"


def test_no_personal_value_reaches_any_file_when_masked(tmp_path):
    predictor, work = train_on_personal_data(tmp_path, mask=True)
    assert leaked(work) == {}
    counts = predictor.fit_summary["personal_data_masked"]
    assert set(counts) == set(PERSONAL)  # every kind was found and counted ...
    saved = json.loads((work / "run" / "model" / "metrics.json").read_text())
    assert saved["fit"]["personal_data_masked"] == counts  # ... and the counts, not the values, are kept
    vocabulary = (work / "run" / "model" / "encoders.json").read_text()
    assert "[email]" in vocabulary.lower() or "email" in vocabulary.lower()  # the placeholder was learned


def test_without_masking_the_same_run_keeps_personal_values(tmp_path):
    """The control: the search above does find them when masking is off."""
    _, work = train_on_personal_data(tmp_path, mask=False)
    assert len(leaked(work)) >= 4


def test_predict_masks_new_tables_too(tmp_path):
    predictor, _ = train_on_personal_data(tmp_path, mask=True)
    before = dict(predictor.pii_masker.counts)
    frame = pd.DataFrame({"image": [str(next((tmp_path / "data" / "images").glob("*.png")))],
                          "question": ["what color is the square? mail quuxzyxw.private@example.org"]})
    out = predictor.predict(frame)
    assert len(out) == 1
    assert predictor.pii_masker.counts["email"] == before.get("email", 0) + 1


def test_served_request_texts_are_masked_before_the_model(tmp_path):
    """`mmfuse serve --mask-pii`, or a model trained with privacy.mask_pii: the row the model gets
    holds the placeholder, not the value."""
    from mmfuse.serve.inputs import make_row

    text = "is it red? write to quuxzyxw.private@example.org or call +1 415 555 2671"
    limits = {"max_text_chars": 10_000}
    plain = make_row({"text": text}, where="rows[0].", limits=limits, folder=tmp_path)
    masked = make_row({"text": text}, where="rows[0].", limits={**limits, "mask_pii": True}, folder=tmp_path)
    assert plain.values["text"] == text
    assert masked.values["text"] == "is it red? write to [EMAIL] or call [PHONE]"


def test_search_thumbnails_carry_no_image_metadata(tmp_path):
    """A photo's EXIF (here a GPS position) is not copied into the thumbnails the server sends.
    A guard: today's open_image + PNG writer already drop it; `_thumbnail` clears the metadata
    explicitly so that a change in either cannot start sending it."""
    import base64
    import io

    from PIL import Image

    from mmfuse.serve.search import _thumbnail

    exif = Image.Exif()
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0), 3: "E", 4: (13.0, 24.0, 36.0)}  # GPSInfo
    exif[0x010F] = "PrivateCam"  # Make
    photo = tmp_path / "photo.jpg"
    Image.new("RGB", (64, 48), (200, 30, 30)).save(photo, exif=exif)
    assert Image.open(photo).getexif()  # the source has it
    url = _thumbnail({"image": str(photo)})
    sent = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    assert not sent.getexif() and "exif" not in sent.info
    assert b"PrivateCam" not in base64.b64decode(url.split(",", 1)[1])


def test_bad_row_reasons_are_masked_too(tmp_path, caplog):
    """A refused row's reason quotes the value it refuses (a file name holding an e-mail address):
    with masking on, neither the kept bad rows nor the log hold it."""
    frame = make_shapes_table(tmp_path / "data" / "images")
    frame["image"] = "images/" + frame["image"]
    frame.loc[0, "image"] = f"images/{PERSONAL['email']}.png"  # no such file
    table = tmp_path / "data" / "table.csv"
    frame.to_csv(table, index=False)
    for mask in (False, True):
        config = tiny_config(tmp_path / f"work{mask}", table, **{"privacy.mask_pii": mask})
        predictor = Predictor(config)
        caplog.clear()
        with caplog.at_level("WARNING"):
            predictor.splits()
        reasons = " ".join(str(bad) for bad in predictor.bad_rows)
        assert len(predictor.bad_rows) == 1 and "row 1" in reasons
        assert (PERSONAL["email"] in reasons + caplog.text) is not mask
        assert ("[EMAIL]" in reasons) is mask


def test_explanations_see_and_show_the_masked_text(tmp_path):
    from mmfuse.explain import explain_row

    predictor, _ = train_on_personal_data(tmp_path, mask=True)
    image = str(next((tmp_path / "data" / "images").glob("*.png")))
    result = explain_row(predictor, {"image": image, "text": f"is the square red? mail {PERSONAL['email']}"})
    words = [w for w, _ in result.words["text"]]
    assert words[-1] == "[EMAIL]" and PERSONAL["email"] not in json.dumps(result.as_dict())
