"""mmfuse export: ONNX graphs that match PyTorch, int8, pruning, the onnxruntime runner behind
Predictor.load, and clear errors for broken exported directories (tiny random encoders, no download)."""
import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pandas as pd
import pytest
import torch
from onnx import numpy_helper

from conftest import tiny_config, write_shapes_csv
from mmfuse import Predictor
from mmfuse.cli import main
from mmfuse.errors import ArtifactError
from mmfuse.export import OnnxRunner, export_model
from mmfuse.export.onnx_export import export_graphs
from mmfuse.export.prune import sparsity
from mmfuse.features import Features
from mmfuse.model import build_model

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A trained tiny model (FiLM over image tokens: tokens, masks and both roles are exercised)."""
    folder = tmp_path_factory.mktemp("export")
    write_shapes_csv(folder)
    config = tiny_config(folder, folder / "table.csv", **{"fusion.name": "film", "train.epochs": 12})
    predictor = Predictor(config).fit()
    predictor.save(folder / "model")
    return folder, predictor


@pytest.fixture(scope="module")
def exported(source):
    folder, _ = source
    return export_model(folder / "model", folder / "model_onnx")


def rows_with_gaps(folder) -> pd.DataFrame:
    """Every table row, unlabelled; every 4th lacks its image, every 4th (shifted) its question."""
    table = pd.read_csv(folder / "table.csv").drop(columns=["answer"])
    table["image"] = str(folder) + "/" + table["image"]
    table.loc[::4, "image"] = None
    table.loc[1::4, "question"] = None
    return table


def test_exported_dir_predicts_like_pytorch(source, exported):
    folder, predictor = source
    loaded = Predictor.load(exported["out"])
    assert isinstance(loaded.runner, OnnxRunner)
    rows = rows_with_gaps(folder)
    frame, expected = predictor.predict_scores(rows)
    _, got = loaded.predict_scores(rows)
    assert len(frame) == len(rows) and got.shape == expected.shape
    assert (got - expected).abs().max().item() <= TOLERANCE
    pd.testing.assert_frame_equal(loaded.predict(rows)[["row", "prediction", "top1", "top2"]],
                                  predictor.predict(rows)[["row", "prediction", "top1", "top2"]])


def test_runner_handles_a_modality_absent_from_every_row_and_single_rows(source, exported):
    folder, predictor = source
    loaded = Predictor.load(exported["out"])
    text_only = rows_with_gaps(folder).assign(image=None).dropna(subset=["question"])
    for rows in (text_only, text_only.iloc[:1]):
        expected = predictor.predict_scores(rows)[1]
        assert (loaded.predict_scores(rows)[1] - expected).abs().max().item() <= TOLERANCE


def test_export_writes_manifest_and_report(source, exported):
    folder, _ = source
    manifest = json.loads((exported["out"] / "onnx" / "manifest.json").read_text())
    assert set(manifest["towers"]) == {"image", "text"}
    assert manifest["fusion"]["layout"]["image"] == {"dim": 16, "tokens": True, "token_count": 16}
    report = {line["variant"]: line for line in json.loads((folder / "model" / "report" / "export.json").read_text())["variants"]}
    assert report["onnx fp32"]["max_abs_diff"] <= TOLERANCE
    assert report["onnx fp32"]["value"] == report["pytorch fp32"]["value"]
    assert "| onnx fp32 |" in (folder / "model" / "report" / "export.md").read_text()


def test_int8_export_from_the_command_line(source, exported, monkeypatch, capsys):
    folder, predictor = source
    out = folder / "model_int8"
    code, printed = run_main(monkeypatch, capsys, "export", str(folder / "model"), "--quantize", "int8",
                             "--out", str(out))
    assert code == 0, printed.err
    assert "| onnx int8 |" in printed.out
    ops = {node.op_type for node in onnx.load(out / "onnx" / "fusion.onnx").graph.node}
    assert "MatMulInteger" in ops or "DynamicQuantizeMatMul" in ops  # really quantized
    report = {line["variant"]: line for line in json.loads((folder / "model" / "report" / "export.json").read_text())["variants"]}
    assert abs(report["onnx int8"]["value"] - report["pytorch fp32"]["value"]) <= 0.15
    rows = rows_with_gaps(folder)
    int8 = Predictor.load(out).predict(rows)
    agree = (int8["prediction"] == predictor.predict(rows)["prediction"]).mean()
    assert agree >= 0.9


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr("sys.argv", ["mmfuse", *args])
    try:
        main()
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    return code, capsys.readouterr()


def test_pruning_reaches_the_sparsity_and_still_predicts(source, exported):
    folder, predictor = source
    result = export_model(folder / "model", folder / "model_pruned", prune=0.5, finetune_epochs=2)
    # prune rounds amount * weights to a whole count: allow a fraction of one weight below 0.5
    assert 0.499 <= result["manifest"]["pruning"]["sparsity"] <= 0.52
    pruned = Predictor.load(result["out"])
    assert 0.499 <= sparsity(pruned.model) <= 0.52  # zeros counted in the saved weights
    graph = onnx.load(result["out"] / "onnx" / "fusion.onnx").graph
    matrices = [numpy_helper.to_array(t) for t in graph.initializer if len(t.dims) == 2]
    zeros = sum(int((m == 0).sum()) for m in matrices) / sum(m.size for m in matrices)
    assert 0.49 <= zeros <= 0.52  # the graph carries the pruned weights
    line = result["lines"][-1]
    assert line["variant"] == "onnx fp32, pruned 0.5 + fine-tune" and line["max_abs_diff"] <= TOLERANCE
    out = pruned.predict(rows_with_gaps(folder))
    assert len(out) == len(rows_with_gaps(folder)) and set(out["prediction"]) <= set(predictor.labels)


def test_broken_exported_dir_names_the_file(source, exported, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(exported["out"], broken)
    data = (broken / "onnx" / "fusion.onnx").read_bytes()
    (broken / "onnx" / "fusion.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(ArtifactError, match="fusion.onnx"):
        Predictor.load(broken)
    (broken / "onnx" / "fusion.onnx").write_bytes(data)
    (broken / "onnx" / "image.onnx").unlink()
    with pytest.raises(ArtifactError, match="image.onnx.*missing"):
        Predictor.load(broken)


def test_export_refuses_bad_requests(source, exported, monkeypatch, capsys):
    folder, _ = source
    code, printed = run_main(monkeypatch, capsys, "export", str(folder / "model"), "--format", "tflite")
    assert code == 2 and "only 'onnx'" in printed.err and "Traceback" not in printed.err
    code, printed = run_main(monkeypatch, capsys, "export", str(exported["out"]))
    assert code == 2 and "already an exported model" in printed.err
    code, printed = run_main(monkeypatch, capsys, "export", str(folder / "model"), "--prune", "1.5",
                             "--no-evaluate", "--out", str(folder / "never"))
    assert code == 2 and "between 0 and 1" in printed.err


# The fusions with attention are where the legacy exporter broke (batch size baked into reshapes).
@pytest.mark.parametrize("fusion", ["mult", "transformer"])
def test_attention_fusions_export_with_any_batch_and_length(source, tmp_path, fusion):
    _, predictor = source
    config = predictor.config.model_copy(update={"fusion": predictor.config.fusion.model_copy(
        update={"name": fusion, "options": {}})})
    model = build_model(config, len(predictor.labels), dict(predictor.model.encoders)).eval()
    export_graphs(model, tmp_path)
    session = ort.InferenceSession(str(tmp_path / "fusion.onnx"), providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    batch, length = 5, 7
    feeds = {"image_pooled": torch.randn(batch, 16, generator=generator),
             "image_tokens": torch.randn(batch, 16, 16, generator=generator),
             "image_mask": torch.ones(batch, 16, dtype=torch.bool),
             "image_present": torch.tensor([True, True, False, True, True]),
             "text_pooled": torch.randn(batch, 16, generator=generator),
             "text_tokens": torch.randn(batch, length, 16, generator=generator),
             "text_mask": torch.arange(length)[None] < torch.tensor([7, 3, 5, 1, 2])[:, None],
             "text_present": torch.tensor([True, False, True, True, True])}
    feats = {m: Features(feeds[f"{m}_pooled"], feeds[f"{m}_tokens"], feeds[f"{m}_mask"], feeds[f"{m}_present"])
             for m in ("image", "text")}
    with torch.no_grad():
        expected = model.head(model.fusion(feats)).numpy()
    got = session.run(None, {k: v.numpy() for k, v in feeds.items()})[0]
    assert np.abs(got - expected).max() <= TOLERANCE
