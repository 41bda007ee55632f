"""One rate limit for every notifier process on every host, kept in Redis.

- Tokens come from a GCRA script that runs inside Redis and reads Redis ``TIME``, so worker
  clocks do not matter and N processes together never exceed the rate. Processes take tokens
  several at a time and spread them out locally with aiolimiter.
- The back-pressure flag (a key whose TTL is the pause) makes the script refuse every token
  while it exists: on a 429 every notifier holds off until it expires.
- The rate adapts: a 429 cuts it to just under the rate the receiver actually accepted in the
  last seconds; after a quiet spell it probes back up, quickly below the last known ceiling and
  slowly past it. With no configured limit and no 429 yet, no limit applies at all.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import redis
from aiolimiter import AsyncLimiter

from hookdrop.keys import Keys

# KEYS: rl hash, backpressure flag, outcomes hash. ARGV: wanted, max rate (0 = none),
# burst seconds, probe-after ms, fast step, slow step.
_ACQUIRE = """
local pause = redis.call('PTTL', KEYS[2])
if pause > 0 then return {0, pause, '-1'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local want = tonumber(ARGV[1])
local max = tonumber(ARGV[2])
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate'))
if rate then
  local last_cut = tonumber(redis.call('HGET', KEYS[1], 'last_cut') or '0')
  local last_raise = tonumber(redis.call('HGET', KEYS[1], 'last_raise') or '0')
  if now - last_cut > tonumber(ARGV[4]) and now - last_raise > 1000 then
    local ceiling = tonumber(redis.call('HGET', KEYS[1], 'ceiling') or '0')
    local step = tonumber(ARGV[5])
    if ceiling > 0 and rate >= ceiling * 0.97 then step = tonumber(ARGV[6]) end
    rate = rate * (1 + step)
    if max > 0 and rate >= max then
      rate = max
    end
    redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'last_raise', tostring(now))
    if ceiling > 0 and now - last_cut > 60000 then redis.call('HDEL', KEYS[1], 'ceiling') end
  end
elseif max > 0 then
  rate = max
end
local sec = tostring(math.floor(now / 1000))
if not rate then
  redis.call('HINCRBY', KEYS[3], sec .. ':granted', want)
  return {want, 0, '0'}
end
local interval = 1000 / rate
local burst = math.max(interval, tonumber(ARGV[3]) * 1000)
local tat = tonumber(redis.call('HGET', KEYS[1], 'tat') or '0')
if tat < now then tat = now end
local allowed = math.floor((now + burst - tat) / interval)
if allowed <= 0 then
  return {0, math.ceil(tat - burst - now + interval), tostring(rate)}
end
local got = math.min(want, allowed)
redis.call('HSET', KEYS[1], 'tat', tostring(tat + got * interval))
redis.call('HINCRBY', KEYS[3], sec .. ':granted', got)
return {got, 0, tostring(rate)}
"""

# KEYS: rl hash, backpressure flag, outcomes hash. ARGV: pause ms, cut factor, min rate,
# configured max (0 = none).
_THROTTLED = """
local pause = tonumber(ARGV[1])
if redis.call('PTTL', KEYS[2]) < pause then
  redis.call('SET', KEYS[2], 'throttled', 'PX', pause)
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local last_cut = tonumber(redis.call('HGET', KEYS[1], 'last_cut') or '0')
if now - last_cut < pause + 1000 then return {0, redis.call('HGET', KEYS[1], 'rate') or '0'} end
local sec = math.floor(now / 1000)
local accepted = 0
local granted = 0
for i = 1, 2 do
  accepted = accepted + tonumber(redis.call('HGET', KEYS[3], (sec - i) .. ':ok') or '0')
  granted = granted + tonumber(redis.call('HGET', KEYS[3], (sec - i) .. ':granted') or '0')
end
accepted = accepted / 2
granted = granted / 2
local observed = accepted
if observed <= 0 then observed = granted end
local rate = tonumber(redis.call('HGET', KEYS[1], 'rate'))
if not rate then rate = tonumber(ARGV[4]) end
if rate <= 0 then rate = observed end
if observed > 0 and observed < rate then rate = observed end
local ceiling = rate
rate = math.max(tonumber(ARGV[3]), rate * tonumber(ARGV[2]))
redis.call('HSET', KEYS[1], 'rate', tostring(rate), 'last_cut', tostring(now),
           'ceiling', tostring(ceiling))
