"""LLM-as-a-judge: relevance, faithfulness and helpfulness graded by an OpenAI-compatible model against a rubric.

Only used when a judge is configured (``RAGOPS_EVAL__JUDGE__BASE_URL`` and ``__MODEL``); otherwise the metrics are
reported as *skipped*, never as zero. The judge sees the question, the numbered context the stack answered from, the
answer, the reference answers and the item's rubric, and replies with one JSON object of 1-5 grades, mapped to
[0, 1] as ``(grade - 1) / 4``. A reply that is not such an object counts as a failed judgement: reported in
``judge_failures`` and left out of the means, so a flaky judge cannot drag a stack down.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from evaluation.errors import EvaluationError
from evaluation.metrics import PerQuery

if TYPE_CHECKING:
    from llama_index.llms.openai_like import OpenAILike

    from evaluation.settings import JudgeSettings
    from evaluation.testsets import EvalItem
    from rag.types import Answer, RetrievedChunk

logger = logging.getLogger(__name__)

CRITERIA: tuple[str, ...] = ("relevance", "faithfulness", "helpfulness")
DEFAULT_RUBRIC = (
    "relevance: does the answer address the question? faithfulness: is every claim supported by the context? "
    "helpfulness: would the asker be satisfied (a correct refusal is helpful when the context has no answer)?"
)
PROMPT = """You grade answers of a retrieval-augmented assistant. Grade each criterion from 1 (bad) to 5 (excellent).
Rubric: {rubric}

Question: {question}

Context:
{context}

Reference answers: {references}

Answer to grade: {answer}

Reply with only a JSON object: {{"relevance": n, "faithfulness": n, "helpfulness": n}}"""
_OBJECT = re.compile(r"\{.*\}", re.DOTALL)


def parse_grades(reply: str) -> dict[str, float] | None:
    """The three grades scaled to [0, 1], or None when the reply is not a JSON object of 1-5 grades."""
    match = _OBJECT.search(reply or "")
    if not match:
        return None
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    grades: dict[str, float] = {}
    for criterion in CRITERIA:
        value = data.get(criterion)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 1 <= value <= 5:
            return None
        grades[f"judge_{criterion}"] = (float(value) - 1.0) / 4.0
    return grades


class Judge:
    """Grades answers through an OpenAI-compatible chat endpoint (llama-index ``OpenAILike``).

    Usage example::

        judge = Judge(settings.eval.judge)
        table = judge.grade_many([(item, answer, chunks), ...])   # PerQuery of judge_relevance, ...
    """

    def __init__(self, settings: JudgeSettings) -> None:
        if not (settings.base_url and settings.model):
            raise EvaluationError("the judge needs RAGOPS_EVAL__JUDGE__BASE_URL and RAGOPS_EVAL__JUDGE__MODEL")
        self.settings = settings
        self._llm: OpenAILike | None = None
        self._failures = 0
        self._judged = 0

    def _client(self) -> OpenAILike:
        if self._llm is None:
            from llama_index.core.callbacks import CallbackManager
            from llama_index.llms.openai_like import OpenAILike

            key = "not-needed"
            if self.settings.api_key_env:
                key = os.environ.get(self.settings.api_key_env, "")
                if not key:
                    raise EvaluationError(f"the judge reads its key from ${self.settings.api_key_env}, which is unset")
            self._llm = OpenAILike(
                model=str(self.settings.model),
                api_base=self.settings.base_url,
                api_key=key,
                is_chat_model=True,
                is_function_calling_model=False,
                timeout=self.settings.timeout_s,
                max_retries=1,
                temperature=0.0,
                max_tokens=100,
                callback_manager=CallbackManager([]),
            )
        return self._llm

    def grade(self, item: EvalItem, answer: Answer, chunks: Sequence[RetrievedChunk]) -> dict[str, float] | None:
        """Grades for one example, or None when the judge failed (error or unparseable reply)."""
        from llama_index.core.base.llms.types import ChatMessage, MessageRole

        context = "\n".join(f"[{n}] {c.title}: {c.text}" for n, c in enumerate(chunks, 1)) or "(none)"
        prompt = PROMPT.format(
            rubric=item.rubric or DEFAULT_RUBRIC,
            question=item.question,
            context=context,
            references="; ".join(item.answers) or "(none: the right response is to decline)",
            answer=answer.text,
        )
        try:
            reply = self._client().chat([ChatMessage(role=MessageRole.USER, content=prompt)])
        except EvaluationError:
            raise
        except Exception as exc:  # network, HTTP status, timeout: one failed judgement, not a failed evaluation
            logger.warning("judge request failed for %s: %s", item.id, exc)
            return None
        return parse_grades(str(reply.message.content or ""))

    def grade_many(self, examples: Sequence[tuple[EvalItem, Answer, Sequence[RetrievedChunk]]]) -> PerQuery:
        """Grade up to ``max_items`` examples (the first ones, so repeated runs judge the same items)."""
        table: dict[str, dict[str, float]] = {f"judge_{c}": {} for c in CRITERIA}
        for item, answer, chunks in examples[: self.settings.max_items]:
            self._judged += 1
            grades = self.grade(item, answer, chunks)
            if grades is None:
                self._failures += 1
                continue
            for key, value in grades.items():
                table[key][item.id] = value
        return PerQuery(values={k: v for k, v in table.items() if v})

    def skipped(self) -> dict[str, str]:
        """What the runner reports about failed judgements."""
        if not self._failures:
            return {}
        return {"judge_failures": f"{self._failures} of {self._judged} judgements failed (error or unparseable reply)"}
