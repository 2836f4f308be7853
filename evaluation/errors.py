"""Errors raised by the evaluation package.

RagopsError
 └── EvaluationError
      ├── BadTestSet         a test set that cannot be used (malformed line, duplicate id, missing field)
      ├── BadTrainingSet     training data that cannot be used (malformed, empty, or leaking test questions)
      ├── QuestionGenerationError  synthetic questions could not be generated (LLM missing or failing)
      ├── RetrainError       the retraining cycle could not run (no champion, nothing to train on)
      ├── GateFailed         a candidate missed a quality gate
      ├── PromotionRefused   a promotion was refused (gate not passed, or not significantly better)
      └── MonitorBreach      a monitored figure of the served traffic crossed its threshold

``EvaluationError`` derives from :class:`pipelines.errors.RagopsError`, the base every ragops error shares, so the CLI's
one ``except RagopsError`` turns these into a message and an exit code instead of a traceback.
"""

from __future__ import annotations

from pipelines.errors import RagopsError


class EvaluationError(RagopsError):
    """Base of every error raised on purpose by the ``evaluation`` package."""


class BadTestSet(EvaluationError):
    """The test set cannot be used as written; the message names the file, line and problem."""


class BadTrainingSet(EvaluationError):
    """Training data that cannot be used; the message names the file and line, or the failed expectation."""


class QuestionGenerationError(EvaluationError):
    """Synthetic questions could not be generated: the local model cannot load or the endpoint failed (named)."""


class RetrainError(EvaluationError):
    """The retraining cycle cannot run as asked (no champion to improve on, no training data)."""


class GateFailed(EvaluationError):
    """The candidate did not meet a quality gate; the message names the metrics that failed."""


class PromotionRefused(EvaluationError):
    """The promotion was refused; the message says why (failed gate, no significant improvement)."""


class MonitorBreach(EvaluationError):
    """A monitor window breached one or more rules; the message lists them (the flow run fails with it)."""
