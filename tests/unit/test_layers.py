"""The layers hold: the import-linter contracts name every core module, no import hides from
them inside a function, every module imports on its own, and every RQ job named by a string
resolves to a function.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

import daemon
import hookdrop
import notifier_mock
import workers

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("hookdrop", "daemon", "workers", "notifier_mock")
ABOVE_THE_CORE = {"cli", "devtools", "__main__"}
#: What a module may not import, by the layer it belongs to (the first matching prefix).
FORBIDDEN = {
    "hookdrop.cli": (),
    "hookdrop.devtools": ("hookdrop.cli", "daemon", "workers"),
    "hookdrop.__main__": (),
    "hookdrop": ("daemon", "workers", "notifier_mock", "hookdrop.cli", "hookdrop.devtools"),
    "daemon": ("workers", "notifier_mock", "hookdrop.cli", "hookdrop.devtools"),
    "workers": ("daemon", "notifier_mock", "hookdrop.cli", "hookdrop.devtools"),
    "notifier_mock": ("hookdrop", "daemon", "workers"),
}
#: RQ job paths: module-level string constants naming a dotted path in our packages.
JOB_PATH = re.compile(r"^(?:workers|daemon)\.[a-z_][a-z0-9_]*(?:\.[a-z_][a-z0-9_]*)+$")


def contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return {c["name"]: c for c in config["tool"]["importlinter"]["contracts"]}


def all_modules() -> list[str]:
    names = []
    for package in (hookdrop, daemon, workers, notifier_mock):
        names.append(package.__name__)
        names += [
            info.name
            for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}.")
        ]
    return sorted(names)


def source_of(module: str) -> Path:
    path = ROOT.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def forbidden_for(module: str) -> tuple[str, ...]:
    for prefix, forbidden in FORBIDDEN.items():
        if module == prefix or module.startswith(f"{prefix}."):
            return forbidden
    raise AssertionError(f"{module} belongs to no layer")


def imported(node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
    elif node.module is not None and node.level == 0:
        yield node.module
        yield from (f"{node.module}.{alias.name}" for alias in node.names)


def function_local_imports(tree: ast.AST) -> Iterator[tuple[int, str]]:
    for function in ast.walk(tree):
        if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for node in ast.walk(function):
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield from ((node.lineno, name) for name in imported(node))


def test_every_core_module_is_held_below_everything_else() -> None:
    core = {
        f"hookdrop.{info.name}"
        for info in pkgutil.iter_modules(hookdrop.__path__)
        if info.name not in ABOVE_THE_CORE
    }
    contract = contracts()["the core imports nothing above it"]
    listed = set(contract["source_modules"])  # type: ignore[call-overload]
    assert core - listed == set(), "add these to the contract in pyproject.toml"
    assert listed - core == set(), "these are not modules of hookdrop/ any more"
    assert set(contract["forbidden_modules"]) == {  # type: ignore[call-overload]
        "daemon",
        "workers",
        "notifier_mock",
        *(f"hookdrop.{name}" for name in ABOVE_THE_CORE - {"__main__"}),
    }


@pytest.mark.parametrize("module", [m for m in all_modules() if not m.endswith(".__main__")])
def test_every_module_imports_on_its_own(module: str) -> None:
    # (``__main__`` modules run their command when imported; the AST test below reads them.)
    assert importlib.import_module(module).__name__ == module


def test_no_function_hides_an_import_of_a_higher_layer() -> None:
    hidden = []
    for module in all_modules():
        forbidden = forbidden_for(module)
        tree = ast.parse(source_of(module).read_text(), filename=str(source_of(module)))
        for line, name in function_local_imports(tree):
            if any(name == f or name.startswith(f"{f}.") for f in forbidden):
                hidden.append(f"{module}:{line} imports {name}")
    assert hidden == []


def test_the_layer_check_sees_an_import_inside_a_function() -> None:
    tree = ast.parse("def f():\n    from daemon.claim import Claimer\n")
    assert [name for _, name in function_local_imports(tree)] == [
        "daemon.claim",
        "daemon.claim.Claimer",
    ]
    assert forbidden_for("hookdrop.keys")[0] == "daemon"


def job_paths() -> list[str]:
    """Every string constant of our packages that names a dotted path in workers/ or daemon/."""
    paths = set()
    for module in all_modules():
        tree = ast.parse(source_of(module).read_text())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and JOB_PATH.match(node.value)
            ):
                paths.add(node.value)
    return sorted(paths)


def test_the_job_paths_are_found() -> None:
    from hookdrop.queues import BATCHER_JOB, NOTIFIER_JOB

    assert {BATCHER_JOB, NOTIFIER_JOB} <= set(job_paths())


@pytest.mark.parametrize("path", job_paths())
def test_every_job_enqueued_by_name_resolves_to_a_function(path: str) -> None:
    module, _, attribute = path.rpartition(".")
    target = getattr(importlib.import_module(module), attribute, None)
    assert callable(target), f"{path} names no function: RQ would fail every such job"
