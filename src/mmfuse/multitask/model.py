"""MultiTaskModel: shared encoders, then per the sharing mode one fusion or a fusion per task, and
a head per task (mmfuse.tasks). Under hierarchical sharing the level-0 tasks read the fused vector
and the level-1 tasks a residual layer above it, so the lower task shapes what the upper one builds on
(Søgaard & Goldberg 2016: a lower task supervised at a lower layer)."""
from __future__ import annotations

from torch import Tensor, nn

from ..activations import GELU
from ..config import Config
from ..data.batching import Batch
from ..encoders import Encoder
from ..fusion import create_fusion
from ..model import MultimodalModel, build_encoders
from ..tasks import create_task

SHARED = "shared"  # the key of the one fusion of hard and hierarchical sharing


class LiftLayer(nn.Module):
    """x + MLP(x): the layer the level-1 tasks read under hierarchical sharing."""

    def __init__(self, dim: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), GELU(), nn.Dropout(dropout))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class MultiTaskModel(MultimodalModel):
    """forward(batch) -> {task: its head's output}. Encoders, scalers and augmentation are
    MultimodalModel's; `fusions` holds one fusion (hard, hierarchical) or one per task (soft)."""

    def __init__(self, encoders: dict[str, Encoder], fusions: dict[str, nn.Module], heads: dict[str, nn.Module],
                 *, sharing: str, levels: dict[str, int], monitor: tuple[str, str], lift: nn.Module | None = None,
                 standardize: list[str] = (), augment: dict[str, tuple[float, float]] | None = None):
        super().__init__(encoders, fusion=None, head=None, standardize=standardize, augment=augment)
        self.fusions = nn.ModuleDict(fusions)
        self.heads = nn.ModuleDict(heads)
        self.lift = lift
        self.sharing, self.levels, self.monitor = sharing, levels, monitor

    def objective(self) -> tuple[str, str]:
        return self.monitor

    def representations(self, batch: Batch) -> tuple[dict[str, Tensor], Tensor | None]:
        """(the vector each task's head reads, the shared fused vector: None under soft sharing)."""
        feats = self.encode(batch)
        if self.sharing == "soft":
            return {name: self.fusions[name](feats) for name in self.heads}, None
        fused = self.fusions[SHARED](feats)
        upper = self.lift(fused) if self.lift is not None else fused
        return {name: upper if self.levels[name] == 1 else fused for name in self.heads}, fused

    def forward(self, batch: Batch) -> dict[str, Tensor]:
        return self.outputs(self.representations(batch)[0])

    def outputs(self, representations: dict[str, Tensor]) -> dict[str, Tensor]:
        return {name: head(representations[name]) for name, head in self.heads.items()}

    def soft_distance(self) -> Tensor | None:
        """Soft sharing: the squared L2 distance of each task's fusion weights from their mean."""
        if self.sharing != "soft" or len(self.fusions) < 2:
            return None
        fusions = list(self.fusions.values())
        total = 0.0
        for weights in zip(*(f.parameters() for f in fusions)):
            mean = sum(weights) / len(weights)
            total = total + sum((w - mean).square().sum() for w in weights)
        return total

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters more than one task's loss reaches (PCGrad projects their gradients)."""
        shared = [p for e in self.encoders.values() for p in e.parameters() if p.requires_grad]
        if self.sharing != "soft":
            shared += [p for p in self.fusions.parameters() if p.requires_grad]
        if self.lift is not None:  # read by every level-1 task
            shared += [p for p in self.lift.parameters() if p.requires_grad]
        return shared


def build_multitask_model(config: Config, labels: dict[str, list[str]],
                          encoders: dict[str, Encoder] | None = None) -> MultiTaskModel:
    """`labels`: each task's label vocabulary (an empty list for a regression task)."""
    spec = config.multitask
    encoders = encoders or build_encoders(config)
    in_dims = {m: e.out_dim for m, e in encoders.items()}

    def fusion():
        return create_fusion(config.fusion.name, in_dims=in_dims, dim=config.fusion.dim,
                             dropout=config.fusion.dropout, **config.fusion.options)

    fusions = {t.name: fusion() for t in spec.tasks} if spec.sharing == "soft" else {SHARED: fusion()}
    out_dim = next(iter(fusions.values())).out_dim
    linear = getattr(next(iter(fusions.values())), "wants_linear_head", False)
    heads = {}
    for t in spec.tasks:
        task = create_task(t.type)
        heads[t.name] = task.head(in_dim=out_dim, num_labels=len(labels[t.name]),
                                  hidden=0 if linear else config.head.hidden, dropout=config.head.dropout)
    lift = LiftLayer(out_dim, config.head.dropout) if spec.sharing == "hierarchical" else None
    specs = {m: getattr(config.encoders, m) for m in encoders}
    return MultiTaskModel(
        encoders, fusions, heads, sharing=spec.sharing, levels={t.name: t.level for t in spec.tasks},
        monitor=objective(config), lift=lift,
        standardize=[m for m, s in specs.items() if s.standardize],
        augment={m: (s.feature_dropout, s.feature_noise) for m, s in specs.items() if s.feature_dropout or s.feature_noise})


def objective(config: Config) -> tuple[str, str]:
    """The validation metric that picks the epoch: val_mean (the mean of the tasks' own monitored
    metrics, all "max" ones) or one task's (val_<task>)."""
    spec = config.multitask
    if spec.monitor != "mean":
        chosen = next(t for t in spec.tasks if t.name == spec.monitor)
        return f"val_{chosen.name}", create_task(chosen.type).monitor_mode
    modes = {t.name: create_task(t.type).monitor_mode for t in spec.tasks}
    lower = [name for name, mode in modes.items() if mode != "max"]
    if lower:
        from ..errors import ConfigError

        raise ConfigError(f"multitask.monitor: mean averages metrics where higher is better; task(s) "
                          f"{', '.join(lower)} are scored where lower is better: name one task to monitor instead")
    return "val_mean", "max"
