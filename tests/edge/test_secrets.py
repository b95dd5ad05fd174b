"""Secrets stay secret: settings' repr, readiness output, every kind of error answer and
the structured logs never show the database or AMQP password (or the URLs holding them)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable

import httpx
import orjson

from krolik.settings import Settings
from krolik.store.records import NewTask
from tests.edge.conftest import DB_PASSWORD, AppClient, MakeKey, ProxiedStore, bearer, unique

AMQP_PASSWORD = "amqp-s3cret-pw"


def _secrets(settings: Settings) -> list[str]:
    found = [DB_PASSWORD, settings.db.dsn, settings.rabbitmq.dsn]
    if "guest:guest@" in settings.rabbitmq.dsn:
        found.append("guest:guest")
    return found


def _assert_clean(text: str, secrets: list[str]) -> None:
    for secret in secrets:
        assert secret not in text, f"{secret!r} leaked"


def test_settings_repr_and_dumps_hide_both_passwords(make_settings: Callable[..., Settings]):
    settings = make_settings(
        db={"url": f"postgresql+asyncpg://postgres:{DB_PASSWORD}@db.example:5432/krolik"},
        rabbitmq={"url": f"amqp://krolik:{AMQP_PASSWORD}@mq.example:5672/"},
    )
    assert DB_PASSWORD in settings.db.dsn  # the value is there, for whoever asks for it
    assert AMQP_PASSWORD in settings.rabbitmq.dsn
    shown = [
        repr(settings),
        str(settings),
        repr(settings.db),
        repr(settings.rabbitmq),
        str(settings.model_dump()),
        settings.model_dump_json(),
        f"{settings}",
    ]
    for text in shown:
        assert DB_PASSWORD not in text
        assert AMQP_PASSWORD not in text
        assert "db.example" not in text  # the whole URL is secret, not just the password


async def test_readiness_shows_no_secret(make_client: AppClient, settings: Settings):
    api = await make_client()
    ready = await api.get("/health/ready")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}
    _assert_clean(ready.text, _secrets(settings))


async def _error_answers(
    api: httpx.AsyncClient, admin: dict[str, str], reader: dict[str, str], task_id: int
) -> dict[int, httpx.Response]:
    """One request for each kind of error answer the API gives, by status code."""
    answers: dict[int, httpx.Response] = {}
    answers[401] = await api.get("/tasks", headers=bearer("krolik_wrong"))
    answers[403] = await api.post("/tasks/", json={"payload": 1}, headers=reader)
    answers[404] = await api.get(f"/tasks/{2**62}", headers=admin)
    answers[400] = await api.get("/tasks", params={"cursor": "garbage!"}, headers=admin)
    answers[422] = await api.post("/tasks/", json={"payload": "\x00"}, headers=admin)
    answers[413] = await api.post(
        "/tasks/",
        content=orjson.dumps({"payload": "x" * 5000}),
        headers={**admin, "Content-Type": "application/json"},
    )
    await api.post(f"/tasks/{task_id}/cancel", headers=admin)
    answers[409] = await api.post(f"/tasks/{task_id}/cancel", headers=admin)
    for _ in range(10):
        limited = await api.get("/queues", headers=reader)
        if limited.status_code == 429:
            answers[429] = limited
            break
    return answers


async def test_no_error_answer_shows_a_secret(
    make_client: AppClient,
    make_settings: Callable[..., Settings],
    proxied_store: ProxiedStore,
    make_key: MakeKey,
):
    settings = make_settings(
        db={"url": proxied_store.url},
        auth={"enabled": True, "cache_seconds": 0},
        rate_limit={"limit": "5/second"},
        api={"max_payload_bytes": 4096},
    )
    admin, reader = await make_key("admin"), await make_key("read")
    api = await make_client(settings=settings, the_store=proxied_store.store)
    [created] = await proxied_store.store.enqueue(
        [NewTask(name="default", queue=unique("q"), payload=1, delay_seconds=3600)]
    )
    answers = await _error_answers(api, admin.headers, reader.headers, created.task.id)
    assert sorted(answers) == [400, 401, 403, 404, 409, 413, 422, 429]
    for status, response in answers.items():
        assert response.status_code == status, (status, response.text)
        _assert_clean(response.text + json.dumps(dict(response.headers)), _secrets(settings))

    await proxied_store.proxy.cut()
    for response in [
        await api.post("/tasks/", json={"payload": 1}, headers=admin.headers),
        await api.get("/tasks", headers=admin.headers),
        await api.get("/health/ready"),
    ]:
        assert response.status_code == 503, response.text
        _assert_clean(response.text + json.dumps(dict(response.headers)), _secrets(settings))


async def test_logs_of_a_database_outage_show_no_password(
    make_client: AppClient,
    make_settings: Callable[..., Settings],
    proxied_store: ProxiedStore,
    captured_logs: io.StringIO,
):
    settings = make_settings(db={"url": proxied_store.url})
    api = await make_client(settings=settings, the_store=proxied_store.store)
    assert (await api.post("/tasks/", json={"payload": 1})).status_code == 201
    await proxied_store.proxy.cut()
    assert (await api.post("/tasks/", json={"payload": 2})).status_code == 503
    assert (await api.get("/tasks/1")).status_code == 503
    assert (await api.get("/health/ready")).status_code == 503

    lines = [json.loads(line) for line in captured_logs.getvalue().splitlines() if line]
    events = {line["event"] for line in lines}
    assert "store_unavailable" in events, events  # the capture works: the outage is logged
    text = captured_logs.getvalue()
    _assert_clean(text, _secrets(settings))
    assert "postgresql+asyncpg://" not in text
