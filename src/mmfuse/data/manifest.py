"""Tables in, one clean manifest out: which rows are usable, and exactly why the others are not.

A manifest is the table after every check that can fail on user data — columns exist, media
files decode, texts are non-blank, labels parse — so nothing downstream (feature caching, training,
prediction) has to handle a bad row. Bad rows are skipped and reported with the row number
the user sees in their file; `data.strict` turns them into one error listing all of them.
"""
from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from dataclasses import dataclass, field as dataclass_field
from pathlib import Path
from itertools import chain
from typing import Any, Collection, Iterator

import numpy as np
import pandas as pd

from ..config import DataConfig
from ..errors import ConfigError, DataError, LabelProblem, quote_list
from ..modalities import MODALITIES, Decoded, group_modality
from ..modalities.base import is_missing
from .datasets import builtin_columns, builtin_names, load_builtin
from .media import MediaError

__all__ = ["BadRow", "DecodedImage", "Manifest", "carve", "group_keys", "load_manifest", "read_table", "split_manifest",
           "SPLIT_NAMES"]

STRICT_LIST_LIMIT = 50

# Accepted spellings of a split value (lower-cased) -> the canonical name.
SPLIT_NAMES = {
    "train": "train", "training": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test",
}

_COMPRESSED = {".gz", ".bz2", ".xz", ".zip", ".zst"}


@dataclass
class BadRow:
    source: str  # table file name (or "DataFrame")
    row: int  # 1-based data row, header excluded
    field: str  # a modality name, "label" / "split", or "row" for a whole-row problem
    reason: str
    column: str | None = None  # the table column behind `field`, for the message

    def __str__(self) -> str:
        if self.column is None:
            return f"{self.source} row {self.row}: {self.reason}"
        return f"{self.source} row {self.row}, {self.field} column '{self.column}': {self.reason}"


@dataclass
class Manifest:
    frame: pd.DataFrame  # good rows: row, one column per modality, label, split
    bad_rows: list[BadRow] = dataclass_field(default_factory=list)
    source: str = ""

    def summary(self) -> str:
        # One BadRow per bad row, so the rows read are the good plus the bad ones.
        good, bad = len(self.frame), len(self.bad_rows)
        text = f"{good + bad} rows read, {good} good, {bad} bad"
        if bad:
            # Reasons are written "kind: detail" (the detail names a path or value), so the
            # part before the colon counts like with like.
            counts = Counter(b.reason.split(":", 1)[0] for b in self.bad_rows)
            text += " (reasons counted: " + ", ".join(f"{k} ×{n}" for k, n in counts.most_common()) + ")"
        return text


# An input its caller has already decoded (kept under its old name for callers of the image path).
DecodedImage = Decoded


class _RowProblem(LabelProblem):
    """One cell's problem; becomes a BadRow."""


# ----- reading tables -------------------------------------------------------------------------

@dataclass
class Table:
    frame: pd.DataFrame  # the columns asked for (all when none were named)
    name: str  # for messages
    header: list[str]  # every column the file has, read or not (for messages)
    # Data row position -> where its cells hold bytes that are not UTF-8 (CSV / TSV only).
    undecodable: dict[int, str] = dataclass_field(default_factory=dict)


# Rows read and checked at a time: a CSV cell read is a Python string (~60 bytes), so a million-row
# table read whole cost ~0.8 KB a row before any check; in pieces the good rows' cells are kept,
# each distinct value once (`_Interned`), and memory grows by ~50 bytes a row (bench/scale.py).
PIECE_ROWS = 50_000


