"""Names as KV keys: plain names stay readable, any name round-trips, keys stay one token."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sfmd.cluster.keys import decode_key, encode_key

KEY = re.compile(r"[-/_=.A-Za-z0-9]+")


def test_ordinary_names_stay_as_they_are() -> None:
    assert encode_key("default") == "default"
    assert encode_key("news-2024_a") == "news-2024_a"


def test_dots_spaces_and_letters_beyond_ascii_are_escaped() -> None:
    assert encode_key("acct.v2-filter") == "acct=2Ev2-filter"
    assert encode_key("a b") == "a=20b"
    assert encode_key("é") == "=C3=A9"


@given(st.text(min_size=1, max_size=80))
def test_every_name_round_trips_as_one_valid_token(name: str) -> None:
    key = encode_key(name)
    assert KEY.fullmatch(key) and "." not in key
    assert decode_key(key) == name


@given(st.text(min_size=1, max_size=20), st.text(min_size=1, max_size=20))
def test_two_names_never_share_a_key(a: str, b: str) -> None:
    assert (encode_key(a) == encode_key(b)) == (a == b)


def test_an_empty_name_has_no_key() -> None:
    with pytest.raises(ValueError, match="empty"):
        encode_key("")
