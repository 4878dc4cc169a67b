"""The autoscaling policy: a pure function from observed load to a replica count.

Modelled on Knative's KPA (``pkg/autoscaler/scaling``) with AIBrix's step bounds, adapted
to GPU workers whose cold start takes tens of seconds to minutes:

* **Load** is what the gateways report: requests in flight to the model's workers plus
  requests queued for them, summed over every gateway that answered.
* **Stable mode**: desired = ceil(average load over the stable window / target per replica).
* **Tolerance**: a load within ``tolerance`` of what the current fleet is meant for keeps
  the count, in stable mode and in panic alike, so a load at a boundary neither buys nor
  gives back a GPU (panic *begins* on whole replicas, before the tolerance).
* **Panic mode**: when the panic window's average asks for ``panic_threshold`` times the
  replicas asked for (ready or starting; Knative counts only ready ones, but a GPU worker's
  start takes long enough for a queue to build that it is already meant to serve), follow
  the panic window, and never scale down until the load has stayed
  under the threshold for a whole stable window.
* **Step bounds**: at most ``MAX_SCALE_UP_RATE`` times the ready replicas up, at most
  ``1 / MAX_SCALE_DOWN_RATE`` of the current ones down, per decision.
* **Both windows agree on a scale-down**: when a scale-down is due, the count never goes
  below what the panic window's load needs then, so a stable average that lags a load risen
  again since does not give back a GPU the panic rule would ask for again a moment later.
  Only then: a moment of noise in the short window during the delay does not restart it.
* **Scale-down delay**: the count follows the *highest* recommendation of the last
  ``scale_down_delay_s`` seconds, so a dip in a noisy load never gives a GPU back.
* **Scale to zero** only after ``scale_to_zero_delay_s`` without any load, and **scale from
  zero** at once: any load at zero replicas means at least one, no window averaging.
* **Missing data never scales down**: with no fresh sample the count holds.

Everything the policy remembers between decisions is in :class:`ScaleState`, passed in and
returned anew, so the function is pure and tested as tables of histories.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

from vgate_operator.autoscale.spec import MAX_SCALE_DOWN_RATE, MAX_SCALE_UP_RATE, AutoscalingSpec, target_for


@dataclass(frozen=True)
class Sample:
    """One observation: the model's load summed over the gateways that answered."""

    at: float
    load: float


@dataclass(frozen=True)
class PolicySettings:
    """The knobs of :func:`decide`; the spec's ``autoscaling`` block, resolved."""

    min_replicas: int
    max_replicas: int
    target_per_replica: float
    stable_window_s: float = 60.0
    panic_window_s: float = 6.0
    panic_threshold: float = 2.0
    scale_down_delay_s: float = 300.0
    scale_to_zero_delay_s: float = 600.0
    #: The newest sample must be this recent, or the count holds (the gateways went quiet).
    stale_after_s: float = 10.0
    max_scale_up_rate: float = MAX_SCALE_UP_RATE
    max_scale_down_rate: float = MAX_SCALE_DOWN_RATE
    #: Stable mode keeps the count while the average is within this share of the fleet's
    #: target (AIBrix: 10 %): a load hovering at a boundary must not flip a GPU every delay.
    tolerance: float = 0.1

    @classmethod
    def from_spec(cls, auto: AutoscalingSpec, max_num_seqs: int) -> PolicySettings:
        """Settings of a *valid* autoscaling block (see ``check_autoscaling``)."""
        return cls(
            min_replicas=auto.min_replicas,
            max_replicas=auto.max_replicas if auto.max_replicas is not None else auto.min_replicas,
            target_per_replica=target_for(auto, max_num_seqs),
            stable_window_s=auto.stable_window_seconds,
            panic_window_s=auto.panic_window_seconds,
            panic_threshold=auto.panic_threshold,
            scale_down_delay_s=auto.scale_down_delay_seconds,
            scale_to_zero_delay_s=auto.scale_to_zero_delay_seconds,
        )

    @property
    def history_s(self) -> float:
        """How far back :func:`decide` looks: older samples can be dropped."""
        return self.stable_window_s

    def clamp(self, replicas: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, replicas))


