from .predict import TaskHead, create_head

__all__ = ["TaskHead", "create_head"]
