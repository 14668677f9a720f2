"""Explanations of served predictions (`explain=true`): the heatmap, word attributions and modality
Shapley values of `mmfuse.explain.explain_row`, one row at a time, in the model thread.

ModelRunner explains the rows a request asked about (`ModelRow.explain_until`) right after their
batch's forward pass, so the Predictor is still used by one thread only, and the queue, its bound
and shutdown apply as to any prediction. A row costs tens to hundreds of ms (a backward pass, the
word attributions, a forward pass per subset of modalities): a request may ask for at most
`max_explain_rows` rows (`check_explain_rows`, a 422 beyond), and a row whose request is past its
deadline (answered 504 already) is not explained.

The rows are those the server built (`inputs.make_row`): with --mask-pii, or a model trained on
masked texts, their texts are masked already, so the words returned are the masked words. Only
classification models with a torch model are explained (`ModelRunner.explains`); a row of another
model, or one the explainer fails on (logged), answers `explanation: null`.
"""
from __future__ import annotations

import logging
import time

from ..explain import explain_row
from .errors import invalid
from .inputs import ModelRow
from .schemas import Explanation

log = logging.getLogger("mmfuse.serve")
DECIMALS = 4  # of a heatmap cell: a 16x16 grid is ~2 KB of JSON instead of ~5


def check_explain_rows(count: int, cap: int) -> None:
    if count > cap:
        raise invalid("rows", f"explain=true explains at most {cap} rows per request (max_explain_rows), "
                              f"not {count}: send fewer rows, or leave explain out")


def explain(predictor, row: ModelRow) -> Explanation | None:
    """The row's explanation; None once its request is past its deadline or if explaining fails."""
    if row.explain_until is None or time.monotonic() > row.explain_until:
        return None
    try:
        found = explain_row(predictor, dict(row.values)).as_dict()
    except Exception:  # noqa: BLE001 - the prediction stands without its explanation
        log.exception("explaining a row failed")
        return None
    finally:
        predictor.bad_rows.clear()  # the Predictor accumulates these; a server must not
    heatmaps = {m: [[round(v, DECIMALS) for v in line] for line in grid] for m, grid in found["heatmaps"].items()}
    return Explanation(label=found["prediction"], probability=found["probability"], heatmaps=heatmaps,
                       words=found["words"], word_method=found["word_method"], edits=found["edits"],
                       shapley=found["shapley"])
