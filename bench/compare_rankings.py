"""Does a fusion ranking carry over from one data set to another?

Reads two (or more) `mmfuse compare` result folders and prints the fusions' ranks side by side,
with Spearman's rho and Kendall's tau between each pair of rankings (scipy), as markdown.

    python bench/compare_rankings.py runs/easy_vqa/compare runs/shape_scenes/compare
"""
from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import pandas as pd
from scipy.stats import kendalltau, spearmanr


def mean_metric(folder: Path) -> pd.Series:
    cells = pd.read_csv(folder / "comparison.csv")
    return cells.groupby("fusion")["metric"].mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    names = [folder.parent.name if folder.name == "compare" else folder.name for folder in args.folders]
    means = pd.DataFrame({name: mean_metric(folder) for name, folder in zip(names, args.folders)}).dropna()
    ranks = means.rank(ascending=False, method="min").astype(int)
    order = ranks.mean(axis=1).sort_values().index
    print("| fusion | " + " | ".join(f"{n} (mean) | {n} rank" for n in names) + " |")
    print("|---" * (1 + 2 * len(names)) + "|")
    for fusion in order:
        cells = [f"{means.at[fusion, n]:.4f} | {ranks.at[fusion, n]}" for n in names]
        print(f"| {fusion} | " + " | ".join(cells) + " |")
    print()
    for a, b in itertools.combinations(names, 2):
        rho = spearmanr(means[a], means[b])
        tau = kendalltau(means[a], means[b])
        print(f"{a} vs {b}: Spearman rho {rho.statistic:.3f} (p {rho.pvalue:.3g}), "
              f"Kendall tau {tau.statistic:.3f} (p {tau.pvalue:.3g}), {len(means)} fusions")


if __name__ == "__main__":
    main()
