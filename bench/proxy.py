"""``python -m bench.proxy`` (``make bench-proxy``): V-Gate's data plane against the proxies users compare it with.

One canned-response upstream (Debian's nginx answering with vLLM-shaped JSON, or a
stream of SSE events written at once) stands in for the workers, so what is measured is
the system under test alone: direct (no hop), nginx as a reverse proxy, V-Gate,
vllm-router and LiteLLM. Each system under test is pinned to one core with ``taskset``;
wrk (closed loop) and the upstream run on the other. Requests are non-cacheable chat
completions (no temperature), so V-Gate runs with every efficiency feature on, as
shipped, and pays for its cache only what a miss costs.

Results are ratios measured in the same run: requests/s per SUT core, p50/p99, the
latency each proxy adds over the nginx hop, and SSE events relayed per second per
core. They are printed as a table and saved to ``bench/results/`` as JSON and Markdown,
with a py-spy profile of V-Gate's hot path when asked (``--profile``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vgate import procs
from vgate.procs import free_port
from vgate.waiting import wait_for

SYSTEMS = ("direct", "nginx", "vgate", "vllm-router", "litellm")
#: V-Gate from another commit (``--baseline REF``), measured in the same run beside this tree's.
BASELINE = "vgate-baseline"
MODEL = "bench"
#: Every system gets the same API key header, as real clients send one (LiteLLM requires it).
API_KEY = "sk-" + "5e" * 32
#: (name, response shape, concurrency): what each system is measured on.
CASES = (
    ("json-c1", "json", 1),
    ("json-c16", "json", 16),
    ("json-c64", "json", 64),
    ("sse-c16", "sse", 16),
    ("long-c16", "long", 16),
)
#: SSE events per response, [DONE] included, for each streamed shape.
EVENTS = {"sse": 10, "long": 256}


@dataclass
class BenchConfig:
    systems: tuple[str, ...] = SYSTEMS
    cases: tuple[str, ...] = tuple(c for c, _, _ in CASES)
    duration_s: int = 8
    warmup_s: int = 2
    sut_core: int = 1
    load_core: int = 0
    peers: str = ".venv-bench"
    vgate_processes: int = 1
    profile: bool = False
    #: Also compare the candidate upstream HTTP clients (bench/clients.py).
    clients: bool = False
    out: str = "bench/results"
    #: A git ref whose V-Gate is measured beside this tree's (``vgate-baseline``).
    baseline: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# -- the canned upstream --------------------------------------------------------------------


def _chat_json() -> str:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1700000000,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": "The quick brown fox jumps over the lazy dog.",
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {"prompt_tokens": 24, "completion_tokens": 10, "total_tokens": 34},
        },
        separators=(",", ":"),
    )


def _chat_stream(events: int) -> str:
    """``events`` SSE events: content chunks, a final chunk with finish_reason, [DONE]."""
    out = []
    for i in range(events - 2):
        chunk = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 1700000000,
            "model": MODEL,
            "choices": [
                {"index": 0, "delta": {"content": f" tok{i}"}, "logprobs": None, "finish_reason": None}
            ],
        }
        out.append("data: " + json.dumps(chunk, separators=(",", ":")) + "\n\n")
    last = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
    }
    out.append("data: " + json.dumps(last, separators=(",", ":")) + "\n\n")
    out.append("data: [DONE]\n\n")
    return "".join(out)


def _nginx_literal(text: str) -> str:
    """``text`` as a single-quoted nginx string (nginx reads \\n, \\' and \\\\ escapes there)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


_MODELS = json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "owned_by": "bench"}]})
_METRICS = "vllm:num_requests_running 0\nvllm:num_requests_waiting 0\nvllm:kv_cache_usage_perc 0\n"


def write_answers(root: Path) -> Path:
    """The canned answers as files: nginx's ``return`` strings are limited to 4 KiB."""
    answers = root / "canned"
    answers.mkdir(parents=True, exist_ok=True)
    # nginx started as root serves files as "nobody": the private temporary directory must be readable.
    for path in (root, answers):
        path.chmod(0o755)
    (answers / "json").write_text(_chat_json())
    for shape, events in EVENTS.items():
        (answers / shape).write_text(_chat_stream(events))
    return answers


