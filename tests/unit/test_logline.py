"""A log event as people read it, and JSON keys in reading order."""

from __future__ import annotations

from sfmd import logline


def test_json_keys_come_in_reading_order_and_nothing_is_lost() -> None:
    event = {"stream": "f1", "reason": "x", "wait": 0.25, "event": "disconnected",
             "level": "warning", "timestamp": "2026-12-05T00:40:31.709123Z"}
    ordered = logline.ordered(event)
    assert list(ordered) == ["timestamp", "level", "event", "stream", "reason", "wait"]
    assert ordered == event


def test_a_line_for_the_daemon_a_connection_and_a_traceback() -> None:
    daemon = logline.render({"timestamp": "2026-12-05T00:40:31Z", "level": "info",
                             "event": "startup", "streams": 3, "config": "/etc/sfm/a b.toml"})
    assert daemon == ('2026-12-05T00:40:31Z INFO  -                startup  streams=3 '
                      'config="/etc/sfm/a b.toml"')
    shared = logline.render({"timestamp": "2026-12-05T00:40:31.5Z", "level": "error",
                             "event": "stream_crashed", "connection": "v2-filter@alpha",
                             "rules": ["a", "b"], "exception": "Traceback...\nValueError\n"})
    head, *trace = shared.splitlines()
    assert head == ('2026-12-05T00:40:31.5Z ERROR v2-filter@alpha  stream_crashed  '
                    'rules=["a","b"]')
    assert trace == ["Traceback...", "ValueError"]
