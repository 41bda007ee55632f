"""Where the packages that ship the server binaries are installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from hookdrop.errors import ConfigError


def package_dir(package: str, setting: str) -> Path:
    """The folder of ``package``, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"{setting} is not set and the '{package}' package for the embedded server is "
            "missing; set it or install hookdrop[embedded]"
        )
    return Path(next(iter(spec.submodule_search_locations)))
