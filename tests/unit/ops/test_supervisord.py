"""The XML-RPC client's address, without a supervisord (sfmd.ops.supervisord)."""

from __future__ import annotations

from sfmd.ops.supervisord import SupervisorClient


def test_an_http_url_never_shows_its_password() -> None:
    client = SupervisorClient("http://admin:hunter2@127.0.0.1:9001")
    assert "hunter2" not in repr(client)
    assert client._endpoint == "http://127.0.0.1:9001/RPC2"