def _upstream_server(port: int, shape: str, answers: Path) -> str:
    media = "application/json" if shape == "json" else "text/event-stream"
    # The static module answers only GET: a POST is turned into one by an internal redirect.
    return f"""
    server {{
        listen 127.0.0.1:{port} reuseport;
        keepalive_requests 1000000;
        etag off;
        location = /health {{ return 200 ''; }}
        location = /v1/models {{ default_type application/json; return 200 {_nginx_literal(_MODELS)}; }}
        location = /metrics {{ default_type text/plain; return 200 {_nginx_literal(_METRICS)}; }}
        location /canned/ {{ internal; alias {answers}/; default_type {media}; }}
        location / {{ error_page 405 =200 /canned/{shape}; return 405; }}
    }}"""


def _proxy_server(port: int, upstream: int) -> str:
    return f"""
    upstream canned {{ server 127.0.0.1:{upstream}; keepalive 256; }}
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://canned;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}"""


def _nginx_conf(root: Path, servers: str) -> str:
    return f"""
daemon off;
worker_processes 1;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {root}/body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;
    {servers}
}}
"""


# -- processes --------------------------------------------------------------------------------


@contextmanager
def _nginx(root: Path, name: str, servers: str, core: int) -> Iterator[procs.Child]:
    home = root / name
    home.mkdir(parents=True, exist_ok=True)
    conf = home / "nginx.conf"
    conf.write_text(_nginx_conf(home, servers))
    with procs.running(
        procs.pinned(["nginx", "-c", str(conf), "-p", str(home)], str(core)), log=home / "log.txt"
    ) as nginx:
        yield nginx


