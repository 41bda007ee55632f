"""Hostile files in the inbox, through real processes: none costs another file a row or a
minute, none is read outside the inbox, and no process restarts.

Each test runs a real monitor, batcher and notifier (``hookdrop`` commands in their own
process groups) against the mock receiver, drops what an attacker with write access to the
inbox would, and then checks what reached the receiver, what PostgreSQL recorded and that
every process is still the one that was started.
"""

from __future__ import annotations

import ctypes
import gzip
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hookdrop import connections
from hookdrop.settings import Settings
from hookdrop.store import Store
from tests.helpers import dies_with_tests, kill_group, wait_for
from tests.reliability.conftest import chaos_settings
from tests.reliability.servers import Fleet, Mock, wait_delivered

pytestmark = pytest.mark.e2e

# A good file must be delivered this long after it is complete (settle time included), even
# right after a hostile one: "promptly", with room for a busy two-core machine.
PROMPT_SECONDS = 20.0


@pytest.fixture
def hostile(
    tmp_path: Path,
    redis_url: str,
    key_prefix: str,
    database_url: str,
    mock: Mock,
    fleet_factory: Callable[[Settings], Fleet],
) -> Iterator[tuple[Settings, Fleet]]:
    settings = chaos_settings(
        tmp_path,
        redis_url=redis_url,
        database_url=database_url,
        webhook_url=mock.url + "/hook",
        key_prefix=key_prefix,  # the shared Redis: the test's keys go when it ends
    )
    settings = settings.replace(queue_high_water=64)
    fleet = fleet_factory(settings)
    fleet.start("monitor", "monitor")
    fleet.start("batcher", "worker", "batcher")
    fleet.start("notifier", "worker", "notifier")
    wait_for(settings.processing_dir.exists, timeout=30, what="monitor ready")
    yield settings, fleet
    assert fleet.dead() == {}, f"a process exited: {fleet.dead()}; logs in {fleet.logs}"


def drop(path: Path, content: bytes) -> None:
    """Complete before it appears: written under a hidden name, then renamed into place."""
    temp = path.with_name(f".{uuid.uuid4().hex[:8]}.tmp")
    temp.write_bytes(content)
    os.rename(temp, path)


def good_file(settings: Settings, tag: str, rows: int = 20) -> tuple[str, set[str]]:
    name = f"good-{tag}.csv"
    users = {f"{tag}-u{n}" for n in range(rows)}
    drop(
        settings.inbox / name,
        ("user_id,message\n" + "".join(f"{u},hello {u}\n" for u in sorted(users))).encode(),
    )
    return name, users


def received_users(mock: Mock) -> set[str]:
    if not mock.audit.exists():
        return set()
    lines = mock.audit.read_text(encoding="utf-8", errors="replace").splitlines()
    return {line.split("\t", 1)[1] for line in lines if "\t" in line}


def wait_received(
    mock: Mock, users: set[str], *, timeout: float = PROMPT_SECONDS, what: str = "users"
) -> float:
    """Seconds until every one of ``users`` reached the receiver."""
    started = time.monotonic()
    wait_for(lambda: users <= received_users(mock), timeout=timeout, interval=0.1, what=what)
    return time.monotonic() - started


def file_row(store: Store, name: str) -> dict[str, Any] | None:
    with store.transaction() as conn:
        return conn.execute(
            "SELECT * FROM files WHERE name = %s ORDER BY id DESC LIMIT 1", (name,)
        ).fetchone()


def row_errors(store: Store, file_id: int) -> list[tuple[int, str]]:
    with store.transaction() as conn:
        return [
            (r["line_no"], r["reason"])
            for r in conn.execute(
                "SELECT line_no, reason FROM row_errors WHERE file_id = %s ORDER BY line_no",
                (file_id,),
            ).fetchall()
        ]


def newline_bomb(gigabytes: float) -> bytes:
    """A gzip of that many GB of newlines, as concatenated members (about 1 KB per MiB)."""
    member = gzip.compress(b"\n" * (1 << 20), compresslevel=9, mtime=0)
    return member * int(gigabytes * 1024)


