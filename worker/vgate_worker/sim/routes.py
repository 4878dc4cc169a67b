"""The OpenAI-compatible inference routes: chat, text completions, embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, cast

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from vgate_worker.sim import content, tokenizer
from vgate_worker.sim.engine import Engine
from vgate_worker.sim.generation import (
    Choice,
    Dialect,
    Generation,
    check_context,
    complete,
    new_id,
    stream,
    unless_disconnected,
)
from vgate_worker.sim.lora import Adapters
from vgate_worker.sim.protocol import (
    VOCAB_SIZE,
    ApiError,
    ChatRequest,
    CompletionRequest,
    EmbeddingRequest,
    SamplingRequest,
    parse_body,
)
from vgate_worker.sim.settings import SimSettings

router = APIRouter()


@dataclass(frozen=True)
class SimState:
    """What the routes need from the app; stored on ``app.state.sim``."""

    settings: SimSettings
    engine: Engine
    adapters: Adapters


def _state(request: Request) -> SimState:
    state: SimState = request.app.state.sim
    return state


def resolve_model(state: SimState, name: str | None) -> str:
    """The served name (or loaded LoRA adapter) a request targets; vLLM's 404 for an unknown one."""
    if name is None:
        return state.settings.model_name
    if name not in state.settings.served_model_name and state.adapters.get(name) is None:
        raise ApiError(f"The model `{name}` does not exist.", HTTPStatus.NOT_FOUND, param="model")
    return name


def _lora(state: SimState, model: str) -> str | None:
    return model if state.adapters.get(model) is not None else None


def _chat_delta(index: int, text: str, finish: str | None, stop: str | None) -> dict[str, Any]:
    """A chat chunk as vLLM writes it: only the fields it set (it dumps chat chunks with
    ``exclude_unset``), so ``stop_reason`` appears on a choice's last chunk only."""
    choice: dict[str, Any] = {
        "index": index,
        "delta": {"content": text},
        "logprobs": None,
        "finish_reason": finish,
    }
    if finish is not None:
        choice["stop_reason"] = stop
    return choice


CHAT = Dialect(
    object_name="chat.completion",
    chunk_object="chat.completion.chunk",
    id_prefix="chatcmpl",
    render_choice=lambda c: {
        "index": c.index,
        "message": {"role": "assistant", "content": c.reply.text, "refusal": None, "tool_calls": []},
        "logprobs": None,
        "finish_reason": c.reply.finish_reason,
        "stop_reason": c.reply.stop_reason,
    },
    open_delta=lambda i: {
        "index": i,
        "delta": {"role": "assistant", "content": ""},
        "logprobs": None,
        "finish_reason": None,
    },
    delta=_chat_delta,
)


COMPLETION = Dialect(
    object_name="text_completion",
    chunk_object="text_completion",
    id_prefix="cmpl",
    render_choice=lambda c: {
        "index": c.index,
        "text": c.reply.text,
        "logprobs": None,
        "finish_reason": c.reply.finish_reason,
        "stop_reason": c.reply.stop_reason,
        "prompt_logprobs": None,
    },
    open_delta=lambda i: None,
    delta=lambda i, text, finish, stop: {
        "index": i,
        "text": text,
        "logprobs": None,
        "finish_reason": finish,
        "stop_reason": stop,
    },
)


@router.post("/v1/chat/completions")
async def chat_completions(request: Request) -> Response:
    """Chat completions: ChatML-rendered prompt, echo reply, stream or not."""
    state = _state(request)
    req = await parse_body(request, ChatRequest)
    model = resolve_model(state, req.model)
    req.check()
    turns = [(m.role, m.text()) for m in req.messages]
    prompt = tokenizer.encode(content.render_chat(turns))
    last_user = next((t for role, t in reversed(turns) if role == "user"), turns[-1][1])
    budget = check_context(len(prompt), req.requested_max_tokens(), state.settings.max_model_len)
    reply = _reply(req, last_user, budget, _lora(state, model))
    choices = [Choice(i, 0, reply) for i in range(req.n)]
    return await _respond(request, state, req, CHAT, model, [prompt], choices)


@router.post("/v1/completions")
async def completions(request: Request) -> Response:
    """Text completions; a list of prompts gives ``n`` choices per prompt, indexed ``i * n + j``."""
    state = _state(request)
    req = await parse_body(request, CompletionRequest)
    model = resolve_model(state, req.model)
    req.check()
    prompts = _prompts(req.prompt)
    choices = []
    for i, (text, ids) in enumerate(prompts):
        budget = check_context(len(ids), req.max_tokens_or_default(), state.settings.max_model_len)
        reply = _reply(req, text, budget, _lora(state, model))
        choices += [Choice(i * req.n + j, i, reply) for j in range(req.n)]
    return await _respond(request, state, req, COMPLETION, model, [ids for _, ids in prompts], choices)


