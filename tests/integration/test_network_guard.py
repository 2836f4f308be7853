"""The test-wide network guard (tests/conftest.py): a library that calls home must fail the suite."""

from __future__ import annotations

import socket
import threading

import pytest

from tests.conftest import NetworkRefused


def test_non_loopback_connection_is_refused() -> None:
    # 192.0.2.1 is TEST-NET-1 (RFC 5737): never routable, so even a broken guard could not reach anything.
    with pytest.raises(NetworkRefused, match=r"192\.0\.2\.1.*only loopback is allowed"):
        socket.create_connection(("192.0.2.1", 80), timeout=0.5)


def test_connect_ex_is_guarded_too() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock, pytest.raises(NetworkRefused):
        sock.connect_ex(("192.0.2.1", 443))


def test_loopback_is_allowed() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        accepted: list[bytes] = []

        def serve() -> None:
            conn, _ = server.accept()
            with conn:
                accepted.append(conn.recv(16))

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with socket.create_connection(("127.0.0.1", port), timeout=2) as client:
            client.sendall(b"ping")
        thread.join(timeout=5)
    assert accepted == [b"ping"]


def test_guard_predicate_allows_only_loopback_and_unix_sockets() -> None:
    from tests.conftest import _is_loopback

    assert _is_loopback(("127.0.0.1", 80))
    assert _is_loopback(("127.8.9.10", 80))
    assert _is_loopback(("::1", 80, 0, 0))
    assert _is_loopback(("localhost", 80))
    assert _is_loopback("/tmp/some.sock")
    assert not _is_loopback(("192.0.2.1", 80))
    assert not _is_loopback(("10.0.0.1", 80))
    assert not _is_loopback(("example.com", 443))
