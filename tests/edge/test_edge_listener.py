"""`zuulpush.edge.listener.listener_status`: whether the node's listening socket still listens, on
real (unconnected) OS sockets, no event loop."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from zuulpush.edge.listener import listener_status


class FakeServer:
    """What `listener_status` reads of an `asyncio.Server`: its sockets' descriptors."""

    def __init__(self, *fds: int) -> None:
        self.sockets = [FakeSocket(fd) for fd in fds]


class FakeSocket:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock


def port_of(sock: socket.socket) -> int:
    return int(sock.getsockname()[1])


def test_a_listening_socket_is_ok(listening: socket.socket) -> None:
    assert listener_status(FakeServer(listening.fileno()), port_of(listening)) == "ok"  # type: ignore[arg-type]


def test_a_socket_listening_on_another_port_is_gone(listening: socket.socket) -> None:
    server: Any = FakeServer(listening.fileno())
    assert listener_status(server, port_of(listening) + 1) == "gone"


def test_a_closed_descriptor_is_gone(listening: socket.socket) -> None:
    port = port_of(listening)
    fd = os.dup(listening.fileno())
    os.close(fd)
    assert listener_status(FakeServer(fd), port) == "gone"  # type: ignore[arg-type]


def test_a_descriptor_reused_by_a_connection_or_a_pipe_is_gone(listening: socket.socket) -> None:
    port = port_of(listening)
    with socket.create_connection(("127.0.0.1", port)) as client:
        server: Any = FakeServer(client.fileno())
        assert listener_status(server, port) == "gone"
    read, write = os.pipe()
    try:
        assert listener_status(FakeServer(read), port) == "gone"  # type: ignore[arg-type]
    finally:
        os.close(read)
        os.close(write)


def test_no_server_or_no_socket_is_gone() -> None:
    assert listener_status(None, 80) == "gone"
    assert listener_status(FakeServer(), 80) == "gone"  # type: ignore[arg-type]


def test_the_probe_leaves_no_descriptor_behind(listening: socket.socket) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(100):
        listener_status(FakeServer(listening.fileno()), port_of(listening))  # type: ignore[arg-type]
        listener_status(FakeServer(listening.fileno()), 1)  # type: ignore[arg-type]
    assert len(os.listdir("/proc/self/fd")) == before
