"""The ``hookdrop`` command: the composition root, the one place that puts the daemon, the
workers and the mock receiver together (with the supervisor that runs them as one tree)."""

from hookdrop.cli.main import cli, main

__all__ = ["cli", "main"]
