"""Loading the named queries and the migrations that live beside this module."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_PACKAGE = "hookdrop.store"


@cache
def queries() -> dict[str, str]:
    """Every named query of sql/queries.sql (``-- name: <name>`` starts one)."""
    text = resources.files(_PACKAGE).joinpath("sql/queries.sql").read_text("utf-8")
    named: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        named[name.strip()] = body.strip().rstrip(";")
    return named


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration, in order."""
    folder = resources.files(_PACKAGE).joinpath("sql/migrations")
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d+)_.*\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text("utf-8")))
    return sorted(found)
