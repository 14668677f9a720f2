"""Tasks: what a model predicts. Importing this package registers all of them.

    from mmfuse.tasks import create_task, available_tasks
    task = create_task("multilabel")
"""
from . import classification, multilabel, regression  # noqa: F401
from ..errors import LabelProblem
from .base import TASKS, Task, available_tasks, create_task, register_task

__all__ = ["Task", "TASKS", "LabelProblem", "create_task", "available_tasks", "register_task"]
