"""Trying hookdrop and measuring it: ``demo`` and ``bench`` (see hookdrop/devtools)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType

import click

from hookdrop.cli._common import configure_logs, connect, notifiers_option, with_settings
from hookdrop.errors import HookdropError
from hookdrop.settings import Settings


def _sigterm_as_ctrl_c() -> None:
    """SIGTERM stops the run as Ctrl-C does: its processes and servers are stopped first."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        # Once: a repeat must not cut the clean-up short (its waits are bounded anyway).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


@click.command()
@click.option(
    "--rows",
    type=click.IntRange(1),
    default=100_000,
    show_default=True,
    help="Rows in the demo file.",
)
@notifiers_option
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option(
    "--timeout", type=float, default=900, show_default=True, help="Give up after this many seconds."
)
@with_settings
def demo(settings: Settings, rows: int, notifiers: int, as_json: bool, timeout: float) -> None:
    """Start mock, monitor and workers, drop a file, show it delivered; exit 0 only if nothing
    was missed or duplicated."""
    configure_logs(settings, "demo")
    _sigterm_as_ctrl_c()
    from hookdrop.devtools.demo import run_demo

    # The run migrates a schema of its own in the database; the database's own is not used.
    with connect(settings, schema=False) as live:
        try:
            summary = run_demo(
                live, rows=rows, notifiers=notifiers, as_json=as_json, timeout=timeout
            )
        except Exception:
            if _embedded_gone(settings):
                raise HookdropError("the embedded servers were stopped under the demo") from None
            raise
    sys.exit(0 if summary.ok else 1)


def _embedded_gone(settings: Settings) -> bool:
    """True when the demo ran on embedded servers and one of them no longer runs."""
    from hookdrop.embedded import find_running

    if settings.redis_url and settings.database_url:
        return False
    found = find_running(settings.state_dir)
    return bool(
        (not settings.redis_url and not found.redis_url)
        or (not settings.database_url and not found.database_url)
    )


@click.command()
@click.option(
    "--scenarios",
    default="abcde",
    show_default=True,
    help="Which scenarios to run (letters a-e, see the docs).",
)
@notifiers_option
@click.option("--quick", is_flag=True, help="Small sizes (a smoke run for CI).")
@click.option("--rows", type=click.IntRange(1), default=None, help="Rows for scenario a.")
@click.option(
    "--served",
    type=click.IntRange(0, 1_000_000_000),
    default=0,
    show_default=True,
    help="Scenario a on a ledger in service: this many delivered alerts, analyzed, before it.",
)
@click.option("--limit", type=float, default=None, help="Receiver limit for scenario b.")
@click.option("--large-rows", type=click.IntRange(1), default=None, help="Rows for scenario d.")
@click.option(
    "--plot",
    "plot_path",
    type=click.Path(path_type=Path),
    default=Path("bench-results/throughput.png"),
    show_default=True,
    help="PNG plot of throughput over time.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON only.")
@with_settings
def bench(
    settings: Settings,
    scenarios: str,
    notifiers: int,
    quick: bool,
    rows: int | None,
    served: int,
    limit: float | None,
    large_rows: int | None,
    plot_path: Path,
    as_json: bool,
) -> None:
    """Measure throughput, rate limiting, memory and latency against the product's targets."""
    import dataclasses
    import json

    configure_logs(settings, "bench")
    _sigterm_as_ctrl_c()
    from hookdrop.devtools.bench import BenchSizes, run_bench

    sizes = BenchSizes.quick() if quick else BenchSizes()
    sizes = dataclasses.replace(
        sizes,
        rows=rows or sizes.rows,
        served=served,
        limit=limit or sizes.limit,
        large_rows=large_rows or sizes.large_rows,
    )
    plot_path.parent.mkdir(parents=True, exist_ok=True)
    # Each run migrates a schema of its own, as in the demo.
    with connect(settings, schema=False) as live:
        results = run_bench(
            live,
            scenarios=scenarios,
            notifiers=notifiers,
            sizes=sizes,
            plot_path=plot_path,
            progress=lambda text: None if as_json else click.echo(text, err=True),
        )
    click.echo(json.dumps(results, indent=2))


COMMANDS = (demo, bench)
