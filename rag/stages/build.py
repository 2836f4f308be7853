"""Assembling the chain a stack serves with, from its configuration.

One function builds the chain for the service and for evaluation; they differ only in the ports they pass (how
vectors are computed, where requests are recorded), never in which checks run.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rag.stages.answer import AnswerStage
from rag.stages.chain import Chain, Stage
from rag.stages.embed import EmbedStage
from rag.stages.guard import InputPrepareStage, InputScreenStage, OutputGuardStage
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
    """The stages for ``engine``'s stack, in order: validate, check_input, embed, screen_input, retrieve, answer,
    check_output, record (the guardrail stages only when the stack has guardrails)."""
    guards = engine.guards
    stages: list[Stage] = [ValidateStage(limits or RequestLimits())]
    if guards is not None:
        stages.append(InputPrepareStage(guards.input))
    stages.append(EmbedStage(vectors))
    if guards is not None:
        stages.append(InputScreenStage(guards.input))
    stages.append(RetrieveStage(vectors))
    stages.append(AnswerStage())
    if guards is not None:
        stages.append(OutputGuardStage(guards.output))
    if recorder is not None:
        stages.append(RecordStage(recorder))
    return Chain(stages)
