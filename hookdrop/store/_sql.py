"""Loading the named queries and the migrations that live beside this module."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import LiteralString, cast

_PACKAGE = "hookdrop.store"


@cache
def queries() -> dict[str, LiteralString]:
    """Every named query of sql/queries.sql (``-- name: <name>`` starts one)."""
    text = resources.files(_PACKAGE).joinpath("sql/queries.sql").read_text("utf-8")
    named: dict[str, LiteralString] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        # Our own file, shipped with the package: as trusted as a literal in the code.
        named[name.strip()] = cast(LiteralString, body.strip().rstrip(";"))
    return named


def migrations() -> list[tuple[int, str, LiteralString]]:
    """(version, file name, SQL) of every migration, in order."""
    folder = resources.files(_PACKAGE).joinpath("sql/migrations")
    found = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d+)_.*\.sql", entry.name)
        if match:
            sql = cast(LiteralString, entry.read_text("utf-8"))
            found.append((int(match.group(1)), entry.name, sql))
    return sorted(found)
