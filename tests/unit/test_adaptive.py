"""The adaptive rate controller, on its own and against simulated receivers in virtual time."""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field

import pytest

from workers.adaptive import RateState, Tuning, refused, tick

T = Tuning()


def test_no_rate_until_the_first_429_unless_one_is_configured() -> None:
    assert tick(RateState(), now=10, granted=0, max_rate=0) is None
    state = tick(RateState(), now=10, granted=0, max_rate=500)
    assert state is not None and state.rate == 500


def test_the_first_429_of_a_burst_starts_below_what_was_sent_and_climbs() -> None:
    state = refused(RateState(), now=5, pause=1, sending=800, granted=800)
    assert state.rate == 800 * T.blind_cut
    # Everybody holds only briefly (the refused request itself waits its Retry-After).
    assert (state.bad, state.epoch, state.resumed) == (0, 1, 5 + T.hold_after_cut)
    # held: nothing moves
    assert tick(state, now=5.05, granted=800, max_rate=0) is None
    # used for climb_hold after the hold: doubles
    resumed = 5 + T.hold_after_cut
    up = tick(state, now=resumed + T.climb_hold, granted=800 + 400 * T.climb_hold, max_rate=0)
    assert up is not None and up.rate == 800 and up.good == 400


def test_an_idle_system_proves_nothing() -> None:
    state = RateState(rate=400, bad=0, step=1.0, since=0, granted_then=0)
    assert tick(state, now=10, granted=100, max_rate=0) is None  # 100 sent in 10 s at 400/s


def test_a_429_long_after_the_rate_was_set_settles_just_under_it() -> None:
    state = RateState(rate=1050, good=1050, bad=1300, since=0, epoch=3)
    after = refused(state, now=4, pause=1, sending=1050, granted=4000)
    assert after.rate == pytest.approx(1050 * (1 - T.burst_guess / 4))
    assert after.good == after.rate and after.bad <= after.rate * (1 + T.gap)
    assert after.epoch == 4
    # settled: no probing until explore_after
    assert tick(after, now=5 + T.explore_after / 2, granted=1e9, max_rate=0) in (None, after)


def test_a_429_at_once_after_a_proven_rate_means_the_limit_dropped() -> None:
    state = RateState(rate=1500, good=1500, bad=1540, since=0, resumed=10)
    after = refused(state, now=10.05, pause=1, sending=1500, granted=0)
    assert after.rate == 1500 * T.deepest_cut and after.good == 0 and after.bad == 1500


def test_a_probe_refused_at_once_falls_back_to_the_proven_rate() -> None:
    state = RateState(rate=900, good=800, bad=1000, since=10)
    after = refused(state, now=10.1, pause=1, sending=900, granted=0)
    assert (after.rate, after.good, after.bad) == (800, 800, 900)


def test_a_bracket_is_probed_part_way_and_closes() -> None:
    state = RateState(rate=800, good=0, bad=1000, since=0)
    probe = tick(state, now=T.hold, granted=800 * T.hold, max_rate=0)
    assert probe is not None and probe.good == 800
    assert probe.rate == pytest.approx(800 + 200 * T.probe_share)
    closed = RateState(rate=990, good=0, bad=1000, since=0)
    held = tick(closed, now=T.hold, granted=990 * T.hold, max_rate=0)
    assert held is not None and held.rate == 990 and held.good == 990


def test_exploring_waits_longer_each_time_the_limit_is_unchanged() -> None:
    state = RateState(rate=1000, good=1000, bad=1010, since=0)
    explore = tick(state, now=T.explore_after, granted=1e9, max_rate=0)
    assert explore is not None and explore.exploring and explore.rate == 1000 * 1.02
    after = refused(explore, now=T.explore_after + 3, pause=1, sending=1020, granted=1e9)
    assert after.explore_wait == 2 * T.explore_after and not after.exploring


def test_never_above_the_configured_limit() -> None:
    state = RateState(rate=500, bad=0, step=1.0, since=0)
    up = tick(state, now=1, granted=1e9, max_rate=600)
    assert up is not None and up.rate == 600
    later = tick(up, now=10, granted=2e9, max_rate=600)
    assert later is None or later.rate == 600


def test_state_round_trips_through_redis_fields() -> None:
    state = RateState(rate=12.5, good=10, bad=14, step=0.5, epoch=7, exploring=True)
    raw = state.to_fields()
    assert all(isinstance(v, str) for v in raw.values())
    assert RateState.from_fields(raw) == state
    assert RateState.from_fields({}) == RateState()


# -- simulation ---------------------------------------------------------------------------------


