"""A shared image-text space: alignment objectives over frozen encoder features, retrieval
metrics, zero-shot labels. `mmfuse align CONFIG` trains one; `mmfuse index` / `search` use it."""
from .model import AlignedModel
from .objectives import available_objectives, create_objective
from .retrieval import pair_retrieval_metrics, retrieval_metrics
from .train import AlignmentRun, train_alignment
from .zero_shot import classify

__all__ = ["AlignedModel", "AlignmentRun", "available_objectives", "classify", "create_objective",
           "pair_retrieval_metrics", "retrieval_metrics", "train_alignment"]
