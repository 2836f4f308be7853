"""Assembling the chain a stack serves with, from its configuration.

One function builds the chain for the service and for evaluation; they differ only in the ports they pass (how
vectors are computed, where requests are recorded), never in which checks run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rag.stages.answer import AnswerStage
from rag.stages.chain import Chain, Stage
from rag.stages.embed import EmbedStage
from rag.stages.record import Recorder, RecordStage
from rag.stages.retrieve import RetrieveStage
from rag.stages.validate import RequestLimits, ValidateStage

if TYPE_CHECKING:
    from rag.engine import RagEngine
    from rag.stages.ports import VectorPort


def build_chain(
    engine: RagEngine,
    *,
    vectors: VectorPort,
    limits: RequestLimits | None = None,
    recorder: Recorder | None = None,
) -> Chain:
    """The stages for ``engine``'s stack, in order: validate, embed, retrieve, answer, record."""
    stages: list[Stage] = [ValidateStage(limits or RequestLimits())]
    stages.append(EmbedStage(vectors))
    stages.append(RetrieveStage(vectors))
    stages.append(AnswerStage())
    if recorder is not None:
        stages.append(RecordStage(recorder))
    return Chain(stages)
