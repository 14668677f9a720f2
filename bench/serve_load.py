"""Load test of `mmfuse serve`: micro-batching on vs off, single-row latency, where the time goes.

    python bench/serve_load.py runs/easy_vqa/model [--requests 2000] [--concurrency 32]
                               [--client raw|httpx] [--runs on,off,single] [--shuffle] [--profile]

Starts the server in a subprocess on a loopback port (once with batching, once without), fires
--requests predict requests (one easy-VQA test image + question each, JSON with base64) at
--concurrency from this process, then --single sequential requests, and prints a markdown table:
failures, p50/p99 latency, throughput, the server's CPU time per request, the load average, and
from the server's own metrics the rows per forward pass and the model time per pass.

The client (this process, so a second process beside the server) is by default a raw asyncio
HTTP/1.1 client: one keep-alive connection per concurrent request, the request bytes built
before the clock starts, each answer's status and `"predictions"` checked. It costs ~0.1 ms of CPU
per request, so on a 2-core machine it leaves the server nearly all the CPU; `--client httpx`
(an httpx.AsyncClient with a pool of --concurrency connections) costs several times more.

The requests go in test-set order, where ~10 consecutive questions share an image (2,000 requests:
204 images), as they would from users asking several questions about one picture; a batch then
encodes each distinct image once. `--shuffle` sends them in random order instead (nearly every
row of a batch a different image).

`--profile` (needs py-spy: `pip install py-spy`) samples the server during an extra batching-on
run and prints where its CPU time goes per request, by part of the request path.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

# `python bench/serve_load.py` puts bench/ first on sys.path, where bench/easy_vqa.py would hide
# the `easy_vqa` data package.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def easy_vqa_bodies(count: int) -> list[dict]:
    import easy_vqa

    questions, _, image_ids = easy_vqa.get_test_questions()
    paths = easy_vqa.get_test_image_paths()
    encoded: dict[int, str] = {}
    bodies = []
    for i in range(count):
        image_id = image_ids[i]
        if image_id not in encoded:
            encoded[image_id] = base64.b64encode(Path(paths[image_id]).read_bytes()).decode()
        bodies.append({"rows": [{"image": encoded[image_id], "text": questions[i]}], "top_k": 3})
    return bodies


class Server:
    """`mmfuse serve` in a subprocess, stopped on exit."""

    def __init__(self, model: Path, batching: bool, extra: list[str]):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="mmfuse-serve-", suffix=".log", delete=False)
        command = [sys.executable, "-m", "mmfuse.cli", "serve", str(model), "--port", str(self.port),
                   "--batching" if batching else "--no-batching", *extra]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def __enter__(self) -> "Server":
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"server exited; log: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise SystemExit("server not ready after 180 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)

    def passes(self) -> np.ndarray:
        """[forward passes, rows, model seconds] so far, from the server's own /metrics."""
        text = httpx.get(self.url + "/metrics", timeout=10).text
        names = ("mmfuse_forward_seconds_count", "mmfuse_batch_rows_sum", "mmfuse_forward_seconds_sum")
        return np.array([float(re.search(rf"^{name} (\S+)$", text, re.MULTILINE).group(1)) for name in names])

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ----- clients: (latencies of successful requests in s, failures, wall seconds) ---------------------

