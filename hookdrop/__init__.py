"""hookdrop: a folder-to-webhook delivery daemon on Redis (RQ) and PostgreSQL."""

from hookdrop.errors import ConfigError, HookdropError
from hookdrop.settings import Settings

__all__ = ["ConfigError", "HookdropError", "Settings"]
