"""Tasks: what a model predicts. Importing this package registers all of them.

    from mmfuse.tasks import create_task, available_tasks
    task = create_task("multilabel")
"""
from . import caption, classification, multilabel, multitask, regression  # noqa: F401
from ..errors import LabelProblem
from .base import TASKS, Task, available_tasks, create_task, register_task, task_runner

__all__ = ["Task", "TASKS", "LabelProblem", "create_task", "available_tasks", "register_task", "task_runner"]
