"""Load test for `attnlab serve`, on 127.0.0.1 only, bounded in requests and in time.

Starts the server as a subprocess on a random-weight GPT (gpt2-nano shape, character
vocabulary) and drives it with N concurrent clients (asyncio + httpx), each sending completion
requests back to back. Reports generated tokens/s, p50/p95/p99 latency and error counts. The server runs the model on
one CPU thread: on a shared, busy machine more intra-op threads spin against each other and
make every step many times slower.

    python benchmarks/serve_load.py sweep       # 1, 4, 16, 64 clients, batching server
    python benchmarks/serve_load.py batching    # 16 clients: batching vs one request at a time
    python benchmarks/serve_load.py overload    # 4x more clients than the queue holds, 30 s
    python benchmarks/serve_load.py all
"""

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from attnlab.checkpoint import save_checkpoint  # noqa: E402
from attnlab.models import GPT, preset  # noqa: E402
from attnlab.tokenizers import CharTokenizer  # noqa: E402

HOST = "127.0.0.1"
ALPHABET = "\n !',.?abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
PROMPTS = ["The cat sat on the mat", "Once upon a time", "To be, or not to be", "What light through yonder",
           "Now is the winter of", "A horse! a horse!", "Friends, Romans, countrymen", "All the world's a stage"]


def make_checkpoint(directory: Path) -> Path:
    torch.manual_seed(0)
    tokenizer = CharTokenizer(ALPHABET)
    model = GPT(preset("gpt2-nano", vocab_size=len(ALPHABET), activation="gelu"))
    save_checkpoint(directory / "ckpt", model, tokenizer)
    return directory / "ckpt"


class Server:
    def __init__(self, checkpoint, max_batch, max_queue, timeout=120):
        with socket.socket() as s:
            s.bind((HOST, 0))
            self.port = s.getsockname()[1]
        self.url = f"http://{HOST}:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "attnlab.cli", "serve", str(checkpoint), "--host", HOST, "--port", str(self.port),
             "--max-batch", str(max_batch), "--max-queue", str(max_queue), "--timeout", str(timeout),
             "--threads", "1"],
            env=env, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.2)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self):
        self.proc.terminate()
        self.proc.wait(30)


async def load(url, clients, max_tokens, seconds, max_requests, retry_sleep=0.0):
    """`clients` loops of back-to-back requests until `seconds` or `max_requests` in all.
    -> per-request (status, latency_s, completion_tokens) and the wall time."""
    results, sent = [], 0
    stop_at = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=180, limits=limits) as http:
        async def client(i):
            nonlocal sent
            while time.monotonic() < stop_at and sent < max_requests:
                sent += 1
                body = {"prompt": PROMPTS[(i + sent) % len(PROMPTS)], "max_tokens": max_tokens, "temperature": 0}
                start = time.perf_counter()
                try:
                    r = await http.post("/v1/completions", json=body)
                    status = r.status_code
                    tokens = r.json()["usage"]["completion_tokens"] if status == 200 else 0
                except httpx.HTTPError:
                    status, tokens = "transport", 0
                results.append((status, time.perf_counter() - start, tokens))
                if status == 429 and retry_sleep:
                    await asyncio.sleep(retry_sleep)

        started = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(clients)))
        return results, time.perf_counter() - started


def summarise(results, wall):
    ok = [r for r in results if r[0] == 200]
    latencies = sorted(r[1] for r in ok)

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] if latencies else float("nan")

    statuses = {}
    for status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {"requests": len(results), "ok": len(ok), "statuses": statuses,
            "errors": len(results) - len(ok) - statuses.get("429", 0),
            "tokens_per_s": sum(r[2] for r in ok) / wall, "requests_per_s": len(ok) / wall,
            "p50_s": pct(50), "p95_s": pct(95), "p99_s": pct(99), "wall_s": wall}


