"""One more column of a table the manifest has already read, by its rows.

The manifest keeps the columns it checks (inputs, label, split) and each good row's 1-based `row`
in its source. A column read beside them (a multi-task model's other label columns, the hidden
labels semi-supervised training reports its pseudo-labels against) is read here by those rows.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError


def source_column(source: Any, column: str, rows: pd.Series, what: str) -> np.ndarray:
    """The cells of `column` at 1-based `rows` of `source` (a DataFrame, table path or built-in
    name); `what` names the setting that asked for it in the error for a missing column."""
    return source_columns(source, [column], rows, {column: what})[column]


def source_columns(source: Any, columns: list[str], rows: pd.Series, what: dict[str, str]) -> dict[str, np.ndarray]:
    """Several columns' cells at `rows`, the table read once."""
    from .datasets import builtin_names, load_builtin
    from .manifest import read_columns

    if isinstance(source, pd.DataFrame):
        table, name = source.reset_index(drop=True), "DataFrame"
    elif isinstance(source, str) and source in builtin_names():
        table, name = load_builtin(source).reset_index(drop=True), source
    elif isinstance(source, (str, Path)):
        table, name = read_columns(source, list(dict.fromkeys(columns))).frame.reset_index(drop=True), str(source)
    else:
        raise DataError(f"{', '.join(what.values())}: read from a DataFrame, a table file or a built-in data set only")
    for column in columns:
        if column not in table.columns:
            raise DataError(f"{name}: column {column!r} ({what[column]}) not found; "
                            f"it has {', '.join(map(str, table.columns))}")
    index = rows.to_numpy() - 1
    return {column: table[column].to_numpy()[index] for column in columns}
