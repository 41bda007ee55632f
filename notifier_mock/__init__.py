"""Fast mock webhook receiver for hookdrop load tests.

Raw ASGI under uvicorn (httptools + uvloop): rate limit with Retry-After, injectable faults,
optional Standard Webhooks signature checks, counters at ``GET /stats`` and live changes at
``POST /admin/config``.
"""

from notifier_mock.app import MockApp, MockState, create_app
from notifier_mock.client import MockClient, WaitTimeout
from notifier_mock.config import MockConfig
from notifier_mock.server import serve

__all__ = ["MockApp", "MockClient", "MockConfig", "MockState", "WaitTimeout", "create_app", "serve"]
