"""The import-linter contracts in pyproject.toml name every module of the core.

A new module of ``hookdrop/`` that the contracts do not list would be free to import the
composition root; this keeps the list and the folder in step.
"""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import hookdrop

ROOT = Path(__file__).resolve().parents[2]
ABOVE_THE_CORE = {"cli", "devtools", "__main__"}


def contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["name"]: c for c in config["tool"]["importlinter"]["contracts"]}


def test_every_core_module_is_held_below_the_composition_root() -> None:
    core = {
        f"hookdrop.{info.name}"
        for info in pkgutil.iter_modules(hookdrop.__path__)
        if info.name not in ABOVE_THE_CORE
    }
    contract = contracts()["only the composition root and the dev tools use them"]
    listed = set(contract["source_modules"])  # type: ignore[call-overload]
    assert core - listed == set(), "add these to the contract in pyproject.toml"
    assert listed - core == set(), "these are not modules of hookdrop/ any more"
    assert set(contract["forbidden_modules"]) == {  # type: ignore[call-overload]
        f"hookdrop.{name}" for name in ABOVE_THE_CORE - {"__main__"}
    }
