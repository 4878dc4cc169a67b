"""How long other clients wait while large bodies are posted to the gateway.

Starts two dry-run workers and a gateway (default settings, like ``vgate dev``), then for
each kind of large body posts it a few times back to back (with ``curl``, so the poster
holds no GIL here) while two threads keep asking: ``GET /health`` and a small chat
request the gateway answers from its cache. Prints the longest and the 99th-percentile
latency each saw during the posts.

    PYTHONPATH=. .venv/bin/python hack/bigbody_latency.py [--posts 3] [--size-mb 7.5] [--only KIND]
        [--env VGATE_X=Y] [--py-spy PATH-TO-PY-SPY]
"""

from __future__ import annotations

import argparse
import http.client
import random
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

import orjson

from tests.support.procs import make_proc, running, vgate_process

MODEL = "m"
WORKER = ["worker", "--dry-run", "--served-model-name", MODEL, "--speed", "100"]


def bodies(size: int) -> dict[str, tuple[str, bytes]]:
    """name -> (path, body) of each large body, about ``size`` bytes."""
    rng = random.Random(7)
    words = [f"w{rng.randrange(10**6)}" for _ in range(size // 8)]
    text = " ".join(words)[:size]
    ids = [rng.randrange(150_000) for _ in range(size // 7)]
    msgs = [
        {"role": "user" if i % 2 else "assistant", "content": f"m{i} {words[i]}"} for i in range(size // 45)
    ]
    parts = [
        {"role": "user", "content": [{"type": "text", "text": words[i]}, {"type": "text", "text": "x"}]}
        for i in range(size // 90)
    ]
    deep_unit = "[" * 60 + "1" + "]" * 60
    nested = orjson.loads("[" + ",".join([deep_unit] * (size // 130)) + "]")
    base = {"model": MODEL, "max_tokens": 1}
    return {
        "completions-text": ("/v1/completions", orjson.dumps({**base, "prompt": text})),
        "completions-ids": ("/v1/completions", orjson.dumps({**base, "prompt": ids})),
        "completions-ids-t0": ("/v1/completions", orjson.dumps({**base, "prompt": ids, "temperature": 0})),
        "chat-messages": ("/v1/chat/completions", orjson.dumps({**base, "messages": msgs})),
        "chat-parts-t0": (
            "/v1/chat/completions",
            orjson.dumps({**base, "messages": parts, "temperature": 0}),
        ),
        "chat-nested": (
            "/v1/chat/completions",
            orjson.dumps({**base, "messages": [{"role": "user", "content": "hi"}], "metadata_x": nested}),
        ),
        "embeddings-text": ("/v1/embeddings", orjson.dumps({"model": MODEL, "input": text})),
        "embeddings-ids": ("/v1/embeddings", orjson.dumps({"model": MODEL, "input": ids})),
    }


class Poller(threading.Thread):
    """Asks one request again and again on a keep-alive connection, recording latencies."""

    def __init__(self, port: int, method: str, path: str, body: bytes | None = None) -> None:
        super().__init__(daemon=True)
        self.port, self.method, self.path, self.body = port, method, path, body
        self.samples: list[float] = []
        self.recording = False
        self.stopped = False

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"content-type": "application/json"} if self.body else {}
        while not self.stopped:
            t = time.perf_counter()
            conn.request(self.method, self.path, body=self.body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if self.recording:
                self.samples.append(time.perf_counter() - t)
            time.sleep(0.002)


def summary(samples: list[float]) -> str:
    if not samples:
        return "no samples"
    ms = sorted(s * 1000 for s in samples)
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return f"n={len(ms):4d} max={ms[-1]:7.1f} ms p99={p99:7.1f} ms median={statistics.median(ms):5.1f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--posts", type=int, default=3)
    ap.add_argument("--size-mb", type=float, default=7.5)
    ap.add_argument("--only", action="append")
    ap.add_argument("--env", action="append", default=[], help="extra gateway env KEY=VALUE")
    ap.add_argument("--py-spy", help="record the gateway with this py-spy into profile-*.txt here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bigbody-"))
    with ExitStack() as es:
        workers = es.enter_context(running([make_proc(WORKER, tmp, name=f"w{i}") for i in range(2)]))
        env = {"VGATE_ENDPOINTS": ",".join(w.url for w in workers), **dict(e.split("=", 1) for e in args.env)}
        gw = es.enter_context(vgate_process(["gateway"], tmp, env=env, ready_path="/ready", name="gw"))
        print(f"gateway {gw.url} pid {gw.popen.pid if gw.popen else '?'} logs {tmp}")
        # Deterministic, so after the first answer the gateway answers it from its cache alone:
        # its latency is the gateway's, not that of a worker busy with a large body.
        small = orjson.dumps(
            {
                "model": MODEL,
                "max_tokens": 1,
                "temperature": 0,
                "messages": [{"role": "user", "content": "hi"}],
            }
        )
        health = Poller(gw.port, "GET", "/health")
        chat = Poller(gw.port, "POST", "/v1/chat/completions", small)
        if args.py_spy and gw.popen:
            profile = subprocess.Popen(
                [
                    args.py_spy,
                    "record",
                    "-p",
                    str(gw.popen.pid),
                    "-f",
                    "raw",
                    "-o",
                    "profile-bigbody.txt",
                    "-r",
                    "200",
                ]
            )
            es.callback(profile.wait)
            es.callback(profile.send_signal, signal.SIGINT)  # it writes the profile once stopped
        health.start()
        chat.start()
        time.sleep(1.0)
        for name, (path, body) in bodies(int(args.size_mb * 1024 * 1024)).items():
            if args.only and name not in args.only:
                continue
            file = tmp / f"{name}.json"
            file.write_bytes(body)
            health.samples, chat.samples = [], []
            health.recording = chat.recording = True
            t = time.perf_counter()
            statuses = []
            for _ in range(args.posts):
                out = subprocess.run(
                    [
                        "curl",
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "-H",
                        "content-type: application/json",
                        "--data-binary",
                        f"@{file}",
                        gw.url + path,
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                statuses.append(out.stdout)
            took = time.perf_counter() - t
            health.recording = chat.recording = False
            print(
                f"{name:20s} {len(body) / 2**20:4.1f} MiB x{args.posts} in {took:5.2f}s status {','.join(statuses)}"
            )
            print(f"  /health {summary(health.samples)}")
            print(f"  chat    {summary(chat.samples)}", flush=True)
        health.stopped = chat.stopped = True


if __name__ == "__main__":
    main()
