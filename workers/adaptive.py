"""Where to set the global sending rate: a pure controller, fed 429s and the passing of time.

The receiver's limit is unknown and may change. The controller keeps a bracket around it:
``good``, the highest rate that ran for ``hold`` seconds, actually used, without a 429 (a lower
bound), and ``bad``, the rate of the latest 429 (an upper bound).

- With no rate in force nothing is limited until the first 429. From there the rate climbs,
  doubling every ``climb_hold``, until a 429 gives it an upper bound.
- Once bracketed it probes part of the way from ``good`` towards ``bad`` and settles on
  ``good`` when the bracket is narrower than ``gap``. After ``explore_after`` seconds there it
  explores upward in small, growing steps (the receiver may allow more now), and waits twice as
  long after each exploration that found the limit unchanged.
- A 429 tells how far above the limit the rate was by how soon it came: a receiver lets a rate
  above its limit through for as long as its burst allowance lasts (``burst_guess`` seconds of
  its rate, typically). Refused after a while: the rate was a little above, the cut puts it just
  under, and it settles there. Refused at once: far above (the limit dropped), cut deep, forget
  ``good``; a probe refused at once falls back to ``good``.

Only the first 429 of each rate setting counts (``epoch``): the others were in flight already.
After a cut, sending holds only ``hold_after_cut`` (the requests in flight come back meanwhile)
and resumes at the new rate instead of waiting out the whole ``Retry-After``: the refused
requests themselves wait for it, and the receiver sees a rate it can take. A receiver that
refuses everything is not measuring our rate: then everybody waits for the whole pause.

All times are seconds on one clock (Redis ``TIME``), so worker clocks do not matter.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Self


@dataclass(frozen=True, slots=True)
class Tuning:
    hold: float = 2.0  # seconds a rate must run, used and unrefused, to count as good
    climb_hold: float = 0.5  # the same while climbing with no upper bound known
    climb_step: float = 1.0  # the rate doubles every climb_hold after the first 429 of a run
    probe_share: float = 0.3  # probes go this far from good towards bad
    gap: float = 0.025  # the bracket counts as closed when bad <= good * (1 + gap)
    burst_guess: float = 0.1  # seconds of its rate a receiver typically lets through at once
    settle_cut: float = 0.98  # the gentlest cut (a 429 after a long run)
    blind_cut: float = 0.5  # the first 429 of a burst with no rate in force
    deepest_cut: float = 0.5  # the deepest cut (a 429 at once)
    trust_after: float = 0.5  # a 429 after this long at a rate: the cut lands just under
    close_cut: float = 0.95  # a cut this mild is taken as the limit found (no more probing)
    explore_hold: float = 3.0  # exploring: a rate must run this long to count as good
    explore_after: float = 60.0
    explore_max: float = 600.0
    explore_step: float = 0.02
    used: float = 0.8  # share of the rate actually taken for a run to prove anything
    min_rate: float = 1.0
    hold_after_cut: float = 0.1  # seconds everybody holds after a cut, before the new rate


@dataclass(frozen=True, slots=True)
class RateState:
    rate: float = 0.0  # requests/s in force; 0: none (no 429 yet and no configured limit)
    good: float = 0.0
    bad: float = 0.0  # 0: no upper bound known
    step: float = 0.0  # climb factor while bad is 0
    since: float = 0.0  # when the rate was set
    granted_then: float = 0.0  # the limiter's granted-token total when the rate was set
    resumed: float = 0.0  # until when nobody sends (a 429's hold or pause)
    epoch: int = 0
    explore_wait: float = 0.0
    exploring: bool = False
    explored_from: float = 0.0  # the good rate an exploration started from

    def to_fields(self) -> dict[str, str]:
        return {
            f.name: str(int(v) if isinstance(v, bool) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }

    @classmethod
    def from_fields(cls, raw: dict[str, str]) -> Self:
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name in raw:
                text = raw[f.name]
                values[f.name] = (
                    int(text)
                    if f.type == "int"
                    else bool(int(text))
                    if f.type == "bool"
                    else float(text)
                )
        return cls(**values)  # type: ignore[arg-type]


def tick(
    state: RateState, *, now: float, granted: float, max_rate: float, tuning: Tuning = Tuning()
) -> RateState | None:
    """The rate after a quiet spell: raised, or None for no change.

    ``granted`` is the limiter's running total of tokens handed out, which tells whether the
    rate was actually used (an idle system proves nothing about the receiver).
    """
    if state.rate <= 0:
        if max_rate > 0:
            return replace(state, rate=max_rate, since=now, granted_then=granted)
        return None
    started = max(state.since, state.resumed)
    held = now - started
    climbing = state.bad <= 0
    hold = (
        tuning.explore_hold if state.exploring else tuning.climb_hold if climbing else tuning.hold
    )
    if held < hold:
        return None
    if granted - state.granted_then < tuning.used * state.rate * held:
        return None  # not enough demand to have tested this rate
    good = state.rate  # it ran, used and unrefused: proven
    explore_wait = state.explore_wait or tuning.explore_after
    if climbing:
        rate = state.rate * (1 + state.step)
        step = min(state.step * 1.5, tuning.climb_step) if state.exploring else state.step
        changed = replace(state, rate=rate, good=good, step=step)
    elif state.bad > good * (1 + tuning.gap):
        changed = replace(state, rate=good + (state.bad - good) * tuning.probe_share, good=good)
    elif held >= explore_wait:
        changed = replace(
            state,
            rate=good * (1 + tuning.explore_step),
            good=good,
            bad=0.0,
            step=tuning.explore_step,
            exploring=True,
            explored_from=good,
            explore_wait=explore_wait,
        )
    elif good != state.good:
        return replace(state, good=good)  # proven, nothing to change yet
    else:
        return None
    if max_rate > 0 and changed.rate >= max_rate:
        if state.rate >= max_rate:
            return None if good == state.good else replace(state, good=good)
        changed = replace(changed, rate=max_rate)
    return replace(changed, since=now, granted_then=granted)


def refused(
    state: RateState,
    *,
    now: float,
    pause: float,
    sending: float,
    granted: float,
    answered: bool = True,
    tuning: Tuning = Tuning(),
) -> RateState:
    """The rate after a 429 of the current epoch (the caller checks the epoch).

    ``sending`` is the measured sending rate since the rate was set (or sending resumed), used
    when no rate was in force (the first 429 of a run with no configured limit). ``answered``
    says whether the receiver answered anything but 429 in this epoch: one that refuses
    everything from the first request on is not measuring our rate (maintenance, a quota, a
    forced refusal), and that 429 only pauses, for the whole ``pause``. Otherwise everybody
    holds for ``hold_after_cut`` (at most ``pause``) and goes on at the new rate.
    """
    if not answered or (state.rate <= 0 and sending < 1):
        return replace(state, resumed=now + pause, epoch=state.epoch + 1)
    hold = min(pause, tuning.hold_after_cut)
    rate = state.rate if state.rate > 0 else sending
    good, bad, step = state.good, rate, 0.0
    explore_wait = state.explore_wait or tuning.explore_after
    if state.exploring and rate <= state.explored_from * (1 + 5 * tuning.explore_step):
        explore_wait = min(explore_wait * 2, tuning.explore_max)  # the limit is unchanged
    # How far above the limit? A receiver lets a rate above its limit through for as long as
    # its burst allowance lasts: the sooner the 429 after the rate was set (or the pause
    # ended), the further above.
    held = max(now - max(state.since, state.resumed), 1e-3)
    cut = min(tuning.settle_cut, max(tuning.deepest_cut, 1 - tuning.burst_guess / held))
    if state.rate <= 0:
        # A burst with nothing in force: where it was refused says little; start below it
        # and climb.
        new, bad, step = rate * tuning.blind_cut, 0.0, tuning.climb_step
    elif held >= tuning.trust_after:
        # Refused only after a while: the rate was a little above the limit, and the cut puts
        # it just under. Settle there rather than probe above again.
        new = good = max(good if good < rate else 0.0, rate * cut)
        if cut >= tuning.close_cut:
            bad = min(rate, new * (1 + tuning.gap))
    elif 0 < good < rate:
        new = good  # a probe above the proven rate failed at once
    else:
        # Refused soon: far above the limit (it dropped) or nothing proven yet.
        new, good = rate * cut, 0.0
        explore_wait = tuning.explore_after
    return replace(
        state,
        rate=max(tuning.min_rate, new),
        good=good,
        bad=bad,
        step=step,
        since=now,
        granted_then=granted,
        resumed=now + hold,
        epoch=state.epoch + 1,
        explore_wait=explore_wait,
        exploring=False,
    )