@dataclass
class Receiver:
    """A token bucket of ``burst`` seconds of its rate, or a counter per whole second.

    A refusal says when to come back (``Retry-After``) as the receiver's modes do: whole
    seconds rounded up, an HTTP date (whole seconds, so anything from 0 to 1 s), or not at all.
    """

    limit: float
    burst: float = 0.1
    kind: str = "bucket"
    retry_after: str = "seconds"
    tokens: float = 0.0
    second: int = -1

    def __post_init__(self) -> None:
        self.tokens = self.limit * self.burst

    def set_limit(self, limit: float) -> None:
        self.limit = limit
        self.tokens = min(self.tokens, limit * self.burst)

    def advance(self, t: float, dt: float) -> None:
        if self.kind == "bucket":
            self.tokens = min(self.limit * self.burst, self.tokens + self.limit * dt)
        elif int(t) != self.second:
            self.second, self.tokens = int(t), self.limit

    def accept(self, t: float) -> float | None:
        """None when accepted, else the pause the refusal asks for (``Retry-After``)."""
        if self.tokens >= 1:
            self.tokens -= 1
            return None
        wait = (1 - self.tokens) / self.limit if self.kind == "bucket" else 1 - (t % 1)
        if self.retry_after == "seconds":
            return float(max(1, math.ceil(wait)))
        if self.retry_after == "date":
            return max(0.05, math.floor(t + wait + 1) - t)
        return 1.0  # no Retry-After: hookdrop's default pause


@dataclass
class Run:
    accepted: list[int] = field(default_factory=list)
    sent: list[int] = field(default_factory=list)
    refused: int = 0
    first: float = 0.0  # first request
    last: float = 0.0  # last accepted request

    def use(self, first: int, last: int, limit: float) -> float:
        return sum(self.accepted[first:last]) / (limit * (last - first))

    def whole_run(self, rows: int, limit: float) -> float:
        """Share of the limit used from the first request to the last."""
        return rows / (limit * (self.last - self.first))

    @property
    def refused_share(self) -> float:
        return self.refused / max(1, sum(self.sent))


def simulate(
    receiver: Receiver,
    seconds: int,
    *,
    changes: dict[int, float] | None = None,
    rows: int | None = None,
    max_rate: float = 0.0,
    slots: int = 128,
    latency: float = 0.005,
    dt: float = 0.0005,
) -> Run:
    """Notifiers with ``slots`` requests in flight against a receiver, in virtual time.

    As the notifiers do: tokens come at the rate in force (none before the first 429 unless
    ``max_rate``), nothing is sent while the state says to hold, the first 429 of an epoch
    moves the rate (with the sending rate measured since the rate was set), a refused
    request waits for its own ``Retry-After`` before it is sent again, and the controller
    ticks every 0.25 s. ``rows``: a job of that many alerts (else the sending never ends).
    """
    state, run = RateState(), Run([0] * (seconds + 1), [0] * (seconds + 1))
    credit, granted, in_flight, next_tick = 0.0, 0, 0, 0.0
    started, answered = {0: (0.0, 0)}, set()
    waiting: list[float] = []  # when each refused alert may be sent again
    answers: list[tuple[float, float | None, int]] = []  # (back, refusal pause, epoch)
    left = rows if rows is not None else 1 << 62
    delivered = 0
    for step in range(int(seconds / dt)):
        t = step * dt
        if changes and step and int(t) != int(t - dt) and int(t) in changes:
            receiver.set_limit(changes[int(t)])
        receiver.advance(t, dt)
        while answers and answers[0][0] <= t:
            _back, pause, epoch = answers.pop(0)
            in_flight -= 1
            if pause is None:
                answered.add(epoch)
                delivered += 1
                run.last = t
                continue
            heapq.heappush(waiting, t + pause)
            if epoch == state.epoch:
                since, granted_then = started[epoch]
                sending = (granted - granted_then) / max(t - since, dt)
                state = refused(
                    state,
                    now=t,
                    pause=pause,
                    sending=sending,
                    granted=granted,
                    answered=epoch in answered,
                )
                started[state.epoch] = (t, granted)
                credit = 0.0
        if rows is not None and delivered >= rows:
            break
        if t >= next_tick:
            new = tick(state, now=t, granted=granted, max_rate=max_rate)
            if new is not None and new.epoch == state.epoch:
                state = new
            next_tick = t + 0.25
        if t < state.resumed:
            continue
        rate = state.rate or max_rate or 1e9
        credit = min(credit + rate * dt, max(1.0, rate * 0.05))
        while credit >= 1 and in_flight < slots:
            if waiting and waiting[0] <= t:
                heapq.heappop(waiting)
            elif left > 0:
                left -= 1
            else:
                break
            credit -= 1
            granted += 1
            in_flight += 1
            if not run.first:
                run.first = t or dt
            pause = receiver.accept(t)
            run.sent[int(t)] += 1
            run.accepted[int(t)] += pause is None
            run.refused += pause is not None
            answers.append((t + latency, pause, state.epoch))
    return run


