"""Hostile input: each answer is a 4xx with a JSON ``detail``, never a 500, and nothing
is stored. A large payload under the body limit is still accepted."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import orjson
import pytest

from krolik.store.base import TaskStore
from krolik.store.records import TaskFilter
from tests.edge.conftest import AppClient

MiB = 1_048_576


@pytest.fixture
async def api(make_client: AppClient) -> httpx.AsyncClient:
    return await make_client()


async def _task_count(store: TaskStore) -> int:
    return len(await store.list_tasks(TaskFilter(), before_id=None, limit=10_000))


def _assert_rejected(response: httpx.Response, *codes: int) -> Any:
    """A 4xx (one of ``codes`` when given) with a JSON body holding ``detail``."""
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:500])
    if codes:
        assert response.status_code in codes, (response.status_code, response.text[:500])
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["detail"], body
    return body["detail"]


def _nested(depth: int) -> Any:
    value: Any = "bottom"
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"payload": "a\x00b"}, id="nul-in-payload-string"),
        pytest.param({"payload": {"deep": ["ok", "bad\x00"]}}, id="nul-deep-in-payload"),
        pytest.param({"payload": {"k\x00ey": 1}}, id="nul-in-payload-key"),
        pytest.param({"payload": 1, "idempotency_key": "key\x00"}, id="nul-in-idempotency-key"),
        pytest.param({"payload": 1, "name": "na\x00me"}, id="nul-in-name"),
        pytest.param({"payload": 1, "queue": "qu\x00eue"}, id="nul-in-queue"),
        pytest.param({"payload": _nested(40)}, id="nested-40-levels"),
        pytest.param({"payload": 1, "surprise": True}, id="unknown-field"),
        pytest.param({"payload": 1, "name": ""}, id="empty-name"),
        pytest.param({"payload": 1, "name": "x" * 201}, id="name-too-long"),
        pytest.param({"payload": 1, "queue": "no spaces"}, id="bad-queue-name"),
        pytest.param({"payload": 1, "max_attempts": 0}, id="max-attempts-0"),
        pytest.param({"payload": 1, "max_attempts": 2**63}, id="max-attempts-huge"),
        pytest.param({"payload": 1, "timeout_seconds": -1}, id="negative-timeout"),
        pytest.param({"payload": 1, "run_at": "yesterday"}, id="bad-run-at"),
        pytest.param(
            {"payload": 1, "run_at": "2030-01-01T00:00:00Z", "delay_seconds": 1}, id="two-schedules"
        ),
        pytest.param({"payload": 1, "idempotency_key": ""}, id="empty-idempotency-key"),
        pytest.param({}, id="no-payload"),
    ],
)
async def test_bad_task_bodies_are_422(api: httpx.AsyncClient, store: TaskStore, body: Any):
    response = await api.post(
        "/tasks/", content=orjson.dumps(body), headers={"Content-Type": "application/json"}
    )
    _assert_rejected(response, 422)
    assert await _task_count(store) == 0


async def test_nesting_at_the_limit_is_accepted(api: httpx.AsyncClient, store: TaskStore):
    """30 levels is deep but allowed (the bound is 32): the check is not over-eager."""
    response = await api.post("/tasks/", json={"payload": _nested(30)})
    assert response.status_code == 201, response.text[:300]
    assert response.json()["payload"] == _nested(30)


async def test_a_900kb_string_payload_is_accepted(api: httpx.AsyncClient, store: TaskStore):
    payload = "p" * 900_000
    response = await api.post("/tasks/", json={"payload": payload})
    assert response.status_code == 201, response.text[:300]
    stored = await store.get(response.json()["id"])
    assert stored is not None
    assert stored.payload == payload


async def test_a_422_does_not_echo_the_body_back(api: httpx.AsyncClient, store: TaskStore):
    response = await api.post("/tasks/", json={"payload": "q" * 900_000 + "\x00"})
    detail = _assert_rejected(response, 422)
    assert detail[0]["loc"] == ["body", "payload"]
    assert "NUL" in detail[0]["msg"]
    assert len(response.content) < 2000
    assert await _task_count(store) == 0


async def test_a_huge_array_over_the_limit_is_413(api: httpx.AsyncClient, store: TaskStore):
    body = orjson.dumps({"payload": list(range(300_000))})
    assert len(body) > MiB
    response = await api.post("/tasks/", content=body, headers={"Content-Type": "application/json"})
    detail = _assert_rejected(response, 413)
    assert str(MiB) in detail
    assert await _task_count(store) == 0


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"payload": NaN}', id="nan-payload"),
        pytest.param(b'{"payload": {"a": [1, Infinity]}}', id="infinity-in-payload"),
        pytest.param(b'{"payload": -Infinity}', id="minus-infinity-payload"),
        pytest.param(b'{"payload": 1e999}', id="overflowing-number-payload"),
        pytest.param(b'{"payload": 1, "delay_seconds": 1e999}', id="overflowing-delay"),
        pytest.param(b'{"payload": 1, "timeout_seconds": NaN}', id="nan-timeout"),
        pytest.param(b'{"payload": 1, "delay_seconds": NaN}', id="nan-delay"),
        pytest.param(b'{"payload": 1, "timeout_seconds": [NaN, 1e999]}', id="nan-in-wrong-type"),
    ],
)
async def test_nan_and_infinity_are_422(api: httpx.AsyncClient, store: TaskStore, raw: bytes):
    """Python's JSON parser accepts them; they are not JSON, and were stored as null."""
    response = await api.post("/tasks/", content=raw, headers={"Content-Type": "application/json"})
    _assert_rejected(response, 422)
    assert await _task_count(store) == 0


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"payload": 1180591620717411303424}', id="payload-int-over-64-bit"),
        pytest.param(b'{"payload": {"n": [-1180591620717411303424]}}', id="deep-int-over-64-bit"),
        pytest.param(
            b'{"payload": 1, "timeout_seconds": [-711796439904599801856]}',
            id="int-over-64-bit-in-wrong-type",
        ),
        pytest.param(
            b'{"payload": 1, "max_attempts": 1180591620717411303424}', id="max-attempts-over-64-bit"
        ),
        pytest.param(b'{"payload": ' + b"[" * 900 + b"]" * 900 + b"}", id="nested-900-levels"),
    ],
)
async def test_numbers_and_nesting_json_allows_are_4xx_not_500(
    api: httpx.AsyncClient, store: TaskStore, raw: bytes
):
    response = await api.post("/tasks/", content=raw, headers={"Content-Type": "application/json"})
    _assert_rejected(response)
    assert await _task_count(store) == 0


