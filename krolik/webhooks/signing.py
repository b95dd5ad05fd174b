"""Signatures of webhook deliveries, and the helper a receiver verifies them with.

The convention Stripe and GitHub users know: an HMAC-SHA256, keyed by a secret both
sides hold, over the delivery's timestamp and its body exactly as sent::

    Krolik-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>." + body>
    Krolik-Key-Id: main

The timestamp inside the signature lets a receiver refuse an old delivery replayed (a
tolerance of five minutes by default); the key id lets secrets rotate: sign with the
new one while receivers still know the old. This module imports nothing beyond the
standard library, so a receiver can use it without the rest of Krolik's dependencies.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

SIGNATURE_HEADER = "Krolik-Signature"
KEY_ID_HEADER = "Krolik-Key-Id"
DELIVERY_HEADER = "Krolik-Delivery"
"""The delivery's id: the same on every attempt, so a receiver can drop a repeat."""
EVENT_HEADER = "Krolik-Event"
SCHEME = "v1"
DEFAULT_TOLERANCE_SECONDS = 300.0


class WebhookSignatureError(ValueError):
    """The delivery is not signed by a key the receiver knows, or is too old."""


def signature(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of ``b"<timestamp>." + body`` keyed by ``secret``."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(
    body: bytes, key_id: str, secret: str | bytes, timestamp: int | None = None
) -> dict[str, str]:
    """The headers that sign ``body`` with ``secret`` (known to receivers as ``key_id``)."""
    stamp = int(time.time()) if timestamp is None else timestamp
    return {
        SIGNATURE_HEADER: f"t={stamp},{SCHEME}={signature(secret, stamp, body)}",
        KEY_ID_HEADER: key_id,
    }


def verify(
    body: bytes,
    headers: Mapping[str, str],
    secrets: Mapping[str, str | bytes],
    *,
    tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> int:
    """Check a delivery as received: ``body`` the raw bytes, ``headers`` its headers (any
    case), ``secrets`` key id -> secret. Returns the signed timestamp; raises
    ``WebhookSignatureError`` when the key id is unknown, the signature does not match,
    or the timestamp is further than ``tolerance_seconds`` from ``now``.

    Verify before parsing the body, and with the bytes as they came: a re-encoded JSON
    document is not what was signed."""
    lowered = {name.lower(): value for name, value in headers.items()}
    header = lowered.get(SIGNATURE_HEADER.lower())
    key_id = lowered.get(KEY_ID_HEADER.lower())
    if header is None or key_id is None:
        raise WebhookSignatureError(f"no {SIGNATURE_HEADER} or {KEY_ID_HEADER} header")
    secret = secrets.get(key_id)
    if secret is None:
        raise WebhookSignatureError(f"unknown key id {key_id!r}")
    stamp, signatures = _parse(header)
    expected = signature(secret, stamp, body)
    if not any(hmac.compare_digest(expected, given) for given in signatures):
        raise WebhookSignatureError("the signature does not match the body")
    current = time.time() if now is None else now
    if abs(current - stamp) > tolerance_seconds:
        raise WebhookSignatureError(
            f"the signature's timestamp is {abs(current - stamp):.0f}s away from now"
        )
    return stamp


def _parse(header: str) -> tuple[int, list[str]]:
    """``t=<unix seconds>,v1=<hex>[,v1=<hex>...]`` -> (timestamp, v1 signatures)."""
    stamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t":
            try:
                stamp = int(value)
            except ValueError:
                raise WebhookSignatureError("the signature's timestamp is not a number") from None
        elif name == SCHEME:
            signatures.append(value)
    if stamp is None or not signatures:
        raise WebhookSignatureError(f"{SIGNATURE_HEADER} lacks t= or {SCHEME}=")
    return stamp, signatures
