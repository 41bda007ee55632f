"""From a dropped file to a receiver, with real processes: monitor, workers, mock receiver."""

from __future__ import annotations

from pathlib import Path

import pytest

from hookdrop.settings import Settings
from hookdrop.store import Store
from notifier_mock import MockClient
from tests.helpers import (
    StartMock,
    file_rows,
    free_port,
    hookdrop_stack,
    wait_for,
    write_csv,
)

pytestmark = pytest.mark.e2e

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def mock(start_mock: StartMock, tmp_path: Path) -> MockClient:
    """The receiver checks every signature with the secret the daemon signs with."""
    return start_mock(secret=SECRET, audit_path=tmp_path / "accepted.tsv")


@pytest.fixture
def e2e_settings(settings: Settings, mock: MockClient) -> Settings:
    return settings.replace(
        webhook_url=mock.hook_url,
        signing_secret=SECRET,
        chunk_size=200,
        concurrency=32,
        queue_high_water=20,
        api_listen=("127.0.0.1", free_port()),
    )


def test_a_dropped_file_reaches_the_receiver_once_per_alert(
    e2e_settings: Settings, store: Store, mock: MockClient, tmp_path: Path
) -> None:
    settings = e2e_settings
    with hookdrop_stack(settings, tmp_path / "logs"):
        pairs = write_csv(settings.inbox / "drop.csv", 5_000)
        with (settings.inbox / "drop.csv").open("a") as handle:
            handle.write("u1,alert number 1\n")  # a repeated row is one alert
            handle.write(",no user\n")  # a bad row is recorded, not sent
        stats = mock.wait_until(lambda s: s["unique"] >= len(pairs), timeout=120)
        rows = wait_for(
            lambda: [r for r in file_rows(store) if r["status"] == "done" and r["final_path"]],
            timeout=60,
            what="file done and moved",
        )
        audit_file = tmp_path / "accepted.tsv"
        # the receiver writes its audit file in batches: wait for the last one
        wait_for(
            lambda: audit_file.exists() and len(audit_file.read_text().splitlines()) >= len(pairs),
            timeout=10,
            what="audit file complete",
        )
    assert stats["duplicates"] == 0
    assert stats["bad_signature"] == 0
    assert stats["unique"] == len(pairs)
    file = rows[0]
    assert (file["alerts_total"], file["delivered"], file["rows_invalid"]) == (5_000, 5_000, 1)
    assert Path(file["final_path"]).parent == settings.done_dir
    assert not any(settings.processing_dir.iterdir())
    audit = (tmp_path / "accepted.tsv").read_text().splitlines()
    users = sorted(line.split("\t")[1] for line in audit)
    assert users == sorted(u for u, _ in pairs)