@pytest.mark.parametrize(
    ("content", "content_type"),
    [
        pytest.param(b'{"payload": 1}', "text/plain", id="text-plain-with-json"),
        pytest.param(b'{"payload": 1', "application/json", id="invalid-json"),
        pytest.param(b"{'payload': 1}", "application/json", id="single-quotes"),
        pytest.param(b"", "application/json", id="empty-body"),
        pytest.param(b"", None, id="empty-body-no-type"),
        pytest.param(b'[{"payload": 1}]', "application/json", id="array-body"),
        pytest.param(b'"payload"', "application/json", id="string-body"),
        pytest.param(b"null", "application/json", id="null-body"),
        pytest.param(b"\xff\xfe\x00garbage", "application/json", id="binary-body"),
    ],
)
async def test_bad_bodies_are_4xx(
    api: httpx.AsyncClient, store: TaskStore, content: bytes, content_type: str | None
):
    headers = {"Content-Type": content_type} if content_type else {}
    response = await api.post("/tasks/", content=content, headers=headers)
    _assert_rejected(response, 400, 415, 422)
    assert await _task_count(store) == 0


@pytest.mark.parametrize("task_id", ["0", "-1", str(2**63), str(2**64), "abc", "1.5", "1e3"])
@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("POST", "/cancel"), ("POST", "/retry")]
)
async def test_bad_task_ids_in_the_path_are_422(
    api: httpx.AsyncClient, task_id: str, method: str, suffix: str
):
    response = await api.request(method, f"/tasks/{task_id}{suffix}")
    _assert_rejected(response, 422)


async def test_largest_task_id_is_a_plain_404(api: httpx.AsyncClient):
    response = await api.get(f"/tasks/{2**63 - 1}")
    _assert_rejected(response, 404)


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param("!!!not-base64!!!", id="garbage"),
        pytest.param("a", id="one-character"),
        pytest.param(_b64("id:abc"), id="id-abc"),
        pytest.param(_b64("id:0"), id="id-0"),
        pytest.param(_b64("id:-5"), id="id-negative"),
        pytest.param(_b64(f"id:{2**63}"), id="id-too-big"),
        pytest.param(_b64("ix:12"), id="wrong-prefix"),
        pytest.param(_b64("12"), id="no-prefix"),
        pytest.param(base64.urlsafe_b64encode(b"\xff\xfe:1").decode(), id="not-utf8"),
        pytest.param("A" * 5000, id="very-long"),
        pytest.param(_b64("id:" + "9" * 60), id="long-number"),
    ],
)
async def test_bad_cursors_are_4xx(api: httpx.AsyncClient, cursor: str):
    response = await api.get("/tasks", params={"cursor": cursor})
    _assert_rejected(response, 400, 422)


