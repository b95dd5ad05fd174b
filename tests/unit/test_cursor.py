from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from krolik.api.errors import BadRequest
from krolik.api.routes.tasks import decode_cursor, encode_cursor
from krolik.api.schemas import MAX_ID


@given(st.integers(min_value=1, max_value=MAX_ID))
def test_round_trip(task_id):
    cursor = encode_cursor(task_id)
    assert "=" not in cursor
    assert set(cursor) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    assert len(cursor) <= 100  # the API's max_length for the query parameter
    assert decode_cursor(cursor) == task_id


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "a",
        "abcde",
        b64(b"id:"),
        b64(b"id:abc"),
        b64(b"id:0"),
        b64(b"id:-3"),
        b64(f"id:{MAX_ID + 1}".encode()),
        b64(b"ix:5"),
        b64(b"5"),
        b64(b"\xff\xfe:5"),
        b64(b"id:1.5"),
        b64(b""),
    ],
)
def test_garbage_cursor_raises_bad_request(cursor):
    with pytest.raises(BadRequest) as info:
        decode_cursor(cursor)
    assert "cursor" in info.value.detail


@given(st.text(max_size=40))
def test_any_text_decodes_or_raises_bad_request(cursor):
    try:
        value = decode_cursor(cursor)
    except BadRequest:
        return
    assert 0 < value <= MAX_ID
