"""hookdrop.sdnotify against real unix datagram sockets standing in for systemd."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hookdrop import sdnotify


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


def test_child_environ_drops_notify_variables() -> None:
    env = {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "1", "WATCHDOG_PID": "2", "REDIS_URL": "r"}
    assert sdnotify.child_environ(env) == {"REDIS_URL": "r"}
