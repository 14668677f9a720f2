"""Load test of `mmfuse serve`: micro-batching on vs off, and single-row latency.

    python bench/serve_load.py runs/easy_vqa/model [--requests 2000] [--concurrency 32]

Starts the server in a subprocess on a loopback port (once with batching, once without), fires
--requests predict requests (one easy-VQA test image + question each, JSON with base64) at
--concurrency from this process with an httpx async client, then --single sequential requests,
and prints a markdown table: failures, p50/p99 latency, throughput, and from the server's own
metrics the rows per forward pass and the model time per pass.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
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


async def fire(url: str, bodies: list[dict], concurrency: int) -> tuple[list[float], int, float]:
    """(latencies of successful requests in s, failures, wall seconds)."""
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


def measure(name: str, server: Server, bodies: list[dict], concurrency: int) -> str:
    """One table row: fire `bodies` at `concurrency` and read the server's passes during the run."""
    before = server.passes()
    latencies, failures, wall = asyncio.run(fire(server.url, bodies, concurrency))
    passes, rows, seconds = server.passes() - before
    ms = np.array(latencies) * 1000
    rows_per_pass, model_ms = rows / passes, 1000 * seconds / passes
    print(f"{name}: {wall:.1f} s", file=sys.stderr, flush=True)
    return (f"| {name} | {len(latencies) + failures} | {failures} | {np.percentile(ms, 50):.1f} | "
            f"{np.percentile(ms, 99):.1f} | {len(latencies) / wall:.1f} | {rows_per_pass:.1f} | {model_ms:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--single", type=int, default=200, help="sequential requests for single-row latency")
    parser.add_argument("--server-args", default="--max-batch 32 --max-wait-ms 5",
                        help="extra `mmfuse serve` flags for the batching run")
    args = parser.parse_args()
    bodies = easy_vqa_bodies(args.requests)
    lines = ["| run | requests | failures | p50 ms | p99 ms | requests/s | rows per pass | model ms per pass |",
             "|---|---|---|---|---|---|---|---|"]
    for batching in (True, False):
        with Server(args.model, batching, args.server_args.split()) as server:
            asyncio.run(fire(server.url, bodies[:64], 8))  # warm-up, not measured
            name = f"batching {'on' if batching else 'off'}, concurrency {args.concurrency}"
            lines.append(measure(name, server, bodies, args.concurrency))
            if not batching:
                lines.append(measure("single row, sequential", server, bodies[: args.single], 1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
