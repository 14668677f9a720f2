"""Multi-task models (mmfuse.multitask): config checks, weightings by hand, sharing modes, a run."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from torch import nn

from mmfuse.config import parse_config
from mmfuse.data.scene_tasks import question_type
from mmfuse.errors import ConfigError, DataError
from mmfuse.inference import predict_outputs
from mmfuse.multitask.artifact import load_multitask
from mmfuse.multitask.model import build_multitask_model
from mmfuse.multitask.run import read_splits, task_dataset, train_multitask
from mmfuse.multitask.targets import read_task_labels
from mmfuse.multitask.weighting import (GradNormWeighting, PCGradWeighting, UncertaintyWeighting, Weighting,
                                        create_weighting)

from conftest import make_shapes_table, tiny_config

TASKS = [{"name": "answer", "column": "answer", "level": 1},
         {"name": "colour", "column": "colour", "level": 0},
         {"name": "kind", "column": "kind", "type": "classification", "level": 1}]


def task_table(tmp_path):
    """The shapes table plus the square's colour (a task about the image alone) and the question's
    kind (about the text alone); every fourth row's colour left empty."""
    frame = make_shapes_table(tmp_path / "images")
    frame["image"] = "images/" + frame["image"]
    frame["colour"] = [row.answer if row.question.startswith("what") else "" for row in frame.itertuples()]
    frame["colour"] = frame.groupby("image")["colour"].transform("max")
    frame.loc[frame.index % 4 == 0, "colour"] = ""
    frame["kind"] = ["colour" if q.startswith("what") else "yes/no" for q in frame["question"]]
    path = tmp_path / "table.csv"
    frame.to_csv(path, index=False)
    return path


def config(tmp_path, **multitask):
    source = task_table(tmp_path)
    raw = tiny_config(tmp_path, source, task="multitask", multitask={"tasks": TASKS, **multitask})
    raw["train"]["epochs"] = 3
    return parse_config(raw)


# ----- config --------------------------------------------------------------------------------

