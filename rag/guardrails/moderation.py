"""An optional OpenAI-compatible moderation model (``POST {base_url}/moderations``), used when a stack configures one.

Failures (timeout, refused connection, bad response) never block a request: the verdict says the moderation model
was unavailable and the request goes on, because an outage of an optional helper must not take the service down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import httpx

from rag.guardrails.config import ModerationConfig


@dataclass(frozen=True)
class ModerationResult:
    """The endpoint's decision: flagged, the categories that fired, the highest category score."""

    flagged: bool
    categories: tuple[str, ...]
    score: float


class ModerationClient:
    """A pooled HTTP client for one moderation endpoint."""

    def __init__(self, config: ModerationConfig) -> None:
        if not config.base_url:
            raise ValueError("moderation needs base_url")
        key = os.environ.get(config.api_key_env, "") if config.api_key_env else ""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._model = config.model
        self._client = httpx.Client(base_url=config.base_url.rstrip("/"), timeout=config.timeout_s, headers=headers)

    def moderate(self, text: str) -> ModerationResult:
        """One moderation call.

        Raises:
            httpx.HTTPError: The endpoint failed (callers turn this into an ``allow`` verdict saying so).
        """
        body: dict[str, str] = {"input": text}
        if self._model:
            body["model"] = self._model
        response = self._client.post("/moderations", json=body)
        response.raise_for_status()
        result = response.json()["results"][0]
        categories = tuple(sorted(name for name, hit in result.get("categories", {}).items() if hit))
        scores = [float(v) for v in result.get("category_scores", {}).values()]
        return ModerationResult(bool(result.get("flagged")), categories, max(scores, default=0.0))

    def close(self) -> None:
        """Release the connection pool."""
        self._client.close()