# -- links and the swap race --------------------------------------------------------------


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(libc: Any, a: Path, b: Path) -> None:
    libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)


def test_a_link_swapped_in_while_the_file_is_claimed_never_sends_the_outside_file(
    hostile: tuple[Settings, Fleet], mock: Mock, store: Store, tmp_path: Path
) -> None:
    settings, _fleet = hostile
    libc = ctypes.CDLL(None, use_errno=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    rounds, claimed = 12, 0
    for n in range(rounds):
        secret = outside / f"secret-{n}.csv"
        secret.write_bytes(f"user_id,message\nleak-{n},outside the inbox\n".encode())
        # Same size and mtime as the link: the readiness check cannot tell them apart.
        target = str(secret)
        content = f"user_id,message\nrace-{n},from the inbox".encode()
        content += b"." * (len(target) + 10 - len(content)) + b"\n"
        target = target.replace("/", "/" * (len(content) - len(target) + 1), 1)
        assert len(target) == len(content) and Path(target).samefile(secret)
        name = settings.inbox / f"race-{n}.csv"
        link = settings.inbox / f".race-{n}.link"
        drop(name, content)
        link.symlink_to(target)
        stamp = time.time_ns() - 10**9
        os.utime(name, ns=(stamp, stamp))
        os.utime(link, ns=(stamp, stamp), follow_symlinks=False)
        # Swap the two names until the monitor has taken one of them away.
        stop = threading.Event()

        def swap(name: Path = name, link: Path = link, stop: threading.Event = stop) -> None:
            while not stop.is_set() and (name.exists() or name.is_symlink()):
                _exchange(libc, name, link)

        swapper = threading.Thread(target=swap)
        swapper.start()
        try:
            wait_for(
                lambda name=name: not (name.exists() or name.is_symlink()),
                timeout=30,
                what=f"race-{n}.csv claimed",
            )
        finally:
            stop.set()
            swapper.join(timeout=10)
        claimed += 1
    _good, users = good_file(settings, "after-race")
    wait_received(mock, users)
    leaked = {u for u in received_users(mock) if u.startswith("leak-")}
    assert not leaked, f"content from outside the inbox was sent: {sorted(leaked)}"
    assert claimed == rounds
    # Whatever was claimed either was the inbox's own file or went to failed/ unread.
    with store.transaction() as conn:
        names = conn.execute(
            "SELECT name, status, error FROM files WHERE name LIKE 'race-%'"
        ).fetchall()
    assert names
    for row in names:
        assert row["status"] in ("claimed", "reading", "delivering", "done", "failed"), row
        if row["status"] == "failed":
            assert "link" in row["error"] or "replaced" in row["error"], row


def test_links_pipes_and_sockets_go_to_failed_with_a_note(
    hostile: tuple[Settings, Fleet], mock: Mock, store: Store, tmp_path: Path
) -> None:
    settings, _fleet = hostile
    secret = tmp_path / "secret.csv"
    secret.write_bytes(b"user_id,message\nleak-1,outside\n")
    (settings.inbox / "link.csv").symlink_to(secret)
    os.mkfifo(settings.inbox / "pipe.csv")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(settings.inbox / "sock.csv"))
        _good, users = good_file(settings, "special")
        wait_received(mock, users)
        for name, kind in (
            ("link.csv", "symbolic link"),
            ("pipe.csv", "named pipe"),
            ("sock.csv", "socket"),
        ):
            row = wait_for(
                lambda name=name: (r := file_row(store, name)) and r["status"] == "failed" and r,
                timeout=PROMPT_SECONDS,
                what=f"{name} failed",
            )
            assert kind in row["error"]
            final = Path(row["final_path"])
            assert final.parent == settings.failed_dir
            assert (final.parent / (final.name + ".error.txt")).read_text().strip()
    assert "leak-1" not in received_users(mock)


# -- content that used to stall or lose rows ----------------------------------------------


