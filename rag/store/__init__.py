"""The request store: one record per request (timings, tokens, cost, verdicts, citations, feedback), in SQL.

See :mod:`rag.store.store` for how writes stay off the request path, :mod:`rag.store.migrate` for the schema's
migrations, and :mod:`rag.store.settings` for configuration.
"""

from rag.store.records import Feedback, RequestRecord, StoreStats, WindowStats
from rag.store.settings import StoreSettings
from rag.store.store import RequestStore

__all__ = ["Feedback", "RequestRecord", "RequestStore", "StoreSettings", "StoreStats", "WindowStats"]
