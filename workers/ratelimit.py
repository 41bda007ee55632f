"""One rate limit for every notifier process on every host, kept in Redis.

- Tokens come from a GCRA script that runs inside Redis and reads Redis ``TIME``, so worker
  clocks do not matter and N processes together never exceed the rate. Processes take tokens
  several at a time and spread them out locally with aiolimiter.
- The back-pressure flag (a key whose TTL is the pause) makes the script refuse every token
  while it exists: on a 429 every notifier holds off until it expires.
- The rate adapts: a 429 cuts it to just under what the receiver accepted in the latest second
  in which it also refused requests (its real limit); it then climbs quickly back to 99% of
  that ceiling and only after a long quiet spell explores slowly above it. With no configured
  limit and no 429 yet, no limit applies at all.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import redis
from aiolimiter import AsyncLimiter

from hookdrop.keys import Keys

# KEYS: rl hash, backpressure flag, outcomes hash. ARGV: wanted, max rate (0 = none),
# burst seconds, hold ms after a cut, fast step, explore-after ms, explore step.
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
  local since_cut = now - last_cut
  if since_cut > tonumber(ARGV[4]) and now - last_raise > 500 then
    local ceiling = tonumber(redis.call('HGET', KEYS[1], 'ceiling') or '0')
    local target = rate
    if ceiling == 0 then
      -- no known limit: climb quickly until the receiver shows one
      target = rate * (1 + tonumber(ARGV[5]))
    elseif rate < ceiling * 0.99 then
      -- climb quickly back to just under the limit the receiver showed us
      target = math.min(rate * (1 + tonumber(ARGV[5])), ceiling * 0.99)
    elseif since_cut > tonumber(ARGV[6]) then
      -- a long quiet spell: the receiver may allow more now; explore slowly
      target = rate * (1 + tonumber(ARGV[7]))
    end
    if max > 0 and target > max then target = max end
    if target ~= rate then
      redis.call('HSET', KEYS[1], 'rate', tostring(target), 'last_raise', tostring(now),
                 'before_raise', tostring(rate))
      rate = target
    end
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
if allowed < want then
  -- wait for a whole batch rather than trickling out one token per round trip
  return {0, math.ceil(tat - burst - now + interval * want), tostring(rate)}
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
local current = redis.call('HGET', KEYS[1], 'rate') or '0'
local last_cut = tonumber(redis.call('HGET', KEYS[1], 'last_cut') or '0')
if now - last_cut < pause + 1000 then return {0, current} end
local sec = math.floor(now / 1000)
-- Where is the receiver's limit? Three cases:
-- 1. It refused a large share (>= 10%) of a recent second: the limit dropped below our rate,
--    and what it accepted that second is its limit. Tokens are counted exactly when granted,
--    outcomes only when flushed, so accepted = granted - refused; the best of the last three
--    seconds (one cut short by a pause undercounts; a mixed one overcounts and the next 429
--    corrects it).
-- 2. Our smoothed rate was raised moments ago: we just crossed the limit, which lies between
--    the rate before that raise and now; the rate before the raise is the ceiling.
-- 3. Otherwise a stray refusal (a burst meeting the receiver's bucket): ease off a little and
--    keep what we knew.
local observed, best, sent = 0, 0, 0
for i = 1, 3 do
  local ok = tonumber(redis.call('HGET', KEYS[3], (sec - i) .. ':ok') or '0')
  local refused = tonumber(redis.call('HGET', KEYS[3], (sec - i) .. ':throttled') or '0')
  local granted = tonumber(redis.call('HGET', KEYS[3], (sec - i) .. ':granted') or '0')
  local accepted = math.max(ok, granted - refused)
  if refused >= 0.1 * (accepted + refused) and accepted > observed then observed = accepted end
  if ok > best then best = ok end
  if ok + refused > sent then sent = ok + refused end
end
local rate = tonumber(current)
if rate <= 0 then rate = tonumber(ARGV[4]) end
local last_raise = tonumber(redis.call('HGET', KEYS[1], 'last_raise') or '0')
local before_raise = tonumber(redis.call('HGET', KEYS[1], 'before_raise') or '0')
if rate > 0 and observed > 0 then
  if observed < rate then rate = observed end
  redis.call('HSET', KEYS[1], 'ceiling', tostring(rate))
elseif rate > 0 and before_raise > 0 and now - last_raise < 2500 then
  rate = before_raise
  redis.call('HSET', KEYS[1], 'ceiling', tostring(rate))
elseif rate <= 0 and best > 0 then
  -- bursting with no rate in force: adopt the rate that went through, smooth, and climb
  -- again without taking it for the receiver's limit
  rate = sent / tonumber(ARGV[2])
elseif rate <= 0 then
  return {0, current}
end
redis.call('HSET', KEYS[1], 'rate', tostring(math.max(tonumber(ARGV[3]), rate * tonumber(ARGV[2]))),
           'last_cut', tostring(now))
return {1, redis.call('HGET', KEYS[1], 'rate')}
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
        hold_after_cut: float = 1.5,
        fast_step: float = 0.2,
        explore_after: float = 30.0,
        explore_step: float = 0.02,
        cut_factor: float = 0.98,
        min_rate: float = 1.0,
    ) -> None:
        self.redis = conn
        self.keys = keys
        self.max_rate = max_rate
        self.burst_seconds = burst_seconds
        self.hold_ms = hold_after_cut * 1000
        self.fast_step = fast_step
        self.explore_after_ms = explore_after * 1000
        self.explore_step = explore_step
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
            args=[want, self.max_rate, self.burst_seconds, self.hold_ms, self.fast_step,
                  self.explore_after_ms, self.explore_step],
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