def test_a_nul_deep_in_a_file_costs_only_its_own_row(
    hostile: tuple[Settings, Fleet], mock: Mock, store: Store
) -> None:
    settings, fleet = hostile
    rows = 1500
    head = "user_id,message\n" + "".join(f"nul-u{n},message {n}\n" for n in range(rows))
    assert len(head) > 8192
    drop(
        settings.inbox / "nul.csv",
        (head + "nul-bad,has a \x00 inside\nnul-last,after it\n").encode(),
    )
    drop(
        settings.inbox / "nul.jsonl",
        b'{"userId": "jnul-1", "message": "fine"}\n'
        b'{"userId": "jnul-2", "message": "bad \\u0000 escape"}\n'
        b'{"userId": "jnul-3", "message": "fine too"}\n',
    )
    expected = {f"nul-u{n}" for n in range(rows)} | {"nul-last", "jnul-1", "jnul-3"}
    wait_received(mock, expected, timeout=60, what="every row but the NUL ones")
    for name, line in (("nul.csv", rows + 2), ("nul.jsonl", 2)):
        row = wait_delivered(store, mock, fleet, name, 0, timeout=30)
        assert row["status"] == "done" and row["rows_invalid"] == 1, row
        assert row_errors(store, row["id"]) == [(line, "contains a NUL character")]
    assert not {"nul-bad", "jnul-2"} & received_users(mock)
    assert "batch.unreadable" not in fleet.event_names("batcher")


def test_a_file_slower_to_read_than_the_lease_is_read_once_and_its_row_arrives(
    hostile: tuple[Settings, Fleet], mock: Mock, store: Store
) -> None:
    settings, fleet = hostile
    assert settings.lease_seconds <= 3  # reading 300 MB of blank lines takes longer
    blob = zlib.compressobj(9, zlib.DEFLATED, 31)
    body = b"user_id,message\nslow-1,the only row\n"
    data = blob.compress(body) + b"".join(blob.compress(b"\n" * (1 << 20)) for _ in range(300))
    data += blob.compress(b"slow-2,after 300 MB of blank lines\n") + blob.flush()
    drop(settings.inbox / "slow.csv.gz", data)
    wait_received(mock, {"slow-1", "slow-2"}, timeout=120, what="both rows of slow.csv.gz")
    row = wait_delivered(store, mock, fleet, "slow.csv.gz", 2, timeout=30)
    assert (row["status"], row["alerts_total"], row["delivered"]) == ("done", 2, 2)
    events = fleet.event_names("batcher")
    assert events["batch.started"] == 1, events  # never re-queued and read again from 0
    assert events["batch.lock_lost"] == 0


def test_a_gzip_bomb_of_blank_lines_goes_to_failed_and_holds_nothing_up(
    hostile: tuple[Settings, Fleet], mock: Mock, store: Store
) -> None:
    settings, fleet = hostile
    drop(settings.inbox / "bomb.csv.gz", newline_bomb(10))  # 10 GB of newlines
    _good, users = good_file(settings, "after-bomb")
    wait_received(mock, users, what="the good file dropped right after the bomb")
    row = wait_for(
        lambda: (r := file_row(store, "bomb.csv.gz")) and r["status"] == "failed" and r,
        timeout=PROMPT_SECONDS,
        what="bomb.csv.gz failed",
    )
    assert "no content in the first" in row["error"]
    # A graceful stop of the monitor is prompt too.
    monitor = fleet.procs["monitor"]
    started = time.monotonic()
    monitor.send_signal(signal.SIGTERM)
    monitor.wait(timeout=20)
    assert time.monotonic() - started < 10
    fleet.restart("monitor")