def _session_cpu_s(sid: int) -> float:
    """CPU seconds (user + system) of every live process in session ``sid``."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if int(fields[3]) == sid:  # field 6 of stat, counted after the command name
            total += int(fields[11]) + int(fields[12])
    return total / tick


@contextmanager
def _sut(cfg: BenchConfig, system: str, upstream: int, root: Path) -> Iterator[tuple[int, int | None]]:
    """Start ``system`` in front of ``upstream``; yields (port to load, its session id)."""
    if system == "direct":
        yield upstream, None
        return
    port = free_port()
    logs = root / f"{system}.log"
    peers = Path(cfg.peers) / "bin"
    url = f"http://127.0.0.1:{upstream}"
    if system == "nginx":
        with _nginx(root, f"proxy-{port}", _proxy_server(port, upstream), cfg.sut_core) as nginx:
            nginx.wait_ready(f"http://127.0.0.1:{port}/health")
            yield port, nginx.pid
        return
    cwd = None
    if system == BASELINE:
        # The other commit's tree, on the path before this one's installed packages.
        tree = root / "baseline"
        argv = procs.vgate_argv("gateway", "--port", str(port), "--endpoint", url)
        env = {**os.environ, "VGATE_LOG_LEVEL": "warning", "PYTHONPATH": _tree_path(tree)}
        env["VGATE_PROCESSES" if (tree / "bench" / "own.py").exists() else "VGATE_WORKERS"] = str(
            cfg.vgate_processes
        )
        ready = f"http://127.0.0.1:{port}/v1/models"
        cwd = tree
    elif system == "vgate":
        argv = procs.vgate_argv("gateway", "--port", str(port), "--endpoint", url)
        env = {**os.environ, "VGATE_LOG_LEVEL": "warning", "VGATE_PROCESSES": str(cfg.vgate_processes)}
        ready = f"http://127.0.0.1:{port}/v1/models"
    elif system == "vllm-router":
        argv = [str(peers / "vllm-router"), "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--worker-urls", url, "--policy", "round_robin", "--log-level", "warning"]
        env = {**os.environ}
        ready = f"http://127.0.0.1:{port}/health"
    elif system == "litellm":
        conf = root / "litellm.yaml"
        conf.write_text(
            json.dumps(
                {
                    "model_list": [
                        {
                            "model_name": MODEL,
                            "litellm_params": {
                                "model": f"openai/{MODEL}",
                                "api_base": f"{url}/v1",
                                "api_key": "x",
                            },
                        }
                    ]
                }
            )
        )
        argv = [str(peers / "litellm"), "--config", str(conf), "--host", "127.0.0.1", "--port", str(port)]
        # The cost map ships with the package: no download from the internet at start-up.
        env = {
            **os.environ,
            "LITELLM_LOG": "ERROR",
            "LITELLM_TELEMETRY": "False",
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",
            "LITELLM_MASTER_KEY": API_KEY,
        }
        ready = f"http://127.0.0.1:{port}/health/liveliness"
    else:
        raise ValueError(f"unknown system {system!r}; choose from {', '.join(SYSTEMS)}")
    with procs.running(
        procs.pinned(argv, str(cfg.sut_core)), ready, env=env, log=logs, timeout=120, cwd=cwd
    ) as sut:
        if system in ("vgate", BASELINE):
            _wait_model(port)
        yield port, sut.pid


def _wait_model(port: int, timeout: float = 30.0) -> None:
    import httpx

    wait_for(
        lambda: MODEL in httpx.get(f"http://127.0.0.1:{port}/v1/models").text,
        "V-Gate to see the canned upstream as healthy",
        within=timeout,
    )


# -- load -----------------------------------------------------------------------------------


def _body(stream: bool) -> str:
    return json.dumps(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are a concise assistant for a logistics company."},
                {"role": "user", "content": "Where is my parcel? It left the harbor on Monday."},
            ],
            "max_tokens": 16,
            "stream": stream,
        }
    )


def _wrk_script(root: Path, stream: bool) -> Path:
    path = root / f"wrk-{'sse' if stream else 'json'}.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(_body(stream))}\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {API_KEY}"\n'
    )
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(out: str) -> dict[str, float]:
    """Requests/s, p50/p99 (ms) and error counts from ``wrk --latency`` output."""
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": rps,
        "p50_ms": _ms(pct["50"]),
        "p99_ms": _ms(pct["99"]),
        "non_2xx": float(non2xx.group(1)) if non2xx else 0.0,
        "socket_errors": float(sum(map(int, errors.groups()))) if errors else 0.0,
    }


def _wrk(cfg: BenchConfig, port: int, script: Path, conns: int, seconds: int) -> str:
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(script)]
    argv.append(f"http://127.0.0.1:{port}/v1/chat/completions")
    done = subprocess.run(
        procs.pinned(argv, str(cfg.load_core)), capture_output=True, text=True, timeout=seconds + 30
    )
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed: {done.stderr or done.stdout}")
    return done.stdout


def measure(
    cfg: BenchConfig, port: int, sid: int | None, shape: str, conns: int, root: Path, warmup_s: int
) -> dict[str, float]:
    script = _wrk_script(root, stream=shape != "json")
    _wrk(cfg, port, script, conns, warmup_s)
    cpu_before = _session_cpu_s(sid) if sid else 0.0
    result = parse_wrk(_wrk(cfg, port, script, conns, cfg.duration_s))
    if sid:
        result["sut_cpu_ms_per_request"] = (
            (_session_cpu_s(sid) - cpu_before) * 1000 / max(1.0, result["rps"] * cfg.duration_s)
        )
    if shape != "json":
        result["events_per_s"] = result["rps"] * EVENTS[shape]
    return result


@contextmanager
def _profiled(cfg: BenchConfig, sid: int | None, root: Path, name: str) -> Iterator[None]:
    """py-spy over the whole V-Gate process tree while the block runs (the measured part)."""
    spy = Path(cfg.peers) / "bin" / "py-spy"
    if not (cfg.profile and sid and spy.exists()):
        yield
        return
    out = Path(cfg.out) / f"profile-{name}.txt"
    argv = [str(spy), "record", "--pid", str(sid), "--subprocesses", "--format", "raw", "--nonblocking"]
    argv += ["--duration", str(cfg.duration_s + cfg.warmup_s), "-o", str(out)]
    log = (root / f"py-spy-{name}.log").open("wb")
    spy_proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield
    finally:
        spy_proc.wait(timeout=60)  # it stops by itself after --duration and writes the profile
        log.close()
    if out.exists():
        out.with_suffix(".md").write_text(summarize_profile(out.read_text()))


def summarize_profile(raw: str, top: int = 25) -> str:
    """py-spy's collapsed stacks as two tables: time by package, and the hottest functions."""
    own: dict[str, int] = {}
    packages: dict[str, int] = {}
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frame = stack.split(";")[-1]
        own[frame] = own.get(frame, 0) + n
        where = re.search(r"\(([^:)]+):\d+\)", frame)
        package = where.group(1).split("/")[0] if where else "(native or idle)"
        packages[package] = packages.get(package, 0) + n
    if not total:
        return "no samples\n"
    lines = [f"{total} samples", "", "| share | package |", "|---|---|"]
    lines += [f"| {n / total:.1%} | {p} |" for p, n in sorted(packages.items(), key=lambda x: -x[1])[:12]]
    lines += ["", "| share | function (own time) |", "|---|---|"]
    lines += [f"| {n / total:.1%} | `{f}` |" for f, n in sorted(own.items(), key=lambda x: -x[1])[:top]]
    return "\n".join(lines) + "\n"


