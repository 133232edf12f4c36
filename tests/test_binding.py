"""`zuulpush.binding`: the one line a listener that cannot bind its address is reported as."""

from __future__ import annotations

import errno
import socket

import pytest

from zuulpush.binding import ListenError, address, listening


def test_the_line_names_the_address_the_listener_and_the_systems_reason() -> None:
    refused = OSError(errno.EADDRINUSE, "error while attempting to bind on address "
                      "('127.0.0.1', 8080): address already in use")  # as uvloop words it
    with pytest.raises(ListenError) as caught, listening("the edge (--port)", "127.0.0.1", 8080):
        raise refused
    assert str(caught.value) == ("cannot listen on 127.0.0.1:8080 for the edge (--port): "
                                 "address already in use")
    assert (caught.value.host, caught.value.port) == ("127.0.0.1", 8080)


def test_an_ipv6_host_is_bracketed() -> None:
    assert address("::1", 8080) == "[::1]:8080"
    assert address("[::1]", 8080) == "[::1]:8080"
    assert address("push.example", 443) == "push.example:443"


def test_a_real_bind_on_a_taken_port() -> None:
    with socket.socket() as taken, socket.socket() as second:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with (pytest.raises(ListenError, match=f"127.0.0.1:{port} for the API"),
              listening("the API (--api-port)", "127.0.0.1", port)):
            second.bind(("127.0.0.1", port))
