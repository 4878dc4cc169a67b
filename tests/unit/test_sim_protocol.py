"""Pure pieces of the simulator's API: error shapes, budgets, replies, embeddings, settings."""

from __future__ import annotations

import base64
import math
import struct

import pytest
from pydantic import ValidationError

from vgate_worker.sim.content import ECHO_PREFIX, build_reply, embed, encode_base64
from vgate_worker.sim.generation import check_context
from vgate_worker.sim.protocol import ApiError, ChatRequest, error_body, error_type
from vgate_worker.sim.settings import DEFAULT_MODEL, settings_from_argv


def test_error_body_is_vllms_current_shape() -> None:
    assert error_body("bad", 400, "max_tokens") == {
        "error": {"message": "bad", "type": "BadRequestError", "param": "max_tokens", "code": 400}
    }
    assert error_type(404) == "NotFoundError"
    assert error_type(405) == "MethodNotAllowedError"
    assert error_type(500) == "InternalServerError"


def test_context_limit_uses_vllms_wording() -> None:
    assert check_context(100, 50, 4096) == 50
    assert check_context(100, None, 4096) == 3996
    with pytest.raises(ApiError) as exc:
        check_context(4000, 200, 4096)
    assert exc.value.message.startswith("This model's maximum context length is 4096 tokens.")
    assert "4200 tokens (4000 in the messages, 200 in the completion)" in exc.value.message
    assert exc.value.status == 400
    with pytest.raises(ApiError):
        check_context(4096, None, 4096)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "max_completion_tokens": -3}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "x"}], "n": 0}, "n"),
        ({"messages": [{"role": "user", "content": "x"}], "min_tokens": 9, "max_tokens": 4}, "min_tokens"),
    ],
)
def test_invalid_sampling_values_are_400(body: dict[str, object], param: str) -> None:
    req = ChatRequest.model_validate(body)
    with pytest.raises(ApiError) as exc:
        req.check()
    assert exc.value.status == 400
    assert exc.value.param == param


def test_unknown_fields_are_tolerated() -> None:
    req = ChatRequest.model_validate(
        {"messages": [{"role": "user", "content": "x", "name": "bob"}], "top_k": 5, "guided_json": {}}
    )
    req.check()


def test_reply_is_deterministic_and_respects_the_budget() -> None:
    full = build_reply("tell me a story", max_tokens=100)
    assert full == build_reply("tell me a story", max_tokens=100)
    assert full.text == f"{ECHO_PREFIX} tell me a story"
    assert full.finish_reason == "stop"
    cut = build_reply("tell me a story", max_tokens=3)
    assert cut.tokens == 3
    assert cut.finish_reason == "length"
    assert full.text.startswith(cut.text)


def test_min_tokens_and_ignore_eos_pad_the_reply() -> None:
    assert build_reply("hi", max_tokens=50, min_tokens=20).tokens == 20
    exact = build_reply("hi", max_tokens=50, ignore_eos=True)
    assert exact.tokens == 50
    assert exact.finish_reason == "length"


def test_stop_string_cuts_the_text() -> None:
    reply = build_reply("alpha beta gamma delta", max_tokens=100, stop=["gamma"])
    assert reply.text == f"{ECHO_PREFIX} alpha beta "
    assert reply.finish_reason == "stop"
    assert reply.stop_reason == "gamma"


def test_embeddings_are_unit_vectors_and_deterministic() -> None:
    a = embed([1, 2, 3], 64)
    assert a == embed([1, 2, 3], 64)
    assert math.isclose(math.sqrt(sum(v * v for v in a)), 1.0)
    assert a != embed([4, 5, 6], 64)
    decoded = struct.unpack("<64f", base64.b64decode(encode_base64(a)))
    assert decoded == pytest.approx(a, rel=1e-6)


def test_settings_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGATE_SIM_SERVED_MODEL_NAME", "a, b")
    monkeypatch.setenv("VGATE_SIM_MAX_NUM_SEQS", "7")
    s = settings_from_argv(["--max-num-seqs", "3"])
    assert s.served_model_name == ["a", "b"]
    assert s.max_num_seqs == 3
    monkeypatch.delenv("VGATE_SIM_SERVED_MODEL_NAME")
    assert settings_from_argv([]).served_model_name == [DEFAULT_MODEL]
    assert settings_from_argv(["--model", "m/x"]).served_model_name == ["m/x"]


def test_settings_reject_a_kv_cache_smaller_than_one_request() -> None:
    with pytest.raises(ValidationError):
        settings_from_argv(["--max-model-len", "8192", "--kv-cache-tokens", "4096"])
