"""Where webhooks may go: the allow-list and the internal addresses (SSRF)."""

from __future__ import annotations

import pytest

from krolik.settings import WebhookSettings
from krolik.webhooks.targets import ForbiddenWebhook, Target, WebhookTargets


def targets(*allowed: str) -> WebhookTargets:
    return WebhookTargets(WebhookSettings(allowed_hosts=list(allowed)))


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/krolik",
        "http://93.184.215.14:8080/in",
        "https://[2606:2800:21f:cb07:6820:80da:af6b:8b2c]/",
    ],
)
def test_public_hosts_are_allowed_without_a_list(url: str) -> None:
    assert targets().check(url).url == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://hooks.example.com/x", "http:// or https://"),
        ("hooks.example.com/x", "http:// or https://"),
        ("http:///path", "no host"),
        ("http://example.com:99999/", "not a valid URL"),
        ("http://127.0.0.1:8000/", "internal address"),
        ("http://10.1.2.3/", "internal address"),
        ("http://169.254.169.254/latest/meta-data", "internal address"),
        ("http://100.64.0.1/", "internal address"),
        ("http://[::1]/", "internal address"),
        ("http://[::ffff:127.0.0.1]/", "internal address"),
        ("http://0.0.0.0/", "internal address"),
        ("http://localhost:8000/", "internal"),
        ("http://api.localhost/", "internal"),
        ("https://x.example.com/" + "a" * 2048, "longer than"),
    ],
)
def test_what_is_refused_and_why(url: str, message: str) -> None:
    with pytest.raises(ForbiddenWebhook, match=message):
        targets().check(url)


def test_a_list_allows_only_its_hosts() -> None:
    allowed = targets("hooks.example.com", "*.partner.example", "127.0.0.1/32")
    for url in (
        "https://hooks.example.com/a",
        "https://eu.partner.example/b",
        "http://127.0.0.1:9000/c",
    ):
        allowed.check(url)
    for url in ("https://example.com/", "https://partner.example.evil/", "http://127.0.0.2/"):
        with pytest.raises(ForbiddenWebhook, match="not in APP__WEBHOOKS__ALLOWED_HOSTS"):
            allowed.check(url)


def test_an_internal_host_named_by_the_list_is_allowed() -> None:
    targets("localhost").check("http://localhost:8000/hook")
    targets("10.0.0.0/8").check("http://10.1.2.3/hook")


async def test_a_name_that_resolves_inside_is_refused_before_the_call() -> None:
    with pytest.raises(ForbiddenWebhook, match="is the internal address"):
        await targets().check_resolved(Target("http://localhost/", "localhost", 80))
    await targets("localhost").check_resolved(Target("http://localhost/", "localhost", 80))


def test_a_queue_url_the_list_refuses_stops_the_start() -> None:
    with pytest.raises(ValueError, match="QUEUE_URLS of 'emails'"):
        WebhookTargets(WebhookSettings(queue_urls={"emails": "http://10.0.0.1/"}))
