"""Framing and classification: the reader must be right whatever the chunk boundaries."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfmd.sources.twitter.framing import (
    FramingError,
    LengthFramer,
    LineFramer,
    MessageKind,
    classify,
    disconnect_reason,
    is_tweet,
    parse_notice,
    triage,
)

TWEET = json.dumps({"created_at": "Sat Nov 28 00:00:00 +0000 2026", "id": 2**62, "text": "é\r\n"})
MESSAGES = [
    TWEET.encode(),
    b'{"delete":{"status":{"id":1,"id_str":"1","user_id":3}}}',
    b'{"limit":{"track":42,"timestamp_ms":"1"}}',
    b'{"disconnect":{"code":7,"stream_name":"x","reason":"admin logout"}}',
    b'{"warning":{"code":"FALLING_BEHIND","percent_full":60}}',
    b'{"status_withheld":{"id":1}}',
    b"not json at all",
    b"{" + b'"text":"' + b"x" * 700_000 + b'"}',  # larger than aiohttp's line cap
]


def crlf_body(messages: list[bytes], keepalives: bool = True) -> bytes:
    out = b"\r\n" if keepalives else b""
    for m in messages:
        out += m + b"\r\n"
        if keepalives:
            out += b"\r\n"
    return out


def length_body(messages: list[bytes]) -> bytes:
    out = b"\r\n"
    for m in messages:
        framed = m + b"\r\n"
        out += str(len(framed)).encode() + b"\r\n" + framed + b"\r\n"
    return out


def feed_in_pieces(framer: LineFramer | LengthFramer, body: bytes, cuts: list[int]) -> list[bytes]:
    out: list[bytes] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(body)]:
        out += framer.feed(body[last:cut])
        last = cut
    return out


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_line_framer_any_chunking(cuts: list[int]) -> None:
    small = MESSAGES[:-1]
    body = crlf_body(small)
    framer = LineFramer()
    assert feed_in_pieces(framer, body, [c % len(body) for c in cuts]) == small
    assert framer.pending == 0
    assert framer.keepalives == len(small) + 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_length_framer_any_chunking(cuts: list[int]) -> None:
    small = MESSAGES[:-1]
    body = length_body(small)
    framer = LengthFramer()
    assert feed_in_pieces(framer, body, [c % len(body) for c in cuts]) == small
    assert framer.pending == 0


def test_every_single_offset_of_one_message() -> None:
    """A cut at each byte offset of a message, for both framings."""
    message = MESSAGES[0]
    for make, framer_type in ((crlf_body, LineFramer), (length_body, LengthFramer)):
        body = make([message, message])
        for cut in range(len(body) + 1):
            framer = framer_type()
            assert framer.feed(body[:cut]) + framer.feed(body[cut:]) == [message, message]


def test_big_messages_pass_both_framers() -> None:
    assert LineFramer().feed(crlf_body(MESSAGES)) == MESSAGES
    assert LengthFramer().feed(length_body(MESSAGES)) == MESSAGES


def test_partial_tail_is_pending_not_returned() -> None:
    framer = LineFramer()
    assert framer.feed(MESSAGES[1] + b"\r\n" + MESSAGES[2][:10]) == [MESSAGES[1]]
    assert framer.pending == 10


def test_bare_lf_ends_a_message_so_lines_stay_messages() -> None:
    assert LineFramer().feed(b'{"a":1}\n{"b":2}\r\n') == [b'{"a":1}', b'{"b":2}']


def test_runaway_line_is_a_framing_error() -> None:
    framer = LineFramer(max_message=100)
    with pytest.raises(FramingError):
        framer.feed(b"x" * 101)


@pytest.mark.parametrize("body", [b"12x\r\n", b"9" * 20 + b"\r\n", b"z" * 40])
def test_bad_length_prefix_is_a_framing_error(body: bytes) -> None:
    with pytest.raises(FramingError):
        LengthFramer().feed(body)


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        (MESSAGES[0], MessageKind.TWEET),
        (MESSAGES[1], MessageKind.DELETE),
        (b'{"scrub_geo":{"user_id":1}}', MessageKind.DELETE),
        (MESSAGES[2], MessageKind.LIMIT),
        (MESSAGES[3], MessageKind.DISCONNECT),
        (MESSAGES[4], MessageKind.WARNING),
        (MESSAGES[5], MessageKind.OTHER),
        (MESSAGES[6], MessageKind.OTHER),
        (b'{ "delete" :{}}', MessageKind.DELETE),
        (b'{"id":1,"text":"delete"}', MessageKind.TWEET),
        (b"", MessageKind.OTHER),
    ],
)
def test_classify(message: bytes, kind: MessageKind) -> None:
    assert classify(message) is kind
    assert is_tweet(message) == (kind is MessageKind.TWEET)


def test_notices_and_disconnect_codes() -> None:
    assert parse_notice(MESSAGES[3])["disconnect"]["code"] == 7
    assert parse_notice(b"{broken") == {}
    assert "admin logout" in disconnect_reason(7)
    assert "unknown" in disconnect_reason(99)
    assert all(disconnect_reason(c) != disconnect_reason(99) for c in range(1, 13))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*MESSAGES[:-1], b'{"created_at":"x","id":1}', b"{}"]),
                max_size=40))
def test_triage_says_what_classify_says(messages: list[bytes]) -> None:
    tweets, others = triage(messages)
    assert tweets == sum(1 for m in messages if classify(m) is MessageKind.TWEET)
    assert others == [(classify(m), m) for m in messages if classify(m) is not MessageKind.TWEET]