# -- the run --------------------------------------------------------------------------------


def run(cfg: BenchConfig, root: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"config": asdict(cfg), "cpus": os.cpu_count(), "systems": {}}
    shapes = {shape for name, shape, _ in CASES if name in cfg.cases}
    with ExitStack() as stack:
        upstreams = {}
        servers = ""
        answers = write_answers(root)
        for shape in sorted(shapes):
            upstreams[shape] = free_port()
            servers += _upstream_server(upstreams[shape], shape, answers)
        up = stack.enter_context(_nginx(root, "upstream", servers, cfg.load_core))
        for port in upstreams.values():
            up.wait_ready(f"http://127.0.0.1:{port}/health")
        if cfg.clients and "json" in upstreams:
            results["clients"] = compare_clients(cfg, upstreams["json"])
        if cfg.baseline:
            results["baseline"] = {"ref": cfg.baseline, "commit": _checkout(cfg.baseline, root / "baseline")}
        if "vgate" in cfg.systems:
            results["own"] = own_cost(cfg, root)
        if cfg.baseline:
            results["own_baseline"] = own_cost(cfg, root, root / "baseline")
        for system in cfg.systems:
            by_case: dict[str, Any] = {}
            for shape in sorted(shapes):
                with _sut(cfg, system, upstreams[shape], root) as (port, sid):
                    for name, case_shape, conns in CASES:
                        if case_shape != shape or name not in cfg.cases:
                            continue
                        profile = system == "vgate" and name in {
                            "json-c16",
                            "json-c64",
                            "sse-c16",
                            "long-c16",
                        }
                        with _profiled(cfg, sid if profile else None, root, name):
                            # LiteLLM's first requests take seconds (lazy imports and clients).
                            warmup = cfg.warmup_s * (3 if system == "litellm" else 1)
                            by_case[name] = measure(cfg, port, sid, shape, conns, root, warmup)
                        print(f"  {system:<12} {name:<9} {_short(by_case[name])}", flush=True)
            results["systems"][system] = by_case
    return results


def compare_clients(cfg: BenchConfig, upstream: int) -> dict[str, Any]:
    """Each candidate upstream client, pinned to the SUT core, against the canned JSON upstream."""
    script = Path(__file__).with_name("clients.py")
    url = f"http://127.0.0.1:{upstream}/v1/chat/completions"
    results: dict[str, Any] = {}
    for work_us in (0, 200):  # alone, and beside as much Python work as the gateway does per request
        argv = [str(Path(cfg.peers) / "bin" / "python"), str(script), url, "--work-us", str(work_us)]
        argv += ["--requests", "5000"]
        done = subprocess.run(
            procs.pinned(argv, str(cfg.sut_core)), capture_output=True, text=True, timeout=600
        )
        if done.returncode != 0:
            raise RuntimeError(f"client comparison failed: {done.stderr[-2000:]}")
        results[f"work_{work_us}us"] = json.loads(done.stdout.splitlines()[-1])
        print(f"  clients (+{work_us} us work): {done.stdout.strip()}", flush=True)
    return results