def test_names_of_up_to_255_bytes_are_claimed_and_keep_their_name(
    hostile: tuple[Settings, Fleet], mock: Mock, store: Store
) -> None:
    settings, fleet = hostile
    names = {}
    for length in (240, 250, 255):
        stem = f"long{length}-" + "é" * 20
        name = stem + "x" * (length - len(stem.encode()) - len(".csv")) + ".csv"
        assert len(name.encode()) == length
        names[name] = {f"len{length}-u1", f"len{length}-u2"}
        drop(
            settings.inbox / name,
            ("user_id,message\n" + "".join(f"{u},hi\n" for u in names[name])).encode(),
        )
    drop(settings.inbox / ("bad" * 80 + ".csv"), b"\x00\x01binary")  # a long failed name
    wait_received(mock, set().union(*names.values()))
    for name in names:
        row = wait_delivered(store, mock, fleet, name, 2, timeout=30)
        assert row["name"] == name and row["status"] == "done"
        final = Path(
            wait_for(
                lambda r=row: (x := store.get_file(r["id"])) and x.final_path, what="moved to done/"
            )
        )
        assert final.exists() and len(final.name.encode()) <= 255
    failed = wait_for(
        lambda: (r := file_row(store, "bad" * 80 + ".csv")) and r["final_path"] and r,
        timeout=PROMPT_SECONDS,
        what="long binary name in failed/",
    )
    assert Path(failed["final_path"] + ".error.txt").exists()


def test_an_unreadable_file_goes_to_failed_and_the_monitor_goes_on(
    tmp_path: Path,
    redis_url: str,
    key_prefix: str,
    database_url: str,
    mock: Mock,
    store: Store,
    fleet_factory: Callable[[Settings], Fleet],
) -> None:
    settings = chaos_settings(
        tmp_path,
        redis_url=redis_url,
        database_url=database_url,
        webhook_url=mock.url + "/hook",
        key_prefix=key_prefix,  # the shared Redis: the test's keys go when it ends
    )
    fleet = fleet_factory(settings)
    fleet.start("batcher", "worker", "batcher")
    fleet.start("notifier", "worker", "notifier")
    # As root the monitor could read anything; without capabilities (an ordinary user) it
    # cannot read a file whose mode is 000.
    env = {**os.environ, **settings.to_environ()}
    prefix = (
        ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--"] if os.geteuid() == 0 else []
    )
    log_path = tmp_path / "monitor.log"
    with log_path.open("ab") as out:
        monitor = subprocess.Popen(
            [*prefix, sys.executable, "-m", "hookdrop", "monitor"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=dies_with_tests,  # noqa: PLW1509 - one system call
        )
    try:
        wait_for(settings.processing_dir.exists, timeout=30, what="monitor ready")
        staged = settings.inbox / ".locked.tmp"
        staged.write_bytes(b"user_id,message\nlocked-1,never readable\n")
        staged.chmod(0)
        os.rename(staged, settings.inbox / "locked.csv")
        _good, users = good_file(settings, "after-locked")
        wait_received(mock, users)
        row = wait_for(
            lambda: (r := file_row(store, "locked.csv")) and r["status"] == "failed" and r,
            timeout=PROMPT_SECONDS,
            what="locked.csv failed",
        )
        assert "permission denied" in row["error"]
        assert Path(row["final_path"]).parent == settings.failed_dir
        assert monitor.poll() is None
    finally:
        kill_group(monitor)


def test_hidden_names_and_folders_stay_and_a_folder_is_logged_once(
    hostile: tuple[Settings, Fleet], mock: Mock, store: Store
) -> None:
    settings, fleet = hostile
    drop(settings.inbox / "..x.csv", b"user_id,message\nhidden-1,hi\n")
    (settings.inbox / "a-folder").mkdir()
    (settings.inbox / "a-folder" / "inside.csv").write_bytes(b"user_id,message\nin-1,hi\n")
    _good, users = good_file(settings, "after-hidden")
    wait_received(mock, users)
    # A second good file takes several of the monitor's scan rounds (every 0.5 s) to arrive:
    # the hidden file and the folder are still there, and the folder was logged once.
    _good, users = good_file(settings, "after-hidden-2")
    wait_received(mock, users)
    assert (settings.inbox / "..x.csv").exists()
    assert (settings.inbox / "a-folder" / "inside.csv").exists()
    ignored = [e for e in fleet.events("monitor") if e.get("event") == "inbox.ignored"]
    assert [e["name"] for e in ignored if e.get("level") == "info"] == ["a-folder"]
    assert not {"hidden-1", "in-1"} & received_users(mock)


# -- stopping ----------------------------------------------------------------------------


@pytest.mark.parametrize("gap", [0.0, 0.002, 1.2])
def test_two_sigterms_in_quick_succession_always_stop_a_busy_notifier_promptly(
    tmp_path: Path,
    redis_url: str,
    key_prefix: str,
    database_url: str,
    mock: Mock,
    store: Store,
    fleet_factory: Callable[[Settings], Fleet],
    gap: float,
) -> None:
    settings = chaos_settings(
        tmp_path,
        redis_url=redis_url,
        database_url=database_url,
        webhook_url=mock.url + "/hook",
        key_prefix=key_prefix,  # the shared Redis: the test's keys go when it ends
    )
    fleet = fleet_factory(settings)
    fleet.start("monitor", "monitor")
    fleet.start("batcher", "worker", "batcher")
    wait_for(settings.processing_dir.exists, timeout=30, what="monitor ready")
    mock.client.configure(latency_ms=1500)  # every answer takes 1.5 s: the notifier is busy
    users: set[str] = set()
    for attempt in range(4):
        _good, batch = good_file(settings, f"sig{attempt}", rows=200)
        users |= batch
        name = f"notifier-{attempt}"
        fleet.start(name, "worker", "notifier")
        mock.client.wait_until(lambda s: s["in_flight"] > 0, timeout=30, per_user=False)
        process = fleet.procs[name]
        process.send_signal(signal.SIGTERM)
        if gap:
            time.sleep(gap)  # the spacing of the two signals is what is under test
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"attempt {attempt}: the notifier did not stop after two SIGTERMs "
                f"{gap}s apart; logs in {fleet.logs}"
            )
        del fleet.procs[name]
    # Nothing was lost: a fresh notifier delivers everything that was left.
    mock.client.configure(latency_ms=0)
    fleet.start("notifier", "worker", "notifier")
    wait_received(mock, users, timeout=90, what="every row after the stops")


