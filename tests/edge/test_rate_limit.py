"""Rate limiting with the ``limits`` library: per API key, or per client address without
keys; past the limit, 429 with an integer Retry-After and a message."""

from __future__ import annotations

import asyncio

import httpx

from tests.edge.conftest import AppClient, MakeKey, wait_until

LIMIT = {"limit": "5/second"}
WINDOW_SECONDS = 1.0


async def _burst(api: httpx.AsyncClient, headers: dict[str, str] | None = None) -> list[int]:
    """Six requests one after the other, all inside one window of the limit."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    codes = [(await api.get("/tasks", headers=headers)).status_code for _ in range(6)]
    assert loop.time() - started < WINDOW_SECONDS, "the burst outlasted the window"
    return codes


def _assert_limited(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    retry_after = response.headers["Retry-After"]
    assert retry_after.isdigit(), retry_after
    assert int(retry_after) >= 1
    detail = response.json()["detail"]
    assert "rate limit" in detail
    assert "5 per 1 second" in detail


async def test_sixth_request_in_the_second_is_429(make_client: AppClient):
    api = await make_client(rate_limit=LIMIT)
    codes = await _burst(api)
    assert codes == [200, 200, 200, 200, 200, 429]
    _assert_limited(await api.get("/tasks"))


async def test_the_limit_lifts_after_retry_after(make_client: AppClient):
    api = await make_client(rate_limit=LIMIT)
    assert (await _burst(api))[-1] == 429

    async def allowed_again() -> bool:
        return (await api.get("/tasks")).status_code == 200

    # Refused requests do not count, so polling does not extend the wait.
    await wait_until(allowed_again, timeout=3, what="the window moved on")


async def test_limits_are_per_key(make_client: AppClient, make_key: MakeKey):
    first, second = await make_key("read"), await make_key("read")
    api = await make_client(auth={"enabled": True}, rate_limit=LIMIT)
    assert await _burst(api, first.headers) == [200] * 5 + [429]
    assert await _burst(api, second.headers) == [200] * 5 + [429]
    _assert_limited(await api.get("/tasks", headers=first.headers))


async def test_limits_are_per_client_address_without_keys(make_client: AppClient):
    one = await make_client(rate_limit=LIMIT, client=("10.1.0.1", 5000))
    # The same app, seen from another address.
    other = httpx.AsyncClient(
        transport=httpx.ASGITransport(
            app=one.app,  # type: ignore[attr-defined]
            client=("10.1.0.2", 5000),
            raise_app_exceptions=False,
        ),
        base_url=one.base_url,
    )
    async with other:
        assert await _burst(one) == [200] * 5 + [429]
        assert await _burst(other) == [200] * 5 + [429]
        # Another port of the same address is the same client.
        same_host = httpx.AsyncClient(
            transport=httpx.ASGITransport(
                app=one.app,  # type: ignore[attr-defined]
                client=("10.1.0.2", 5001),
                raise_app_exceptions=False,
            ),
            base_url=one.base_url,
        )
        async with same_host:
            _assert_limited(await same_host.get("/tasks"))


async def test_refused_keys_count_against_the_client_address(
    make_client: AppClient, make_key: MakeKey
):
    """A client guessing keys has no key to be counted against: its address is."""
    good = await make_key("read")
    api = await make_client(auth={"enabled": True}, rate_limit=LIMIT)
    wrong = {"Authorization": "Bearer krolik_not-a-key"}
    assert await _burst(api, wrong) == [401] * 5 + [429]
    _assert_limited(await api.get("/tasks"))  # no key at all: the same address
    # A valid key is counted on its own, whatever its address did.
    assert (await api.get("/tasks", headers=good.headers)).status_code == 200


async def test_health_and_metrics_are_not_rate_limited(make_client: AppClient):
    api = await make_client(rate_limit=LIMIT)
    for path in ("/health", "/metrics"):
        codes = [(await api.get(path)).status_code for _ in range(8)]
        assert codes == [200] * 8, (path, codes)


async def test_no_limit_by_default(make_client: AppClient):
    api = await make_client()
    codes = [(await api.get("/tasks")).status_code for _ in range(12)]
    assert codes == [200] * 12
