"""A worker that records what reaches it: the headers the gateway forwards, or nothing at all.

It answers just enough of vLLM's API for the gateway to route to it (``/health``,
``/v1/models``, a fixed chat completion), so a test can assert on exactly what arrived.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    model: str
    requests: list[Seen] = field(default_factory=list)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api_calls(self) -> list[Seen]:
        """The requests that were not health checks."""
        return [r for r in self.requests if r.path.startswith("/v1/") and r.method == "POST"]


def _handler(recorder: Recorder) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def _answer(self, body: object, status: int = 200) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k.lower(): v for k, v in self.headers.items()}
            recorder.requests.append(Seen(self.command, self.path, headers, body))

        def do_GET(self) -> None:
            self._record()
            if self.path == "/v1/models":
                self._answer({"object": "list", "data": [{"id": recorder.model, "object": "model"}]})
            elif self.path == "/health":
                self._answer({})
            else:
                self._answer({"error": {"message": "no such route"}}, 404)

        def do_POST(self) -> None:
            self._record()
            usage = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
            message = {"role": "assistant", "content": f"recorded by {recorder.port}"}
            choice = {"index": 0, "message": message, "finish_reason": "stop"}
            self._answer(
                {
                    "id": "rec",
                    "object": "chat.completion",
                    "model": recorder.model,
                    "choices": [choice],
                    "usage": usage,
                }
            )

    return Handler


@contextmanager
def recorder(model: str) -> Iterator[Recorder]:
    rec = Recorder(model=model)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