@router.post("/v1/embeddings")
async def embeddings(request: Request) -> Response:
    """Deterministic unit vectors; the request pays the prefill time of its tokens."""
    state = _state(request)
    req = await parse_body(request, EmbeddingRequest)
    model = resolve_model(state, req.model)
    inputs = _prompts(req.input, field="input")
    dim = state.settings.embedding_dim if req.dimensions is None else req.dimensions
    if not 1 <= dim <= state.settings.embedding_dim:
        # Matryoshka-style: a shorter vector is allowed, a longer one is not.
        raise ApiError(
            f"dimensions must be between 1 and {state.settings.embedding_dim}, got {dim}.", param="dimensions"
        )
    data = []
    for i, (_, ids) in enumerate(inputs):
        if len(ids) > state.settings.max_model_len:
            raise ApiError(
                f"This model's maximum context length is {state.settings.max_model_len} tokens. However, you "
                f"requested {len(ids)} tokens in the input for embedding generation. Please reduce the length "
                "of the input.",
                param="input",
            )
        vec = content.embed(ids, dim)
        value: Any = content.encode_base64(vec) if req.encoding_format == "base64" else vec
        data.append({"index": i, "object": "embedding", "embedding": value})
    tokens = sum(len(ids) for _, ids in inputs)
    if not await unless_disconnected(request, state.engine.pause_for_prefill(tokens)):
        return Response(status_code=499)  # nobody is listening any more
    body = {
        "id": f"embd-{request.headers['x-request-id']}"
        if "x-request-id" in request.headers
        else new_id("embd"),
        "object": "list",
        "created": int(request.app.state.created),
        "model": model,
        "data": data,
        "usage": {
            "prompt_tokens": tokens,
            "total_tokens": tokens,
            "completion_tokens": 0,
            "prompt_tokens_details": None,
        },
    }
    return JSONResponse(body)


def _request_id(request: Request, dialect: Dialect) -> str:
    """vLLM names a response after the request's ``X-Request-Id`` header when there is one."""
    given = request.headers.get("x-request-id")
    return f"{dialect.id_prefix}-{given}" if given else new_id(dialect.id_prefix)


def _priority(request: Request, req: SamplingRequest) -> int:
    """vLLM's ``X-Vllm-Priority`` header wins over the body's ``priority`` when it is an integer."""
    header = request.headers.get("x-vllm-priority")
    if header is not None:
        try:
            return int(header)
        except ValueError:
            pass  # vLLM ignores a header it cannot read and uses the body's value
    return req.priority


def _reply(req: SamplingRequest, source: str, budget: int, lora: str | None) -> content.Reply:
    return content.build_reply(
        source, budget, min_tokens=req.min_tokens, ignore_eos=req.ignore_eos, stop=req.stop_list(), lora=lora
    )


def _prompts(
    raw: str | list[str] | list[int] | list[list[int]], field: str = "prompt"
) -> list[tuple[str, list[int]]]:
    """Normalise OpenAI's four prompt forms to (text, token ids) pairs."""
    if isinstance(raw, str):
        items: list[str | list[int]] = [raw]
    elif raw and all(isinstance(x, int) for x in raw):
        items = [[int(x) for x in cast(list[int], raw)]]
    else:
        items = list(cast(list[str] | list[list[int]], raw))
    if not items:
        raise ApiError(f"{field} must not be empty.", param=field)
    out = []
    for item in items:
        text, ids = (item, tokenizer.encode(item)) if isinstance(item, str) else (f"{len(item)} tokens", item)
        if not ids:
            raise ApiError(f"{field} must not be empty.", param=field)
        if not isinstance(item, str):  # the tokenizer only makes ids inside the vocabulary
            bad = next((t for t in ids if not 0 <= t < VOCAB_SIZE), None)
            if bad is not None:
                raise ApiError(f"Token id {bad} is out of vocabulary.", param=field)
        out.append((text, ids))
    return out


async def _respond(
    request: Request,
    state: SimState,
    req: SamplingRequest,
    dialect: Dialect,
    model: str,
    prompts: list[list[int]],
    choices: list[Choice],
) -> Response:
    details = state.settings.enable_prompt_tokens_details
    token_ids = bool(getattr(req, "return_token_ids", False))
    gen = Generation(
        state.engine,
        model,
        prompts,
        choices,
        details=details,
        token_ids=token_ids,
        id=_request_id(request, dialect),
        lora=_lora(state, model),
        priority=_priority(request, req),
    )
    if req.stream:
        opts = req.stream_options
        include = bool(opts and opts.include_usage)
        continuous = bool(opts and opts.continuous_usage_stats)
        return StreamingResponse(stream(gen, dialect, include, continuous), media_type="text/event-stream")
    body = await complete(gen, dialect, request)
    if body is None:
        return Response(status_code=499)  # nobody is listening any more
    return JSONResponse(body)
