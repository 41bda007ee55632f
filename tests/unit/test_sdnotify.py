"""hookdrop.sdnotify against real unix datagram sockets standing in for systemd."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hookdrop import sdnotify
from hookdrop.sdnotify import Notifier


class Receiver:
    """A bound datagram socket playing systemd's side of NOTIFY_SOCKET."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env = {"NOTIFY_SOCKET": env_value}

    def messages(self) -> list[list[str]]:
        """Every datagram received so far, split into lines."""
        got: list[list[str]] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return got
            got.append(data.decode("utf-8").split("\n"))


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[Receiver]:
    path = tmp_path / "notify.sock"
    assert len(os.fsencode(path)) < 100, "tmp_path too long for a unix socket address"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    try:
        yield Receiver(sock, str(path))
    finally:
        sock.close()


@pytest.fixture
def abstract_receiver() -> Iterator[Receiver]:
    name = f"hookdrop-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.setblocking(False)
    try:
        yield Receiver(sock, "@" + name)
    finally:
        sock.close()


def test_notify_without_socket_is_a_noop() -> None:
    assert sdnotify.notify("READY=1", environ={}) is False
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": ""}) is False
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.ready("up") is False
    assert notifier.watchdog() is False


def test_notify_sends_lines_as_one_datagram(receiver: Receiver) -> None:
    assert sdnotify.notify("READY=1", "STATUS=serving", environ=receiver.env) is True
    assert receiver.messages() == [["READY=1", "STATUS=serving"]]


def test_notify_to_abstract_socket(abstract_receiver: Receiver) -> None:
    assert sdnotify.notify("READY=1", environ=abstract_receiver.env) is True
    assert abstract_receiver.messages() == [["READY=1"]]


def test_notify_to_missing_socket_returns_false(tmp_path: Path) -> None:
    env = {"NOTIFY_SOCKET": str(tmp_path / "absent.sock")}
    assert sdnotify.notify("READY=1", environ=env) is False


def test_unsupported_address_kind_is_ignored() -> None:
    assert sdnotify.notify("READY=1", environ={"NOTIFY_SOCKET": "vsock:2:1234"}) is False


def test_module_helpers(receiver: Receiver) -> None:
    env = receiver.env
    assert sdnotify.ready("connected to Redis and PostgreSQL", environ=env)
    assert sdnotify.status("3 files in processing/", environ=env)
    assert sdnotify.stopping(environ=env)
    assert receiver.messages() == [
        ["READY=1", "STATUS=connected to Redis and PostgreSQL"],
        ["STATUS=3 files in processing/"],
        ["STOPPING=1"],
    ]


def test_module_watchdog_needs_watchdog_usec(receiver: Receiver) -> None:
    assert sdnotify.watchdog(environ=receiver.env) is False
    env = {**receiver.env, "WATCHDOG_USEC": "30000000"}
    assert sdnotify.watchdog(environ=env) is True
    assert receiver.messages() == [["WATCHDOG=1"]]


def test_status_text_is_kept_on_one_line(receiver: Receiver) -> None:
    Notifier(receiver.env).stopping("draining\nchunk 4")
    assert receiver.messages() == [["STOPPING=1", "STATUS=draining chunk 4"]]


def test_notifier_reads_its_environment_once(receiver: Receiver) -> None:
    env = dict(receiver.env)
    notifier = Notifier(env)
    env.clear()
    assert notifier.enabled
    assert notifier.status("still here")
    assert receiver.messages() == [["STATUS=still here"]]


def test_extend_timeout(receiver: Receiver) -> None:
    assert Notifier(receiver.env).extend_timeout(45)
    assert receiver.messages() == [["EXTEND_TIMEOUT_USEC=45000000"]]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}, 0.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
    ],
)
def test_watchdog_interval(environ: dict[str, str], expected: float | None) -> None:
    assert sdnotify.watchdog_interval(environ) == expected


def test_watchdog_interval_explicit_pid() -> None:
    env = {"WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "4242"}
    assert sdnotify.watchdog_interval(env, pid=4242) == 2.0
    assert sdnotify.watchdog_interval(env, pid=4243) is None


def test_watchdog_if_due_pings_once_per_interval(receiver: Receiver) -> None:
    notifier = Notifier({**receiver.env, "WATCHDOG_USEC": "10000000"})
    assert notifier.watchdog_interval == 5.0
    assert notifier.watchdog_if_due(now=100.0) is True
    assert notifier.watchdog_if_due(now=104.9) is False
    assert notifier.watchdog_if_due(now=105.0) is True
    assert receiver.messages() == [["WATCHDOG=1"], ["WATCHDOG=1"]]


def test_watchdog_for_another_pid_stays_silent(receiver: Receiver) -> None:
    notifier = Notifier({**receiver.env, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1"},
                        pid=2)
    assert notifier.watchdog_interval is None
    assert notifier.watchdog() is False
    assert notifier.watchdog_if_due() is False
    assert notifier.ready() is True  # READY=1 still goes out: only the watchdog is per-PID
    assert receiver.messages() == [["READY=1"]]


def test_child_environ_drops_notify_variables() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "REDIS_URL": "r"}
    assert sdnotify.child_environ(env) == {"REDIS_URL": "r"}
