"""Routing strategies as plain objects: fairness, stickiness, churn, prefix affinity, bounds."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from vgate_gateway.upstream.pool import LoadStats, Upstream
from vgate_gateway.upstream.routing import (
    STRATEGIES,
    ConsistentHash,
    LeastLoad,
    PowerOfTwoChoices,
    PrefixAware,
    RoundRobin,
    RouteRequest,
    build_strategy,
)

SYSTEM_A = "You are a meticulous assistant for a shipping company. " * 8
SYSTEM_B = "You translate legal documents from German into plain English. " * 8


def _ups(n: int) -> list[Upstream]:
    return [Upstream(url=f"http://w{i}:8000", healthy=True) for i in range(n)]


def _req(prompt: str | None = None, session: str | None = None, model: str = "m") -> RouteRequest:
    return RouteRequest(model=model, session_key=session, prompt=prompt)


def test_every_strategy_is_buildable_by_name() -> None:
    assert set(STRATEGIES) == {"round-robin", "least-request", "least-load", "session", "prefix-aware"}
    for name in STRATEGIES:
        assert build_strategy(name).name == name


def test_unknown_strategy_names_the_choices() -> None:
    with pytest.raises(ValueError, match="prefix-aware"):
        build_strategy("fastest")


def test_round_robin_is_fair_per_model() -> None:
    ups = _ups(3)
    rr = RoundRobin()
    picks = Counter(rr.choose(ups, _req()).url for _ in range(300))
    assert set(picks.values()) == {100}
    assert rr.choose(ups, _req(model="other")) is ups[0]


def test_least_request_never_picks_the_busiest_of_three() -> None:
    ups = _ups(3)
    ups[1].inflight = 10
    p2c = PowerOfTwoChoices(random.Random(1))
    picks = Counter(p2c.choose(ups, _req()).url for _ in range(200))
    assert ups[1].url not in picks
    assert len(picks) == 2


def test_least_load_counts_what_the_worker_reports() -> None:
    now = 100.0
    ups = _ups(2)
    ups[0].load = LoadStats(num_waiting=6, scraped_at=now)
    strategy = LeastLoad(random.Random(1), clock=lambda: now)
    assert all(strategy.choose(ups, _req()) is ups[1] for _ in range(20))
    ups[0].load = LoadStats(scraped_at=now)
    ups[1].load = LoadStats(kv_cache_usage=0.95, scraped_at=now)
    ups[1].inflight = 1
    assert all(strategy.choose(ups, _req()) is ups[0] for _ in range(20))


def test_least_load_ignores_stale_figures() -> None:
    ups = _ups(2)
    ups[0].load = LoadStats(num_waiting=50, scraped_at=10.0)
    ups[1].inflight = 1
    strategy = LeastLoad(random.Random(1), stale_after_s=5, clock=lambda: 100.0)
    assert strategy.choose(ups, _req()) is ups[0]


def test_session_is_sticky_and_spreads_sessions() -> None:
    ups = _ups(4)
    strategy = ConsistentHash()
    first = {f"s{i}": strategy.choose(ups, _req(session=f"s{i}")).url for i in range(2000)}
    again = {key: strategy.choose(ups, _req(session=key)).url for key in first}
    assert again == first
    shares = Counter(first.values())
    assert len(shares) == 4
    assert all(300 < n < 700 for n in shares.values()), shares


def test_session_mapping_survives_workers_coming_and_going() -> None:
    ups = _ups(5)
    strategy = ConsistentHash()
    keys = [f"user-{i}" for i in range(2000)]
    before = {k: strategy.choose(ups[:4], _req(session=k)).url for k in keys}
    grown = {k: strategy.choose(ups, _req(session=k)).url for k in keys}
    moved = [k for k in keys if grown[k] != before[k]]
    assert all(grown[k] == ups[4].url for k in moved)  # only to the newcomer
    assert len(moved) < 0.3 * len(keys)  # about 1/5 expected
    shrunk = {k: strategy.choose(ups[1:4], _req(session=k)).url for k in keys}
    assert all(shrunk[k] == before[k] for k in keys if before[k] != ups[0].url)


def test_session_without_a_key_balances_and_rings_are_bounded() -> None:
    ups = _ups(6)
    strategy = ConsistentHash(max_rings=2)
    ups[0].inflight = 100
    assert strategy.choose(ups[:2], _req()) is ups[1]
    for n in range(2, 7):
        strategy.choose(ups[:n], _req(session="k"))
    assert len(strategy._rings) == 2


def test_prefix_aware_keeps_a_shared_system_prompt_on_one_worker() -> None:
    ups = _ups(4)
    strategy = PrefixAware(rng=random.Random(3))
    picks = set()
    for i in range(40):
        up = strategy.choose(ups, _req(f"{SYSTEM_A}\nuser question number {i}?"))
        up.inflight += 1  # requests pile up; the prefix still sticks while within the guard
        picks.add(up.url)
        if i % 2:
            up.inflight -= 1
        for u in ups:
            u.inflight = min(u.inflight, 2)
    assert len(picks) == 1


def test_prefix_aware_spreads_different_prompts_by_load() -> None:
    ups = _ups(2)
    strategy = PrefixAware(rng=random.Random(3))
    a = strategy.choose(ups, _req(SYSTEM_A + "q1"))
    a.inflight += 1
    b = strategy.choose(ups, _req(SYSTEM_B + "q1"))
    assert a is not b
    assert strategy.choose(ups, _req(SYSTEM_A + "q2")) is a
    assert strategy.choose(ups, _req(SYSTEM_B + "q2")) is b


def test_prefix_aware_matches_the_longest_shared_prefix() -> None:
    ups = _ups(3)
    strategy = PrefixAware(rng=random.Random(3))
    strategy._remember(strategy.block_hashes("m", SYSTEM_A[:128]), ups[0].url)
    strategy._remember(strategy.block_hashes("m", SYSTEM_A), ups[2].url)
    assert strategy.choose(ups, _req(SYSTEM_A + "tail")) is ups[2]


def test_hot_prefix_spills_over_when_its_worker_is_much_busier() -> None:
    ups = _ups(3)
    strategy = PrefixAware(max_imbalance=4, imbalance_ratio=2, rng=random.Random(3))
    home = strategy.choose(ups, _req(SYSTEM_A))
    others = [u for u in ups if u is not home]
    home.inflight = 4  # limit: 2 x 0 + 4
    assert strategy.choose(ups, _req(SYSTEM_A + "x")) is home
    others[0].inflight = others[1].inflight = 2
    home.inflight = 8  # limit: 2 x 2 + 4 = 8, still within
    assert strategy.choose(ups, _req(SYSTEM_A + "x")) is home
    home.inflight = 9
    spill = strategy.choose(ups, _req(SYSTEM_A + "y"))
    assert spill is not home
    # Both now hold the prefix: it goes to whichever of them is less busy, not to a third.
    third = next(u for u in others if u is not spill)
    spill.inflight, third.inflight, home.inflight = 3, 0, 2
    assert strategy.choose(ups, _req(SYSTEM_A + "z")) is home
    home.inflight = 5
    assert strategy.choose(ups, _req(SYSTEM_A + "z")) is spill


def test_prefix_is_per_model_and_short_prompts_balance_by_load() -> None:
    strategy = PrefixAware()
    assert strategy.block_hashes("m", SYSTEM_A) != strategy.block_hashes("n", SYSTEM_A)
    assert strategy.block_hashes("m", "short") == []
    ups = _ups(2)
    ups[0].inflight = 3
    assert strategy.choose(ups, _req("short")) is ups[1]


def test_prefix_table_is_bounded() -> None:
    strategy = PrefixAware(table_size=100, max_blocks=8)
    ups = _ups(2)
    for i in range(500):
        strategy.choose(ups, _req(f"{i:08d}" * 100))
    assert len(strategy) == 100
    assert len(strategy.block_hashes("m", "x" * 10_000)) == 8


def test_new_prefixes_are_spread_by_how_much_each_worker_already_holds() -> None:
    ups = _ups(2)
    strategy = PrefixAware(rng=random.Random(5))
    hot = strategy.choose(ups, _req(SYSTEM_A))
    hot.inflight = 3  # busier, but within the guard
    apps = [f"Application {i} instructions, read carefully. " * 6 for i in range(4)]
    homes = [strategy.choose(ups, _req(app)) for app in apps]
    # By load alone all four would go to the idle worker; by footprint they share out.
    assert sorted(Counter(u.url for u in [hot, *homes]).values()) == [2, 3]


def test_footprint_accounting_matches_the_table() -> None:
    strategy = PrefixAware(table_size=50, holders=2, max_imbalance=0, imbalance_ratio=1, rng=random.Random(2))
    ups = _ups(3)
    rng = random.Random(9)
    for i in range(300):
        up = strategy.choose(ups, _req(f"{i % 7:04d}" * 40 + str(i)))
        up.inflight = rng.randint(0, 3)
    held = Counter(url for holders in strategy._table.values() for url in holders)
    assert dict(held) == strategy._footprint
    assert len(strategy) <= 50
