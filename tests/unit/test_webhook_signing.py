"""The signature of a delivery, as a receiver checks it with ``krolik.webhooks.verify``."""

from __future__ import annotations

import pytest

from krolik.webhooks import KEY_ID_HEADER, SIGNATURE_HEADER, WebhookSignatureError, sign, verify
from krolik.webhooks.signing import signature

BODY = b'{"event":"task.ended","task":{"id":7,"status":"done"}}'
NOW = 1_800_000_000
SECRETS = {"main": "s3cret", "old": "0ld-s3cret"}


def test_a_signed_body_verifies_and_gives_its_timestamp() -> None:
    headers = sign(BODY, "main", "s3cret", timestamp=NOW)
    assert headers[KEY_ID_HEADER] == "main"
    assert verify(BODY, headers, SECRETS, now=NOW + 10) == NOW


def test_headers_are_matched_in_any_case() -> None:
    headers = {name.lower(): value for name, value in sign(BODY, "main", "s3cret", NOW).items()}
    assert verify(BODY, headers, SECRETS, now=NOW) == NOW


def test_the_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(b"s3cret", f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert signature("s3cret", NOW, BODY) == expected
    assert sign(BODY, "main", "s3cret", NOW)[SIGNATURE_HEADER] == f"t={NOW},v1={expected}"


@pytest.mark.parametrize(
    ("body", "key_id", "secret", "message"),
    [
        (BODY + b" ", "main", "s3cret", "does not match"),  # the body was changed
        (BODY, "main", "wrong", "does not match"),  # signed with another secret
        (BODY, "gone", "s3cret", "unknown key id"),
    ],
)
def test_a_changed_body_or_an_unknown_key_is_refused(
    body: bytes, key_id: str, secret: str, message: str
) -> None:
    headers = sign(BODY, key_id, secret, timestamp=NOW)
    with pytest.raises(WebhookSignatureError, match=message):
        verify(body, headers, SECRETS, now=NOW)


def test_an_old_delivery_replayed_is_refused() -> None:
    headers = sign(BODY, "main", "s3cret", timestamp=NOW)
    with pytest.raises(WebhookSignatureError, match="away from now"):
        verify(BODY, headers, SECRETS, now=NOW + 301)
    assert verify(BODY, headers, SECRETS, now=NOW + 301, tolerance_seconds=600) == NOW


def test_a_rotated_key_still_verifies_under_its_own_id() -> None:
    headers = sign(BODY, "old", "0ld-s3cret", timestamp=NOW)
    assert verify(BODY, headers, SECRETS, now=NOW) == NOW


@pytest.mark.parametrize("header", ["", "t=abc,v1=00", "v1=00", f"t={NOW}", f"t={NOW},v0=00"])
def test_a_malformed_header_is_refused(header: str) -> None:
    headers = {SIGNATURE_HEADER: header, KEY_ID_HEADER: "main"}
    with pytest.raises(WebhookSignatureError):
        verify(BODY, headers, SECRETS, now=NOW)


def test_unsigned_is_refused() -> None:
    with pytest.raises(WebhookSignatureError, match="no Krolik-Signature"):
        verify(BODY, {}, SECRETS, now=NOW)
