"""Webhooks: Krolik POSTs a task's record to the task's ``webhook_url`` when it ends.

A receiver checks the signature with ``verify`` (``krolik.webhooks.signing``)."""

from krolik.webhooks.signing import (
    DELIVERY_HEADER,
    EVENT_HEADER,
    KEY_ID_HEADER,
    SIGNATURE_HEADER,
    WebhookSignatureError,
    sign,
    verify,
)

__all__ = [
    "DELIVERY_HEADER",
    "EVENT_HEADER",
    "KEY_ID_HEADER",
    "SIGNATURE_HEADER",
    "WebhookSignatureError",
    "sign",
    "verify",
]
