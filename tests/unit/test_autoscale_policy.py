"""The autoscaling policy as data: load histories in, replica counts out."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from vgate_operator.autoscale.policy import Decision, PolicySettings, Sample, ScaleState, decide

TICK = 2.0


def settings(**over: float) -> PolicySettings:
    base: dict[str, float] = {"min_replicas": 0, "max_replicas": 10, "target_per_replica": 8}
    return PolicySettings(**{**base, **over})  # type: ignore[arg-type]


@dataclass
class Run:
    """A simulated fleet: every tick the gateways report ``load(t)``, the policy decides, and
    new replicas become ready ``cold_start`` seconds after they were asked for."""

    cfg: PolicySettings
    cold_start: float = 0.0
    replicas: int = 0
    now: float = 0.0

    def __post_init__(self) -> None:
        self.samples: list[Sample] = []
        self.state = ScaleState.starting(self.now, self.replicas)
        self.started: list[float] = [self.now - self.cold_start] * self.replicas
        self.counts: list[int] = []
        self.decisions: list[Decision] = []

    def ready(self) -> int:
        return sum(1 for t in self.started if self.now - t >= self.cold_start)

    def step(self, load: float) -> Decision:
        self.now += TICK
        self.samples.append(Sample(self.now, load))
        self.samples = [s for s in self.samples if self.now - s.at <= self.cfg.history_s]
        decision = decide(self.samples, self.now, self.replicas, self.ready(), self.cfg, self.state)
        self.state = decision.state
        if decision.replicas > self.replicas:
            self.started += [self.now] * (decision.replicas - self.replicas)
        else:
            self.started = self.started[: decision.replicas]
        self.replicas = decision.replicas
        self.counts.append(self.replicas)
        self.decisions.append(decision)
        return decision

    def run(self, seconds: float, load: Callable[[float], float]) -> None:
        end = self.now + seconds
        while self.now < end:
            self.step(load(self.now))


def changes(counts: list[int]) -> int:
    return sum(1 for a, b in itertools.pairwise(counts) if a != b)


# -- scale from zero


@pytest.mark.parametrize(
    ("load", "expected"),
    [(1, 1), (3, 1), (8, 1), (9, 2), (500, 2)],  # at most 2x a (notional) single replica per step
)
def test_scale_from_zero_reacts_to_the_first_request_at_once(load: float, expected: int) -> None:
    history = [Sample(t, 0) for t in range(0, 60, 2)] + [Sample(60, load)]
    decision = decide(history, 60, 0, 0, settings(), ScaleState())
    assert decision.replicas == expected
    assert "scale from zero" in decision.reason


def test_no_load_at_zero_stays_at_zero() -> None:
    history = [Sample(t, 0) for t in range(0, 60, 2)]
    assert decide(history, 58, 0, 0, settings(), ScaleState()).replicas == 0


def test_min_replicas_holds_even_without_load() -> None:
    history = [Sample(t, 0) for t in range(0, 60, 2)]
    assert decide(history, 58, 0, 0, settings(min_replicas=2), ScaleState()).replicas == 2


def test_a_single_queued_request_wakes_a_fleet_at_zero_within_one_tick() -> None:
    run = Run(settings(), replicas=0)
    run.run(120, lambda t: 0)
    assert run.replicas == 0
    run.step(1)
    assert run.replicas == 1


# -- stable mode, bounds


@pytest.mark.parametrize(
    ("load", "current", "ready", "expected"),
    [
        (16, 2, 2, 2),  # exactly on target
        (17, 2, 2, 2),  # within the 10 % tolerance
        (18, 2, 2, 3),  # beyond it
        (40, 2, 2, 4),  # 5 wanted, but 2x the 2 ready per step
        (40, 4, 1, 4),  # starting replicas are not given up to the step bound
        (1000, 8, 8, 10),  # never above max
    ],
)
def test_stable_mode_follows_the_window_average_within_bounds(
    load: float, current: int, ready: int, expected: int
) -> None:
    history = [Sample(t, load) for t in range(0, 62, 2)]
    state = ScaleState.starting(0, current)
    assert decide(history, 60, current, ready, settings(), state).replicas == expected


def test_never_below_min_never_above_max_over_a_long_random_run() -> None:
    rng = random.Random(7)
    cfg = settings(min_replicas=1, max_replicas=5, scale_down_delay_s=30, scale_to_zero_delay_s=30)
    run = Run(cfg, cold_start=20, replicas=1)
    run.run(3600, lambda t: rng.choice([0, 0, 3, 20, 80, 300]))
    assert min(run.counts) >= 1
    assert max(run.counts) <= 5


def test_a_spec_change_that_lowers_max_applies_at_once() -> None:
    history = [Sample(t, 80) for t in range(0, 62, 2)]
    state = ScaleState.starting(50, 8)
    assert decide(history, 60, 8, 8, settings(max_replicas=4), state).replicas == 4


# -- no flapping, scale-down delay


def test_noisy_load_does_not_flap() -> None:
    rng = random.Random(1)
    run = Run(settings(), cold_start=30, replicas=4)
    run.run(1800, lambda t: max(0.0, rng.gauss(30, 8)))  # around 3.75 replicas' worth
    assert changes(run.counts) <= 1  # at most the one step up to 5 when a long average peaks
    assert set(run.counts) <= {4, 5}


def test_scale_down_waits_for_the_delay_then_follows_the_load() -> None:
    run = Run(settings(), replicas=4)
    run.run(120, lambda t: 32)
    assert run.replicas == 4
    dropped_at = run.now
    run.run(600, lambda t: 8)
    first_down = next(i for i, c in enumerate(run.counts) if c < 4)
    first_down_at = (first_down + 1) * TICK
    assert first_down_at - dropped_at >= 300 - TICK
    assert run.replicas == 1


def test_zero_only_after_the_scale_to_zero_delay() -> None:
    cfg = settings(scale_down_delay_s=60, scale_to_zero_delay_s=600)
    run = Run(cfg, replicas=1)
    run.run(60, lambda t: 4)
    quiet_from = run.now
    run.run(900, lambda t: 0)
    at_zero = next(i for i, c in enumerate(run.counts) if c == 0)
    reached = (at_zero + 1) * TICK
    assert 600 <= reached - quiet_from <= 600 + 2 * TICK
    assert "scale to zero" in run.decisions[at_zero].reason


def test_a_request_during_the_zero_delay_restarts_it() -> None:
    cfg = settings(scale_down_delay_s=60, scale_to_zero_delay_s=100)
    run = Run(cfg, replicas=1)
    run.run(90, lambda t: 0)
    run.step(1)
    run.run(90, lambda t: 0)
    assert run.replicas == 1
    run.run(30, lambda t: 0)
    assert run.replicas == 0


# -- panic mode


def test_panic_scales_up_fast_on_a_burst() -> None:
    cfg = settings(max_replicas=32)
    run = Run(cfg, cold_start=10, replicas=2)
    run.run(120, lambda t: 10)
    assert run.replicas == 2
    burst_at = run.now
    run.run(60, lambda t: 200)  # 25 replicas' worth
    reached = next(i for i, c in enumerate(run.counts) if c >= 25)
    # Doubling each time the new replicas are ready: 2 -> 4 -> 8 -> 16 -> 25, no waiting for
    # the 60 s average, which alone would have asked for far fewer by then.
    assert (reached + 1) * TICK - burst_at <= 4 * (10 + TICK)
    assert any("panic" in d.reason for d in run.decisions)


def test_panic_never_scales_down_until_it_ends() -> None:
    cfg = settings(max_replicas=32, scale_down_delay_s=0)
    run = Run(cfg, replicas=2)
    run.run(60, lambda t: 10)
    run.run(20, lambda t: 200)
    peak = run.replicas
    run.run(40, lambda t: 10)  # the burst is gone, but the stable window still remembers it
    assert min(run.counts[-20:]) == peak
    run.run(200, lambda t: 10)
    assert run.replicas == 2


def test_stable_mode_alone_is_slow_to_react_which_is_why_panic_exists() -> None:
    history = [Sample(t, 10) for t in range(0, 58, 2)] + [Sample(t, 100) for t in (58, 60)]
    calm = decide(history, 60, 2, 2, settings(panic_threshold=math.inf), ScaleState.starting(0, 2))
    panicked = decide(history, 60, 2, 2, settings(), ScaleState.starting(0, 2))
    assert calm.replicas == 2
    assert panicked.replicas == 4  # 2x the 2 ready, the step bound


# -- missing data


def test_no_fresh_sample_holds_and_never_scales_down() -> None:
    history = [Sample(t, 0) for t in range(0, 40, 2)]
    decision = decide(history, 60, 4, 4, settings(scale_down_delay_s=0), ScaleState())
    assert decision.replicas == 4
    assert "holding" in decision.reason
    assert decide([], 60, 4, 4, settings(), ScaleState()).replicas == 4


def test_a_restarted_loop_keeps_the_replicas_for_the_delays() -> None:
    # A restarted operator knows nothing of the past: it must not read that as "no load".
    cfg = settings(scale_down_delay_s=300, scale_to_zero_delay_s=600)
    run = Run(cfg, replicas=3)
    run.run(290, lambda t: 0)
    assert set(run.counts) == {3}


def test_the_reason_names_the_load_and_the_target() -> None:
    history = [Sample(t, 37) for t in range(0, 62, 2)]
    decision = decide(history, 60, 2, 2, settings(), ScaleState.starting(0, 2))
    assert decision.replicas == 4
    assert decision.reason.startswith("37 in flight + queued, target 8 per replica")


def test_the_queue_a_starting_worker_is_meant_for_does_not_panic() -> None:
    # 3 asked for, 2 ready, the third starting: 16 in flight and 10 queued meanwhile.
    history = [Sample(t, 20) for t in range(0, 52, 2)] + [Sample(t, 26) for t in range(52, 62, 2)]
    starting = decide(history, 60, 3, 2, settings(), ScaleState.starting(0, 3))
    assert starting.replicas == 3
    assert "panic" not in starting.reason
    # The same surge with no worker starting is twice what was asked for: panic.
    surge = [Sample(t, 10) for t in range(0, 52, 2)] + [Sample(t, 33) for t in range(52, 62, 2)]
    assert "panic" in decide(surge, 60, 2, 2, settings(), ScaleState.starting(0, 2)).reason


@pytest.mark.parametrize(
    ("recent", "expected"),
    [
        (12, 2),  # the last seconds need two: no scale-down, which panic would undo
        (8, 1),  # the last seconds fit one: both windows agree
        (30, 2),  # never *up* on the short window outside panic: that is panic's rule
    ],
)
def test_a_scale_down_needs_the_panic_window_to_agree(recent: float, expected: int) -> None:
    # Two replicas, a stable window that averages to one replica's worth.
    history = [Sample(t, 4) for t in range(0, 56, 2)] + [Sample(t, recent) for t in range(56, 62, 2)]
    cfg = settings(scale_down_delay_s=0, panic_threshold=math.inf)
    decision = decide(history, 60, 2, 2, cfg, ScaleState.starting(0, 2))
    assert decision.replicas == expected


@pytest.mark.parametrize(
    ("recent", "expected"),
    [
        (17, 2),  # within 10 % of what two are meant for: no third GPU for a few requests
        (18, 3),  # beyond the tolerance: the panic that began on 1 -> 2 asks for a third
    ],
)
def test_panic_follows_the_short_window_within_the_same_tolerance(recent: float, expected: int) -> None:
    # One worker at its target, then a surge panics it to two (twice the one ready); while the
    # panic lasts, its short window is read with stable mode's tolerance.
    cfg = settings(scale_down_delay_s=0)
    history = [Sample(t, 8) for t in range(0, 56, 2)] + [Sample(t, 16.5) for t in (56, 58)]
    first = decide(history, 58, 1, 1, cfg, ScaleState.starting(0, 1))
    assert (first.replicas, "panic" in first.reason) == (2, True)
    later = [*history, *(Sample(t, recent) for t in range(60, 66, 2))]
    assert decide(later, 64, 2, 2, cfg, first.state).replicas == expected


def test_a_moment_of_noise_in_the_short_window_does_not_restart_the_delay() -> None:
    # Two replicas' load until t=30, then one's; the 20 s window wants one from t=44, so the
    # 20 s delay ends at t=64. A moment at t=54 that the short window reads as two holds the
    # count only while the short window remembers it, not for another whole delay.
    cfg = settings(stable_window_s=20, scale_down_delay_s=20, panic_threshold=math.inf)
    run = Run(cfg, replicas=2)
    run.run(80, lambda t: 16 if t <= 30 else 20 if t == 54 else 4)
    counts = dict(zip(range(2, 82, 2), run.counts, strict=True))
    assert {t: counts[t] for t in (50, 60, 62, 64, 66)} == {50: 2, 60: 2, 62: 2, 64: 1, 66: 1}
