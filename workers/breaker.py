"""The circuit breaker of one endpoint, kept in Redis and shared by every notifier.

Closed, it counts consecutive failures (connection errors, timeouts, 5xx); a success sets
the count back to 0. At ``breaker_failures`` in a row it opens: nothing is sent to the
endpoint, and its alerts wait in PostgreSQL (deferred) without spending their budget. When
the probe is due, one notifier gets to send one alert (the probe, state ``probing``); a
success closes the breaker, a failure opens it again for twice as long, up to
``probe_max_seconds``. A notifier that dies while probing leaves the probe to the next one
once its lease runs out. Every decision runs as one script inside Redis on Redis's clock.

To keep the sending path free of Redis calls, a notifier tells Redis about a success only
when it has itself seen a failure since it last did (or when it probed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import redis
import structlog

from hookdrop.keys import Keys

log = structlog.get_logger(__name__)

CLOSED: Final = "closed"
OPEN: Final = "open"
PROBING: Final = "probing"
PROBE: Final = "probe"  # admit(): this caller sends the probe

# KEYS: breaker hash. ARGV: threshold, first interval, cap, error, 1 if the probe failed.
_FAILED = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
redis.call('HSET', KEYS[1], 'error', ARGV[4])
if ARGV[5] == '1' then
  local interval = tonumber(redis.call('HGET', KEYS[1], 'interval') or ARGV[2])
  interval = math.min(interval * 2, tonumber(ARGV[3]))
  redis.call('HSET', KEYS[1], 'state', 'open', 'interval', interval,
             'probe_at', tostring(now + interval))
  return {'open', tostring(interval)}
end
if state ~= 'closed' then return {state, '0'} end
local fails = redis.call('HINCRBY', KEYS[1], 'fails', 1)
if tonumber(ARGV[1]) > 0 and fails >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened', tostring(now), 'interval', ARGV[2],
             'probe_at', tostring(now + tonumber(ARGV[2])))
  return {'opened', ARGV[2]}
end
return {'closed', '0'}
"""

# KEYS: breaker hash. Returns the state before (closed, open or probing).
_SUCCEEDED = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
redis.call('HSET', KEYS[1], 'fails', 0, 'state', 'closed')
redis.call('HDEL', KEYS[1], 'interval', 'probe_at', 'opened')
return state
"""

# KEYS: breaker hash. ARGV: probe lease (s). Returns {decision, seconds to wait}.
_ADMIT = """
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then return {'closed', '0'} end
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1e6
local at = tonumber(redis.call('HGET', KEYS[1], 'probe_at') or '0')
if now >= at then
  redis.call('HSET', KEYS[1], 'state', 'probing', 'probe_at', tostring(now + tonumber(ARGV[1])))
  return {'probe', '0'}
end
return {state, tostring(at - now)}
"""


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    failures: int = 5
    probe_seconds: float = 1.0
    probe_max_seconds: float = 60.0
    probe_lease: float = 30.0  # a probe not answered within this is given to someone else


class Breaker:
    """One endpoint's breaker as one notifier process sees it."""

    def __init__(self, conn: redis.Redis, keys: Keys, policy: BreakerPolicy) -> None:
        self.keys = keys
        self.policy = policy
        self.endpoint = keys.endpoint
        self._failed = conn.register_script(_FAILED)
        self._succeeded = conn.register_script(_SUCCEEDED)
        self._admit = conn.register_script(_ADMIT)
        self.redis = conn
        self.dirty = False  # this process counted a failure since it last reported a success

    def admit(self) -> str:
        """closed (send), probe (send one alert, the probe) or open/probing (defer)."""
        decision, _wait = self._admit(keys=[self.keys.breaker], args=[self.policy.probe_lease])
        return str(decision.decode() if isinstance(decision, bytes) else decision)

    def failed(self, error: str | None, *, probe: bool = False) -> str:
        """Count a failure; the state now (``opened`` when this one opened it)."""
        self.dirty = True
        state, interval = self._failed(
            keys=[self.keys.breaker],
            args=[
                self.policy.failures,
                self.policy.probe_seconds,
                self.policy.probe_max_seconds,
                (error or "")[:200],
                1 if probe else 0,
            ],
        )
        state = state.decode() if isinstance(state, bytes) else str(state)
        if state == "opened" or probe:
            log.warning(
                "breaker.opened",
                endpoint=self.endpoint,
                probe_in=float(interval),
                error=error,
                after_probe=probe,
            )
        return state

    def succeeded(self) -> None:
        """A real answer (not a failure): the count starts again; a probe closes it."""
        if not self.dirty:
            return
        self.dirty = False
        before = self._succeeded(keys=[self.keys.breaker])
        before = before.decode() if isinstance(before, bytes) else str(before)
        if before != CLOSED:
            log.info("breaker.closed", endpoint=self.endpoint)

    def is_open(self) -> bool:
        """Whether sending must stop now (open or probing: someone else probes)."""
        state = self.redis.hget(self.keys.breaker, "state")
        return state is not None and state not in (CLOSED, CLOSED.encode())
