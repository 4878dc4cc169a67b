"""LoRA adapters in the simulator: vLLM's runtime adapter API, its model cards and its metric.

vLLM (with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True``) serves
``POST /v1/load_lora_adapter`` ``{"lora_name", "lora_path"}`` and
``POST /v1/unload_lora_adapter`` ``{"lora_name"}``: success is a 200 with a plain-text
sentence, a name loaded twice is a 400 ``InvalidUserInput``, an adapter it cannot find a 404
``NotFoundError``, an unknown name on unload a 404. Loaded adapters are listed in
``/v1/models`` with ``root`` (the path) and ``parent`` (the base model), and requests name
them in ``model``. The simulator does the same, with two settings of its own: a load takes
``lora_load_s`` (a real load reads the weights from disk), and at most ``max_loras`` adapters
are loaded at once (a further load is a 400 naming the limit), so a gateway's placement has
slots to respect. An adapter path that is absolute must exist on disk, as vLLM's must; a
relative one stands for a Hugging Face id, which the simulator "downloads" instantly.
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from vgate_worker.sim.protocol import error_body
from vgate_worker.sim.settings import SimSettings

#: vLLM registers the adapter endpoints only when this environment variable is true.
RUNTIME_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"

router = APIRouter()


@dataclass
class Adapter:
    name: str
    path: str
    int_id: int
    created: float = field(default_factory=time.time)


class Adapters:
    """The adapters one simulated engine has loaded."""

    def __init__(self, settings: SimSettings) -> None:
        self.settings = settings
        self.loaded: dict[str, Adapter] = {}
        self._next_id = 0
        self._lock = asyncio.Lock()

    def get(self, name: str) -> Adapter | None:
        return self.loaded.get(name)

    async def load(self, name: str, path: str) -> tuple[int, str, str]:
        """(status, error type or "", message), as vLLM's ``load_lora_adapter`` answers."""
        if not name or not path:
            return 400, "InvalidUserInput", "Both 'lora_name' and 'lora_path' must be provided."
        async with self._lock:  # vLLM's engine loads one adapter at a time
            if name in self.loaded:
                return 400, "InvalidUserInput", f"The lora adapter '{name}' has already been loaded."
            if not self.settings.enable_lora:
                return 400, "BadRequestError", "LoRA is not enabled. Use --enable-lora to enable LoRA."
            if path.startswith("/") and not await asyncio.to_thread(Path(path).exists):
                return 404, "NotFoundError", f"No adapter found for {path}"
            if len(self.loaded) >= self.settings.max_loras:
                return (
                    400,
                    "BadRequestError",
                    f"No free LoRA slot: {len(self.loaded)} adapters are loaded "
                    f"(--max-loras {self.settings.max_loras}); unload one first.",
                )
            await asyncio.sleep(self.settings.lora_load_s / self.settings.speed)
            self._next_id += 1
            self.loaded[name] = Adapter(name, path, self._next_id)
        return 200, "", f"Success: LoRA adapter '{name}' added successfully."

    def unload(self, name: str) -> tuple[int, str, str]:
        if not name:
            return 400, "InvalidUserInput", "either 'lora_name' and 'lora_int_id' needs to be provided."
        if self.loaded.pop(name, None) is None:
            return 404, "NotFoundError", f"The lora adapter '{name}' cannot be found."
        return 200, "", f"Success: LoRA adapter '{name}' removed successfully."

    def cards(self, created: float) -> list[dict[str, Any]]:
        """vLLM's model cards of the loaded adapters: ``root`` is the path, ``parent`` the base model."""
        return [
            {
                "id": a.name,
                "object": "model",
                "created": int(created),
                "owned_by": "vllm",
                "root": a.path,
                "parent": self.settings.model_name,
                "max_model_len": None,
                "permission": [],
            }
            for a in self.loaded.values()
        ]


def runtime_updating() -> bool:
    return os.environ.get(RUNTIME_ENV, "").strip().lower() in {"1", "true"}


def _adapters(request: Request) -> Adapters:
    adapters: Adapters = request.app.state.adapters
    return adapters


def _answer(status: int, err_type: str, message: str) -> Response:
    if status == HTTPStatus.OK:
        return PlainTextResponse(message)
    body = error_body(message, status)
    body["error"]["type"] = err_type
    return JSONResponse(body, status_code=status)


async def _fields(request: Request) -> dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        data = None
    return data if isinstance(data, dict) else {}


@router.post("/v1/load_lora_adapter")
async def load_lora_adapter(request: Request) -> Response:
    data = await _fields(request)
    name, path = str(data.get("lora_name") or ""), str(data.get("lora_path") or "")
    return _answer(*await _adapters(request).load(name, path))


@router.post("/v1/unload_lora_adapter")
async def unload_lora_adapter(request: Request) -> Response:
    data = await _fields(request)
    return _answer(*_adapters(request).unload(str(data.get("lora_name") or "")))
