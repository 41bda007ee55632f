"""The mock receiver's command line: `python -m notifier_mock` and `hookdrop mock`."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence

from notifier_mock.config import RETRY_AFTER_MODES, MockConfig
from notifier_mock.server import serve

DEFAULTS = MockConfig()


def build_parser(prog: str = "python -m notifier_mock") -> argparse.ArgumentParser:
    """Flags mirror the MockConfig fields."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Fast mock webhook receiver for load tests."
    )
    add = parser.add_argument
    add("--host", default=DEFAULTS.host, help="address to listen on (default %(default)s)")
    add("--port", type=int, default=DEFAULTS.port, help="port (default %(default)s)")
    add("--rate", type=float, default=DEFAULTS.rate, help="requests/s allowed, 0 = unlimited")
    add("--burst", type=float, default=None, help="token bucket size (default max(1, rate/10))")
    add(
        "--retry-after-mode",
        choices=RETRY_AFTER_MODES,
        default=DEFAULTS.retry_after_mode,
        help="Retry-After on 429 (default %(default)s)",
    )
    add("--error-rate", type=float, default=DEFAULTS.error_rate, help="share answered 5xx")
    add("--latency-ms", type=float, default=DEFAULTS.latency_ms, help="added delay")
    add(
        "--latency-jitter-ms",
        type=float,
        default=DEFAULTS.latency_jitter_ms,
        help="extra random delay, uniform from 0 to this",
    )
    add("--timeout-rate", type=float, default=DEFAULTS.timeout_rate, help="share that hangs")
    add(
        "--timeout-hang-s",
        type=float,
        default=DEFAULTS.timeout_hang_s,
        help="how long a hang lasts (default %(default)s)",
    )
    add(
        "--reset-rate",
        type=float,
        default=DEFAULTS.reset_rate,
        help="share whose connection is reset without an answer",
    )
    add(
        "--secret",
        default=os.environ.get("NOTIFIER_MOCK_SECRET"),
        help="whsec_... secret: check signatures (default $NOTIFIER_MOCK_SECRET)",
    )
    add("--audit-path", default=None, help="append 'webhook-id<TAB>userId' per accepted request")
    add(
        "--any-body",
        action="store_true",
        help='accept any body (form, {"text": ...}); count requests by webhook-id',
    )
    add("--require-header", default=None, help="'Name: value' every request must carry (401)")
    add(
        "--record-bodies",
        type=int,
        default=0,
        help="keep the first N requests for GET /admin/bodies (default 0)",
    )
    add("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "python -m notifier_mock") -> int:
    """Parse flags, then serve until SIGINT/SIGTERM (``hookdrop mock`` runs this too)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    options = vars(args)
    log_level = options.pop("log_level")
    try:
        config = MockConfig(**options)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    serve(config, log_level=log_level)
    return 0