def read_table(source: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """(table, name for messages). The format comes from the extension (a .gz etc. is looked through)."""
    table = read_columns(source)
    return table.frame, table.name


def read_columns(source: str | Path | pd.DataFrame, columns: Collection[str] | None = None) -> Table:
    """The table with only `columns` read (those it has; None: all): a table of a million columns
    costs what its bound ones cost. A CSV cell that is not UTF-8 is kept (as surrogate escapes) and
    its row recorded, to become a bad row instead of refusing the whole file."""
    pieces = list(read_pieces(source, columns))
    if len(pieces) == 1:
        return pieces[0]
    undecodable = {row: reason for piece in pieces for row, reason in piece.undecodable.items()}
    return Table(pd.concat([p.frame for p in pieces]), pieces[0].name, pieces[0].header, undecodable)


def read_pieces(source: str | Path | pd.DataFrame, columns: Collection[str] | None = None,
                rows: int = PIECE_ROWS) -> Iterator[Table]:
    """The table as `read_columns` reads it, in pieces of at most `rows` rows (at least one piece,
    empty for an empty table), each frame indexed by its rows' positions in the whole table. A
    CSV is read piece by piece; other formats are read whole (Parquet and JSON as pyarrow strings,
    compact) and handed out in slices."""
    if isinstance(source, pd.DataFrame):
        # Positional index, so row numbers are the DataFrame's row positions + 1.
        yield from _slices(Table(source.reset_index(drop=True), "DataFrame", [str(c) for c in source.columns]), rows)
        return
    path, kind = _table_path(source)
    try:
        if kind in (".csv", ".tsv", ".tab"):
            yield from _read_csv(path, "," if kind == ".csv" else "\t", columns, rows)
        else:
            yield from _slices(_read_whole(path, kind, columns), rows)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - parser errors come in many types
        raise DataError(f"could not read table {path}: {error}") from None


def _slices(table: Table, rows: int) -> Iterator[Table]:
    frame = table.frame
    for first in range(0, max(len(frame), 1), rows):
        yield Table(frame.iloc[first : first + rows], table.name, table.header, table.undecodable)


def _table_path(source: str | Path) -> tuple[Path, str]:
    """(the table file, its format's extension); a .gz etc. is looked through."""
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"table file not found: {path}")
    if path.is_dir():
        raise DataError(f"{path} is a directory; expected a CSV, TSV, JSONL, JSON or Parquet file")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSED:
        suffixes = suffixes[:-1]
    kind = suffixes[-1] if suffixes else ""
    if kind not in (".csv", ".tsv", ".tab", ".jsonl", ".ndjson", ".json", ".parquet", ".pq"):
        raise DataError(f"{path}: unsupported table format {kind or '(no extension)'!r}; "
                        "use .csv, .tsv, .jsonl / .ndjson, .json or .parquet")
    return path, kind


def _read_whole(path: Path, kind: str, columns: Collection[str] | None) -> Table:
    try:
        if kind in (".jsonl", ".ndjson", ".json"):
            # dtype=False: keep values as written. JSON cannot be read column by column.
            frame = pd.read_json(path, lines=kind != ".json", dtype=False)
            table = Table(_only(frame, columns), path.name, [str(c) for c in frame.columns])
        else:
            import pyarrow.parquet as pq

            header = list(pq.read_schema(path).names)
            wanted = None if columns is None else _wanted(header, columns)
            table = Table(pd.read_parquet(path, columns=wanted), path.name, header)
    except DataError:
        raise
    except Exception as error:  # noqa: BLE001 - parser errors come in many types
        raise DataError(f"could not read table {path}: {error}") from None
    table.frame = table.frame.reset_index(drop=True)
    return table


def _wanted(header: list[str], columns: Collection[str]) -> list[str]:
    return [c for c in header if c in columns]


def _only(frame: pd.DataFrame, columns: Collection[str] | None) -> pd.DataFrame:
    return frame if columns is None else frame[[c for c in frame.columns if str(c) in columns]]


def _read_csv(path: Path, sep: str, columns: Collection[str] | None, rows: int) -> Iterator[Table]:
    # Every cell as a string, and only a truly empty cell is missing: pandas' default NA words
    # ("NA", "None", "null", "nan") are real labels and texts in user data, and a numeric parse
    # would turn label "01" into 1 (or 1 into 1.0 once a cell is empty). object, not str: a str
    # column refuses the surrogate escapes that stand in for bytes that are not UTF-8.
    options = dict(sep=sep, dtype=object, keep_default_na=False, na_values=[""], encoding_errors="surrogateescape")
    header = _csv_header(path, sep)
    usecols = None if columns is None else _wanted(header, columns)
    with pd.read_csv(path, usecols=usecols, chunksize=rows, **options) as pieces:  # only the read columns are decoded
        for frame in pieces:
            undecodable = _undecodable(path, sep, header, frame) if _has_stand_in(frame) else {}
            yield Table(frame, path.name, header, undecodable)


