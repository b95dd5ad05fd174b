from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from krolik.broker.base import MalformedMessage, TaskMessage
from krolik.errors import KrolikError

ids = st.integers(min_value=1, max_value=2**63 - 1)
texts = st.text(min_size=1, max_size=50)


@given(task_id=ids, name=texts, queue=texts)
def test_round_trip(task_id, name, queue):
    message = TaskMessage(task_id=task_id, name=name, queue=queue)
    body = message.encode()
    assert isinstance(body, bytes)
    assert TaskMessage.decode(body) == message


def test_encoding_is_a_plain_json_object():
    body = TaskMessage(task_id=7, name="echo", queue="default").encode()
    assert orjson.loads(body) == {"task_id": 7, "name": "echo", "queue": "default"}


def test_extra_fields_are_ignored():
    body = orjson.dumps({"task_id": 3, "name": "n", "queue": "q", "extra": [1, 2]})
    assert TaskMessage.decode(body) == TaskMessage(3, "n", "q")


def _body(**changes: object) -> bytes:
    data: dict[str, object] = {"task_id": 1, "name": "echo", "queue": "default"}
    for key, value in changes.items():
        if value is _MISSING:
            data.pop(key)
        else:
            data[key] = value
    return orjson.dumps(data)


_MISSING = object()


@pytest.mark.parametrize(
    ("body", "match"),
    [
        pytest.param(b"", "not JSON", id="empty"),
        pytest.param(b"not json", "not JSON", id="garbage"),
        pytest.param(b"{", "not JSON", id="truncated"),
        pytest.param(b"\xff\xfe", "not JSON", id="not-utf8"),
        pytest.param(b"[1, 2]", "not a JSON object", id="array"),
        pytest.param(b"42", "not a JSON object", id="number"),
        pytest.param(b'"task"', "not a JSON object", id="string"),
        pytest.param(b"null", "not a JSON object", id="null"),
        pytest.param(_body(task_id=_MISSING), "task_id", id="task_id-missing"),
        pytest.param(_body(task_id=None), "task_id", id="task_id-null"),
        pytest.param(_body(task_id=0), "task_id", id="task_id-zero"),
        pytest.param(_body(task_id=-5), "task_id", id="task_id-negative"),
        pytest.param(_body(task_id=2**63), "task_id", id="task_id-huge"),
        pytest.param(
            b'{"task_id": 99999999999999999999999, "name": "a", "queue": "b"}',
            None,
            id="task_id-beyond-64-bit",
        ),
        pytest.param(_body(task_id=True), "task_id", id="task_id-bool"),
        pytest.param(_body(task_id=1.0), "task_id", id="task_id-float"),
        pytest.param(_body(task_id="1"), "task_id", id="task_id-string"),
        pytest.param(_body(name=_MISSING), "name", id="name-missing"),
        pytest.param(_body(name=""), "name", id="name-empty"),
        pytest.param(_body(name=3), "name", id="name-number"),
        pytest.param(_body(queue=_MISSING), "queue", id="queue-missing"),
        pytest.param(_body(queue=""), "queue", id="queue-empty"),
        pytest.param(_body(queue=["default"]), "queue", id="queue-list"),
    ],
)
def test_malformed_bodies_raise(body, match):
    with pytest.raises(MalformedMessage, match=match):
        TaskMessage.decode(body)


def test_malformed_message_is_a_krolik_error():
    assert issubclass(MalformedMessage, KrolikError)


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_or_raise_malformed(body):
    try:
        message = TaskMessage.decode(body)
    except MalformedMessage:
        return
    assert 0 < message.task_id < 2**63
    assert message.name
    assert message.queue