@dataclass(frozen=True)
class ScaleState:
    """What the policy carries from one decision to the next."""

    #: (time, recommendation) of the last ``scale_down_delay_s``: the count follows the highest.
    recent: tuple[tuple[float, int], ...] = ()
    #: Last time the panic window was over the threshold (None: not panicking).
    panic_since: float | None = None
    #: The highest count asked for in the current panic: panic never scales down.
    panic_peak: int = 0
    #: Last time any load was seen (None: never).
    last_load_at: float | None = None
    #: When observation began (None: the oldest sample): a stable window not yet full of
    #: samples is filled with the current fleet's target load, so a restart does not act on
    #: a few noisy seconds as if they were a minute.
    observed_since: float | None = None

    @classmethod
    def starting(cls, now: float, replicas: int) -> ScaleState:
        """The state of a loop that starts (or restarts) with ``replicas`` running.

        It remembers ``replicas`` as just recommended and the load as just seen, so a
        restarted operator never scales down, or to zero, sooner than a fresh decision would.
        """
        return cls(recent=((now, replicas),), last_load_at=now, observed_since=now)


@dataclass(frozen=True)
class Decision:
    replicas: int
    #: Why, for logs and Events: "37 in flight + queued, target 8 per replica; ...".
    reason: str
    state: ScaleState


def _mean(samples: Sequence[Sample], since: float) -> float:
    window = [s.load for s in samples if s.at > since]
    return sum(window) / len(window) if window else 0.0


def _stable_mean(
    samples: Sequence[Sample], now: float, neutral: float, settings: PolicySettings, state: ScaleState
) -> float:
    """The stable window's average; the part of it before observation began counts as ``neutral``."""
    began = state.observed_since if state.observed_since is not None else samples[0].at
    covered = min(settings.stable_window_s, max(0.0, now - began))
    known = _mean(samples, now - settings.stable_window_s)
    return (known * covered + neutral * (settings.stable_window_s - covered)) / settings.stable_window_s


def _wanted(load: float, current: int, settings: PolicySettings) -> int:
    """Replicas for ``load``; ``current`` while the load is within the tolerance of its target."""
    fleet = current * settings.target_per_replica
    if current > 0 and abs(load - fleet) <= settings.tolerance * fleet:
        return current
    return math.ceil(load / settings.target_per_replica)


def decide(
    samples: Sequence[Sample],
    now: float,
    current: int,
    ready: int,
    settings: PolicySettings,
    state: ScaleState,
) -> Decision:
    """The replica count for the model now, and why.

    ``samples`` in time order (older than the stable window is ignored), ``current`` the
    replicas asked for (the Deployment's ``spec.replicas``), ``ready`` those ready to serve.
    """
    latest = samples[-1] if samples else None
    if latest is None or now - latest.at > settings.stale_after_s:
        held = settings.clamp(current)
        why = (
            "no load reported by any gateway"
            if latest is None
            else f"no load reported for {now - latest.at:.0f}s"
        )
        return Decision(held, f"{why}; holding (never scaling down on missing data)", state)
    last_load_at = latest.at if latest.load > 0 else state.last_load_at
    state = replace(state, last_load_at=last_load_at)
    target = settings.target_per_replica
    head = f"{latest.load:g} in flight + queued, target {target:g} per replica"
    if current == 0:
        return _from_zero(latest, now, settings, state, head)
    base = max(1, ready)
    stable = _stable_mean(samples, now, current * target, settings, state)
    panic = _mean(samples, now - settings.panic_window_s)
    # Panic compares with the replicas asked for, starting ones included (Knative: the ready
    # ones): the queue that builds while a GPU worker starts is what that worker is for. It
    # begins on whole replicas, as Knative's does, so a rising load panics early enough.
    surge = math.ceil(panic / target) / current >= settings.panic_threshold
    state = _panic_state(state, now, surge, settings)
    # Once begun, it follows the short window within the tolerance: a few requests over a
    # boundary, often the queue a starting worker is about to take, are not a surge to buy for.
    panic_want = _wanted(panic, current, settings)
    want = _wanted(stable, current, settings)
    detail = f"average {stable:.1f} over {settings.stable_window_s:g}s"
    # A scale-down needs both windows when it happens: the long one lags a falling load, and
    # a load that is high again now would panic the fleet straight back up, a cold start later.
    short = _ShortWindow(min(current, panic_want), f"the last {settings.panic_window_s:g}s ({panic:.1f})")
    up_cap = max(current, math.ceil(settings.max_scale_up_rate * base))
    if state.panic_since is not None:
        # Panic follows the short window and never gives back what it asked for.
        want = max(state.panic_peak, min(max(want, panic_want), up_cap))
        state = replace(state, panic_peak=want)
        detail = f"panic: average {panic:.1f} over {settings.panic_window_s:g}s wants {panic_want} for {ready} ready"
    want = min(want, up_cap)
    return _delayed(want, now, current, settings, state, f"{head}; {detail}", short)


