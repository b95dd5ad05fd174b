"""Where webhooks may go: the allow-list, checked at submit and again before each call.

A webhook is a request Krolik makes on a user's behalf, so it must not become a way into
the network Krolik runs in (SSRF). A URL is refused at submit (422) when its scheme is
not HTTP(S), when an allow-list is set and its host is not on it, or when its host is an
internal address (loopback, private, link-local, shared, reserved; ``localhost``) that
no entry names. Before each call the host name is resolved and the same rule applies to
every address it resolves to: a public name pointing inside is refused then.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from krolik.errors import SubmissionRefused
from krolik.settings import WebhookSettings

MAX_URL_LENGTH = 2048
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ForbiddenWebhook(SubmissionRefused):
    """A webhook URL Krolik will not call."""


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    host: str
    port: int


def is_internal(address: Address) -> bool:
    """Not a public unicast address: what a webhook must not reach unless allowed."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not address.is_global or address.is_multicast


class WebhookTargets:
    """The allow-list of ``APP__WEBHOOKS__ALLOWED_HOSTS``, and the checks made with it."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.names: set[str] = set()
        self.suffixes: list[str] = []
        self.networks: list[Network] = []
        for entry in settings.allowed_hosts:
            entry = entry.strip().lower().rstrip(".")
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                self.suffixes.append(entry[1:])
            else:
                self.names.add(entry)
        for queue, url in settings.queue_urls.items():
            try:
                self.check(url)
            except ForbiddenWebhook as exc:
                raise ValueError(f"APP__WEBHOOKS__QUEUE_URLS of {queue!r}: {exc}") from None

    def check(self, url: str) -> Target:
        """The URL's target, or ``ForbiddenWebhook`` saying why it is refused."""
        if len(url) > MAX_URL_LENGTH:
            raise ForbiddenWebhook(f"webhook_url is longer than {MAX_URL_LENGTH} characters")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise ForbiddenWebhook(f"webhook_url is not a valid URL: {exc}") from None
        if parts.scheme not in ("http", "https"):
            raise ForbiddenWebhook("webhook_url must be an http:// or https:// URL")
        host = (parts.hostname or "").rstrip(".")
        if not host:
            raise ForbiddenWebhook("webhook_url has no host")
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        named = self._named(host)
        if (self.names or self.suffixes or self.networks) and not named:
            address = _address(host)
            if address is None or not self._in_networks(address):
                raise ForbiddenWebhook(
                    f"webhook_url's host {host!r} is not in APP__WEBHOOKS__ALLOWED_HOSTS"
                )
        if not named:
            address = _address(host)
            if address is not None:
                self._check_address(host, address)
            elif host == "localhost" or host.endswith(".localhost"):
                raise ForbiddenWebhook(
                    f"webhook_url's host {host!r} is internal; "
                    "name it in APP__WEBHOOKS__ALLOWED_HOSTS to allow it"
                )
        return Target(url=url, host=host, port=port)

    async def check_resolved(self, target: Target) -> None:
        """Refuse a host name that resolves to an internal address no entry allows."""
        if self._named(target.host) or _address(target.host) is not None:
            return  # named by the operator, or an address checked already
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                target.host, target.port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise ConnectionError(f"cannot resolve {target.host!r}: {exc}") from None
        for *_, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%")[0])
            self._check_address(target.host, address)

    def _named(self, host: str) -> bool:
        host = host.lower()
        return host in self.names or any(host.endswith(suffix) for suffix in self.suffixes)

    def _in_networks(self, address: Address) -> bool:
        return any(address in network for network in self.networks)

    def _check_address(self, host: str, address: Address) -> None:
        if is_internal(address) and not self._in_networks(address):
            raise ForbiddenWebhook(
                f"webhook_url's host {host!r} is the internal address {address}; "
                "allow its network in APP__WEBHOOKS__ALLOWED_HOSTS to call it"
            )


def _address(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