return {1, tostring(rate)}
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


@dataclass(frozen=True, slots=True)
class Grant:
    tokens: int
    wait_seconds: float
    rate: float | None  # None: no limit in force; -1 when paused


class GlobalLimiter:
    """Async token source shared, through Redis, by every notifier."""

    def __init__(
        self,
        conn: redis.Redis,
        keys: Keys,
        *,
        max_rate: float = 0.0,
        burst_seconds: float = 0.05,
        probe_after: float = 3.0,
        fast_step: float = 0.05,
        slow_step: float = 0.005,
        cut_factor: float = 0.98,
        min_rate: float = 1.0,
    ) -> None:
        self.redis = conn
        self.keys = keys
        self.max_rate = max_rate
        self.burst_seconds = burst_seconds
        self.probe_after_ms = probe_after * 1000
        self.fast_step = fast_step
        self.slow_step = slow_step
        self.cut_factor = cut_factor
        self.min_rate = min_rate
        self._acquire = conn.register_script(_ACQUIRE)
        self._throttled = conn.register_script(_THROTTLED)
        self._report = conn.register_script(_REPORT)
        self._tokens = 0
        self._lock = asyncio.Lock()
        self._smoother: AsyncLimiter | None = None
        self._smoother_rate: float | None = None
        self.rate: float | None = max_rate or None

    def take(self, want: int) -> Grant:
        """One round trip to Redis for up to ``want`` tokens."""
        got, wait_ms, rate = self._acquire(
            keys=[self.keys.ratelimit, self.keys.backpressure, self.keys.outcomes],
            args=[want, self.max_rate, self.burst_seconds, self.probe_after_ms,
                  self.fast_step, self.slow_step],
        )
        value = float(rate)
        return Grant(int(got), int(wait_ms) / 1000, None if value == 0 else value)

    def _batch(self) -> int:
        if self.rate is None or self.rate < 0:
            return 64
        return max(1, min(64, int(self.rate * self.burst_seconds)))

    async def acquire(self) -> None:
        """Wait for one token (and for any back-pressure pause to end)."""
        async with self._lock:
            while self._tokens <= 0:
                grant = self.take(self._batch())
                if grant.rate is not None and grant.rate > 0:
                    self.rate = grant.rate
                elif grant.rate is None:
                    self.rate = None
                if grant.tokens > 0:
                    self._tokens += grant.tokens
                    break
                await asyncio.sleep(max(grant.wait_seconds, 0.001))
            self._tokens -= 1
        smoother = self._local_smoother()
        if smoother is not None:
            await smoother.acquire()

    def _local_smoother(self) -> AsyncLimiter | None:
        """aiolimiter spreads a batch of tokens out instead of sending them in one burst."""
        if self.rate is None or self.rate <= 0:
            return None
        if self._smoother is None or self._smoother_rate != self.rate:
            size = max(1.0, self.rate * self.burst_seconds)
            self._smoother = AsyncLimiter(size, size / self.rate)
            self._smoother_rate = self.rate
        return self._smoother

    def throttled(self, pause_seconds: float) -> float | None:
        """A 429 was seen: set/extend the back-pressure flag and cut the rate (once per pause)."""
        self._tokens = 0
        _cut, rate = self._throttled(
            keys=[self.keys.ratelimit, self.keys.backpressure, self.keys.outcomes],
            args=[max(1, int(pause_seconds * 1000)), self.cut_factor, self.min_rate,
                  self.max_rate],
        )
        value = float(rate)
        return value or None

    def report(self, ok: int, throttled: int) -> None:
        """Feed accepted / throttled counts into the shared per-second series."""
        if ok or throttled:
            self._report(keys=[self.keys.outcomes], args=[ok, throttled])

    def paused_for(self) -> float:
        """Seconds left on the back-pressure flag (0 when none)."""
        pttl = int(self.redis.pttl(self.keys.backpressure))
        return max(0, pttl) / 1000


def now_ms() -> float:
    return time.time() * 1000
