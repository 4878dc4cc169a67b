"""LoRA adapters in the gateway: keys never mix an adapter with its base, settings, placement."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from vgate_gateway.efficiency.batching import batch_key
from vgate_gateway.efficiency.cache.policy import request_key
from vgate_gateway.protocol import Kind
from vgate_gateway.settings import AdapterSettings, GatewaySettings
from vgate_gateway.upstream.placement import Placement
from vgate_gateway.upstream.pool import Upstream

BASE = "qwen"


def body(model: str) -> dict[str, Any]:
    return {"model": model, "prompt": "Say hello", "max_tokens": 8, "temperature": 0}


def test_cache_and_dedup_key_differ_between_an_adapter_its_base_and_another_adapter() -> None:
    keys = {request_key(Kind.COMPLETIONS, m, body(m)) for m in (BASE, "sql", "poet")}
    assert len(keys) == 3


def test_batch_key_never_groups_an_adapter_with_its_base_or_another_adapter() -> None:
    keys = {batch_key(Kind.COMPLETIONS, body(m)) for m in (BASE, "sql", "poet")}
    assert None not in keys
    assert len(keys) == 3


def settings(**adapters: dict[str, Any]) -> GatewaySettings:
    return GatewaySettings(models=[BASE], adapters=adapters, max_loras=2)


def test_an_adapter_named_like_a_model_is_refused() -> None:
    with pytest.raises(ValidationError, match="has the name of a model"):
        settings(qwen={"base": BASE, "source": "org/x"})


def test_more_pinned_adapters_than_slots_is_refused() -> None:
    pinned = {"base": BASE, "source": "org/x", "min_workers": 1}
    with pytest.raises(ValidationError, match="3 adapters have min_workers > 0 but a worker has 2"):
        settings(a=pinned, b=pinned, c=pinned)


def test_an_adapter_has_its_base_models_settings() -> None:
    s = GatewaySettings(
        models=[BASE],
        adapters={"sql": {"base": BASE, "source": "org/sql"}},
        model_settings={BASE: {"capacity": 7, "max_loras": 3}},
    )
    assert s.for_model("sql").capacity == 7
    assert s.for_model("sql").max_loras == 3
    assert "sql" not in s.declared_models()


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def worker(url: str, adapters: set[str] = frozenset(), inflight: int = 0) -> Upstream:  # type: ignore[assignment]
    return Upstream(url=url, adapters=frozenset(adapters), inflight=inflight, healthy=True)


def placement(clock: Clock, **min_workers: int) -> Placement:
    names = ["a", "b", "c", "d", "e", *min_workers]
    specs = {
        n: AdapterSettings(base=BASE, source=f"org/{n}", min_workers=min_workers.get(n, 0)) for n in names
    }
    return Placement(specs, lambda base: 2, retry_s=30, clock=clock)


def test_a_free_slot_goes_before_an_unload_then_the_least_busy() -> None:
    p = placement(Clock())
    full, busy_free, idle_free = worker("u1", {"b", "c"}), worker("u2", {"c"}, 5), worker("u3", {"d"}, 1)
    t = p.target("a", [full, busy_free, idle_free])
    assert t is not None
    assert t.worker is idle_free
    assert t.evict is None


def test_full_workers_unload_the_least_recently_used_idle_adapter() -> None:
    clock = Clock()
    p = placement(clock)
    w1, w2 = worker("u1", {"a", "b"}), worker("u2", {"c", "d"})
    for name, url in (("a", "u1"), ("b", "u1"), ("c", "u2"), ("d", "u2")):
        clock.now += 1
        p.begin(url, name)
        p.end(url, name)
    p.begin("u1", "a")  # a is running on u1: not a candidate, though it was used first
    t = p.target("e", [w1, w2])
    assert t is not None
    assert t.worker is w1
    assert t.evict == "b"


def test_min_workers_and_requests_in_flight_protect_an_adapter() -> None:
    p = placement(Clock(), pin=1)
    w1 = worker("u1", {"pin", "a"})
    p.begin("u1", "a")
    assert p.target("b", [w1]) is None  # pin is its only holder, a is busy


def test_a_failed_worker_is_not_asked_again_until_the_retry_time() -> None:
    clock = Clock()
    p = placement(clock)
    w1, w2 = worker("u1"), worker("u2", inflight=9)
    p.failed("u1", "a")
    t = p.target("a", [w1, w2])
    assert t is not None
    assert t.worker is w2
    clock.now += 31
    t = p.target("a", [w1, w2])
    assert t is not None
    assert t.worker is w1


def test_an_adapter_spreads_only_when_every_holder_is_crowded() -> None:
    p = placement(Clock())
    holder, other = worker("u1", {"a"}, inflight=6), worker("u2", inflight=1)
    for _ in range(6):
        p.begin("u1", "a")  # all the requests are for a: it wants every worker
    assert p.crowded("a", [holder], [holder, other], imbalance=4)
    assert not p.crowded("a", [holder], [holder, other], imbalance=6)
    assert not p.crowded("a", [holder, other], [holder, other], imbalance=1)  # already everywhere


def test_an_adapter_is_copied_only_while_it_wants_more_than_a_workers_fair_share() -> None:
    p = placement(Clock())
    holder, other = worker("u1", {"a", "b"}, inflight=9), worker("u2", {"c"}, inflight=1)
    for name, requests in (("a", 40), ("b", 30), ("c", 30)):
        for _ in range(requests):
            p.begin("u1" if name != "c" else "u2", name)
    assert p.copies("a", [holder, other]) == 1  # 40 % of the requests: one worker serves it within its half
    assert not p.crowded("a", [holder], [holder, other], imbalance=4)
    for _ in range(100):
        p.begin("u1", "a")
    assert p.copies("a", [holder, other]) == 2  # now 70 %: more than one worker's half
    assert p.crowded("a", [holder], [holder, other], imbalance=4)


def test_a_spare_copy_is_unloaded_before_an_adapter_held_nowhere_else() -> None:
    p = placement(Clock())
    w1, w2 = worker("u1", {"a", "b"}), worker("u2", {"a", "c"})
    for name, url, requests in (("a", "u1", 6), ("b", "u1", 4), ("c", "u2", 4)):
        for _ in range(requests):
            p.begin(url, name)
            p.end(url, name)
    # a is the most wanted, but under a worker's fair share: its second copy is spare: b and c are held only once
    t = p.target("d", [w1, w2])
    assert t is not None
    assert t.evict == "a"


def test_a_new_adapter_goes_to_the_worker_expected_to_serve_least() -> None:
    p = placement(Clock())
    w1, w2 = worker("u1", {"a"}), worker("u2", {"b"}, inflight=3)
    for name, url, requests in (("a", "u1", 20), ("b", "u2", 5)):
        for _ in range(requests):
            p.begin(url, name)
            p.end(url, name)
    t = p.target("c", [w1, w2])
    assert t is not None
    assert t.worker is w2  # busier now, but it holds the rarely used adapter


def test_a_health_check_sent_before_an_unload_does_not_bring_the_adapter_back() -> None:
    from vgate_gateway.upstream.pool import UpstreamPool

    pool = UpstreamPool(eject_after=3, panic_threshold=0.5)
    up = worker("u1", {"a"})
    epoch = up.adapter_epoch  # the check is sent
    pool.adapter_unloaded(up, "a")  # the gateway unloads meanwhile
    pool.passed(up, frozenset({BASE}), frozenset({"a"}), epoch)  # the check's answer predates it
    assert "a" not in up.adapters
    pool.passed(up, frozenset({BASE}), frozenset({"b"}), up.adapter_epoch)  # a fresh check counts
    assert up.adapters == {"b"}


def zipf_demand(p: Placement, names: list[str], requests: int = 1000) -> None:
    weights = [1 / (k**1.1) for k in range(1, len(names) + 1)]
    for name, w in zip(names, weights, strict=True):
        for _ in range(int(requests * w / sum(weights))):
            p.begin("elsewhere", name)
            p.end("elsewhere", name)


def eight(slots: int = 4) -> tuple[Placement, list[str]]:
    names = [f"z{i}" for i in range(8)]
    specs = {n: AdapterSettings(base=BASE, source=f"org/{n}") for n in names}
    return Placement(specs, lambda base: slots, retry_s=30, clock=Clock()), names


def test_a_placement_made_before_popularity_was_known_is_evened_by_a_swap() -> None:
    p, z = eight()
    zipf_demand(p, z)  # z0 has 40 % of the requests, z7 4 %
    heavy, light = worker("h", {z[0], z[3], z[4], z[5]}), worker("l", {z[1], z[2], z[6], z[7]})
    before = p.share(heavy, [heavy, light]) - p.share(light, [heavy, light])
    swap = p.rebalance([heavy, light])
    assert swap is not None
    assert (swap.heavy, swap.light) == (heavy, light)
    assert (swap.move, swap.back) == (z[3], z[7])  # the swap that narrows the gap most
    after = before - 2 * (p.demand(swap.move) - p.demand(z[7]))
    assert abs(after) < before


def test_a_near_even_placement_is_left_alone() -> None:
    p, z = eight()
    zipf_demand(p, z)
    # 54 % / 46 %: as even as four slots each allow without a second copy
    a, b = worker("a", {z[0], z[5], z[6], z[7]}), worker("b", {z[1], z[2], z[3], z[4]})
    assert p.rebalance([a, b]) is None


def test_too_few_requests_to_know_popularity_move_nothing() -> None:
    p, z = eight()
    zipf_demand(p, z, requests=40)
    assert p.rebalance([worker("h", {z[0], z[1], z[2], z[3]}), worker("l", {z[4], z[5], z[6], z[7]})]) is None


def test_a_free_slot_on_the_lighter_worker_takes_a_move_without_one_back() -> None:
    p, z = eight(slots=6)
    zipf_demand(p, z)
    heavy, light = worker("h", {z[1], z[2], z[3]}), worker("l", {z[7]})  # 39 % against 4 %
    swap = p.rebalance([heavy, light])
    assert swap is not None
    assert (swap.move, swap.back) == (z[1], None)
