"""API keys through the real HTTP interface and the official ``openai`` client.

A keys file (what the operator mounts from a Secret) turns authentication on: missing,
empty, wrong, oversized and non-ASCII keys are a 401 ``invalid_api_key``; a key's model
allow-list hides the other models as if they were not served; the file is re-read when it
changes, without a restart; keys never reach the logs, only their short ids.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import openai
import pytest

from tests.integration.conftest import MODEL, Stack, start_stack
from tests.support.waiting import wait_until

ALICE = "sk-alice-0123456789abcdef"
BOB = "sk-bob-restricted-99"
CAROL = "sk-carol-only-hashed-7"  # the file holds only its SHA-256
HELLO = [{"role": "user", "content": "Hello!"}]


def write_keys(path: Path, text: str) -> None:
    """Replace the file the way a Secret volume update does: a new file renamed into place."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("auth")
    keys = tmp / "keys"
    carol = hashlib.sha256(CAROL.encode()).hexdigest()
    write_keys(
        keys, f"# keys\n{ALICE} id=alice\n{BOB} id=bob models=some-other-model\nsha256:{carol} id=carol\n"
    )
    env = {"VGATE_API_KEYS_FILE": str(keys), "VGATE_API_KEYS_RELOAD_S": "0.2"}
    with ExitStack() as es:
        yield start_stack(es, tmp, gateway_env=env)


def _chat(stack: Stack, key: str) -> str:
    answer = stack.client(api_key=key).chat.completions.create(model=MODEL, messages=HELLO, max_tokens=4)
    return answer.choices[0].message.content or ""


def test_a_configured_key_is_served_plain_or_hashed(keyed: Stack) -> None:
    assert _chat(keyed, ALICE)
    assert _chat(keyed, CAROL)


@pytest.mark.parametrize(
    "key",
    ["sk-wrong", "x" * 5000, ALICE + "x", ALICE[:-1]],
    ids=["wrong", "oversized", "longer", "shorter"],
)
def test_a_wrong_key_is_401_invalid_api_key(keyed: Stack, key: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        _chat(keyed, key)
    err = caught.value
    assert err.status_code == 401
    assert err.code == "invalid_api_key"
    assert err.response.headers["x-request-id"]
    assert key not in err.response.text


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": "Basic YWxpY2U6"},
        {"authorization": b"Bearer sk-\xe9l\xe8ve"},
    ],
    ids=["missing", "blank", "empty-key", "not-bearer", "non-ascii"],
)
def test_missing_empty_or_non_ascii_keys_are_401(keyed: Stack, headers: dict[str, object]) -> None:
    r = httpx.post(
        f"{keyed.url}/v1/chat/completions",
        json={"model": MODEL, "messages": HELLO},
        headers=headers,  # type: ignore[arg-type]
    )
    assert r.status_code == 401
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["code"] == "invalid_api_key"
    assert r.headers["x-request-id"]


def test_every_v1_route_needs_a_key_and_probes_do_not(keyed: Stack) -> None:
    for method, path in [("GET", "/v1/models"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings")]:
        assert httpx.request(method, keyed.url + path, json={}).status_code == 401
    assert httpx.get(keyed.url + "/health").status_code == 200
    assert httpx.get(keyed.url + "/ready").status_code == 200


def test_a_model_outside_the_allow_list_is_404_as_if_absent(keyed: Stack) -> None:
    with pytest.raises(openai.NotFoundError) as hidden:
        _chat(keyed, BOB)
    with pytest.raises(openai.NotFoundError) as absent:
        keyed.client(api_key=ALICE).chat.completions.create(model="no-such-model", messages=HELLO)
    assert hidden.value.code == absent.value.code == "model_not_found"
    assert hidden.value.message.replace(MODEL, "M") == absent.value.message.replace("no-such-model", "M")
    assert [m.id for m in keyed.client(api_key=BOB).models.list()] == []
    assert [m.id for m in keyed.client(api_key=ALICE).models.list()] == [MODEL]


def test_keys_and_prompts_never_reach_the_log_but_key_ids_do(keyed: Stack) -> None:
    _chat(keyed, ALICE)
    with pytest.raises(openai.AuthenticationError):
        _chat(keyed, "sk-guess-that-must-not-be-logged")
    log = keyed.gateway.log()
    assert "key=alice" in log
    for secret in (ALICE, BOB, CAROL, "sk-guess-that-must-not-be-logged", "Hello!"):
        assert secret not in log


def test_a_changed_keys_file_is_picked_up_without_a_restart(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    write_keys(keys, f"{ALICE} id=alice\n")
    env = {"VGATE_API_KEYS_FILE": str(keys), "VGATE_API_KEYS_RELOAD_S": "0.2"}
    with ExitStack() as es:
        stack = start_stack(es, tmp_path, workers=1, gateway_env=env)
        pid = stack.gateway.popen.pid if stack.gateway.popen else None
        assert _chat(stack, ALICE)
        write_keys(keys, "sk-rotated-key-1 id=rotated\n")

        def rotated() -> bool:
            try:
                _chat(stack, "sk-rotated-key-1")
            except openai.AuthenticationError:
                return False
            return True

        wait_until(rotated, within=15, interval=0.2, what="the new key accepted")
        with pytest.raises(openai.AuthenticationError):
            _chat(stack, ALICE)
        # A broken file keeps the keys in force.
        write_keys(keys, "sha256:not-hex\n")
        wait_until(lambda: "API keys not reloaded" in stack.gateway.log(), within=15, what="reload refused")
        assert _chat(stack, "sk-rotated-key-1")
        assert stack.gateway.popen is not None
        assert stack.gateway.popen.pid == pid
        assert stack.gateway.alive()


def test_without_keys_the_gateway_serves_openly_and_says_so_once(stack: Stack) -> None:
    assert _chat(stack, "anything")
    assert stack.gateway.log().count("no API keys configured") == 1
