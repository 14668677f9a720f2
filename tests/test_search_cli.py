"""The command-line round trip: align -> index build -> search (text and image) -> add / remove,
with tiny random encoders and a real FAISS index on disk."""
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from mmfuse.cli import app, main
from test_align import align_config, make_caption_table

runner = CliRunner()


@pytest.fixture
def aligned(tmp_path):
    """(caption table, aligned model dir) trained once through `mmfuse align`."""
    captions = make_caption_table(tmp_path)
    config = tmp_path / "align.yaml"
    config.write_text(yaml.safe_dump(align_config(tmp_path, captions)))
    result = runner.invoke(app, ["align", str(config), "--set", "align.epochs=40"])
    assert result.exit_code == 0, result.output
    assert "t2i_R@1" in result.output and "aligned model saved" in result.output
    return captions, tmp_path / "run" / "model"


def hits(output: str) -> pd.DataFrame:
    rows = [line.split() for line in output.splitlines()[1:] if line.strip() and line.split()[0].isdigit()]
    return pd.DataFrame(rows, columns=["rank", "score", "id", "path"]).astype({"id": int, "score": float})


def test_align_index_search_round_trip(tmp_path, aligned):
    captions, model = aligned
    index = tmp_path / "index"
    result = runner.invoke(app, ["index", "build", str(model), "--data", str(captions), "--out", str(index)])
    assert result.exit_code == 0, result.output
    assert "indexed 36 images" in result.output

    table = pd.read_csv(captions)
    table["path"] = [str((captions.parent / p).resolve()) for p in table["image"]]
    caption_of = dict(zip(table["path"], table["caption"]))
    for caption in ("a red square", "a green square", "a blue square"):
        result = runner.invoke(app, ["search", str(index), caption, "-k", "3"])
        assert result.exit_code == 0, result.output
        found = hits(result.output)
        assert len(found) == 3 and found["score"].is_monotonic_decreasing
        assert [caption_of[p] for p in found["path"]] == [caption] * 3, result.output

    # An image query finds that very image first, and the contact sheet shows the hits.
    query = table["path"].iloc[4]
    sheet = tmp_path / "hits.html"
    result = runner.invoke(app, ["search", str(index), "--image", query, "-k", "2", "--html", str(sheet)])
    assert result.exit_code == 0, result.output
    assert hits(result.output)["path"].iloc[0] == query
    assert sheet.read_text().count("<img ") == 2 and f'src="file://{query}"' in sheet.read_text()


def test_index_add_and_remove(tmp_path, aligned):
    captions, model = aligned
    index = tmp_path / "index"
    assert runner.invoke(app, ["index", "build", str(model), "--data", str(captions.parent / "images"),
                               "--out", str(index)]).exit_code == 0
    extra = tmp_path / "extra"
    make_caption_table(extra, n_images=3, seed=5)  # other positions
    result = runner.invoke(app, ["index", "add", str(index), "--data", str(extra / "captions.csv")])
    assert result.exit_code == 0 and "added 3 images (ids 36..38); the index holds 39" in result.output

    new_red = str((extra / "images" / "img0.png").resolve())
    found = hits(runner.invoke(app, ["search", str(index), "--image", new_red, "-k", "1"]).output)
    assert found["id"].tolist() == [36]
    result = runner.invoke(app, ["index", "remove", str(index), "--ids", "36,99"])
    assert result.exit_code == 0 and "removed 1 of 2 ids; the index holds 38" in result.output
    found = hits(runner.invoke(app, ["search", str(index), "--image", new_red, "-k", "50"]).output)
    assert 36 not in found["id"].tolist() and len(found) == 38


def test_user_errors_are_one_line_exit_2(monkeypatch, capsys, tmp_path, aligned):
    _, model = aligned
    for args, expected in [
        (["search", str(tmp_path / "run"), "--k", "3"], "give either a text query or --image"),
        (["index", "build", str(tmp_path), "--data", str(tmp_path), "--out", str(tmp_path / "i")],
         "is not an aligned model directory"),
        (["index", "build", str(model), "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "i")],
         "table file not found"),
    ]:
        monkeypatch.setattr("sys.argv", ["mmfuse", *args])
        with pytest.raises(SystemExit) as exit_info:
            main()
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and expected in err and "Traceback" not in err, err
