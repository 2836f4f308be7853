"""Regression alerts: a JSON POST to a configurable webhook (Slack-, Teams- or PagerDuty-style receivers).

The payload carries a one-line ``text`` (what chat webhooks display) and the structured gate report. Sending is a
single attempt here; the caller (the Prefect task in ``flows.evaluate``) owns retries.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from evaluation.errors import EvaluationError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    """What went wrong, for whom to read."""

    title: str
    text: str
    details: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        """The JSON body POSTed to the webhook."""
        return {"text": f"{self.title}\n{self.text}", "title": self.title, "source": "ragops", **self.details}


def send_webhook(url: str, alert: Alert, *, timeout_s: float = 10.0) -> None:
    """POST the alert; raises :class:`EvaluationError` on a transport error or a non-2xx answer."""
    import httpx

    try:
        response = httpx.post(url, json=alert.payload(), timeout=timeout_s)
    except httpx.HTTPError as exc:
        raise EvaluationError(f"alert webhook {url} unreachable: {exc}") from exc
    if response.status_code >= 300:
        raise EvaluationError(f"alert webhook {url} answered HTTP {response.status_code}: {response.text[:200]}")
    logger.info("alert sent to %s", url)
