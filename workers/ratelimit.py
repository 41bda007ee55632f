"""One rate limit per endpoint for every notifier process on every host, kept in Redis.

Every endpoint has its own limiter, flag and controller state (its keys: ``Keys.scoped``).

- Tokens come from a GCRA script that runs inside Redis and reads Redis ``TIME``, so worker
  clocks do not matter and N processes together never exceed the rate. Processes take tokens
  several at a time and spread them out locally with aiolimiter.
- After a 429 every notifier holds off until the controller says (``resumed`` in the control
  hash): briefly after a cut, the whole ``Retry-After`` when the receiver refuses everything.
  The back-pressure flag (a key whose TTL is the ``Retry-After``) shows the receiver asked
  for a pause: the DLQ is not re-injected meanwhile, and the refused requests wait for it.
- The rate adapts (workers/adaptive.py decides how): its state lives in one Redis hash that
  every process reads and changes with a compare-and-set on a version number, so a 429 seen
  by ten processes at once moves the rate once. With no configured limit and no 429 yet, no
  limit applies at all.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis
from aiolimiter import AsyncLimiter

from hookdrop.keys import Keys
from workers import adaptive

# KEYS: rl hash, outcomes hash, control hash. ARGV: wanted, max rate (0 = none), burst
# seconds.
_ACQUIRE = """
local epoch = redis.call('HGET', KEYS[3], 'epoch') or '0'
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local resumed = tonumber(redis.call('HGET', KEYS[3], 'resumed') or '0') * 1000
if resumed > now then return {0, math.ceil(resumed - now), '-1', epoch} end
redis.call('HSETNX', KEYS[1], 'first', tostring(now / 1000))
local want = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local rate = tonumber(redis.call('HGET', KEYS[3], 'rate') or '0')
if rate <= 0 and max > 0 then rate = max end
local sec = tostring(math.floor(now / 1000))
if rate <= 0 then
  redis.call('HINCRBY', KEYS[2], sec .. ':granted', want)
  redis.call('HINCRBY', KEYS[1], 'granted', want)
  return {want, 0, '0', epoch}
end
local interval = 1000 / rate
local burst = math.max(interval, tonumber(ARGV[3]) * 1000)
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
if tat < now then tat = now end
-- Relative to now, so no rounding of the ~1.8e12 ms clock reaches the division, and with a
-- small tolerance: burst / interval is a whole number of tokens that must not come out as
-- one less (which would answer "0 tokens, wait 0 ms" for ever).
local ahead = tat - now
local allowed = math.floor((burst - ahead) / interval + 1e-6)
if allowed < want then
  -- wait for a whole batch rather than trickling out one token per round trip; at least
  -- 1 ms, so a caller never asks again at once
  local wait = math.ceil(ahead - burst + interval * want)
  return {0, math.max(1, wait), tostring(rate), epoch}
end
redis.call('HSET', KEYS[1], 'tat', string.format('%.3f', tat + want * interval))
redis.call('HINCRBY', KEYS[1], 'granted', want)
redis.call('HINCRBY', KEYS[2], sec .. ':granted', want)
return {want, 0, tostring(rate), epoch}
"""

# KEYS: backpressure flag. ARGV: pause ms. Sets or extends the flag; never shortens it.
_PAUSE = """
local pause = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[1]) < pause then
  redis.call('SET', KEYS[1], 'throttled', 'PX', pause)
end
return 1
"""

# KEYS: control hash, rl hash. Returns Redis time (ms), the tokens granted so far, when the
# first was, and the control hash.
_READ = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local granted = redis.call('HGET', KEYS[2], 'granted') or '0'
local first = redis.call('HGET', KEYS[2], 'first') or tostring(now / 1000)
return {tostring(now), granted, first, redis.call('HGETALL', KEYS[1])}
"""

# KEYS: control hash. ARGV: expected version, then field/value pairs. Writes only if nobody
# else changed the state since it was read.
_STORE = """
local version = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if version ~= tonumber(ARGV[1]) then return 0 end
for i = 2, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
redis.call('HSET', KEYS[1], 'version', version + 1)
return 1
"""

# KEYS: outcomes hash. ARGV: ok count, throttled count.
_REPORT = """
local t = redis.call('TIME')
local sec = tonumber(t[1])
if tonumber(ARGV[1]) > 0 then redis.call('HINCRBY', KEYS[1], sec .. ':ok', ARGV[1]) end
if tonumber(ARGV[2]) > 0 then redis.call('HINCRBY', KEYS[1], sec .. ':throttled', ARGV[2]) end
if math.random() < 0.05 then
  local fields = redis.call('HKEYS', KEYS[1])
  for _, f in ipairs(fields) do
    local s = tonumber(string.match(f, '^(%d+):'))
    if s and s < sec - 120 then redis.call('HDEL', KEYS[1], f) end
  end
end
return 1
"""