# -- the general rule --------------------------------------------------------------------


def _corpus(outside: Path) -> list[tuple[str, Callable[[Path], None]]]:
    secret = outside / "secret.csv"
    secret.write_bytes(b"user_id,message\nleak-1,outside\n")
    endless = b"user_id,message\nend-1,before\nend-2," + b"x" * (64 << 20)

    def data(content: bytes) -> Callable[[Path], None]:
        return lambda path: drop(path, content)

    def bind_socket(path: Path) -> None:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(str(path))  # the entry stays after the socket is closed

    return [
        ("link.csv", lambda path: path.symlink_to(secret)),
        ("fifo.csv", os.mkfifo),
        ("socket.csv", bind_socket),
        ("folder.csv", lambda path: path.mkdir()),
        (".hidden.csv", data(b"user_id,message\nhidden-1,hi\n")),
        ("binary.csv", data(b"\x00\x01\x02" * 4000)),
        ("nul-deep.csv", data(b"user_id,message\n" + b"nd,x\n" * 3000 + b"nd,\x00\n")),
        ("newlines.csv.gz", data(newline_bomb(10))),
        ("endless.csv", data(endless)),
        ("n" * 251 + ".csv", data(b"user_id,message\nlongname-1,hi\n")),
        ("empty.csv", data(b"")),
        ("cut.csv.gz", data(gzip.compress(b"user_id,message\n" + b"cut,row\n" * 5000)[:900])),
        ("array.json", data(b'[{"userId": "a", "message": "b"}]')),
        ("utf16.csv", data("user_id,message\nu,m\n".encode("utf-16"))),
        ("deep.jsonl", data(b'{"userId": "d1", "message": "m", "x": ' + b"[" * 100_000 + b"\n")),
    ]


def test_after_each_hostile_file_a_good_file_arrives_promptly_and_nothing_restarts(
    hostile: tuple[Settings, Fleet], mock: Mock, tmp_path: Path
) -> None:
    settings, fleet = hostile
    outside = tmp_path / "outside"
    outside.mkdir()
    pids = {name: process.pid for name, process in fleet.procs.items()}
    took: dict[str, float] = {}
    for n, (name, make) in enumerate(_corpus(outside)):
        make(settings.inbox / name)
        _good, users = good_file(settings, f"g{n}")
        took[name] = wait_received(mock, users, what=f"the good file dropped after {name}")
    print(
        "seconds until the good file after each hostile one arrived:",
        {k[:20]: round(v, 2) for k, v in took.items()},
    )
    assert {name: process.pid for name, process in fleet.procs.items()} == pids
    for name in ("monitor", "batcher", "notifier"):
        assert fleet.event_names(name)["process.died"] == 0
    assert "leak-1" not in received_users(mock)


