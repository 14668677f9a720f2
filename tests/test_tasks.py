"""Every registered task (mmfuse.tasks) against the Task contract: a new task is tested by registering it."""
from __future__ import annotations

import pytest
import torch

from mmfuse.config import parse_config
from mmfuse.errors import ConfigError, LabelProblem
from mmfuse.tasks import TASKS, create_task, task_runner

LABELS = ["cat", "dog", "owl"]
# Label cells as a table holds them, per task; any new task adds its own.
CELLS = {"classification": ["cat", "owl", "dog", "cat"], "multilabel": ["cat|dog", "owl", "dog", "cat|owl"],
         "regression": ["1.5", 2, "-0.5", 3.0]}


# Tasks that train their own kind of model (Task.runner: captions, several heads) have their own tests.
HEAD_TASKS = [name for name in TASKS.names() if TASKS.get(name).runner is None]


@pytest.fixture(params=HEAD_TASKS)
def task(request):
    return create_task(request.param)


def parsed(task) -> list:
    return [task.parse_label(cell, None, "|") for cell in CELLS[task.name]]


def labels_of(task) -> list[str]:
    return task.label_set(parsed(task))


def test_every_task_has_cells_here(task):
    assert task.name in CELLS, "add label cells for the new task to CELLS"


def test_target_round_trip(task):
    values = parsed(task)
    labels = labels_of(task)
    assert labels == (LABELS if task.per_label else [])
    target = task.encode(values, labels)
    assert len(target) == len(values)
    # a perfect output scores the targets back to the labels they came from
    perfect = {"classification": lambda: torch.nn.functional.one_hot(target, len(labels)).float(),
               "multilabel": lambda: target.float(), "regression": lambda: target}[task.name]()
    answers = [answer for answer, _ in task.answers(perfect, labels, top_k=2)]
    if task.name == "regression":
        assert answers == pytest.approx(values)
    else:
        assert answers == (values if task.name == "classification" else ["|".join(v) for v in values])


def test_bad_label_cells_are_label_problems(task):
    with pytest.raises(LabelProblem):
        task.parse_label(["a", "b"] if task.name != "multilabel" else [], None, "|")
    if task.per_label:
        with pytest.raises(LabelProblem, match="label set"):
            task.parse_label("zebra", {"cat"}, "|")


def test_loss_decreases_on_a_toy_batch(task):
    labels = labels_of(task)
    target = task.encode(parsed(task), labels)
    torch.manual_seed(0)
    head = task.head(in_dim=5, num_labels=len(labels), hidden=8, dropout=0.0)
    features = torch.randn(len(target), 5)
    optimizer = torch.optim.Adam(head.parameters(), lr=0.05)
    first = head.loss(head(features), target).item()
    for _ in range(50):
        optimizer.zero_grad()
        loss = head.loss(head(features), target)
        loss.backward()
        optimizer.step()
    assert loss.item() < first


def test_scores_shape_and_range(task):
    labels = labels_of(task)
    head = task.head(in_dim=5, num_labels=len(labels), hidden=0, dropout=0.0)
    scores = head.scores(head(torch.randn(4, 5)))
    if task.per_label:
        assert scores.shape == (4, len(labels)) and bool(((scores >= 0) & (scores <= 1)).all())
    else:
        assert scores.shape == (4,)


def test_answers_hold_top_k_labels_by_score(task):
    labels = labels_of(task)
    head = task.head(in_dim=3, num_labels=len(labels), hidden=0, dropout=0.0)
    answers = task.answers(head.scores(head(torch.randn(4, 3))).detach(), labels, top_k=2)
    assert len(answers) == 4
    for _, top in answers:
        assert len(top) == (2 if task.per_label else 0)
        assert [score for _, score in top] == sorted((score for _, score in top), reverse=True)
        assert all(label in labels for label, _ in top)


def test_metrics_include_the_headline_and_the_monitor_is_a_metric(task):
    labels = labels_of(task)
    target = task.encode(parsed(task), labels)
    head = task.head(in_dim=3, num_labels=len(labels), hidden=0, dropout=0.0)
    scores = head.scores(head(torch.randn(len(target), 3))).detach()
    metrics, per_class, _ = task.metrics(scores, target, labels)
    assert task.headline in metrics
    assert task.monitor_mode in ("max", "min") and task.headline_mode in ("max", "min")
    assert len(per_class) == len(labels)
    metric = task.val_metric(head.out_dim)
    metric.update(scores[:2], target[:2])
    metric.update(scores[2:], target[2:])
    assert torch.isfinite(metric.compute())


def test_config_task_is_checked_against_the_registry():
    assert parse_config({"task": "multilabel"}).task == "multilabel"
    with pytest.raises(ConfigError, match=", ".join(TASKS.names())):
        parse_config({"task": "segmentation"})


def test_tasks_with_their_own_training_name_a_function_that_exists():
    runners = {name: task_runner(create_task(name)) for name in TASKS.names()}
    assert {name for name, run in runners.items() if run is not None} == {"caption", "multitask"}
    assert runners["caption"].__name__ == "train_captioner" and runners["multitask"].__name__ == "train_multitask"
    assert all(runners[name] is None for name in HEAD_TASKS)


def test_a_section_only_another_task_reads_is_refused():
    with pytest.raises(ConfigError, match="caption: read only with task: caption .*task: regression"):
        parse_config({"task": "regression", "caption": {}})
    with pytest.raises(ConfigError, match="task caption: encoders.image"):
        parse_config({"task": "caption", "encoders": {"image": None}})
