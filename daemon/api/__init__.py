"""The daemon's HTTP API and live status page (served by the monitor, see docs/api.md).

Routes are thin shells over :mod:`hookdrop.ops`; blocking calls to PostgreSQL and Redis run
in the thread pool, each with a Store borrowed from a small pool. Requests from other web
pages are refused first (:mod:`.crosssite`); then, when ``HOOKDROP_API_TOKEN`` is set, every
path but ``/healthz`` needs the token (:mod:`.auth`).
"""

from daemon.api.app import create_app
from daemon.api.server import ApiServer, run_api_in_thread

__all__ = ["ApiServer", "create_app", "run_api_in_thread"]
