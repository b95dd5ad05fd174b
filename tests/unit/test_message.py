from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from krolik.broker.wire import (
    MAX_TASKS_PER_MESSAGE,
    MalformedMessage,
    TaskMessage,
    encode_messages,
    pack,
)
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


# -- packed messages -----------------------------------------------------------------
pairs = st.lists(st.tuples(ids, texts), min_size=1, max_size=20)


@given(tasks=pairs, queue=texts)
def test_encode_messages_round_trips_through_decode_many(
    tasks: list[tuple[int, str]], queue: str
) -> None:
    messages = [TaskMessage(task_id=i, name=n, queue=queue) for i, n in tasks]
    assert TaskMessage.decode_many(encode_messages(messages)) == messages


def test_one_task_is_encoded_in_the_single_task_form() -> None:
    """A lone task keeps the old wire form, which workers of the last release read."""
    body = encode_messages([TaskMessage(7, "echo", "default")])
    assert orjson.loads(body) == {"task_id": 7, "name": "echo", "queue": "default"}
    assert TaskMessage.decode(body) == TaskMessage(7, "echo", "default")


def test_several_tasks_are_encoded_in_the_packed_form() -> None:
    body = encode_messages([TaskMessage(7, "echo", "q"), TaskMessage(3, "sleep", "q")])
    assert orjson.loads(body) == {"queue": "q", "tasks": [[7, "echo"], [3, "sleep"]]}


def test_decode_many_reads_the_single_task_form() -> None:
    assert TaskMessage.decode_many(_body(task_id=5)) == [TaskMessage(5, "echo", "default")]


def test_decode_many_keeps_the_order_and_duplicates_of_a_packed_message() -> None:
    body = orjson.dumps({"queue": "q", "tasks": [[9, "b"], [2, "a"], [9, "b"]]})
    assert TaskMessage.decode_many(body) == [
        TaskMessage(9, "b", "q"),
        TaskMessage(2, "a", "q"),
        TaskMessage(9, "b", "q"),
    ]


def test_decode_accepts_a_packed_message_of_one_task() -> None:
    body = orjson.dumps({"queue": "q", "tasks": [[4, "echo"]]})
    assert TaskMessage.decode(body) == TaskMessage(4, "echo", "q")


def test_decode_refuses_a_packed_message_of_several_tasks() -> None:
    """decode() is for one task: it must not silently drop the others of a packed body."""
    body = encode_messages([TaskMessage(1, "echo", "q"), TaskMessage(2, "echo", "q")])
    with pytest.raises(MalformedMessage, match="more than one task"):
        TaskMessage.decode(body)


def test_the_packed_form_wins_over_single_task_fields() -> None:
    body = orjson.dumps({"queue": "q", "task_id": 1, "name": "x", "tasks": [[2, "y"]]})
    assert TaskMessage.decode_many(body) == [TaskMessage(2, "y", "q")]


def _packed(tasks: object = _MISSING, queue: object = "q") -> bytes:
    data: dict[str, object] = {}
    if queue is not _MISSING:
        data["queue"] = queue
    if tasks is not _MISSING:
        data["tasks"] = tasks
    return orjson.dumps(data)


@pytest.mark.parametrize(
    ("body", "match"),
    [
        pytest.param(_packed(tasks=None), "tasks is not a list", id="tasks-null"),
        pytest.param(_packed(tasks={"1": "echo"}), "tasks is not a list", id="tasks-object"),
        pytest.param(_packed(tasks="1,echo"), "tasks is not a list", id="tasks-string"),
        pytest.param(_packed(tasks=[]), "tasks is not a list", id="tasks-empty"),
        pytest.param(
            _packed(tasks=[[i, "echo"] for i in range(1, MAX_TASKS_PER_MESSAGE + 2)]),
            "tasks is not a list",
            id="too-many",
        ),
        pytest.param(_packed(tasks=[1]), "not a \\[task_id, name\\] pair", id="item-int"),
        pytest.param(_packed(tasks=[[1]]), "pair", id="item-short"),
        pytest.param(_packed(tasks=[[1, "a", "b"]]), "pair", id="item-long"),
        pytest.param(_packed(tasks=[{"task_id": 1, "name": "a"}]), "pair", id="item-object"),
        pytest.param(_packed(tasks=[[1, "a"], "2,b"]), "pair", id="second-item-bad"),
        pytest.param(_packed(tasks=[[0, "a"]]), "task_id", id="id-zero"),
        pytest.param(_packed(tasks=[[-1, "a"]]), "task_id", id="id-negative"),
        pytest.param(_packed(tasks=[[2**63, "a"]]), "task_id", id="id-huge"),
        pytest.param(_packed(tasks=[["1", "a"]]), "task_id", id="id-string"),
        pytest.param(_packed(tasks=[[True, "a"]]), "task_id", id="id-bool"),
        pytest.param(_packed(tasks=[[1.0, "a"]]), "task_id", id="id-float"),
        pytest.param(_packed(tasks=[[1, "a"], [None, "b"]]), "task_id", id="second-id-bad"),
        pytest.param(_packed(tasks=[[1, ""]]), "name", id="name-empty"),
        pytest.param(_packed(tasks=[[1, 5]]), "name", id="name-number"),
        pytest.param(_packed(tasks=[[1, None]]), "name", id="name-null"),
        pytest.param(_packed(tasks=[[1, "a"]], queue=_MISSING), "queue", id="queue-missing"),
        pytest.param(_packed(tasks=[[1, "a"]], queue=""), "queue", id="queue-empty"),
        pytest.param(_packed(tasks=[[1, "a"]], queue=3), "queue", id="queue-number"),
    ],
)
def test_malformed_packed_bodies_raise(body: bytes, match: str) -> None:
    with pytest.raises(MalformedMessage, match=match):
        TaskMessage.decode_many(body)
    with pytest.raises(MalformedMessage):
        TaskMessage.decode(body)