async def fire_httpx(url: str, bodies: list[dict], concurrency: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    failures = 0
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker() -> None:
            nonlocal next_index, failures
            while next_index < len(bodies):
                body = bodies[next_index]
                next_index += 1
                started = time.perf_counter()
                try:
                    response = await client.post("/predict", json=body)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                if ok:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return latencies, failures, time.perf_counter() - started


def raw_requests(url: str, bodies: list[dict]) -> list[bytes]:
    host = url.split("//", 1)[1]
    out = []
    for body in bodies:
        payload = json.dumps(body).encode()
        head = (f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\n\r\n").encode()
        out.append(head + payload)
    return out


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[bool, bool]:
    """(answered 200 with predictions, connection still usable)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = re.search(rb"\r\ncontent-length: *(\d+)", head, re.IGNORECASE)
    if length is None:
        return False, False
    body = await reader.readexactly(int(length.group(1)))
    closing = re.search(rb"\r\nconnection: *close", head, re.IGNORECASE) is not None
    return status == 200 and body.startswith(b'{"predictions"'), not closing


async def fire_raw(url: str, bodies: list[dict], concurrency: int) -> tuple[list[float], int, float]:
    """A minimal HTTP/1.1 keep-alive client: one connection per concurrent worker."""
    requests = raw_requests(url, bodies)
    host, port = url.split("//", 1)[1].split(":")
    latencies: list[float] = []
    failures = 0
    next_index = 0

    async def worker() -> None:
        nonlocal next_index, failures
        reader = writer = None
        while next_index < len(requests):
            request = requests[next_index]
            next_index += 1
            started = time.perf_counter()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection(host, int(port))
                ok, usable = await asyncio.wait_for(_exchange(reader, writer, request), 60)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                    ValueError):
                ok, usable = False, False
            if ok:
                latencies.append(time.perf_counter() - started)
            else:
                failures += 1
            if not usable and writer is not None:
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, failures, time.perf_counter() - started


CLIENTS = {"raw": fire_raw, "httpx": fire_httpx}


def measure(name: str, server: Server, bodies: list[dict], concurrency: int, client: str) -> str:
    """One table row: fire `bodies` at `concurrency` and read the server's passes during the run."""
    before, cpu_before = server.passes(), server.cpu_seconds()
    own_before = resource.getrusage(resource.RUSAGE_SELF)
    latencies, failures, wall = asyncio.run(CLIENTS[client](server.url, bodies, concurrency))
    own = resource.getrusage(resource.RUSAGE_SELF)
    load = os.getloadavg()[0]
    server_ms = 1000 * (server.cpu_seconds() - cpu_before) / len(bodies)
    client_ms = 1000 * (own.ru_utime + own.ru_stime - own_before.ru_utime - own_before.ru_stime) / len(bodies)
    passes, rows, seconds = server.passes() - before
    ms = np.array(latencies) * 1000 if latencies else np.array([np.nan])
    rows_per_pass, model_ms = rows / max(passes, 1), 1000 * seconds / max(passes, 1)
    print(f"{name}: {wall:.1f} s", file=sys.stderr, flush=True)
    return (f"| {name} | {len(latencies) + failures} | {failures} | {np.percentile(ms, 50):.1f} | "
            f"{np.percentile(ms, 99):.1f} | {len(latencies) / wall:.1f} | {server_ms:.2f} | {client_ms:.2f} | "
            f"{rows_per_pass:.1f} | {model_ms:.1f} | {load:.2f} |")


# ----- profile: py-spy samples of the server, by part of the request path ---------------------------

# (part, pattern on one frame "function (file.py:line)"), tried from the innermost frame outwards:
# the first part matched names the sample.
PARTS = [
    ("model: image encoder (CNN)", r"ImageEncoder\.forward|SmallCNN|feature_map"),
    ("model: text encoder (MiniLM, LRU misses)", r"HFTextEncoder|BertModel|transformers/"),
    ("model: fusion + head", r"mmfuse/fusion/|mmfuse/heads/"),
    ("model: feature LRU look-ups", r"feature_lru\.py|encoders/cache\.py"),
    ("model: eval()/to() walks", r"Module\.(train|eval|to|_apply) "),
    ("model: table (pandas, manifest)", r"data/manifest\.py|Predictor\.read|records_frame|pandas/"),
    ("model: dataset + batch building", r"dataset\.py|data/batching\.py|torch/utils/data/"),
    ("model: other (runner, torch glue)", r"serve/runner\.py|predict_outputs|predict_scores|MultimodalModel"),
    ("inputs: base64 + image decode and checks", r"serve/inputs\.py|modalities/|data/media\.py|PIL/|base64"),
    ("JSON + pydantic (request and response)", r"json/|orjson|pydantic|fastapi/_compat|serialize_response|"
                                              r"jsonable_encoder|fastapi/encoders|StrictRequest\.json"),
    ("logging (app + access log)", r"logging/|log_preview|privacy\.py"),
    ("metrics (Prometheus)", r"prometheus_client/"),
    ("HTTP parse + write (uvicorn protocol)", r"uvicorn/protocols|h11/|httptools"),
    ("ASGI framework (routing, middleware, app code)", r"starlette/|fastapi/|serve/(routes|limits|app|bodies|"
                                                        r"errors|security)\.py"),
    ("threads + event loop hand-offs", r"asyncio/tasks|asyncio/futures|asyncio/queues|asyncio/timeouts|"
                                       r"concurrent/futures|anyio/|threading\.py|queue\.py|batcher\.py"),
    ("event loop itself (polling, socket I/O)", r"Runner\.run |run_forever|run_until_complete|_run_once"),
]
# A sample whose innermost frame is one of these is a thread waiting (py-spy counts some waits as busy).
IDLE = re.compile(r"Condition\.wait|Semaphore\.acquire|Event\.wait \(threading|Queue\.get|"
                  r"_worker \(concurrent/futures/thread\.py|WorkerThread\.run|selectors\.py")


def profile_parts(raw: Path) -> Counter:
    parts: Counter = Counter()
    compiled = [(name, re.compile(pattern)) for name, pattern in PARTS]
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")[1:]  # the first is the thread
        if not frames or IDLE.search(frames[-1]):
            continue
        part = next((name for frame in reversed(frames) for name, pattern in compiled if pattern.search(frame)),
                    "other")
        parts[part] += int(count)
    return parts


def profile(server: Server, bodies: list[dict], concurrency: int, client: str) -> str:
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=os.path.dirname(sys.executable))
    if spy is None:
        return "(no profile: py-spy is not installed; `pip install py-spy`)"
    raw = Path(tempfile.mkdtemp(prefix="mmfuse-profile-")) / "server.txt"
    cpu_before = server.cpu_seconds()
    sampler = subprocess.Popen([spy, "record", "--pid", str(server.process.pid), "--rate", "250", "--format", "raw",
                                "--nonblocking", "--threads", "--output", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.0)  # attached
    cpu_before = server.cpu_seconds()
    asyncio.run(CLIENTS[client](server.url, bodies, concurrency))
    per_request = 1000 * (server.cpu_seconds() - cpu_before) / len(bodies)
    sampler.send_signal(signal.SIGINT)
    sampler.wait(timeout=60)
    parts = profile_parts(raw)
    total = sum(parts.values()) or 1
    lines = [f"Server CPU per request: {per_request:.2f} ms, split by py-spy samples of its busy threads ({total})",
             "", "| part of the request path | share of server CPU | CPU ms per request |", "|---|---|---|"]
    for name, count in parts.most_common():
        lines.append(f"| {name} | {100 * count / total:.1f}% | {per_request * count / total:.2f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--single", type=int, default=200, help="sequential requests for single-row latency")
    parser.add_argument("--server-args", default="--max-batch 32 --max-wait-ms 5",
                        help="extra `mmfuse serve` flags for the batching run")
    parser.add_argument("--client", choices=sorted(CLIENTS), default="raw")
    parser.add_argument("--runs", default="on,off,single", help="which of on, off, single to run")
    parser.add_argument("--shuffle", action="store_true", help="requests in random order (few shared images)")
    parser.add_argument("--profile", action="store_true", help="profile the server (py-spy) in an extra run")
    args = parser.parse_args()
    bodies = easy_vqa_bodies(args.requests)
    if args.shuffle:
        random.Random(0).shuffle(bodies)
    runs = set(args.runs.split(","))
    lines = ["| run | requests | failures | p50 ms | p99 ms | requests/s | server CPU ms/request | "
             "client CPU ms/request | rows per pass | model ms per pass | load avg (1 min) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    report = ""
    for batching in (True, False):
        if not runs & ({"on"} if batching else {"off", "single"}):
            continue
        with Server(args.model, batching, args.server_args.split()) as server:
            asyncio.run(CLIENTS[args.client](server.url, bodies[:64], 8))  # warm-up, not measured
            name = f"batching {'on' if batching else 'off'}, concurrency {args.concurrency}"
            if batching or "off" in runs:
                lines.append(measure(name, server, bodies, args.concurrency, args.client))
            if not batching and "single" in runs:
                lines.append(measure("single row, sequential", server, bodies[: args.single], 1, args.client))
            if batching and args.profile:
                report = profile(server, bodies, args.concurrency, args.client)
    print(f"client: {args.client}, order: {'shuffled' if args.shuffle else 'test set'}, "
          f"server args: {args.server_args}")
    print("\n".join(lines))
    if report:
        print("\n" + report)


if __name__ == "__main__":
    main()
