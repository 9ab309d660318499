"""SMS providers behind one small interface: console, HTTP webhook."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Protocol

import httpx

from weijian.config import Settings
from weijian.notify.models import OutgoingMessage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """A provider's answer: accepted (with its reference) or refused (with the reason)."""

    ok: bool
    reference: str | None = None
    error: str | None = None
    # Whether a retry can help (network trouble) or not (invalid number).
    retryable: bool = True


class SmsProvider(Protocol):
    name: str

    def send(self, message: OutgoingMessage) -> Delivery: ...


class ConsoleProvider:
    """Writes each SMS to the log and counts it as delivered (development, demos)."""

    name = "console"

    def send(self, message: OutgoingMessage) -> Delivery:
        log.info("SMS to %s: %s", message.recipient, message.body)
        return Delivery(ok=True, reference=f"console-{message.notification_id}")


class WebhookProvider:
    """POSTs each SMS as JSON to a gateway the bureau runs (its own SMS platform)."""

    name = "webhook"

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        self._url = url
        self._client = httpx.Client(timeout=timeout_s)

    def send(self, message: OutgoingMessage) -> Delivery:
        try:
            response = self._client.post(
                self._url,
                json={
                    "id": message.notification_id,
                    "to": message.recipient,
                    "text": message.body,
                    "template": message.template,
                    "params": message.params,
                },
            )
        except httpx.HTTPError as exc:
            return Delivery(ok=False, error=f"webhook unreachable: {exc}")
        if response.status_code >= 500:
            return Delivery(ok=False, error=f"webhook answered {response.status_code}")
        if response.status_code >= 400:
            return Delivery(
                ok=False,
                error=f"webhook refused: {response.status_code} {response.text[:200]}",
                retryable=False,
            )
        reference = None
        if response.headers.get("content-type", "").startswith("application/json"):
            body = response.json()
            if isinstance(body, dict) and body.get("id") is not None:
                reference = str(body["id"])
        return Delivery(ok=True, reference=reference)


def provider_from_settings(settings: Settings) -> SmsProvider:
    """The configured provider; a clear error when its settings are missing."""
    if settings.sms_provider == "console":
        return ConsoleProvider()
    if settings.sms_provider == "webhook":
        if not settings.sms_webhook_url:
            raise ValueError("WEIJIAN_SMS_PROVIDER=webhook needs WEIJIAN_SMS_WEBHOOK_URL")
        return WebhookProvider(settings.sms_webhook_url)
    raise ValueError(f"unknown SMS provider {settings.sms_provider!r}; use console or webhook")
