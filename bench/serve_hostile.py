"""`mmfuse serve` under hostile load: poison requests among good ones, and image bombs within every cap.

    python bench/serve_hostile.py [runs/easy_vqa/model] [--requests 2000] [--concurrency 32]

Starts `mmfuse serve` in a subprocess (serve_load.Server) and prints two tables:

(a) --requests easy-VQA predict requests at --concurrency, one in every --poison-every carrying a
    lone surrogate in its text (`"\\ud800 what"`). Each well-formed answer is compared with the
    answer the same server gives that row alone (sent earlier, one request at a time).
(b) 4 clients at once, each sending one request of 5000x5000-pixel PNGs (a few kB each, under the
    25 M pixel cap each): 64 rows (over the per-request pixel cap) and 4 rows (at it). Peak
    server RSS from /proc/<pid>/status VmHWM, reset before each run (clear_refs).

Without the demo model (`mmfuse train configs/easy_vqa.yaml`, ~20 epochs), a one-epoch stand-in
is trained into runs/easy_vqa_standin first: the server's behaviour, not its accuracy, is measured.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import json
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
from PIL import Image

from serve_load import Server, easy_vqa_bodies  # also drops bench/ from sys.path (see there)

ROOT = Path(__file__).resolve().parents[1]
DEMO, STANDIN = ROOT / "runs/easy_vqa/model", ROOT / "runs/easy_vqa_standin"
POISON_TEXT = "\ud800 what shape is in the image?"


def model_dir(given: Path | None) -> Path:
    if given is not None:
        return given
    if DEMO.is_dir():
        return DEMO
    if not (STANDIN / "model").is_dir():
        print(f"no {DEMO.relative_to(ROOT)}: training a one-epoch stand-in into {STANDIN.relative_to(ROOT)}",
              file=sys.stderr, flush=True)
        subprocess.run([sys.executable, "-m", "mmfuse.cli", "train", str(ROOT / "configs/easy_vqa.yaml"),
                        "--set", "train.epochs=1", "--output", str(STANDIN)], check=True)
    return STANDIN / "model"


async def post_all(url: str, bodies: list[str], concurrency: int) -> list[httpx.Response | Exception]:
    """POST each pre-encoded JSON body to /predict, `concurrency` at a time, answers in order."""
    answers: list[httpx.Response | Exception] = [None] * len(bodies)  # type: ignore[list-item]
    gate = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def one(i: int) -> None:
            async with gate:
                try:
                    answers[i] = await client.post("/predict", content=bodies[i],
                                                   headers={"content-type": "application/json"})
                except httpx.HTTPError as error:
                    answers[i] = error

        await asyncio.gather(*(one(i) for i in range(len(bodies))))
    return answers


def same_answer(served: dict, alone: dict) -> bool:
    (served,), (alone,) = served["predictions"], alone["predictions"]
    return served["prediction"] == alone["prediction"] and all(
        a["label"] == b["label"] and abs(a["score"] - b["score"]) < 1e-4 for a, b in zip(served["top"], alone["top"]))


def poison_table(server: Server, count: int, concurrency: int, every: int) -> str:
    good = easy_vqa_bodies(count)
    alone = asyncio.run(post_all(server.url, [json.dumps(b) for b in good], 1))  # each row on its own
    bodies, poisoned = [], set()
    for i, body in enumerate(good):
        if i % every == every // 2:
            body = {"rows": [{**body["rows"][0], "text": POISON_TEXT}], "top_k": 3}
            poisoned.add(i)
        bodies.append(json.dumps(body))  # ensure_ascii: the surrogate travels as the escape \ud800
    started = time.perf_counter()
    answers = asyncio.run(post_all(server.url, bodies, concurrency))
    wall = time.perf_counter() - started
    outcome = Counter()
    for i, answer in enumerate(answers):
        status = answer.status_code if isinstance(answer, httpx.Response) else None
        if i in poisoned:
            outcome["poison 4xx" if status and 400 <= status < 500 else "failures"] += 1
        elif status == 200 and same_answer(answer.json(), alone[i].json()):
            outcome["good 200 and correct"] += 1
        else:
            outcome["failures"] += 1
    return "\n".join([
        "| requests | concurrency | well-formed | answered 200 and correct | poison | poison answered 4xx | failures | wall s |",
        "|---|---|---|---|---|---|---|---|",
        f"| {count} | {concurrency} | {count - len(poisoned)} | {outcome['good 200 and correct']} | {len(poisoned)} | "
        f"{outcome['poison 4xx']} | {outcome['failures']} | {wall:.1f} |"])


def bomb_png(side: int = 5000) -> bytes:
    """3 kB of black 1-bit PNG that decodes to side x side pixels."""
    buffer = io.BytesIO()
    Image.new("1", (side, side), 0).save(buffer, format="PNG")
    return buffer.getvalue()


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def bomb_row(server: Server, rows: int, clients: int) -> str:
    image = base64.b64encode(bomb_png()).decode()
    body = json.dumps({"rows": [{"image": image, "text": "what shape is in the image?"}] * rows})
    pid = server.process.pid
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS now
    before = memory_mb(pid, "VmRSS")
    started = time.perf_counter()
    answers = asyncio.run(post_all(server.url, [body] * clients, clients))
    wall = time.perf_counter() - started
    statuses = Counter(a.status_code if isinstance(a, httpx.Response) else type(a).__name__ for a in answers)
    return (f"| {rows} x 5000x5000 PNG ({len(body) // 1024} KB body) | {clients} | "
            f"{', '.join(f'{n} x {s}' for s, n in sorted(statuses.items(), key=str))} | {wall:.2f} | "
            f"{before:.0f} | {memory_mb(pid, 'VmHWM'):.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path, nargs="?")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--poison-every", type=int, default=50)
    args = parser.parse_args()
    model = model_dir(args.model)
    with Server(model, True, ["--max-batch", "32", "--max-wait-ms", "5"]) as server:
        print(f"(a) one poison request (lone surrogate) in every {args.poison_every}\n")
        print(poison_table(server, args.requests, args.concurrency, args.poison_every) + "\n", flush=True)
        lines = ["| request | clients | statuses | wall s | server RSS before, MB | peak server RSS, MB |",
                 "|---|---|---|---|---|---|"]
        lines += [bomb_row(server, rows, 4) for rows in (64, 4)]
        print("(b) 4 concurrent clients, image bombs within the per-image cap\n")
        print("\n".join(lines))


if __name__ == "__main__":
    main()
