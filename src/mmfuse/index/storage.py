"""The on-disk form of a vector index: one directory of three files.

  index.faiss       the FAISS index (faiss.write_index), memory-mappable
  metadata.parquet  one row per live vector: "id" + the caller's columns
  index.json        kind, dim, params, count, next id, hidden ids, info, format version, and the
                    size + sha256 of index.faiss

index.json is written last and each file is written to a temporary name and renamed, so a save
that dies half-way leaves the previous index readable, and a save over an index that is open
(memory-mapped) never rewrites the pages that index is reading. Nothing here unpickles.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable

import faiss
import pandas as pd

from ..errors import ArtifactError, DataError

FORMAT = "mmfuse-vector-index"
FORMAT_VERSION = 1
INDEX_FILE, METADATA_FILE, MANIFEST_FILE = "index.faiss", "metadata.parquet", "index.json"
MANIFEST_KEYS = ("format", "format_version", "kind", "dim", "params", "count", "next_id", "hidden",
                 "faiss_bytes", "faiss_sha256", "info")


def write(directory: str | Path, write_faiss: Callable[[Path], None], metadata: pd.DataFrame,
          manifest: dict) -> None:
    """Write the three files. `write_faiss(path)` writes the FAISS index to `path`; `manifest`
    lacks only the format and checksum fields."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    faiss_path = directory / INDEX_FILE
    _replace(faiss_path, write_faiss)
    try:
        _replace(directory / METADATA_FILE, lambda tmp: metadata.to_parquet(tmp, index=False))
    except (TypeError, ValueError, ImportError) as error:  # pyarrow's errors derive from these
        raise DataError(f"metadata cannot be stored in {directory / METADATA_FILE}: {error}") from None
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, **manifest,
                "faiss_bytes": faiss_path.stat().st_size, "faiss_sha256": _sha256(faiss_path)}
    _replace(directory / MANIFEST_FILE, lambda tmp: tmp.write_text(json.dumps(manifest, indent=2)))


def _replace(path: Path, write_to) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write_to(tmp)
    os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one


def _sha256(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def read_manifest(directory: Path) -> dict:
    path = directory / MANIFEST_FILE
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such index directory")
    if not path.is_file():
        raise ArtifactError(f"{path}: missing (not an index directory?)")
    try:
        manifest = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactError(f"{path}: not valid JSON ({error})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{path}: not an mmfuse vector index manifest")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ArtifactError(f"{path}: missing field {missing[0]!r}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise ArtifactError(f"{path}: format version {manifest['format_version']} is not supported "
                            f"(this mmfuse reads version {FORMAT_VERSION})")
    return manifest


def read_faiss(directory: Path, manifest: dict, flags: int, verify: bool) -> faiss.Index:
    """Read index.faiss, checking it against the manifest before FAISS parses a byte of it."""
    path = directory / INDEX_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    # A truncated file is caught here (cheap); a changed byte by the checksum (one read of the
    # file, ~1 s per GB) — FAISS itself cannot tell a flipped byte in a vector from data.
    size = path.stat().st_size
    if size != manifest["faiss_bytes"]:
        raise ArtifactError(f"{path}: {size} bytes, {MANIFEST_FILE} says {manifest['faiss_bytes']} (truncated?)")
    if verify and _sha256(path) != manifest["faiss_sha256"]:
        raise ArtifactError(f"{path}: checksum differs from {MANIFEST_FILE} (file corrupt or replaced)")
    try:
        index = faiss.read_index(str(path), flags)
    except RuntimeError as error:
        reason = str(error).strip().splitlines()[-1]
        raise ArtifactError(f"{path}: not a readable FAISS index ({reason})") from None
    if index.d != manifest["dim"]:
        raise ArtifactError(f"{path}: vectors are {index.d}-d, {MANIFEST_FILE} says {manifest['dim']}")
    return index


def read_metadata(directory: Path, manifest: dict) -> pd.DataFrame:
    path = directory / METADATA_FILE
    if not path.is_file():
        raise ArtifactError(f"{path}: missing")
    try:
        frame = pd.read_parquet(path)
    except Exception as error:  # pyarrow raises several unrelated types for a damaged file
        raise ArtifactError(f"{path}: not a readable Parquet file ({error})") from None
    if "id" not in frame.columns or len(frame) != manifest["count"]:
        raise ArtifactError(f"{path}: expected {manifest['count']} rows with an 'id' column, "
                            f"found {len(frame)} rows, columns {list(frame.columns)}")
    return frame
