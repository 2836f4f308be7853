"""The one settings object users configure: every layer's groups, assembled at the entry point.

``Settings`` is what the CLI, the flows and the service's start-up build (from ``RAGOPS_*`` environment variables and
command-line overrides) and pass down; each layer's code accepts it as its own settings type
(``pipelines.settings.PipelineSettings`` <- ``rag.settings.RagSettings`` <- ``evaluation.settings.EvaluationSettings``
<- ``Settings``).
"""

from __future__ import annotations

from evaluation.settings import EvaluationSettings


class Settings(EvaluationSettings):
    """All configuration of ragops. Environment: ``RAGOPS_<FIELD>`` and ``RAGOPS_<GROUP>__<FIELD>``."""