async def test_a_good_cursor_pages(api: httpx.AsyncClient):
    ids = [
        (await api.post("/tasks/", json={"payload": i, "delay_seconds": 3600})).json()["id"]
        for i in range(3)
    ]
    first = (await api.get("/tasks", params={"limit": 2})).json()
    assert [item["id"] for item in first["items"]] == ids[:0:-1]
    second = (await api.get("/tasks", params={"limit": 2, "cursor": first["next_cursor"]})).json()
    assert [item["id"] for item in second["items"]] == ids[:1]
    assert second["next_cursor"] is None


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"status": "bogus"}, id="status-bogus"),
        pytest.param({"status": ""}, id="status-empty"),
        pytest.param({"limit": "0"}, id="limit-0"),
        pytest.param({"limit": "-1"}, id="limit-negative"),
        pytest.param({"limit": "100000"}, id="limit-100000"),
        pytest.param({"limit": "ten"}, id="limit-text"),
        pytest.param({"name": "bad name\x00"}, id="name-nul"),
        pytest.param({"queue": "q" * 65}, id="queue-too-long"),
    ],
)
async def test_bad_list_filters_are_422(api: httpx.AsyncClient, params: dict[str, str]):
    response = await api.get("/tasks", params=params)
    _assert_rejected(response, 422)


@pytest.mark.parametrize("path", ["/tasks/", "/tasks/1/cancel"])
async def test_wrong_methods_are_405_not_500(api: httpx.AsyncClient, path: str):
    response = await api.request("DELETE", path)
    _assert_rejected(response, 405)


async def test_unknown_path_is_404_json(api: httpx.AsyncClient):
    _assert_rejected(await api.get("/nothing/here"), 404)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "json"],
)
async def test_a_body_not_sent_as_json_is_422_saying_so(
    api: httpx.AsyncClient, store: TaskStore, content_type: str | None
):
    """``curl -d`` without ``-H`` sends a form type: the answer tells what to send."""
    headers = {"Content-Type": content_type} if content_type else {}
    response = await api.post("/tasks/", content=b'{"payload": 1}', headers=headers)
    detail = _assert_rejected(response, 422)
    assert detail == [
        {
            "type": "content_type",
            "loc": ["body"],
            "msg": "the body must be JSON, sent with Content-Type: application/json",
        }
    ]
    assert await _task_count(store) == 0


@pytest.mark.parametrize(
    "content_type",
    ["application/json", "Application/JSON; charset=utf-8", "application/vnd.krolik+json"],
)
async def test_json_media_types_with_parameters_are_read(
    api: httpx.AsyncClient, store: TaskStore, content_type: str
):
    response = await api.post(
        "/tasks/", content=b'{"payload": [1, "two"]}', headers={"Content-Type": content_type}
    )
    assert response.status_code == 201, response.text
    assert response.json()["payload"] == [1, "two"]
    assert await _task_count(store) == 1


@pytest.mark.parametrize(
    ("raw", "error_type", "loc"),
    [
        pytest.param(b'{"payload": 1', "json_invalid", ["body"], id="truncated"),
        pytest.param(b'{"payload": "\\ud800"}', "json_invalid", ["body"], id="lone-surrogate"),
        pytest.param(b"[1]", "model_type", ["body"], id="not-an-object"),
        pytest.param(b"{}", "missing", ["body", "payload"], id="no-payload"),
        pytest.param(b'{"payload": 1, "colour": 2}', "extra_forbidden", ["body", "colour"]),
        pytest.param(
            b'{"payload": 1, "max_attempts": 0}',
            "greater_than_equal",
            ["body", "max_attempts"],
            id="zero-attempts",
        ),
    ],
)
async def test_invalid_bodies_say_what_and_where(
    api: httpx.AsyncClient, store: TaskStore, raw: bytes, error_type: str, loc: list[str]
):
    response = await api.post("/tasks/", content=raw, headers={"Content-Type": "application/json"})
    detail = _assert_rejected(response, 422)
    assert [(error["type"], error["loc"]) for error in detail] == [(error_type, loc)]
    assert all(error["msg"] and "input" not in error for error in detail)
    assert await _task_count(store) == 0