def _has_stand_in(frame: pd.DataFrame) -> bool:
    """Whether any cell holds a byte that was not UTF-8 (one search over the joined cells)."""
    return any(_STAND_IN.search("\0".join(v for v in frame[c].tolist() if isinstance(v, str))) for c in frame.columns)


def _csv_header(path: Path, sep: str) -> list[str]:
    """The first record's names, read by the csv module: pandas builds a whole (empty) frame for
    `nrows=0`, minutes and gigabytes for a million columns."""
    from pandas.io.common import get_handle  # looks through .gz etc. as read_csv does

    with get_handle(path, "r", encoding="utf-8-sig", errors="surrogateescape", compression="infer") as handles:
        return next(csv.reader(handles.handle, delimiter=sep), [])


# Where a byte is not UTF-8, "surrogateescape" decoding leaves one of these in its place.
_STAND_IN = re.compile("[\udc80-\udcff]")


def _undecodable(path: Path, sep: str, header: list[str], frame: pd.DataFrame) -> dict[int, str]:
    """Row position -> "invalid UTF-8 in column ...: byte 0x.. at line L, byte offset N"."""
    cells: dict[int, tuple[str, str]] = {}  # row -> (column, value) of its first bad cell
    for column in frame.columns:
        for row, value in zip(frame.index, frame[column].tolist()):
            if row not in cells and isinstance(value, str) and _STAND_IN.search(value):
                cells[row] = (column, value)
    reasons = {row: f"invalid UTF-8 in column {column!r}" for row, (column, _) in cells.items()}
    for row, (line, offset, byte) in _locate(path, sep, header, cells):
        reasons[row] += f": byte 0x{byte:02x} at line {line}, byte offset {offset}"
    return reasons


def _locate(path: Path, sep: str, header: list[str], cells: dict[int, tuple[str, str]]):
    """(row, (line, byte offset, byte)) of each bad cell, found by reading the file again with the
    csv module, which says which lines each record spans (pandas does not)."""
    from pandas.io.common import get_handle

    with get_handle(path, "rb", compression="infer", is_text=False) as handles:
        raw = handles.handle.read()
    starts = [0, *(match.end() for match in re.finditer(b"\n", raw)), len(raw)]
    records = csv.reader(io.StringIO(raw.decode("utf-8", "surrogateescape"), newline=""), delimiter=sep)
    row, first = -1, 1  # -1: the header; `first`: the line the next record starts on
    for record in records:
        # pandas skips blank (and blank-looking) lines and does not count them as rows.
        if record and (len(record) > 1 or record[0].strip()):
            found = cells.get(row) if row >= 0 else None
            if found is not None:
                column, value = found
                position = header.index(column)
                if position < len(record) and record[position] == value:  # the same cell: trust it
                    yield row, _first_bad_byte(raw, starts[first - 1], starts[records.line_num], value)
            row += 1
        first = records.line_num + 1


def _first_bad_byte(raw: bytes, start: int, end: int, value: str) -> tuple[int, int, int]:
    """(line, byte offset, byte) of `value`'s first undecodable byte within raw[start:end]."""
    cut = _STAND_IN.search(value).start()
    before = value[:cut + 1].encode("utf-8", "surrogateescape")  # the cell up to that byte
    found = raw.find(before, start, end)
    if found >= 0:
        offset = found + len(before) - 1
    else:  # quoting changed how the cell reads: the record's first undecodable byte
        try:
            raw[start:end].decode("utf-8")
            offset = start
        except UnicodeDecodeError as error:
            offset = start + error.start
    return raw.count(b"\n", 0, offset) + 1, offset, raw[offset]


# ----- cell parsing ---------------------------------------------------------------------------

def _parse_split(value: Any) -> str | None:
    if is_missing(value) or not str(value).strip():
        return None
    name = SPLIT_NAMES.get(str(value).strip().lower())
    if name is None:
        raise _RowProblem(f"unknown split: {value!r} (use train, val / valid / validation / dev, or test)")
    return name


# ----- the manifest ---------------------------------------------------------------------------