def test_the_largest_packed_message_is_accepted() -> None:
    body = _packed(tasks=[[i, "echo"] for i in range(1, MAX_TASKS_PER_MESSAGE + 1)])
    messages = TaskMessage.decode_many(body)
    assert len(messages) == MAX_TASKS_PER_MESSAGE
    assert messages[-1] == TaskMessage(MAX_TASKS_PER_MESSAGE, "echo", "q")


@given(st.binary(max_size=64))
def test_arbitrary_bytes_decode_many_or_raise_malformed(body: bytes) -> None:
    try:
        messages = TaskMessage.decode_many(body)
    except MalformedMessage:
        return
    assert 0 < len(messages) <= MAX_TASKS_PER_MESSAGE
    assert all(0 < m.task_id < 2**63 and m.name and m.queue for m in messages)


def _ids(groups: list[list[TaskMessage]]) -> list[list[int]]:
    return [[m.task_id for m in group] for group in groups]


def test_pack_cuts_one_queue_into_groups_of_at_most_per_message_in_order() -> None:
    messages = [TaskMessage(i, "echo", "q") for i in range(1, 8)]
    assert _ids(pack(messages, 3)) == [[1, 2, 3], [4, 5, 6], [7]]


def test_pack_never_puts_two_queues_in_one_group() -> None:
    messages = [
        TaskMessage(1, "echo", "a"),
        TaskMessage(2, "echo", "b"),
        TaskMessage(3, "echo", "a"),
        TaskMessage(4, "echo", "b"),
        TaskMessage(5, "echo", "a"),
    ]
    groups = pack(messages, 10)
    assert _ids(groups) == [[1, 3, 5], [2, 4]]
    assert [{m.queue for m in group} for group in groups] == [{"a"}, {"b"}]


def test_pack_with_one_per_message_keeps_one_task_per_group_in_order() -> None:
    messages = [TaskMessage(i, "echo", "a" if i % 2 else "b") for i in range(1, 6)]
    groups = pack(messages, 1)
    assert all(len(group) == 1 for group in groups)
    assert sorted(_ids(groups)) == [[1], [2], [3], [4], [5]]
    assert [g[0].task_id for g in groups if g[0].queue == "a"] == [1, 3, 5]
    assert [g[0].task_id for g in groups if g[0].queue == "b"] == [2, 4]


@pytest.mark.parametrize("per_message", [0, -3])
def test_pack_treats_a_per_message_below_one_as_one(per_message: int) -> None:
    messages = [TaskMessage(i, "echo", "q") for i in (1, 2)]
    assert _ids(pack(messages, per_message)) == [[1], [2]]


def test_pack_of_nothing_is_no_group() -> None:
    assert pack([], 10) == []


@given(
    messages=st.lists(
        st.builds(TaskMessage, task_id=ids, name=st.just("n"), queue=st.sampled_from("abc")),
        max_size=40,
    ),
    per_message=st.integers(min_value=1, max_value=12),
)
def test_pack_loses_nothing_and_keeps_each_queues_order(
    messages: list[TaskMessage], per_message: int
) -> None:
    groups = pack(messages, per_message)
    assert all(0 < len(group) <= per_message for group in groups)
    assert all(len({m.queue for m in group}) == 1 for group in groups)
    for queue in "abc":
        packed = [m for group in groups if group[0].queue == queue for m in group]
        assert packed == [m for m in messages if m.queue == queue]
