"""How task losses become one training signal (multitask.weighting).

fixed:       sum of weight_t * L_t.
uncertainty: sum of exp(-s_t) * weight_t * L_t + s_t, with s_t = log sigma_t^2 learned per task
             (Kendall, Gal & Cipolla 2018): a noisy or hard task's loss counts for less.
gradnorm:    learned weights w_t (renormalised to sum to the number of tasks) pulled so that each
             task's gradient norm at the vector its head reads follows mean_norm * r_t^alpha, where
             r_t is its loss relative to its first step's over the mean of those (Chen et al. 2018):
             a task that trains slower gets more weight.
pcgrad:      each task's gradient on the shared parameters, where it conflicts (negative dot
             product) with another task's, is projected onto that gradient's normal plane before
             they are summed (Yu et al. 2020, "Gradient surgery").
"""
from __future__ import annotations

import random

import torch
from torch import Tensor, nn


class Weighting(nn.Module):
    """Combines {task: loss} into one loss; `needs_task_gradients`: the training step must compute
    each task's gradient itself (PCGrad), which Lightning's automatic optimisation cannot."""

    needs_task_gradients = False

    def __init__(self, weights: dict[str, float]):
        super().__init__()
        self.names = list(weights)
        # Not saved in checkpoints: a resumed run uses the config's weights.
        self.register_buffer("fixed", torch.tensor([weights[n] for n in self.names]), persistent=False)

    def combine(self, losses: dict[str, Tensor], shared: Tensor | None = None) -> Tensor:
        """The training loss from the tasks' losses; `shared`: the fused vector every task's
        gradient passes through (GradNorm measures there)."""
        return sum((self.fixed[i] * losses[n] for i, n in enumerate(self.names) if n in losses), torch.zeros(()))

    def current(self) -> dict[str, float]:
        """Each task's weight now (logged per epoch)."""
        return {n: float(w) for n, w in zip(self.names, self.fixed)}

    def after_step(self) -> None:
        """Called after each optimiser step."""


class UncertaintyWeighting(Weighting):
    def __init__(self, weights: dict[str, float]):
        super().__init__(weights)
        self.log_variance = nn.Parameter(torch.zeros(len(self.names)))

    def combine(self, losses, shared=None):
        total = torch.zeros(())
        for i, name in enumerate(self.names):
            # A task of weight 0 does not train: its s_t alone would only fall without bound.
            if name in losses and self.fixed[i] > 0:
                s = self.log_variance[i]
                total = total + torch.exp(-s) * self.fixed[i] * losses[name] + s
        return total

    def current(self):
        return {n: float(w * torch.exp(-s)) for n, w, s in zip(self.names, self.fixed, self.log_variance.detach())}


class GradNormWeighting(Weighting):
    def __init__(self, weights: dict[str, float], alpha: float):
        super().__init__(weights)
        self.alpha = alpha
        start = self.fixed * len(self.names) / self.fixed.sum().clamp_min(1e-12)
        self.weight = nn.Parameter(start.clone())
        self.register_buffer("initial", torch.full((len(self.names),), float("nan")))

    def combine(self, losses, shared=None):
        present = [i for i, n in enumerate(self.names) if n in losses]
        model_loss = sum((self.weight[i].detach() * losses[self.names[i]] for i in present), torch.zeros(()))
        if shared is None or len(present) < 2 or not torch.is_grad_enabled():
            return model_loss
        # The gradient norm of each task's loss at the last shared layer (the fused vector, as
        # LibMTL's representation variant); linear in the weight, so norm_t = w_t * |dL_t/dz| and
        # the weight loss needs no second-order graph.
        norms = torch.stack([torch.autograd.grad(losses[self.names[i]], shared, retain_graph=True)[0].norm()
                             for i in present])
        current = torch.stack([losses[self.names[i]].detach() for i in present])
        index = torch.tensor(present, device=current.device)
        first = self.initial[index]
        self.initial[index] = torch.where(torch.isnan(first), current, first)
        ratio = current / self.initial[index].clamp_min(1e-12)
        rate = ratio / ratio.mean().clamp_min(1e-12)
        weighted = self.weight[index] * norms
        goal = (weighted.mean() * rate.pow(self.alpha)).detach()
        return model_loss + (weighted - goal).abs().sum()

    @torch.no_grad()
    def after_step(self) -> None:
        self.weight.clamp_(min=1e-3)
        self.weight.mul_(len(self.names) / self.weight.sum())

    def current(self):
        return {n: float(w) for n, w in zip(self.names, self.weight.detach())}


class PCGradWeighting(Weighting):
    needs_task_gradients = True

    def shared_gradient(self, losses: dict[str, Tensor], shared: list[nn.Parameter], seed: int) -> list[Tensor | None]:
        """The projected, summed gradient of the weighted task losses on the shared parameters."""
        grads = []
        for i, name in enumerate(self.names):
            if name not in losses:
                continue
            parts = torch.autograd.grad(self.fixed[i] * losses[name], shared, retain_graph=True, allow_unused=True)
            grads.append(torch.cat([(torch.zeros_like(p) if g is None else g).flatten() for g, p in zip(parts, shared)]))
        if not grads:
            return [None] * len(shared)
        order = random.Random(seed)
        projected = []
        for i, g in enumerate(grads):
            g = g.clone()
            others = [h for j, h in enumerate(grads) if j != i]
            order.shuffle(others)
            for h in others:
                dot = torch.dot(g, h)
                if dot < 0:
                    g -= dot / h.square().sum().clamp_min(1e-20) * h
            projected.append(g)
        total = torch.stack(projected).sum(0)
        out, start = [], 0
        for p in shared:
            out.append(total[start:start + p.numel()].view_as(p))
            start += p.numel()
        return out


def create_weighting(kind: str, weights: dict[str, float], gradnorm_alpha: float = 1.5) -> Weighting:
    if kind == "uncertainty":
        return UncertaintyWeighting(weights)
    if kind == "gradnorm":
        return GradNormWeighting(weights, gradnorm_alpha)
    if kind == "pcgrad":
        return PCGradWeighting(weights)
    return Weighting(weights)