def _columns_for(data: DataConfig, builtin: str | None) -> dict[str, str | None]:
    columns = data.columns.model_dump()
    if builtin is not None:
        # A built-in knows its own column names; they apply to every role the user left at the
        # default, so `source: easy_vqa` works as is, and an explicit setting still wins.
        explicit = data.columns.model_fields_set
        for role, column in builtin_columns(builtin).items():
            if role not in explicit:
                columns[role] = column
    return columns


def _check_columns(table: Table, wanted: dict[str, str], rebind: bool = False) -> None:
    """`rebind`: the table is given to a trained model, whose columns can be named per call."""
    missing = [(role, column) for role, column in wanted.items() if column not in table.frame.columns]
    if missing:
        described = "; ".join(f"column {column!r} (data.columns.{role}) not found" for role, column in missing)
        existing = quote_list(table.header, limit=20) or "(none)"
        message = f"{table.name}: {described}; the table has {len(table.header)} columns: {existing}"
        if rebind:
            message += "".join(f"; {_rebind_hint(role)}" for role, _ in missing)
        raise DataError(message)


def _rebind_hint(role: str) -> str:
    hint = f"name this table's {role} column with --column {role}=NAME (Python: columns={{'{role}': 'NAME'}})"
    if role in MODALITIES:
        hint += f", or go without {role} with --column {role}= (columns={{'{role}': None}})"
    return hint


def load_manifest(source: str | Path | pd.DataFrame, data: DataConfig, *, task: str,
                  modalities: list[str], labels: list[str] | None = None,
                  require_label: bool = True, rebind: bool = False, unlabelled: bool = False) -> Manifest:
    """Read and check a table (or built-in data set) into a Manifest of good rows + bad rows.

    require_label=False is for prediction: the label column may be absent, and a missing or
    unknown label leaves `label` None instead of making the row bad. Every input column must be
    there either way: a model answering without an input it was trained with answers wrong
    without a word (leave one out by binding it to None). `rebind`: a missing column's message
    says how to name it for one call (a table given to a trained model). `unlabelled`: a row with
    an empty label cell is kept with label None (semi-supervised training), not a bad row.
    """
    from ..tasks import create_task

    spec = create_task(task)  # unknown: a ConfigError naming the known tasks
    unknown = [m for m in modalities if m not in MODALITIES]
    if unknown:
        raise ConfigError(f"unknown modalities {unknown}; expected some of {', '.join(MODALITIES)}")

    builtin = source if isinstance(source, str) and source in builtin_names() else None
    columns = _columns_for(data, builtin)
    used = [m for m in MODALITIES if m in modalities and columns[m] is not None]
    if not used:
        raise ConfigError("no input modality: bind a column to one of data.columns."
                          + " / data.columns.".join(MODALITIES))
    if builtin is not None:
        # Its paths are absolute, into the data set's own download folder: nothing to confine.
        frame, base = load_builtin(builtin).reset_index(drop=True), os.getcwd()
        pieces = _slices(Table(frame, builtin, [str(c) for c in frame.columns]), PIECE_ROWS)
        data = data.model_copy(update={"confine_paths": False})
    else:
        bound = {columns[role] for role in (*used, "label", "split") if columns[role] is not None}
        pieces = read_pieces(source, bound)  # only the bound columns: a wide table costs nothing more
        base = os.getcwd() if isinstance(source, pd.DataFrame) else str(Path(source).expanduser().resolve().parent)
    first = next(pieces)
    name = first.name
    wanted = {m: columns[m] for m in used}
    # Prediction needs neither a label nor a split column.
    if require_label or columns["label"] in first.frame.columns:
        wanted["label"] = columns["label"]
    if columns["split"] is not None and (require_label or columns["split"] in first.frame.columns):
        wanted["split"] = columns["split"]
    _check_columns(first, wanted, rebind)

    allowed_list = labels if labels is not None else data.labels
    allowed = {str(v) for v in allowed_list} if allowed_list is not None and spec.per_label else None
    checker = _RowChecker(name, base, data, spec, wanted, used, allowed, require_label, unlabelled)
    n = 0
    for piece in chain([first], pieces):
        checker.check(piece)
        n += len(piece.frame)
    bad = sorted(checker.bad, key=lambda b: b.row)
    frame = checker.frame(require_label)
    manifest = Manifest(frame=frame, bad_rows=bad, source=name)
    if data.strict and bad:
        lines = [f"  {b}" for b in bad[:STRICT_LIST_LIMIT]]
        if len(bad) > STRICT_LIST_LIMIT:
            lines.append(f"  … and {len(bad) - STRICT_LIST_LIMIT} more")
        raise DataError(f"{name}: {len(bad)} bad row(s) of {n}, and data.strict is on "
                        "(turn it off to skip and count them):\n" + "\n".join(lines))
    return manifest