# -- web pages ----------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "a-long-enough-api-token-0123456789"])
def test_a_web_page_cannot_drive_the_running_daemon_s_api(
    tmp_path: Path,
    redis_url: str,
    key_prefix: str,
    database_url: str,
    mock: Mock,
    store: Store,
    fleet_factory: Callable[[Settings], Fleet],
    token: str | None,
) -> None:
    import httpx
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect as ws_connect
    from websockets.typing import Origin

    settings = chaos_settings(
        tmp_path,
        redis_url=redis_url,
        database_url=database_url,
        webhook_url=mock.url + "/hook",
        key_prefix=key_prefix,  # the shared Redis: the test's keys go when it ends
    ).replace(api_token=token)
    fleet = fleet_factory(settings)
    fleet.start("monitor", "monitor")
    fleet.start("batcher", "worker", "batcher")
    fleet.start("notifier", "worker", "notifier")
    wait_for(settings.processing_dir.exists, timeout=30, what="monitor ready")
    _good, users = good_file(settings, "web")
    wait_received(mock, users)
    done = wait_for(
        lambda: (r := file_row(store, "good-web.csv")) and r["status"] == "done" and r,
        timeout=30,
        what="good-web.csv done",
    )
    port = settings.api_listen[1]
    base = f"http://127.0.0.1:{port}"
    evil = "http://127.0.0.1:9"  # another local port: another origin
    with httpx.Client(base_url=base, timeout=10) as client:
        if token:  # the operator's browser holds the cookie; every page's request carries it
            assert client.get("/", params={"token": token}).status_code in (200, 303)
            assert client.cookies
        rebound = client.get("/files", headers={"host": f"evil.example:{port}"})
        assert rebound.status_code == 421
        text = client.post(
            "/files",
            params={"name": "x.csv"},
            content=b"user_id,message\nweb-evil,from a page\n",
            headers={"content-type": "text/plain"},
        )
        form = client.post(f"/files/{done['id']}/resend", data={"a": "b"}, headers={"origin": evil})
        replay = client.post("/dlq/replay", headers={"origin": evil, "x-hookdrop-request": "1"})
        assert (text.status_code, form.status_code, replay.status_code) == (403, 403, 403)
        cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(
            f"ws://127.0.0.1:{port}/ws",
            origin=Origin(evil),
            additional_headers={"cookie": cookie} if cookie else None,
            open_timeout=10,
        )
    assert refused.value.response.status_code == 403
    assert not (settings.inbox / "x.csv").exists()
    with store.transaction() as conn:
        assert conn.execute("SELECT count(*) AS n FROM files").fetchone()["n"] == 1  # no resend
    assert "web-evil" not in received_users(mock)
    assert fleet.dead() == {}


# -- found by attacking the above ---------------------------------------------------------


def test_resending_a_link_set_aside_in_failed_reads_nothing_outside_the_inbox(
    hostile: tuple[Settings, Fleet], mock: Mock, store: Store, tmp_path: Path
) -> None:
    from hookdrop.ops import Conflict, Control

    settings, _fleet = hostile
    secret = tmp_path / "secret.csv"
    secret.write_bytes(b"user_id,message\nleak-resend,outside\n")
    (settings.inbox / "report.csv").symlink_to(secret)
    row = wait_for(
        lambda: (r := file_row(store, "report.csv")) and r["status"] == "failed" and r,
        timeout=PROMPT_SECONDS,
        what="the link set aside",
    )
    import redis as redis_client

    conn = redis_client.Redis.from_url(connections.redis_url(settings))
    try:
        with pytest.raises(Conflict, match="symbolic link"):
            Control(settings, store, conn).resend(row["id"])
    finally:
        conn.close()
    assert [p for p in settings.processing_dir.iterdir()] == []
    _good, users = good_file(settings, "after-resend")
    wait_received(mock, users)
    assert "leak-resend" not in received_users(mock)


