"""Robustness to noisy inputs: the metric under graded noise on one modality at a time.

Each modality spec declares its noises (see `mmfuse.modalities`): on images Gaussian pixel noise,
blur and occlusion; on texts dropped words and typos; on audio white noise and a silenced
stretch. Level is in [0, 1]; level 0 is the clean input. Relative robustness (MultiBench's notion) is the area under the metric-vs-level
curve divided by the clean metric's area: 1.0 means no loss under noise. Each noisy copy is
deterministic for (seed, input), so curves are repeatable.
"""
from __future__ import annotations

import hashlib
import random
from typing import Callable

import numpy as np

from .modalities import MODALITIES

LEVELS = (0.0, 0.1, 0.25, 0.5, 0.75)


def _rng(seed: int, key: str) -> random.Random:
    return random.Random(int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:12], 16))


# modality -> {noise name: function(decoded value, level, rng)}, each declared by its modality spec.
NOISES: dict[str, dict[str, Callable]] = {name: dict(spec.noises) for name, spec in MODALITIES.items()}


def perturbation(modality: str, noise: str, level: float, seed: int = 0) -> Callable:
    """value -> noisy value; the randomness depends on (seed, the input) only.

    Being deterministic, a noisy input's features can be cached like clean ones: `cache_name`
    names the variant (a frozen encoder's noisy features are then computed once for all models).
    """
    function = NOISES[modality][noise]

    def apply(value, key: str):
        return value if level == 0 else function(value, level, _rng(seed, f"{noise}:{level}:{key}"))

    apply.cache_name = None if level == 0 else f"{noise}-{level:g}-s{seed}"  # level 0: the clean cache
    return apply


def relative_robustness(levels: list[float], scores: list[float]) -> float:
    """Area under the metric-vs-level curve over the clean metric's area (trapezoids)."""
    clean = scores[0]
    if clean == 0:
        return float("nan")
    area = float(np.trapezoid(scores, levels)) if hasattr(np, "trapezoid") else float(np.trapz(scores, levels))
    return area / (clean * (levels[-1] - levels[0]))


def robustness_section(curves, headline: str, out_dir) -> str:
    """Markdown (table of the curves + relative robustness) and robustness.png in `out_dir`."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = sorted(curves["level"].unique())
    lines = ["## Robustness to noise", "",
             f"The {headline} with graded noise on one modality (level 0 = clean). Relative robustness: "
             "area under the curve over the clean area (1.0 = no loss).", "",
             "| modality | noise | " + " | ".join(f"{lv:g}" for lv in levels) + " | relative robustness |",
             "|---" * (len(levels) + 3) + "|"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for (modality, noise), part in curves.groupby(["modality", "noise"], sort=False):
        part = part.sort_values("level")
        scores = part[headline].tolist()
        rel = relative_robustness(part["level"].tolist(), scores)
        lines.append(f"| {modality} | {noise} | " + " | ".join(f"{v:.4f}" for v in scores) + f" | {rel:.3f} |")
        ax.plot(part["level"], scores, marker="o", label=f"{modality}: {noise}")
    ax.set_xlabel("noise level")
    ax.set_ylabel(headline)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "robustness.png", dpi=110)
    plt.close(fig)
    lines += ["", "![robustness curves](robustness.png)", ""]
    return "\n".join(lines)