class _RowChecker:
    """The rows of a table, one piece at a time: the good ones kept (each distinct cell value once:
    a million rows of 167k images hold 167k path strings), the bad ones as BadRows."""

    def __init__(self, name: str, base: str, data: DataConfig, spec: Any, wanted: dict[str, str],
                 used: list[str], allowed: set[str] | None, require_label: bool, unlabelled: bool = False):
        self.name, self.base, self.data, self.spec = name, base, data, spec
        self.unlabelled = unlabelled
        self.wanted, self.used, self.allowed, self.require_label = wanted, used, allowed, require_label
        self.out: dict[str, list] = {key: [] for key in (*used, "label", "split")}
        self.rows: list[np.ndarray] = []
        self.bad: list[BadRow] = []
        self.pool: dict[str, str] = {}  # every distinct string value, the one object kept for it
        self.reasons: dict[str, dict[Any, str | None]] = {m: {} for m in used}  # value -> why it fails, or None

    def intern(self, value: Any) -> Any:
        return self.pool.setdefault(value, value) if isinstance(value, str) else value

    def check(self, table: Table) -> None:
        # Cheap checks first (text, label, split, path syntax); media files are decoded afterwards,
        # once per unique file and only for rows that are otherwise good.
        cells = {role: table.frame[column].tolist() for role, column in self.wanted.items()}
        pending = []
        for at, i in enumerate(table.frame.index):  # i: the row's position in the whole table
            record = self.parse(i, {role: values[at] for role, values in cells.items()}, table.undecodable)
            if record is not None:
                pending.append(record)
        rows = []
        for record in pending:
            problem = self.media_problem(record)
            if problem is not None:
                self.bad.append(BadRow(self.name, record["row"], problem[0], problem[1], self.wanted.get(problem[0])))
                continue
            rows.append(record["row"])
            for key in self.out:
                self.out[key].append(self.intern(record[key]))
        self.rows.append(np.asarray(rows, dtype=np.int64))

    def parse(self, i: int, cells: dict[str, Any], undecodable: dict[int, str]) -> dict[str, Any] | None:
        """Row position `i`'s parsed values, or None (a BadRow recorded) when a cheap check fails."""
        if i in undecodable:
            self.bad.append(BadRow(self.name, i + 1, "row", undecodable[i]))
            return None
        record: dict[str, Any] = {"row": i + 1}
        role = ""
        try:
            for role, modality in MODALITIES.items():
                record[role] = modality.parse(cells[role], self.base, self.data) if role in cells else None
            role = "label"
            record["label"] = self.parse_label(cells) if "label" in cells else None
            role = "split"
            record["split"] = _parse_split(cells["split"]) if "split" in cells else None
        except (LabelProblem, MediaError) as error:
            self.bad.append(BadRow(self.name, i + 1, role, str(error), self.wanted.get(role)))
            return None
        if all(record[m] is None for m in self.used):
            self.bad.append(BadRow(self.name, i + 1, "row", "no " + " and no ".join(self.used)))
            return None
        return record

    def parse_label(self, cells: dict[str, Any]) -> Any:
        value = cells["label"]
        if self.unlabelled and (is_missing(value) or (isinstance(value, str) and not value.strip())):
            return None  # an unlabelled row (semi_supervised), not a bad one
        try:
            if is_missing(cells["label"]):
                raise _RowProblem("missing label")
            return self.spec.parse_label(cells["label"], self.allowed, self.data.label_separator)
        except LabelProblem:
            if self.require_label:
                raise
            return None

    def media_problem(self, record: dict[str, Any]) -> tuple[str, str] | None:
        """(modality, reason) of the first input of the row whose file does not decode, or None."""
        for role in self.used:
            value = record[role]
            if value is None:
                continue
            reasons = self.reasons[role]
            if value not in reasons:
                reasons[self.intern(value)] = MODALITIES[role].check(value, self.data)
            if reasons[value] is not None:
                return role, reasons[value]
        return None

    def frame(self, require_label: bool) -> pd.DataFrame:
        """The good rows; each list is dropped once it is a column (they are 8 bytes a row each)."""
        rows = pd.Series(np.concatenate(self.rows) if self.rows else [], dtype="int64")
        columns = {"row": rows, **{m: self.column(m, len(rows)) for m in MODALITIES}}
        columns["label"] = self.spec.label_column(self.out.pop("label"), require_label)
        columns["split"] = self.column("split", len(rows))
        return pd.DataFrame(columns)

    def column(self, key: str, rows: int) -> pd.Series:
        return pd.Series(self.out.pop(key) if key in self.out else [None] * rows, dtype="object")