@pytest.mark.parametrize("multitask, message", [
    ({"tasks": [{"name": "a", "column": "x"}, {"name": "a", "column": "y"}]}, "a repeated"),
    ({"tasks": [{"name": "a", "column": "x"}], "monitor": "b"}, "neither 'mean' nor a task"),
    ({"tasks": [{"name": "a", "column": "x"}], "sharing": "hierarchical"}, "level 0 and at level 1"),
    ({"tasks": [{"name": "a", "column": "x", "type": "ranking"}]}, "multitask.tasks 'a'"),
    ({"tasks": [{"name": "image", "column": "x"}]}, "clash with a prediction column"),
    ({"tasks": [{"name": "a_score", "column": "x"}]}, "clash with a prediction column"),
    ({"tasks": [{"name": "a", "column": "x"}], "sharing": "soft", "weighting": "gradnorm"}, "soft sharing has none"),
])
def test_bad_multitask_sections_fail_naming_what_is_wrong(tmp_path, multitask, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(tiny_config(tmp_path, "t.csv", task="multitask", multitask=multitask))


def test_settings_pcgrad_or_multitask_cannot_honour_are_refused(tmp_path):
    tasks = {"tasks": [{"name": "a", "column": "x"}]}
    with pytest.raises(ConfigError, match="pcgrad steps by hand without fp16"):
        parse_config(tiny_config(tmp_path, "t.csv", task="multitask", multitask={**tasks, "weighting": "pcgrad"},
                                 **{"train.precision": "16-mixed"}))
    with pytest.raises(ConfigError, match="train.alignment: not read with task: multitask"):
        parse_config(tiny_config(tmp_path, "t.csv", task="multitask", multitask=tasks,
                                 **{"train.alignment": {"contrastive": 0.1}}))


def test_multitask_section_needs_task_multitask(tmp_path):
    with pytest.raises(ConfigError, match="read only with task: multitask"):
        parse_config(tiny_config(tmp_path, "t.csv", multitask={"tasks": [{"name": "a", "column": "x"}]}))
    with pytest.raises(ConfigError, match="a multitask section"):
        parse_config(tiny_config(tmp_path, "t.csv", task="multitask"))


def test_mean_monitor_refuses_a_lower_is_better_task(tmp_path):
    tasks = [{"name": "a", "column": "x"}, {"name": "v", "column": "y", "type": "regression"}]
    with pytest.raises(ConfigError, match="v are scored where lower is better"):  # before any data is read
        parse_config(tiny_config(tmp_path, "t.csv", task="multitask", multitask={"tasks": tasks}))
    cfg = parse_config(tiny_config(tmp_path, "t.csv", task="multitask", multitask={"tasks": tasks, "monitor": "v"}))
    assert build_multitask_model(cfg, {"a": ["p", "q"], "v": []}).objective() == ("val_v", "min")


def test_scene_question_types():
    assert [question_type(q) for q in ("how many red shapes are there?", "is there a red circle?",
                                       "what color is the leftmost shape?", "what color is the circle?",
                                       "what shape is the red object?")] == ["count", "exists", "order", "colour", "shape"]
    with pytest.raises(ValueError):
        question_type("why?")


# ----- weightings by hand ----------------------------------------------------------------------

def test_fixed_and_uncertainty_weighting_by_hand():
    losses = {"a": torch.tensor(2.0), "b": torch.tensor(0.5)}
    assert Weighting({"a": 1.0, "b": 3.0}).combine(losses).item() == pytest.approx(3.5)
    assert Weighting({"a": 1.0, "b": 3.0}).combine({"b": losses["b"]}).item() == pytest.approx(1.5)  # a absent
    uncertain = UncertaintyWeighting({"a": 1.0, "b": 1.0})
    with torch.no_grad():
        uncertain.log_variance.copy_(torch.tensor([math.log(2.0), 0.0]))
    assert uncertain.combine(losses).item() == pytest.approx(2.0 / 2 + math.log(2.0) + 0.5)
    assert uncertain.current() == pytest.approx({"a": 0.5, "b": 1.0})


def test_gradnorm_favours_the_task_that_trains_slower():
    torch.manual_seed(0)
    weighting = GradNormWeighting({"fast": 1.0, "slow": 1.0}, alpha=1.5)
    optimizer = torch.optim.SGD(weighting.parameters(), lr=0.05)
    z = torch.randn(8, 4, requires_grad=True)  # the shared layer both losses pass through
    for step in range(20):
        fast_scale = 0.9 ** step  # its loss falls, the other's does not
        losses = {"fast": fast_scale * z[:, :2].square().mean(), "slow": z[:, 2:].square().mean()}
        optimizer.zero_grad()
        weighting.combine(losses, z).backward()
        optimizer.step()
        weighting.after_step()
    weights = weighting.current()
    assert weights["slow"] > weights["fast"]
    assert weights["slow"] + weights["fast"] == pytest.approx(2.0)  # renormalised to the task count


def test_pcgrad_projects_conflicting_gradients_by_hand():
    w = nn.Parameter(torch.zeros(2))
    # dL_a/dw = (1, 0), dL_b/dw = (-1, 1): they conflict (dot -1).
    losses = {"a": w @ torch.tensor([1.0, 0.0]), "b": w @ torch.tensor([-1.0, 1.0])}
    (gradient,) = PCGradWeighting({"a": 1.0, "b": 1.0}).shared_gradient(losses, [w], seed=0)
    # a projected off b: (1,0) + 1/2 (-1,1) = (0.5, 0.5); b off a: (-1,1) + (1,0) = (0, 1).
    assert gradient.tolist() == pytest.approx([0.5, 1.5])
    agreeing = {"a": w @ torch.tensor([1.0, 0.0]), "b": w @ torch.tensor([1.0, 1.0])}
    (plain,) = PCGradWeighting({"a": 1.0, "b": 1.0}).shared_gradient(agreeing, [w], seed=0)
    assert plain.tolist() == pytest.approx([2.0, 1.0])  # no conflict: the plain sum
    assert create_weighting("pcgrad", {"a": 1.0}).needs_task_gradients


# ----- sharing modes ---------------------------------------------------------------------------

def test_sharing_modes_build_what_they_say(tmp_path):
    labels = {"answer": ["a", "b"], "colour": ["r", "g", "b"], "kind": ["x", "y"]}
    hard = build_multitask_model(config(tmp_path, sharing="hard"), labels)
    soft = build_multitask_model(config(tmp_path, sharing="soft"), labels)
    layered = build_multitask_model(config(tmp_path, sharing="hierarchical"), labels)
    assert list(hard.fusions) == ["shared"] and hard.lift is None and hard.soft_distance() is None
    assert list(soft.fusions) == ["answer", "colour", "kind"]
    # Every fusion starts apart (own initial weights); equal weights are at distance 0.
    assert soft.soft_distance().item() > 0
    for fusion in soft.fusions.values():
        fusion.load_state_dict(soft.fusions["answer"].state_dict())
    assert soft.soft_distance().item() == pytest.approx(0.0)
    assert layered.lift is not None and layered.levels == {"answer": 1, "colour": 0, "kind": 1}
    shared_ids = {id(p) for p in hard.shared_parameters()}
    assert all(id(p) in shared_ids for p in hard.fusions.parameters())
    assert {id(p) for p in layered.lift.parameters()} <= {id(p) for p in layered.shared_parameters()}
    assert not any(id(p) in {id(q) for q in soft.shared_parameters()} for p in soft.fusions.parameters())


def test_hierarchical_lower_task_does_not_reach_the_layer_above(tmp_path):
    cfg = config(tmp_path, sharing="hierarchical")
    parts = read_splits(cfg)
    labels = {"answer": ["no", "yes", "red", "green", "blue"], "colour": ["blue", "green", "red"], "kind": ["colour", "yes/no"]}
    model = build_multitask_model(cfg, labels)
    dataset = task_dataset(parts["train"], model, cfg, labels, read_task_labels(cfg.data.source, parts["train"],
                                                                                cfg.multitask.tasks, cfg.data))
    batch = dataset[list(range(8))]
    outputs = model(batch)
    assert model.representations(batch)[1] is not None  # the shared fused vector GradNorm measures at
    outputs["colour"].sum().backward()
    assert all(p.grad is None for p in model.lift.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.fusions.parameters())
    model.zero_grad()
    model(batch)["answer"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.lift.parameters())


# ----- data ------------------------------------------------------------------------------------

def test_empty_cells_are_unknown_for_their_task_only(tmp_path):
    cfg = config(tmp_path)
    parts = read_splits(cfg)
    total = sum(len(frame) for frame in parts.values())
    assert total == 72  # no row dropped for its empty colour cell
    labels = read_task_labels(cfg.data.source, parts["train"], cfg.multitask.tasks, cfg.data)
    table = pd.read_csv(cfg.data.source, keep_default_na=False)
    expected = [table["colour"][r - 1] or None for r in parts["train"]["row"]]
    assert labels["colour"].values == expected
    assert labels["colour"].known().tolist() == [v is not None for v in expected]
    assert all(v is not None for v in labels["answer"].values)


def test_unreadable_cells_are_counted_or_fail_under_strict(tmp_path, caplog):
    cfg = config(tmp_path)
    table = pd.read_csv(cfg.data.source, keep_default_na=False)
    frame = read_splits(cfg)["train"]
    bad_row = int(frame["row"].iloc[-1])
    table["score"] = ["1.5" if r != bad_row else "lots" for r in range(1, len(table) + 1)]
    table.to_csv(cfg.data.source, index=False)
    specs = [t.model_copy(update={"name": "score", "column": "score", "type": "regression"}) for t in cfg.multitask.tasks[:1]]
    with caplog.at_level("WARNING"):
        values = read_task_labels(cfg.data.source, frame, specs, cfg.data)["score"].values
    assert values[-1] is None and values[0] == pytest.approx(1.5)
    assert f"1 cell(s) of {cfg.data.source} column 'score' not readable" in caplog.text
    strict = cfg.data.model_copy(update={"strict": True})
    with pytest.raises(DataError, match=f"table.csv row {bad_row}, column 'score'"):
        read_task_labels(cfg.data.source, frame, specs, strict)


def test_a_missing_task_column_is_named(tmp_path):
    cfg = config(tmp_path)
    cfg.multitask.tasks[1].column = "colours"
    with pytest.raises(DataError, match="column 'colours' .*multitask.tasks 'colour'"):
        train_multitask(cfg, echo=lambda line: None)


# ----- a run -----------------------------------------------------------------------------------

@pytest.mark.parametrize("sharing, weighting", [("hard", "fixed"), ("soft", "uncertainty"),
                                                ("hierarchical", "gradnorm"), ("hard", "pcgrad"),
                                                ("soft", "pcgrad")])
def test_a_run_trains_reports_each_task_and_saves_a_loadable_model(tmp_path, sharing, weighting):
    cfg = config(tmp_path, sharing=sharing, weighting=weighting)
    lines = []
    result = train_multitask(cfg, echo=lines.append)
    assert set(result["tasks"]) == {"answer", "colour", "kind"}
    colour = result["tasks"]["colour"]
    test = read_splits(cfg)["test"]
    table = pd.read_csv(cfg.data.source, keep_default_na=False)
    assert colour["rows"] == sum(bool(table["colour"][r - 1]) for r in test["row"])  # known rows only
    assert result["tasks"]["kind"]["rows"] == len(test)
    report = (tmp_path / "run" / "report.md").read_text()
    assert report.count("\n## ") == 3 and "## colour (classification" in report
    assert f"sharing **{sharing}**, weighting **{weighting}**" in report
    assert any(line.startswith("test answer: accuracy") for line in lines)
    assert set(result["fit"]["task_weights"]) == {"answer", "colour", "kind"}
    model, loaded_cfg, labels = load_multitask(tmp_path / "run" / "model")
    assert loaded_cfg.multitask.sharing == sharing and labels["kind"] == ["colour", "yes/no"]
    dataset = task_dataset(test, model, loaded_cfg, labels,
                           read_task_labels(cfg.data.source, test, cfg.multitask.tasks, cfg.data))
    outputs = predict_outputs(model, dataset, loaded_cfg)
    target, known = dataset.target.targets["kind"]
    accuracy = (outputs["kind"].argmax(-1) == target).float().mean().item()
    assert accuracy == pytest.approx(result["tasks"]["kind"]["metrics"]["accuracy"])


def test_a_saved_model_predicts_every_task_from_the_cli(tmp_path):
    from typer.testing import CliRunner

    from mmfuse.cli import app

    cfg = config(tmp_path, sharing="soft")
    cfg.train.epochs, cfg.train.lr = 15, 0.03
    train_multitask(cfg, echo=lambda line: None)
    table = pd.read_csv(cfg.data.source, keep_default_na=False)
    rows = table.drop(columns=["answer", "colour", "kind"]).head(10)
    rows.loc[9, "image"] = "images/missing.png"
    rows.to_csv(tmp_path / "ask.csv", index=False)
    run = CliRunner().invoke(app, ["predict", str(tmp_path / "run" / "model"), "--data", str(tmp_path / "ask.csv"),
                                   "--out", str(tmp_path / "out.csv")])
    assert run.exit_code == 0, run.output
    out = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert len(out) == 9 and "1 bad rows skipped" in run.output and "missing.png" in run.output
    assert {"answer", "answer_score", "colour", "colour_score", "kind", "kind_score"} <= set(out.columns)
    # The question's kind is in its words: a trained model gets it right.
    assert out["kind"].tolist() == table["kind"].head(9).tolist()
    single = CliRunner().invoke(app, ["predict", str(tmp_path / "run" / "model"), "--text", "what color?"])
    assert "multi-task model: predict a table with --data" in str(single.exception)
    served = CliRunner().invoke(app, ["export", str(tmp_path / "run" / "model")])
    assert "is a multi-task model" in str(served.exception)
    # evaluate: a split of the configured source, or a labelled table of one's own, whole.
    evaluated = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run" / "model")])
    assert evaluated.exit_code == 0, evaluated.output
    assert "test kind: accuracy" in evaluated.output and "test colour: accuracy" in evaluated.output
    report = (tmp_path / "run" / "model" / "report" / "report.md").read_text()
    assert report.count("\n## ") == 3
    table.head(12).assign(colour="").to_csv(tmp_path / "labelled.csv", index=False)
    own = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run" / "model"), "--data", str(tmp_path / "labelled.csv")])
    assert own.exit_code == 0, own.output
    assert "the table kind: accuracy" in own.output and "(12 rows)" in own.output
    assert "the table colour: no labelled row" in own.output


def test_a_task_labelled_on_few_rows_trains_and_a_split_without_its_labels_is_said(tmp_path):
    """Most batches have no label for `colour`, the test split none at all: every weighting still
    trains (the task's loss is left out of those batches), and the report says what it lacks."""
    cfg = config(tmp_path)
    table = pd.read_csv(cfg.data.source, keep_default_na=False)
    keep = [r - 1 for r in read_splits(cfg)["train"]["row"] if table["colour"][r - 1]][:3]
    table["colour"] = [table["colour"][i] if i in keep else "" for i in range(len(table))]
    table.to_csv(cfg.data.source, index=False)
    for weighting in ("fixed", "uncertainty", "gradnorm", "pcgrad"):
        cfg.multitask.weighting = weighting
        lines = []
        result = train_multitask(cfg, echo=lines.append)
        assert "colour" not in result["tasks"] and set(result["tasks"]) == {"answer", "kind"}
        assert any("test colour: no labelled row (column 'colour' is empty there)" in line for line in lines)


def test_list_cells_of_any_task_keep_their_rows(tmp_path):
    """A multi-label task with list cells (a DataFrame, JSONL) first in the list: rows are kept,
    and each task parses its own column."""
    frame = make_shapes_table(tmp_path / "images")
    frame["image"] = str(tmp_path / "images") + "/" + frame["image"]
    frame["tags"] = [["square", row.answer] for row in frame.itertuples()]
    source = tmp_path / "table.jsonl"
    frame.to_json(source, orient="records", lines=True)
    cfg = parse_config(tiny_config(tmp_path, source, task="multitask", multitask={"tasks": [
        {"name": "tags", "column": "tags", "type": "multilabel"}, {"name": "answer", "column": "answer"}]}))
    parts = read_splits(cfg)
    assert sum(len(p) for p in parts.values()) == len(frame)
    labels = read_task_labels(cfg.data.source, parts["train"], cfg.multitask.tasks, cfg.data)
    assert all(sorted(v) == sorted(frame["tags"][r - 1]) for v, r in zip(labels["tags"].values, parts["train"]["row"]))
    assert labels["tags"].encode(["blue", "green", "no", "red", "square", "yes"]).shape == (len(parts["train"]), 6)
