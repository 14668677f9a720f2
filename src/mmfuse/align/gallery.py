"""Image galleries for the index/search commands: which images to index (a table or a folder),
and the HTML contact sheet of search hits."""
from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from ..data.manifest import read_table
from ..data.media import check_image
from ..errors import DataError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"}


def image_rows(data: str | Path, *, column: str = "image", max_pixels: int = 50_000_000) -> tuple[pd.DataFrame, list[str]]:
    """(rows to index, bad-row messages). A folder means every image file under it (sorted); a
    table keeps all its columns as metadata, its image paths made absolute (relative to the
    table's folder). Rows whose image is missing or broken are left out and reported."""
    path = Path(data).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"{path}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in this folder")
        rows, name = pd.DataFrame({"image": [str(p.resolve()) for p in files]}), str(path)
    else:
        rows, name = read_table(path)
        if column not in rows.columns:
            raise DataError(f"{name}: no image column {column!r}; the table has columns: "
                            f"{', '.join(map(str, rows.columns))}")
        base = path.resolve().parent
        rows = rows.rename(columns={column: "image"})
        rows["image"] = [str((base / str(p)).resolve()) if isinstance(p, str) and p.strip() else None
                         for p in rows["image"]]
    bad, keep = [], []
    for number, image in enumerate(rows["image"], start=1):
        reason = "missing image path" if image is None else check_image(image, max_pixels=max_pixels)
        if reason is not None:
            bad.append(f"{name} row {number}, image: {reason}")
        keep.append(reason is None)
    rows = rows[keep].reset_index(drop=True)
    if rows.empty:
        raise DataError(f"{name}: no usable images" + (f" ({bad[0]})" if bad else ""))
    return rows, bad


def contact_sheet(hits: pd.DataFrame, query: str) -> str:
    """An HTML page of the hits (columns rank, score, id, image), best first."""
    cells = []
    for hit in hits.itertuples():
        source = Path(hit.image).as_uri() if Path(hit.image).is_absolute() else hit.image
        cells.append(f'<figure><img src="{html.escape(source)}" alt="{html.escape(Path(hit.image).name)}">'
                     f"<figcaption>#{hit.rank} · {hit.score:.3f} · id {hit.id}<br>"
                     f"{html.escape(Path(hit.image).name)}</figcaption></figure>")
    return ("<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>mmfuse search</title><style>"
            "body{font-family:sans-serif}figure{display:inline-block;margin:6px;text-align:center}"
            "img{width:160px;height:160px;object-fit:contain;border:1px solid #ccc}</style></head><body>\n"
            f"<h1>{html.escape(query)}</h1>\n" + "\n".join(cells) + "\n</body></html>\n")
