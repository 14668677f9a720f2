"""End to end on a tiny generated table with tiny random encoders: fit, evaluate, save, load, resume."""
import json

import lightning as L
import pandas as pd
import pytest
import torch

from conftest import tiny_config
from test_data import write_huge_png
from mmfuse import Predictor
from mmfuse.errors import DataError, MmfuseError


@pytest.fixture
def trained(tmp_path, shapes_csv):
    return Predictor(tiny_config(tmp_path, shapes_csv)).fit()


def test_fit_evaluate_and_report(tmp_path, trained):
    result = trained.evaluate(report_dir=tmp_path / "report")
    metrics = result["metrics"]
    assert set(metrics) >= {"accuracy", "macro_f1", "micro_f1", "macro_precision", "macro_recall", "auroc"}
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert set(result["modality_contribution"]) == {"all", "without_image", "without_text"}
    assert (tmp_path / "report" / "confusion.png").stat().st_size > 1000
    report = (tmp_path / "report" / "report.md").read_text()
    assert f"| accuracy | {metrics['accuracy']:.4f} |" in report
    contribution = result["modality_contribution"]
    assert f"| both present | {contribution['all']:.4f} |" in report
    assert f"| image only (text removed) | {contribution['without_text']:.4f} |" in report
    assert f"| text only (image removed) | {contribution['without_image']:.4f} |" in report
    assert "Modality dropout in training: none." in report
    # the confusion matrix rows add up to the evaluated rows
    assert int(result["confusion"].sum()) == result["rows"]


def test_save_load_predict_identical(tmp_path, trained):
    table = pd.read_csv(tmp_path / "table.csv")
    table["image"] = str(tmp_path) + "/" + table["image"]
    before = trained.predict_scores(table.drop(columns=["answer"]))[1]
    trained.save(tmp_path / "model")
    for name in ("config.yaml", "model.safetensors", "labels.json", "metrics.json", "README.md"):
        assert (tmp_path / "model" / name).is_file()
    loaded = Predictor.load(tmp_path / "model")
    after = loaded.predict_scores(table.drop(columns=["answer"]))[1]
    assert torch.equal(before, after)
    assert json.loads((tmp_path / "model" / "labels.json").read_text()) == trained.labels


def test_predict_single_rows_with_one_modality(trained, shapes_csv):
    image = str(shapes_csv.parent / "images" / "img0.png")
    out = trained.predict([{"image": image, "question": "what color is the square?"},
                           {"image": image}, {"question": "is the square red?"}])
    assert len(out) == 3 and set(out["prediction"]) <= set(trained.labels)
    assert (out["top1_score"] >= out["top2_score"]).all()


def test_resume_matches_an_uninterrupted_run(tmp_path, shapes_csv):
    class StopAfterFirstEpoch(L.Callback):
        def on_train_epoch_end(self, trainer, module):
            trainer.should_stop = True

    config = tiny_config(tmp_path, shapes_csv, **{"train.epochs": 3})
    whole = Predictor(config).fit(output_dir=tmp_path / "whole")
    Predictor(config).fit(output_dir=tmp_path / "cut", callbacks=[StopAfterFirstEpoch()])
    resumed = Predictor(config).fit(output_dir=tmp_path / "cut", resume=tmp_path / "cut" / "checkpoints" / "last.ckpt")
    assert resumed.fit_summary["epochs"] == whole.fit_summary["epochs"] == 3
    last = [torch.load(tmp_path / run / "checkpoints" / "last.ckpt", weights_only=True) for run in ("whole", "cut")]
    assert last[0]["global_step"] == last[1]["global_step"] > 0
    for key, value in last[0]["state_dict"].items():
        assert torch.allclose(value.float(), last[1]["state_dict"][key].float(), atol=1e-6), key
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-6)
    assert whole.evaluate()["metrics"] == resumed.evaluate()["metrics"]


def test_bad_rows_are_reported_and_the_rest_trains(tmp_path, shapes_csv):
    table = pd.read_csv(shapes_csv)
    whole_png = (tmp_path / "images" / "img0.png").read_bytes()
    (tmp_path / "images" / "broken.png").write_bytes(whole_png[: len(whole_png) // 2])  # truncated
    (tmp_path / "images" / "page.jpg").write_text("<!doctype html><html></html>")
    write_huge_png(tmp_path / "images" / "bomb.png")  # 20000 x 20000, refused before decoding
    bad = pd.DataFrame([
        {"image": "images/missing.png", "question": "what color is the square?", "answer": "red"},
        {"image": "images/broken.png", "question": "what color is the square?", "answer": "red"},
        {"image": "images/page.jpg", "question": "what color is the square?", "answer": "red"},
        {"image": "images/img0.png", "question": "   ", "answer": "red"},
        {"image": "images/img0.png", "question": "what color is the square?", "answer": "purple"},
        {"image": "images/bomb.png", "question": "what color is the square?", "answer": "red"},
    ])
    path = tmp_path / "dirty.csv"
    pd.concat([table, bad]).to_csv(path, index=False)
    labels = ["blue", "green", "no", "red", "yes"]
    predictor = Predictor(tiny_config(tmp_path, path, **{"data.labels": labels, "train.epochs": 1})).fit()
    rows = {b.row: b for b in predictor.bad_rows}
    first = len(table) + 1
    assert sorted(rows) == list(range(first, first + 6))
    assert "not found" in rows[first].reason and "looks like HTML" in rows[first + 2].reason
    assert rows[first + 1].field == "image" and "corrupt" in rows[first + 1].reason
    assert rows[first + 3].field == "text" and rows[first + 4].field == "label"
    assert "too large" in rows[first + 5].reason
    assert predictor.fit_summary["epochs"] == 1  # the good rows trained
    with pytest.raises(DataError, match="row"):
        Predictor(tiny_config(tmp_path, path, **{"data.labels": labels, "data.strict": True})).fit()


def test_new_csv_needs_only_a_config_change(tmp_path):
    """Other column names and a regression target work with config alone."""
    from conftest import make_shapes_table

    frame = make_shapes_table(tmp_path / "pics").rename(columns={"image": "picture", "question": "prompt"})
    frame["picture"] = "pics/" + frame["picture"]
    frame["score"] = (frame["answer"] == "yes").astype(float)
    frame.to_csv(tmp_path / "other.csv", index=False)
    config = tiny_config(tmp_path, tmp_path / "other.csv", task="regression",
                         **{"data.columns": {"image": "picture", "text": "prompt", "label": "score"}})
    predictor = Predictor(config).fit()
    assert "rmse" in predictor.evaluate()["metrics"]


def test_unfitted_predictor_says_so():
    with pytest.raises(MmfuseError, match="fit"):
        Predictor().predict([{"image": "x.png"}])


def test_multilabel_tagging(tmp_path, shapes_csv):
    table = pd.read_csv(shapes_csv)
    table["tags"] = [f"{a}|square" if a in ("red", "green", "blue") else "answer|square" for a in table["answer"]]
    table.to_csv(tmp_path / "tags.csv", index=False)
    config = tiny_config(tmp_path, tmp_path / "tags.csv", task="multilabel", **{"data.columns.label": "tags"})
    predictor = Predictor(config).fit()
    assert "square" in predictor.labels and "exact_match" in predictor.evaluate()["metrics"]
    out = predictor.predict(table.drop(columns=["tags", "answer"]).head(4).assign(
        image=lambda f: str(tmp_path) + "/" + f["image"]))
    assert len(out) == 4
