"""Fixtures for ``make fuzz``: a gateway with API keys in front of a fast dry-run worker.

``VGATE_FUZZ_EXAMPLES`` sets how many cases each fuzz test tries (``make fuzz`` default: 300;
CI runs a short pass).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from hypothesis import HealthCheck, settings

from tests.integration.conftest import MODEL, Stack
from tests.support.procs import make_proc, running, vgate_process

KEY = "sk-fuzz-0123456789"
EXAMPLES = int(os.environ.get("VGATE_FUZZ_EXAMPLES", "300"))

settings.register_profile(
    "fuzz",
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
    ],
)
settings.load_profile("fuzz")


@pytest.fixture(scope="session")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("fuzz")
    keys = tmp / "keys"
    keys.write_text(f"{KEY} id=fuzz\n")
    worker_args = ["worker", "--dry-run", "--served-model-name", MODEL, "--speed", "100"]
    with ExitStack() as es:
        workers = es.enter_context(running([make_proc(worker_args, tmp, name="worker")]))
        env = {
            "VGATE_ENDPOINTS": workers[0].url,
            "VGATE_API_KEYS_FILE": str(keys),
            "VGATE_MAX_BODY_BYTES": "1048576",
            "VGATE_CACHE_MAXSIZE": "0",
        }
        gateway = es.enter_context(
            vgate_process(["gateway"], tmp, env=env, ready_path="/ready", name="gateway")
        )
        yield Stack(gateway=gateway, workers=workers, tmp_path=tmp)
