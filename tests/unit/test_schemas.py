from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from krolik.api.schemas import MAX_JSON_DEPTH, TaskCreate, check_json


def nested(depth: int, leaf: object = 1, kind: str = "list") -> object:
    value = leaf
    for _ in range(depth):
        value = [value] if kind == "list" else {"k": value}
    return value


def test_only_payload_is_required():
    body = TaskCreate(payload={"a": 1})
    assert body.payload == {"a": 1}
    assert body.name is None
    assert body.queue is None
    assert body.run_at is None
    with pytest.raises(ValidationError):
        TaskCreate.model_validate({})


def test_null_payload_is_accepted():
    assert TaskCreate.model_validate({"payload": None}).payload is None


@pytest.mark.parametrize(
    "payload",
    [
        "a\x00b",
        {"k": "a\x00"},
        {"a\x00": 1},
        ["ok", ["deep", {"x": "\x00"}]],
        {"outer": {"in\x00ner": None}},
    ],
)
def test_nul_in_payload_is_rejected(payload):
    with pytest.raises(ValidationError, match="NUL"):
        TaskCreate(payload=payload)


def test_nul_in_idempotency_key_is_rejected():
    with pytest.raises(ValidationError, match="NUL"):
        TaskCreate(payload=1, idempotency_key="key\x00")
    assert TaskCreate(payload=1, idempotency_key="key").idempotency_key == "key"


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_depth_limit(kind):
    TaskCreate(payload=nested(MAX_JSON_DEPTH, kind=kind))
    with pytest.raises(ValidationError, match="nested deeper"):
        TaskCreate(payload=nested(MAX_JSON_DEPTH + 1, kind=kind))


def test_depth_limit_is_32():
    assert MAX_JSON_DEPTH == 32
    check_json(nested(32))
    with pytest.raises(ValueError, match="nested deeper"):
        check_json(nested(33))


def test_very_deep_payload_is_rejected_not_a_recursion_error():
    with pytest.raises(ValidationError, match="nested deeper"):
        TaskCreate(payload=nested(5000))


def test_run_at_and_delay_together_are_rejected():
    with pytest.raises(ValidationError, match="not both"):
        TaskCreate(payload=1, run_at=datetime.now(UTC), delay_seconds=5)
    assert TaskCreate(payload=1, delay_seconds=5).delay_seconds == 5
    assert TaskCreate(payload=1, run_at=datetime.now(UTC)).run_at is not None


def test_naive_run_at_becomes_utc():
    body = TaskCreate.model_validate({"payload": 1, "run_at": "2030-01-02T03:04:05"})
    assert body.run_at == datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert body.run_at.utcoffset() == timedelta(0)


def test_aware_run_at_keeps_its_zone():
    zone = timezone(timedelta(hours=2))
    body = TaskCreate(payload=1, run_at=datetime(2030, 1, 1, 12, tzinfo=zone))
    assert body.run_at is not None
    assert body.run_at.utcoffset() == timedelta(hours=2)
    assert body.run_at == datetime(2030, 1, 1, 10, tzinfo=UTC)


def test_unknown_field_is_rejected():
    with pytest.raises(ValidationError, match="extra"):
        TaskCreate.model_validate({"payload": 1, "priorty": 5})


@pytest.mark.parametrize("name", ["default", "emails.send", "a:b-c_d.e", "X" * 200, "0"])
def test_valid_names(name):
    assert TaskCreate(payload=1, name=name).name == name


@pytest.mark.parametrize("name", ["", "with space", "slash/name", "é", "X" * 201, "a\x00", "a\n"])
def test_invalid_names(name):
    with pytest.raises(ValidationError):
        TaskCreate(payload=1, name=name)


@pytest.mark.parametrize("queue", ["default", "q-1", "Q_2", "x" * 64])
def test_valid_queues(queue):
    assert TaskCreate(payload=1, queue=queue).queue == queue


@pytest.mark.parametrize("queue", ["", "a.b", "a:b", "x" * 65, "a b", "a\n"])
def test_invalid_queues(queue):
    with pytest.raises(ValidationError):
        TaskCreate(payload=1, queue=queue)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("max_attempts", 1001),
        ("timeout_seconds", 0),
        ("timeout_seconds", 7 * 86400 + 1),
        ("delay_seconds", -1),
        ("delay_seconds", 366 * 86400 + 1),
        ("idempotency_key", ""),
        ("idempotency_key", "k" * 201),
    ],
)
def test_bounds(field, value):
    with pytest.raises(ValidationError):
        TaskCreate.model_validate({"payload": 1, field: value})