@pytest.mark.parametrize(
    ("receiver", "settled"),
    [
        pytest.param(Receiver(1000, burst=0.1), 20, id="bucket-0.1s"),
        pytest.param(Receiver(1000, burst=0.02), 20, id="bucket-0.02s"),
        pytest.param(Receiver(1000, kind="second"), 20, id="per-second-window"),
        # A large burst allowance hides the limit for longer: each 429 comes seconds after the
        # rate crossed it, and the rate creeps down to it a few percent per 429.
        pytest.param(Receiver(1000, burst=0.5), 40, id="bucket-0.5s"),
    ],
)
def test_it_settles_on_the_receivers_limit(receiver: Receiver, settled: int) -> None:
    """Settled: at least 95% of the allowed rate used and at most 1% answered 429."""
    run = simulate(receiver, 80)
    assert run.use(settled, 80, 1000) >= 0.95
    refused_late = sum(
        s - a for s, a in zip(run.sent[settled:], run.accepted[settled:], strict=True)
    )
    assert refused_late <= 0.01 * sum(run.sent[settled:])


@pytest.mark.parametrize(
    "receiver",
    [
        pytest.param(Receiver(1500, burst=0.1), id="bucket-0.1s"),
        pytest.param(Receiver(1500, burst=0.02), id="bucket-0.02s"),
        pytest.param(Receiver(1500, kind="second"), id="per-second-window"),
    ],
)
@pytest.mark.parametrize("lowered", [750, 200])
def test_a_lowered_limit_is_respected_within_5_seconds_and_then_used(
    receiver: Receiver, lowered: float
) -> None:
    """Target: back under a lowered limit within 5 s (and staying there 3 s)."""
    run = simulate(receiver, 60, changes={15: lowered})
    under = next(t for t in range(15, 60) if max(run.sent[t : t + 3]) <= lowered * 1.05)
    assert under - 15 <= 5, run.sent
    assert run.use(35, 60, lowered) >= 0.9
    assert sum(run.sent[35:]) - sum(run.accepted[35:]) <= 0.01 * sum(run.sent[35:])


def test_a_raised_limit_is_found_by_exploring() -> None:
    run = simulate(Receiver(1000), 240, changes={20: 2000})
    assert run.use(200, 240, 2000) >= 0.9
    assert run.refused <= 0.01 * sum(run.sent)


def test_a_429_before_anything_was_sent_pauses_without_guessing_a_rate() -> None:
    state = refused(RateState(), now=5, pause=2, sending=0, granted=0)
    assert (state.rate, state.resumed, state.epoch) == (0, 7, 1)


def test_a_receiver_refusing_everything_from_the_first_request_only_pauses_us() -> None:
    """A maintenance window or a forced refusal says nothing about our rate."""
    state = RateState(rate=1000, good=1000, bad=1020, since=0, resumed=10, epoch=2)
    after = refused(state, now=10.01, pause=1, sending=1000, granted=0, answered=False)
    assert (after.rate, after.good, after.bad) == (1000, 1000, 1020)
    assert (after.epoch, after.resumed) == (3, 11.01)


@pytest.mark.parametrize("burst", [0.1, 2.0], ids=["burst-0.1s", "burst-2s"])
@pytest.mark.parametrize("retry_after", ["seconds", "date", "none"])
@pytest.mark.parametrize("max_rate", [0.0, 2000.0], ids=["limit-unknown", "limit-too-high"])
def test_a_30_second_job_uses_the_receivers_limit_from_its_first_request_to_its_last(
    burst: float, retry_after: str, max_rate: float
) -> None:
    """Target: >= 90% of the limit over the whole run, <= 2% of requests answered 429,
    >= 97% at steady state; the first 429 of an unknown limit is fine."""
    limit, rows = 400.0, 12_000
    run = simulate(
        Receiver(limit, burst=burst, retry_after=retry_after), 60, rows=rows, max_rate=max_rate
    )
    assert run.last, "the job did not finish"
    assert run.whole_run(rows, limit) >= 0.9
    assert run.refused_share <= 0.02
    end = int(run.last)
    assert run.use(end - 10, end, limit) >= 0.97
