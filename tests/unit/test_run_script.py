"""The quick start's `./run` and CI's `.ci/run`, as a newcomer meets them."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_run_and_ci_run_are_executable() -> None:
    for script in (REPO / "run", REPO / ".ci" / "run"):
        assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_run_help_prints_the_usage_and_no_shell_code() -> None:
    done = subprocess.run(
        [str(REPO / "run"), "--help"], capture_output=True, text=True, timeout=30, check=True
    )

    assert "./run demo" in done.stdout and "./run test" in done.stdout
    assert "REDIS_URL" in done.stdout
    assert "set -" not in done.stdout and "#" not in done.stdout


FAKE_PYTHON = """#!/bin/sh
# Stands in for python in ./run's setup: records each call; `-m venv DIR` makes DIR/bin/python
# (this script again); FAIL names a step that fails, as a Ctrl-C there would.
echo "$*" >> "$CALLS"
case "$1 $2" in
  "-m venv")
    [ "$FAIL" = venv ] && exit 130
    mkdir -p "$3/bin" && cp "$0" "$3/bin/python"
    printf '#!/bin/sh\\necho fake\\n' > "$3/bin/hookdrop"
    chmod +x "$3/bin/hookdrop"
    [ -n "$NO_PIP" ] && touch "$3/no-pip"
    exit 0 ;;
  "-m pip")
    [ -e "$(dirname "$0")/../no-pip" ] && exit 1
    [ "$3" = install ] && [ "$FAIL" = install ] && exit 130
    exit 0 ;;
esac
exit 0
"""


def _setup_run(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """./run's setup in a copy of the script, with a fake python; (result, python calls)."""
    work = tmp_path / "checkout"
    if not work.exists():
        work.mkdir()
        (work / "run").write_bytes((REPO / "run").read_bytes())
        (work / "run").chmod(0o755)
        (work / "pyproject.toml").write_text("[project]\nname = 'x'\n")
        fake = tmp_path / "python"
        fake.write_text(FAKE_PYTHON)
        fake.chmod(0o755)
    calls = tmp_path / "calls"
    calls.write_text("")
    done = subprocess.run(
        [str(work / "run"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHON": str(tmp_path / "python"), "CALLS": str(calls), **env},
    )
    return done, calls.read_text().splitlines()


def _venv_made(calls: list[str]) -> bool:
    return any(call.startswith("-m venv") for call in calls)


def test_run_makes_again_a_virtualenv_whose_creation_was_interrupted(tmp_path: Path) -> None:
    first, _ = _setup_run(tmp_path, FAIL="venv")
    assert first.returncode != 0

    again, calls = _setup_run(tmp_path)

    assert again.returncode == 0, again.stderr
    assert "incomplete" in again.stderr
    assert _venv_made(calls)
    assert again.stdout.strip() == "fake"


def test_run_makes_again_a_virtualenv_without_pip(tmp_path: Path) -> None:
    first, _ = _setup_run(tmp_path, NO_PIP="1")
    assert first.returncode != 0  # pip missing: its install step fails
    assert (tmp_path / "checkout" / ".venv" / "no-pip").exists()

    again, calls = _setup_run(tmp_path)

    assert again.returncode == 0, again.stderr
    assert "incomplete" in again.stderr and _venv_made(calls)
    assert not (tmp_path / "checkout" / ".venv" / "no-pip").exists()


def test_run_installs_again_after_an_interrupted_install_and_then_no_more(
    tmp_path: Path,
) -> None:
    first, _ = _setup_run(tmp_path, FAIL="install")
    assert first.returncode != 0
    assert not list((tmp_path / "checkout" / ".venv").glob(".installed-*"))

    again, calls = _setup_run(tmp_path)
    assert again.returncode == 0, again.stderr
    assert not _venv_made(calls)
    assert any("pip install" in call and "-e" in call for call in calls)

    third, calls = _setup_run(tmp_path)
    assert third.returncode == 0 and calls == []