def row(label, s):
    return (f"| {label} | {s['requests']} | {s['tokens_per_s']:.0f} | {s['p50_s']:.2f} | {s['p95_s']:.2f} | "
            f"{s['p99_s']:.2f} | {s['errors']} | {s['statuses'].get('429', 0)} |")


HEADER = ("| clients | requests | generated tokens/s | p50 s | p95 s | p99 s | errors | 429 |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- |")


def sweep(checkpoint, args):
    server = Server(checkpoint, max_batch=16, max_queue=64)
    lines, out = [HEADER], {}
    try:
        asyncio.run(load(server.url, 2, args.max_tokens, 3, 4))  # warm-up
        for clients in (1, 4, 16, 64):
            s = summarise(*asyncio.run(load(server.url, clients, args.max_tokens, args.seconds, args.max_requests)))
            out[clients] = s
            lines.append(row(clients, s))
            print(lines[-1], flush=True)
    finally:
        server.close()
    return "\n".join(lines), out


def batching(checkpoint, args):
    lines, out = [HEADER.replace("clients", "server (16 clients)")], {}
    for label, max_batch in (("one at a time (--max-batch 1)", 1), ("batching (--max-batch 16)", 16)):
        server = Server(checkpoint, max_batch=max_batch, max_queue=64)
        try:
            asyncio.run(load(server.url, 2, args.max_tokens, 3, 4))
            s = summarise(*asyncio.run(load(server.url, 16, args.max_tokens, args.seconds, args.max_requests)))
        finally:
            server.close()
        out[label] = s
        lines.append(row(label, s))
        print(lines[-1], flush=True)
    ratio = out["batching (--max-batch 16)"]["tokens_per_s"] / out["one at a time (--max-batch 1)"]["tokens_per_s"]
    lines.append(f"\nthroughput ratio batching / one at a time: **{ratio:.2f}x**")
    print(lines[-1])
    return "\n".join(lines), {**out, "ratio": ratio}


def overload(checkpoint, args):
    queue, batch = 8, 8
    clients = 4 * (queue + batch)
    server = Server(checkpoint, max_batch=batch, max_queue=queue)
    rss = [server.rss_mb()]
    try:
        async def run():
            task = asyncio.create_task(load(server.url, clients, args.max_tokens, args.overload_seconds, 10 ** 9,
                                            retry_sleep=0.05))
            while not task.done():
                await asyncio.sleep(1)
                rss.append(server.rss_mb())
            return task.result()
        results, wall = asyncio.run(run())
        s = summarise(results, wall)
        health = httpx.get(server.url + "/health", timeout=10).status_code
        alive = server.alive()
    finally:
        server.close()
    other = {k: v for k, v in s["statuses"].items() if k not in ("200", "429")}
    lines = [f"{clients} clients against --max-batch {batch} --max-queue {queue} for {wall:.0f} s: "
             f"{s['requests']} requests, {s['statuses'].get('200', 0)} answered 200, {s['statuses'].get('429', 0)} "
             f"answered 429, other outcomes {other or 'none'}; server alive afterwards: {alive}, /health {health}; "
             f"p95 latency of the 200s {s['p95_s']:.2f} s; server RSS {rss[0]:.0f} MB at start, "
             f"{rss[len(rss) // 2]:.0f} MB midway, {rss[-1]:.0f} MB at the end (max {max(rss):.0f} MB)."]
    print(lines[0])
    return "\n".join(lines), {**s, "rss_mb": rss, "alive": alive}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["sweep", "batching", "overload", "all"])
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=15, help="time budget per measurement")
    parser.add_argument("--max-requests", type=int, default=400, help="request budget per measurement")
    parser.add_argument("--overload-seconds", type=float, default=30)
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = make_checkpoint(Path(tmp))
        results = {}
        for name, fn in (("sweep", sweep), ("batching", batching), ("overload", overload)):
            if args.what in (name, "all"):
                print(f"\n## {name}", flush=True)
                results[name] = fn(checkpoint, args)[1]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