class EndpointPaused(Exception):
    """The endpoint is held for longer than the caller wants to wait: give its work back."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"held for {seconds:.1f} s")
        self.seconds = seconds


class AcquireStopped(Exception):
    """The caller's stop condition came true while it waited for a token."""


# A waiting acquire looks at its caller's stop condition at least this often (seconds).
STOP_CHECK_SECONDS = 0.1


@dataclass(frozen=True, slots=True)
class Grant:
    tokens: int
    wait_seconds: float
    rate: float | None  # None: no limit in force; -1 when paused
    epoch: int = 0  # the rate setting the tokens were granted under


@dataclass(frozen=True, slots=True)
class _Snapshot:
    now: float  # seconds, Redis clock
    granted: float
    first: float  # when the first token was granted
    state: adaptive.RateState
    version: int

    @property
    def sending(self) -> float:
        """Tokens granted per second since the rate was set (or sending resumed)."""
        since = max(self.state.since, self.state.resumed, self.first)
        return (self.granted - self.state.granted_then) / max(self.now - since, 0.01)


class GlobalLimiter:
    """Async token source shared, through Redis, by every notifier."""

    def __init__(
        self,
        conn: redis.Redis,
        keys: Keys,
        *,
        max_rate: float = 0.0,
        burst_seconds: float = 0.05,
        tuning: adaptive.Tuning | None = None,
        adjust_every: float = 0.25,
        defer_after: float | None = None,
    ) -> None:
        self.redis = conn
        # Held longer than this (a 429 pause): acquire raises EndpointPaused instead of waiting.
        self.defer_after = defer_after
        self.keys = keys
        self.max_rate = max_rate
        self.burst_seconds = burst_seconds
        self.tuning = tuning or adaptive.Tuning()
        self.adjust_every = adjust_every
        self._acquire = conn.register_script(_ACQUIRE)
        self._pause = conn.register_script(_PAUSE)
        self._read = conn.register_script(_READ)
        self._store = conn.register_script(_STORE)
        self._report = conn.register_script(_REPORT)
        self._tokens = 0
        self._epoch = 0
        self._answered = (0, 0)  # (epoch, responses other than 429 seen in it)
        self._next_adjust = 0.0
        self._lock = asyncio.Lock()
        self._smoother: AsyncLimiter | None = None
        self._smoother_rate: float | None = None
        self.rate: float | None = max_rate or None

    def take(self, want: int) -> Grant:
        """One round trip to Redis for up to ``want`` tokens."""
        got, wait_ms, rate, epoch = self._acquire(
            keys=[self.keys.ratelimit, self.keys.outcomes, self.keys.ratecontrol],
            args=[want, self.max_rate, self.burst_seconds],
        )
        value = float(rate)
        return Grant(int(got), int(wait_ms) / 1000, None if value == 0 else value, int(epoch))

    def _batch(self) -> int:
        # Half the burst allowance: the next batch is due while the GCRA's clock is still
        # ahead of now, so a late wake-up does not throw away time (and rate).
        if self.rate is None or self.rate < 0:
            return 64
        return max(1, min(64, int(self.rate * self.burst_seconds / 2)))

    async def acquire(self, stop: Callable[[], bool] | None = None) -> int:
        """Wait for one token (and for any back-pressure pause to end); its epoch.

        Raises AcquireStopped as soon as ``stop()`` is true while waiting (a stop, or the
        endpoint being handed back), so no caller stays parked here.
        """
        if self._tokens > 0 and self.rate is None and time.monotonic() < self._next_adjust:
            # No limit in force and tokens in hand: nothing to wait for. (Nobody holds the
            # lock while tokens are left: its holder only waits when there are none.)
            self._tokens -= 1
            return self._epoch
        async with self._lock:
            if time.monotonic() >= self._next_adjust:
                self._next_adjust = time.monotonic() + self.adjust_every
                self.adjust()
            while self._tokens <= 0:
                if stop is not None and stop():
                    raise AcquireStopped
                want = self._batch()
                grant = self.take(want)
                if grant.rate is not None and grant.rate > 0:
                    self.rate = grant.rate
                elif grant.rate is None:
                    self.rate = None
                if grant.tokens > 0:
                    self._tokens += grant.tokens
                    self._epoch = grant.epoch
                    break
                if (
                    self.defer_after is not None
                    and grant.rate is not None
                    and grant.rate < 0
                    and grant.wait_seconds > self.defer_after
                ):
                    raise EndpointPaused(grant.wait_seconds)
                if self._batch() < want:
                    continue  # asked for a batch sized for another rate: ask again, at once
                await self._nap(max(grant.wait_seconds, 0.001), stop)
            if stop is not None and stop():
                raise AcquireStopped
            self._tokens -= 1
            epoch = self._epoch
        smoother = self._local_smoother()
        if smoother is not None:
            await smoother.acquire()
        return epoch

    @staticmethod
    async def _nap(seconds: float, stop: Callable[[], bool] | None) -> None:
        """Sleep ``seconds``, in short steps when there is a stop condition to watch."""
        if stop is None:
            await asyncio.sleep(seconds)
            return
        end = time.monotonic() + seconds
        while not stop():
            left = end - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, STOP_CHECK_SECONDS))

    def _local_smoother(self) -> AsyncLimiter | None:
        """aiolimiter spreads a batch of tokens out instead of sending them in one burst."""
        if self.rate is None or self.rate <= 0:
            return None
        if self._smoother is None or self._smoother_rate != self.rate:
            size = max(1.0, self.rate * self.burst_seconds)
            self._smoother = AsyncLimiter(size, size / self.rate)
            self._smoother_rate = self.rate
        return self._smoother

    def snapshot(self) -> _Snapshot:
        now_ms, granted, first, flat = self._read(keys=[self.keys.ratecontrol, self.keys.ratelimit])
        raw = {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}
        return _Snapshot(
            float(now_ms) / 1000,
            float(granted),
            float(first),
            adaptive.RateState.from_fields(raw),
            int(raw.get("version", 0)),
        )

    def save(self, snap: _Snapshot, state: adaptive.RateState) -> bool:
        """Store ``state`` if nobody changed the rate since ``snap`` was read (compare-and-set
        on the version); False when another process got there first."""
        args: list[str | int] = [snap.version]
        for field, value in state.to_fields().items():
            args += [field, value]
        return bool(self._store(keys=[self.keys.ratecontrol], args=args))

    def adjust(self) -> adaptive.RateState:
        """Let the controller raise the rate after a quiet spell (at most one process wins)."""
        snap = self.snapshot()
        new = adaptive.tick(
            snap.state,
            now=snap.now,
            granted=snap.granted,
            max_rate=self.max_rate,
            tuning=self.tuning,
        )
        if new is None or not self.save(snap, new):
            return snap.state
        return new

    def answered(self, epoch: int) -> None:
        """The receiver answered a request of ``epoch`` with something other than 429."""
        seen, count = self._answered
        self._answered = (epoch, count + 1 if seen == epoch else 1)

    def throttled(self, pause_seconds: float, epoch: int | None = None) -> float | None:
        """A 429 was seen: set/extend the back-pressure flag and, once per epoch, cut the rate
        (the controller also says how long everybody holds).

        ``epoch`` is the one ``acquire`` returned for the refused request; None means the
        current one. Returns the rate now in force (None: none).
        """
        seen, count = self._answered
        answered = epoch is None or (seen == epoch and count > 0)
        self._tokens = 0
        self._pause(keys=[self.keys.backpressure], args=[max(1, int(pause_seconds * 1000))])
        for _ in range(20):
            snap = self.snapshot()
            if epoch is not None and epoch != snap.state.epoch:
                break  # in flight when another 429 already moved the rate
            new = adaptive.refused(
                snap.state,
                now=snap.now,
                pause=pause_seconds,
                sending=snap.sending,
                granted=snap.granted,
                answered=answered,
                tuning=self.tuning,
            )
            if self.max_rate > 0:
                new = dataclasses.replace(new, rate=min(new.rate, self.max_rate))
            if self.save(snap, new):
                return new.rate or None
            epoch = snap.state.epoch  # lost a race: react only if nobody else did
        state = self.snapshot().state
        return state.rate or None

    def state(self) -> adaptive.RateState:
        return self.snapshot().state

    def report(self, ok: int, throttled: int) -> None:
        """Feed accepted / throttled counts into the shared per-second series."""
        if ok or throttled:
            self._report(keys=[self.keys.outcomes], args=[ok, throttled])

    def hold(self, seconds: float) -> None:
        """The receiver refuses everything: raise the back-pressure flag for ``seconds``, so
        jobs for this endpoint hand their alerts back at once and the monitor waits."""
        self._pause(keys=[self.keys.backpressure], args=[max(1, int(seconds * 1000))])

    def paused_for(self) -> float:
        """Seconds left on the back-pressure flag (0 when none)."""
        pttl = int(self.redis.pttl(self.keys.backpressure))
        return max(0, pttl) / 1000