@dataclass(frozen=True)
class _ShortWindow:
    """What the panic window needs now, at most the current count: no scale-down below it."""

    needs: int
    said: str


def _delayed(
    want: int,
    now: float,
    current: int,
    settings: PolicySettings,
    state: ScaleState,
    why: str,
    short: _ShortWindow,
) -> Decision:
    """Apply the scale-down delay, the step bound down and the scale-to-zero delay to ``want``.

    The delay follows the stable recommendations; the short window is asked only when a
    scale-down would happen, so a moment of noise within the delay does not restart it.
    """
    recent = (
        *((t, r) for t, r in state.recent if now - t < settings.scale_down_delay_s),
        (now, max(want, 1)),
    )
    state = replace(state, recent=recent)
    idle = now - state.last_load_at if state.last_load_at is not None else math.inf
    if want == 0 and idle >= settings.scale_to_zero_delay_s:
        zero = f"{why}; idle {idle:.0f}s (scale to zero after {settings.scale_to_zero_delay_s:g}s)"
        return Decision(settings.clamp(0), zero, state)
    delayed = max(r for _, r in recent)
    if delayed > want:
        why += f"; wants {want}, the {settings.scale_down_delay_s:g}s scale-down delay holds {delayed}"
    elif want == 0:
        why += f"; idle {idle:.0f}s of {settings.scale_to_zero_delay_s:g}s before zero"
    floor = math.floor(current / settings.max_scale_down_rate)
    if delayed < floor:
        why += f"; at most halved per step ({current} -> {floor})"
    if max(delayed, floor) < short.needs:
        why += f"; but {short.said} need {short.needs}"
        floor = short.needs
    return Decision(settings.clamp(max(delayed, floor)), why, state)


def _from_zero(
    latest: Sample, now: float, settings: PolicySettings, state: ScaleState, head: str
) -> Decision:
    """At zero replicas nothing serves: the first request wakes the model, no averaging."""
    if latest.load <= 0:
        return Decision(settings.clamp(0), f"{head}; idle at zero", state)
    want = math.ceil(latest.load / settings.target_per_replica)
    step = math.ceil(settings.max_scale_up_rate)
    replicas = settings.clamp(max(1, min(want, step)))
    # A fresh start: the new replicas are held as if just recommended (no early scale-down).
    fresh = ScaleState(recent=((now, replicas),), last_load_at=latest.at, observed_since=now)
    return Decision(replicas, f"{head}; scale from zero on the first request", fresh)


def _panic_state(state: ScaleState, now: float, over: bool, settings: PolicySettings) -> ScaleState:
    if over:
        return replace(state, panic_since=now)
    if state.panic_since is not None and now - state.panic_since > settings.stable_window_s:
        # The surge has been in the stable window long enough for stable mode to take over.
        return replace(state, panic_since=None, panic_peak=0)
    return state