def own_cost(cfg: BenchConfig, root: Path, tree: Path | None = None) -> dict[str, Any]:
    """V-Gate's own layers in-process, pinned to the SUT core (bench/own.py), of this tree or ``tree``.

    The median of three interleaved-free runs of 20,000 requests each: the figure moves with
    whatever else the machine does, and the median drops a disturbed run.
    """
    body, answer = root / "own-body.json", root / "own-answer.json"
    body.write_text(_body(False))
    answer.write_text(_chat_json())
    # Before the benchmarks left the package, the in-process run was vgate/bench_own.py.
    module = "bench.own" if tree is None or (tree / "bench" / "own.py").exists() else "vgate.bench_own"
    env = {**os.environ, "PYTHONPATH": _tree_path(tree)} if tree is not None else None
    argv = [sys.executable, "-m", module, str(body), str(answer)]
    runs = []
    for _ in range(3):
        done = subprocess.run(
            procs.pinned(argv, str(cfg.sut_core)),
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
            cwd=tree,
        )
        if done.returncode != 0:
            raise RuntimeError(f"the in-process run failed: {done.stderr[-2000:]}")
        runs.append(json.loads(done.stdout.splitlines()[-1]))
    result: dict[str, Any] = sorted(runs, key=lambda r: r["cpu_us_per_request"])[1]
    result["runs_us"] = [r["cpu_us_per_request"] for r in runs]
    label = "vgate" if tree is None else BASELINE
    print(f"  {label} own layers in-process: {result['cpu_us_per_request']} us/req", flush=True)
    return result


def _checkout(ref: str, tree: Path) -> str:
    """``ref``'s files in ``tree`` (``git archive``: no work tree, no index touched); its commit."""
    commit = subprocess.run(
        ["git", "rev-parse", ref], capture_output=True, text=True, check=True
    ).stdout.strip()
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return commit


def _tree_path(tree: Path) -> str:
    """PYTHONPATH that imports V-Gate's packages from ``tree`` before the installed ones."""
    return os.pathsep.join(str(tree / d) for d in (".", "gateway", "worker", "operator"))


def _short(r: dict[str, float]) -> str:
    text = f"{r['rps']:>9,.0f} rps  p50 {r['p50_ms']:.2f} ms  p99 {r['p99_ms']:.2f} ms"
    if "sut_cpu_ms_per_request" in r:
        text += f"  cpu {r['sut_cpu_ms_per_request'] * 1000:.0f} us/req"
    if "events_per_s" in r:
        text += f"  {r['events_per_s']:>11,.0f} events/s"
    if r["non_2xx"] or r["socket_errors"]:
        text += f"  errors {r['non_2xx'] + r['socket_errors']:.0f}"
    return text


