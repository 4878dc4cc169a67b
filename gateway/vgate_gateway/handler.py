"""The one shape every step of the request path has, from the efficiency pipeline to the proxy."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from starlette.responses import Response

from vgate_gateway.protocol import ParsedRequest

#: Answers one parsed OpenAI request, given the headers to send upstream. Each step of the
#: request path (the efficiency pipeline, the proxy) is one; the proxy is the innermost.
Handler = Callable[[ParsedRequest, Mapping[str, str]], Awaitable[Response]]