def test_one_unsendable_json_row_costs_only_itself(
    hostile: tuple[Settings, Fleet], mock: Mock, store: Store
) -> None:
    settings, fleet = hostile
    deep = "[" * 600 + "]" * 600
    drop(
        settings.inbox / "odd.jsonl",
        b'{"userId": "odd-1", "message": "first"}\n'
        + f'{{"userId": "odd-2", "message": "deep", "x": {deep}, "w": "\\u0000"}}\n'.encode()
        + b'{"userId": "odd-3", "message": "big", "ref": 123456789012345678901234567890}\n'
        b'{"userId": "odd-4", "message": "last"}\n',
    )
    wait_received(mock, {"odd-1", "odd-3", "odd-4"}, timeout=60)
    row = wait_delivered(store, mock, fleet, "odd.jsonl", 3, timeout=30)
    assert (row["status"], row["delivered"], row["rows_invalid"]) == ("done", 3, 1)
    assert "odd-2" not in received_users(mock)
    assert fleet.event_names("batcher")["batch.failed"] == 0


def test_content_rewritten_after_the_claim_is_never_sent(
    hostile: tuple[Settings, Fleet], mock: Mock, store: Store
) -> None:
    settings, fleet = hostile
    # Hold the batcher back so the rewrite lands between the claim and the reading.
    fleet.kill("batcher")
    original = b"user_id,message\nvictim-1,payday reminder\n"
    drop(settings.inbox / "payday.csv", original)
    row = wait_for(
        lambda: file_row(store, "payday.csv"), timeout=PROMPT_SECONDS, what="payday.csv claimed"
    )
    claimed = Path(row["processing_path"])
    before = claimed.stat()
    with claimed.open("r+b") as handle:  # the uploader still owns the file
        handle.write(b"user_id,message\nevil-0001,transfer funds \n"[: len(original)])
    os.utime(claimed, ns=(before.st_atime_ns, before.st_mtime_ns))  # mtime set back
    assert claimed.stat().st_size == before.st_size
    fleet.restart("batcher")
    failed = wait_for(
        lambda: (r := file_row(store, "payday.csv")) and r["status"] == "failed" and r,
        timeout=60,
        what="payday.csv refused",
    )
    assert "changed" in failed["error"]
    _good, users = good_file(settings, "after-rewrite")
    wait_received(mock, users)
    assert not {u for u in received_users(mock) if u.startswith("evil")}


def test_huge_files_being_hashed_do_not_hold_up_small_ones(
    hostile: tuple[Settings, Fleet], mock: Mock, store: Store
) -> None:
    settings, _fleet = hostile
    for n in range(3):  # sparse: 40 GB each, no disk used, minutes to hash
        path = settings.inbox / f".huge-{n}.tmp"
        path.write_bytes(b"user_id,message\n" + b"huge,row\n" * 10)
        os.truncate(path, 40 << 30)
        os.rename(path, settings.inbox / f"huge-{n}.csv")
    wait_for(
        lambda: len(list(settings.processing_dir.iterdir())) >= 1,
        timeout=30,
        what="a huge file claimed",
    )
    _good, users = good_file(settings, "beside-huge")
    took = wait_received(mock, users, what="the small file beside the huge ones")
    assert took < PROMPT_SECONDS


def test_a_processing_folder_taken_away_is_made_again(
    hostile: tuple[Settings, Fleet], mock: Mock
) -> None:
    settings, fleet = hostile
    wait_for(
        lambda: fleet.event_names("monitor")["monitor.started"], timeout=30, what="monitor running"
    )
    settings.processing_dir.rename(settings.inbox / "elsewhere")
    _good, users = good_file(settings, "after-folder")
    wait_received(mock, users)
    assert settings.processing_dir.is_dir()
    assert fleet.event_names("monitor")["inbox.folder_recreated"] == 1
