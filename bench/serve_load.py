"""Bounded loopback load test of `ragtune serve` (a script, not a test).

Starts the real server (`python -m ragtune serve`) on a tiny model, then runs N concurrent
clients for S seconds, each sending a random mix of requests:

  normal        short prompt, max_tokens 16                 -> 200 within the time limit
  huge          max_tokens 10**9                            -> 200, capped by --max-tokens
  oversized     a 2 MiB body                                -> 413
  disconnect    a client that gives up after 0.2 s          -> (client side timeout)
  malformed     bad JSON, bad fields, seed 2**70, unknown model -> 4xx

and reports the status counts, normal-request latencies against the time limit, and the
server's RSS before the load, right after it, and after 10 s of rest.

    OMP_NUM_THREADS=1 python bench/serve_load.py --model runs/demo/base_model --seconds 60 --clients 64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
MIX = [("normal", 0.5), ("huge", 0.1), ("oversized", 0.1), ("disconnect", 0.15), ("malformed", 0.15)]
MALFORMED = [
    b"{not json",
    b'{"messages": []}',
    b'{"messages": [{"role": "user", "content": "x"}], "seed": ' + str(2**70).encode() + b"}",
    b'{"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}',
    b"[1, 2]",
    b'{"messages": [{"role": "wizard", "content": "x"}]}',
]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def body(kind: str, rng: random.Random) -> bytes:
    question = {"role": "user", "content": f"What does the hub do with port {rng.randrange(9999)}?"}
    if kind == "malformed":
        return rng.choice(MALFORMED)
    if kind == "oversized":
        return json.dumps({"messages": [{"role": "user", "content": "x" * (2 << 20)}]}).encode()
    max_tokens = 10**9 if kind == "huge" else 16
    return json.dumps({"messages": [question], "max_tokens": max_tokens, "temperature": 0}).encode()


async def client(url: str, stop_at: float, seed: int, limit_s: float, out: dict) -> None:
    rng = random.Random(seed)
    async with httpx.AsyncClient(timeout=limit_s + 30) as http:
        while time.monotonic() < stop_at:
            kind = rng.choices([k for k, _ in MIX], [w for _, w in MIX])[0]
            t0 = time.monotonic()
            try:
                r = await http.post(
                    f"{url}/v1/chat/completions",
                    content=body(kind, rng),
                    headers={"content-type": "application/json"},
                    timeout=0.2 if kind == "disconnect" else limit_s + 30,
                )
                out["status"][(kind, r.status_code)] += 1
                if kind == "normal":
                    out["normal_s"].append(time.monotonic() - t0)
            except httpx.TimeoutException:
                out["status"][(kind, "client timeout")] += 1
            except httpx.HTTPError as e:
                out["status"][(kind, type(e).__name__)] += 1


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--time-limit", type=float, default=20.0, help="the server's --request-timeout-s")
    args = ap.parse_args()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ragtune",
            "serve",
            "--model",
            args.model,
            "--port",
            str(port),
            "--model-name",
            "ragtune",
            "--request-timeout-s",
            str(args.time_limit),
            "--max-tokens",
            "256",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                httpx.get(f"{url}/v1/models")
                break
            except httpx.HTTPError:
                assert server.poll() is None, "the server did not start"
                time.sleep(0.3)
        for _ in range(3):  # warm up: first generation allocates the caches
            httpx.post(
                f"{url}/v1/chat/completions",
                timeout=60,
                json={"messages": [{"role": "user", "content": "Hi."}], "max_tokens": 16, "temperature": 0},
            )
        start_rss = rss_mb(server.pid)
        out: dict = {"status": Counter(), "normal_s": []}
        t0 = time.monotonic()

        async def load() -> None:
            stop_at = time.monotonic() + args.seconds
            await asyncio.gather(*(client(url, stop_at, i, args.time_limit, out) for i in range(args.clients)))

        asyncio.run(load())
        wall = time.monotonic() - t0
        after_rss = rss_mb(server.pid)
        time.sleep(10)
        rest_rss = rss_mb(server.pid)
        stats = httpx.get(f"{url}/ragtune/stats").json()
    finally:
        server.terminate()
        server.wait(30)
    lat = sorted(out["normal_s"])
    n5xx = sum(v for (k, s), v in out["status"].items() if isinstance(s, int) and s >= 500)
    print(f"load average {os.getloadavg()[0]:.1f}; {args.clients} clients for {wall:.0f} s")
    for (kind, status), n in sorted(out["status"].items(), key=str):
        print(f"  {kind:10s} {status!s:15s} {n}")
    print(f"5xx: {n5xx}")
    if lat:
        print(
            f"normal: {len(lat)} answered, p50 {lat[len(lat) // 2]:.2f} s, max {lat[-1]:.2f} s "
            f"(time limit {args.time_limit:g} s + 1 s grace); over: {sum(x > args.time_limit + 1 for x in lat)}"
        )
    print(
        f"server RSS: start {start_rss:.0f} MB, end of load {after_rss:.0f} MB, after 10 s {rest_rss:.0f} MB "
        f"({(rest_rss / start_rss - 1) * 100:+.1f}%)"
    )
    print(f"server stats: {stats}")


if __name__ == "__main__":
    main()