# ----- splitting ------------------------------------------------------------------------------

def _normalise_split(values: pd.Series) -> pd.Series:
    def one(value: Any) -> str | None:
        try:
            return _parse_split(value)
        except _RowProblem as error:
            raise DataError(str(error)) from None

    return values.map(one).astype("object")


def group_keys(frame: pd.DataFrame, grouped: bool) -> list[str]:
    # Rows share a group when they share the file of the grouping modality (the image); rows
    # without one (or when grouping is off) are their own group. The "\0" prefix keeps these
    # keys from colliding with a real path.
    by = group_modality(frame)
    images = frame[by].tolist() if by is not None else [None] * len(frame)
    return [img if grouped and isinstance(img, str) else f"\0{i}" for i, img in enumerate(images)]


def carve(frame: pd.DataFrame, buckets: list[tuple[str, float]], seed: int, grouped: bool) -> list[str]:
    """Assign each row of `frame` to one of `buckets` (name, fraction of these rows) or "train".

    Groups are shuffled with a seeded generator after sorting their keys, so the result depends
    only on the rows' content and the seed, not on row order. Each bucket with a positive
    fraction gets at least one group, as long as one group is left for training.
    """
    keys = group_keys(frame, grouped)
    sizes = Counter(keys)
    groups = sorted(sizes)
    order = np.random.default_rng(seed).permutation(len(groups))
    n = len(frame)
    targets = [(name, max(1, round(fraction * n))) for name, fraction in buckets if fraction > 0]
    assigned: dict[str, str] = {}
    bucket, filled = 0, 0
    for position, index in enumerate(order):
        group = groups[index]
        last = position == len(order) - 1
        if bucket < len(targets) and not last:
            name, target = targets[bucket]
            assigned[group] = name
            filled += sizes[group]
            if filled >= target:
                bucket, filled = bucket + 1, 0
        else:
            assigned[group] = "train"
    return [assigned[k] for k in keys]


def split_manifest(manifest: Manifest, data: DataConfig) -> dict[str, pd.DataFrame]:
    """{"train", "val", "test"} frames (possibly empty). Deterministic for a given data.split_seed.

    A split column wins where it has values; rows without one join the training pool. A split
    missing from the column (e.g. no val rows) is carved out of that pool with the configured
    fraction — of the pool, not of the whole table.
    """
    frame = manifest.frame.reset_index(drop=True)
    has_column = "split" in frame and frame["split"].notna().any()
    split = _normalise_split(frame["split"]) if has_column else pd.Series([None] * len(frame), dtype="object")
    grouped = data.group_split_by_image
    fractions = {"test": data.test_fraction, "val": data.val_fraction}

    if has_column:
        present = set(split.dropna())
        missing = [(name, fractions[name]) for name in ("test", "val") if name not in present]
        pool = split.isna() | (split == "train")
    else:
        missing = [("test", data.test_fraction), ("val", data.val_fraction)]
        pool = pd.Series(True, index=frame.index)

    assignment = split.copy()
    assignment[pool] = "train"
    if missing and pool.any():
        assignment[pool] = carve(frame[pool].reset_index(drop=True), missing, data.split_seed, grouped)
    return {name: frame[assignment == name].reset_index(drop=True) for name in ("train", "val", "test")}