def render(results: dict[str, Any]) -> str:
    """The comparison table, and each system's ratios to vllm-router and to nginx."""
    systems = results["systems"]
    lines = [
        "| system | JSON c=1 rps | p50 c=1 | p50 c=1 added over the nginx hop | JSON c=16 rps/core | p99 c=16 "
        "| JSON c=64 rps/core | p99 c=64 | SSE c=16 events/s/core | long-stream c=16 events/s/core |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    hop_p50 = systems.get("nginx", {}).get("json-c1", {}).get("p50_ms")
    for name, cases in systems.items():

        def get(case: str, key: str, fmt: str = "{:,.0f}", cases: dict[str, Any] = cases) -> str:
            value = cases.get(case, {}).get(key)
            return fmt.format(value) if value is not None else "-"

        added = "-"
        if hop_p50 is not None and "json-c1" in cases and name not in {"direct", "nginx"}:
            added = f"{cases['json-c1']['p50_ms'] - hop_p50:+.2f} ms"
        lines.append(
            f"| {name} | {get('json-c1', 'rps')} | {get('json-c1', 'p50_ms', '{:.2f} ms')} | {added} "
            f"| {get('json-c16', 'rps')} | {get('json-c16', 'p99_ms', '{:.2f} ms')} "
            f"| {get('json-c64', 'rps')} | {get('json-c64', 'p99_ms', '{:.2f} ms')} "
            f"| {get('sse-c16', 'events_per_s')} | {get('long-c16', 'events_per_s')} |"
        )
    lines += ["", _ratios(systems, "vllm-router"), "", _ratios(systems, "nginx")]
    lines += ["", _cpu_table(systems)]
    own = results.get("own")
    end_to_end = systems.get("vgate", {}).get("json-c16", {}).get("sut_cpu_ms_per_request")
    if own and end_to_end:
        total = end_to_end * 1000
        lines += [
            "",
            f"V-Gate's own layers, driven in-process with an in-memory worker: {own['cpu_us_per_request']:.0f} us "
            f"of CPU per request, of {total:.0f} us end to end at JSON c=16; the other "
            f"{total - own['cpu_us_per_request']:.0f} us are uvicorn, aiohttp and the event loop.",
        ]
    if "baseline" in results:
        lines += ["", _baseline_table(results)]
    if "clients" in results:
        lines += [
            "",
            "| upstream client | rps alone | CPU us/request alone | rps beside 200 us of work |",
            "|---|---|---|---|",
        ]
        alone, busy = results["clients"]["work_0us"], results["clients"]["work_200us"]
        for name, r in alone.items():
            b = busy.get(name, {})
            lines.append(
                f"| {name} {r.get('version', '')} | {r.get('rps', '-')} | {r.get('cpu_us_per_request', '-')} | {b.get('rps', '-')} |"
            )
    return "\n".join(lines)


def write_plot(results: dict[str, Any], path: Path) -> None:
    """CPU per request and requests per second of each system, per case, side by side (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems = results["systems"]
    cases = [name for name, _, _ in CASES if any(name in by_case for by_case in systems.values())]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    width = 0.8 / max(1, len(systems))
    for i, (system, by_case) in enumerate(systems.items()):
        xs = [c + (i - (len(systems) - 1) / 2) * width for c in range(len(cases))]
        cpu = [by_case.get(case, {}).get("sut_cpu_ms_per_request", float("nan")) * 1000 for case in cases]
        rps = [by_case.get(case, {}).get("rps", float("nan")) for case in cases]
        axes[0].bar(xs, cpu, width, label=system)
        axes[1].bar(xs, rps, width, label=system)
    for ax, title in (
        (axes[0], "CPU per request, us (lower is better)"),
        (axes[1], "requests/s on one core"),
    ):
        ax.set_xticks(range(len(cases)), cases)
        ax.set_yscale("log")
        ax.set_title(title)
        ax.grid(axis="y", which="both", color="0.9")
    axes[1].legend(fontsize=8)
    fig.suptitle("V-Gate's data plane against its peers, one run, system under test pinned to one core")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _baseline_table(results: dict[str, Any]) -> str:
    """This tree against the baseline commit, same run: own layers and end to end."""
    systems, ref = results["systems"], results["baseline"]
    now, before = systems.get("vgate", {}), systems.get(BASELINE, {})
    own, own_before = results.get("own", {}), results.get("own_baseline", {})
    lines = [
        f"This tree against {ref['ref']} ({ref['commit'][:10]}), same run:",
        "",
        "| figure | baseline | this tree | ratio |",
        "|---|---|---|---|",
    ]
    rows = [
        (
            "own layers, CPU us/request (in-process)",
            own_before.get("cpu_us_per_request"),
            own.get("cpu_us_per_request"),
        )
    ]
    for case in ("json-c1", "json-c16", "json-c64"):
        rows.append((f"{case} rps", before.get(case, {}).get("rps"), now.get(case, {}).get("rps")))
        cpu = [r.get(case, {}).get("sut_cpu_ms_per_request") for r in (before, now)]
        rows.append((f"{case} CPU us/request", *(c * 1000 if c is not None else None for c in cpu)))
    for case in ("sse-c16", "long-c16"):
        rows.append(
            (
                f"{case} events/s",
                before.get(case, {}).get("events_per_s"),
                now.get(case, {}).get("events_per_s"),
            )
        )
    for name, a, b in rows:
        ratio = f"{b / a:.2f}x" if a and b else "-"
        lines.append(f"| {name} | {_num(a)} | {_num(b)} | {ratio} |")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def _cpu_table(systems: dict[str, Any]) -> str:
    """CPU of each system under test per request, the figure that moves least between runs."""
    cases = [c for c, _, _ in CASES]
    lines = ["| CPU us/request | " + " | ".join(cases) + " |", "|---" * (len(cases) + 1) + "|"]
    for name, results in systems.items():
        cells = []
        for case in cases:
            cpu = results.get(case, {}).get("sut_cpu_ms_per_request")
            cells.append(f"{cpu * 1000:.0f}" if cpu is not None else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _ratios(systems: dict[str, Any], peer: str) -> str:
    if "vgate" not in systems or peer not in systems:
        return ""
    ours, theirs = systems["vgate"], systems[peer]
    parts = []
    for case, key in (
        ("json-c1", "rps"),
        ("json-c16", "rps"),
        ("json-c64", "rps"),
        ("sse-c16", "events_per_s"),
        ("long-c16", "events_per_s"),
    ):
        if case in ours and case in theirs and theirs[case].get(key):
            parts.append(f"{case} {ours[case][key] / theirs[case][key]:.2f}x")
    return f"V-Gate / {peer}, same run: " + ", ".join(parts)


def _parser() -> argparse.ArgumentParser:
    d = BenchConfig()
    p = argparse.ArgumentParser(prog="python -m bench.proxy", description=__doc__.splitlines()[0])
    p.add_argument("--systems", default=",".join(d.systems), help="systems under test, comma-separated")
    p.add_argument("--cases", default=",".join(d.cases), help="cases, comma-separated")
    p.add_argument("--duration", type=int, default=d.duration_s, help="seconds measured per case")
    p.add_argument("--warmup", type=int, default=d.warmup_s, help="seconds of warm-up per case")
    p.add_argument("--sut-core", type=int, default=d.sut_core, help="the core the system under test gets")
    p.add_argument("--load-core", type=int, default=d.load_core, help="the core for wrk and the upstream")
    p.add_argument("--peers", default=d.peers, help="virtualenv with vllm-router, LiteLLM and py-spy")
    p.add_argument("--vgate-processes", type=int, default=d.vgate_processes, help="V-Gate serving processes")
    p.add_argument("--profile", action="store_true", help="record py-spy profiles of V-Gate")
    p.add_argument("--clients", action="store_true", help="also compare candidate upstream HTTP clients")
    p.add_argument("--out", default=d.out, help="directory for the results")
    p.add_argument("--baseline", help="a git ref whose V-Gate is measured beside this tree's, e.g. main~3")
    return p


def main(argv: Sequence[str]) -> int:
    args = _parser().parse_args(list(argv))
    cfg = BenchConfig(
        systems=tuple(s for s in args.systems.split(",") if s),
        cases=tuple(c for c in args.cases.split(",") if c),
        duration_s=args.duration,
        warmup_s=args.warmup,
        sut_core=args.sut_core,
        load_core=args.load_core,
        peers=args.peers,
        vgate_processes=args.vgate_processes,
        profile=args.profile,
        clients=args.clients,
        out=args.out,
        baseline=args.baseline,
    )
    if cfg.baseline and BASELINE not in cfg.systems:
        at = cfg.systems.index("vgate") + 1 if "vgate" in cfg.systems else len(cfg.systems)
        cfg.systems = (*cfg.systems[:at], BASELINE, *cfg.systems[at:])
    for tool in ("nginx", "wrk", "taskset"):
        if shutil.which(tool) is None:
            print(f"bench-proxy: {tool} is not installed (make bench-proxy installs it)", file=sys.stderr)
            return 2
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="vgate-bench-proxy-") as tmp:
        results = run(cfg, Path(tmp))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    table = render(results)
    print("\n" + table)
    Path(cfg.out, f"proxy-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")
    Path(cfg.out, f"proxy-{stamp}.md").write_text(table + "\n")
    write_plot(results, Path(cfg.out, f"proxy-{stamp}.png"))
    print(f"\nresults: {cfg.out}/proxy-{stamp}.json, .md, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
