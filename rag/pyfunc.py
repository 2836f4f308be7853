"""The MLflow pyfunc face of a stack: ``mlflow.pyfunc.load_model("models:/rag-stack@champion").predict([...])``.

The model carries no weights: its one artifact is ``stack.json``. Loading it builds a :class:`rag.engine.RagEngine`
from that configuration and the platform settings of the loading process (``RAGOPS_HOME`` and friends), so it
answers from the index and embedder of the installation it runs in, and refuses to start if they differ from what
the stack was registered with. ``mlflow models serve -m models:/rag-stack@champion --env-manager local`` serves it
(the ragops package must be importable there; nothing is downloaded).

Input: a list of questions, one question string, a dict ``{"question": ...}`` / ``{"questions": [...]}``, a list of
such dicts, or a DataFrame with a ``question`` column; dicts and DataFrames may add ``tenant`` / ``source`` /
``doc_id`` filters.
Output: one JSON object per question (``text``, ``citations``, ``abstained``, ``support``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from rag.errors import BadQuery
from rag.types import FILTER_KEYS, Filters, StackConfig

logger = logging.getLogger(__name__)

STACK_ARTIFACT = "stack"


def questions_and_filters(model_input: Any) -> tuple[list[str], list[Filters | None]]:
    """Normalise the pyfunc input forms to questions plus per-question filters."""
    if isinstance(model_input, str):
        return [model_input], [None]
    if isinstance(model_input, dict):
        if "questions" in model_input:
            return questions_and_filters(list(model_input["questions"]))
        if "question" in model_input:
            model_input = pd.DataFrame([model_input])
        else:
            raise BadQuery("a dict input needs a 'question' or 'questions' key")
    if isinstance(model_input, pd.Series | np.ndarray):  # `mlflow models serve` turns {"inputs": [...]} into an array
        model_input = model_input.tolist()
    if isinstance(model_input, pd.DataFrame):
        column = "question" if "question" in model_input.columns else model_input.columns[0]
        questions = [str(q) for q in model_input[column].tolist()]
        keys = [k for k in FILTER_KEYS if k in model_input.columns]
        filters: list[Filters | None] = []
        for _, row in model_input.iterrows():
            found = {k: row[k] for k in keys if isinstance(row[k], str | list) and row[k]}
            filters.append(found or None)
        return questions, filters
    if isinstance(model_input, list | tuple):
        if model_input and all(isinstance(q, dict) for q in model_input):
            return questions_and_filters(pd.DataFrame(list(model_input)))
        if not all(isinstance(q, str) for q in model_input):
            raise BadQuery("a list input must hold question strings (or {'question': ..., 'tenant': ...} objects)")
        return list(model_input), [None] * len(model_input)
    raise BadQuery(f"unsupported input type {type(model_input).__name__}; pass a list of questions or a DataFrame")


class RagStackModel(PythonModel):
    """Answers questions with the stack in its ``stack`` artifact (see the module docstring)."""

    # MLflow 3 wraps ``predict`` to validate inputs against its type hints, which can express one input form but not
    # the several accepted here (a list of questions, dicts, a DataFrame with filter columns). This is the switch
    # MLflow itself uses for such models (ChatModel); inputs are validated in questions_and_filters instead.
    _skip_type_hint_validation = True

    def __init__(self) -> None:
        self._engine: Any = None
        self.config: StackConfig | None = None

    def load_context(self, context: Any) -> None:
        """Read ``stack.json`` and open the stack's index and embedder under this process's RAGOPS settings."""
        from rag.engine import RagEngine
        from rag.settings import RagSettings

        path = Path(context.artifacts[STACK_ARTIFACT])
        self.config = StackConfig.model_validate_json(path.read_text(encoding="utf-8"))
        settings = RagSettings()
        self._engine = RagEngine.open(settings, self.config)
        logger.info("stack model loaded", extra={"stack": self.config.name, "collection": self.config.collection})

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Answer each question; ``params`` may carry ``top_k``.

        ``model_input`` is annotated as a DataFrame (the pyfunc contract, and a type MLflow does not try to derive a
        signature from); lists, dicts and strings are accepted too (see the module docstring).
        """
        if self._engine is None:
            raise RuntimeError("RagStackModel.predict called before load_context")
        questions, filters = questions_and_filters(model_input)
        top_k = (params or {}).get("top_k")
        answers = self._engine.ask_many(questions, filters=filters, top_k=int(top_k) if top_k else None)
        return [{"question": q, **a.to_json()} for q, a in zip(questions, answers, strict=True)]

    def close(self) -> None:
        """Release the index reader."""
        if self._engine is not None:
            self._engine.close()
            self._engine = None
