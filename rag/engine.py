"""A stack ready to answer: the index version it reads, its embedder, retriever and answerer, opened together.

The service, the pyfunc model and the evaluation runner all answer through :class:`RagEngine`, so a stack behaves
the same wherever it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pipelines.errors import EmbedderMismatchError, IndexError_
from rag.answer import Answerer, ExtractiveAnswerer
from rag.context_fit import chunk_tokens
from rag.errors import StackError, StackMismatch
from rag.retrieve import Retriever
from rag.routing import build_tiers
from rag.types import Answer, Filters, RetrievedChunk, StackConfig

if TYPE_CHECKING:
    from pipelines.embed import Embedder
    from pipelines.index import IndexReader
    from rag.guardrails.chain import InputGuard, OutputGuard
    from rag.settings import RagSettings

logger = logging.getLogger(__name__)


def build_answerer(config: StackConfig) -> Answerer:
    """The answerer a stack names: extractive, or an LLM that falls back to the extractive answer (with a notice)."""
    extractive = ExtractiveAnswerer(config.answerer)
    extractive.warm_up()
    if config.answerer.kind == "extractive":
        return extractive
    if config.answerer.kind == "llm":
        from rag.llm import FallbackAnswerer, LlmAnswerer  # llama-index's LLM client only for stacks that use it

        answerer = FallbackAnswerer(LlmAnswerer(config), extractive)
        answerer.warm_up()  # builds the client (no request); a named but unset key variable is a StackError here
        return answerer
    raise StackError(
        f"stack {config.name!r} asks for answerer kind {config.answerer.kind!r}, which this release does not provide; "
        "register the stack with answerer.kind 'extractive' or 'llm'"
    )


@dataclass(frozen=True)
class Guards:
    """A stack's guardrails, built once with the engine (Presidio, rules, the classifier, the corpus profile)."""

    input: InputGuard
    output: OutputGuard


CORPUS_SAMPLE = 4096
"""Dense vectors sampled from the index for the topic check's corpus profile."""


def build_guards(
    config: StackConfig, *, settings: RagSettings | None, embedder: Embedder, reader: IndexReader
) -> Guards | None:
    """The stack's guardrails; None for a stack registered before guardrails existed (it serves as it did)."""
    if config.guardrails is None:
        return None
    if settings is None:
        from rag.settings import RagSettings

        settings = RagSettings()
    from rag.guardrails.chain import InputGuard, OutputGuard
    from rag.guardrails.topic import CorpusProfile

    corpus = None
    if config.guardrails.topic.enabled:
        sample = reader.sample_vectors(CORPUS_SAMPLE)
        corpus = CorpusProfile.from_vectors(sample) if len(sample) else None
    return Guards(
        input=InputGuard.build(config.guardrails, settings=settings, embedder=embedder, corpus=corpus),
        output=OutputGuard.build(config.guardrails, settings=settings, embedder=embedder),
    )


class RagEngine:
    """Retrieve and answer with one stack.

    Usage example::

        with RagEngine.open(settings, config) as engine:
            answer = engine.ask("How large is the Reno plant?", filters={"tenant": "acme"})
            answers = engine.ask_many(["q1", "q2"])   # one embedder call for the batch

    Args:
        config: The stack.
        reader: The index version to read (closed by :meth:`close` when ``owns_reader``).
        embedder: The stack's embedder, already checked against the index.
    """

    def __init__(
        self,
        config: StackConfig,
        *,
        reader: IndexReader,
        embedder: Embedder,
        owns_reader: bool = True,
        settings: RagSettings | None = None,
    ) -> None:
        self.config = config
        self.reader = reader
        self.embedder = embedder
        self.retriever = Retriever(reader, embedder, config)
        self.retriever.warm_up()
        self.answerer = build_answerer(config)
        self.extractive = ExtractiveAnswerer(config.answerer)  # the routed stack's features and first tier
        self.extractive.warm_up()
        self.tiers = build_tiers(config, self.extractive)
        self.guards = build_guards(config, settings=settings, embedder=embedder, reader=reader)
        self._owns_reader = owns_reader

    @classmethod
    def open(cls, settings: RagSettings, config: StackConfig, *, embedder: Embedder | None = None) -> RagEngine:
        """Load the stack's embedder (unless given), check it, and open the index version the stack names.

        Without ``embedder``, the model the stack names is loaded: the bundled MiniLM, or a fine-tuned version from
        the registry (:func:`rag.embedders.open_embedder`).

        Raises:
            StackMismatch: The embedder or the index differs from what the stack was registered with.
            StackError: The index has no published version (or not the pinned one).
        """
        from pipelines.index import VectorIndex

        if embedder is None:
            from rag.embedders import open_embedder

            embedder = open_embedder(settings, config.embedder)
        if not config.embedder.matches(embedder.identity):
            raise StackMismatch(
                f"stack {config.name!r} needs embedder {config.embedder.name} (weights "
                f"{config.embedder.weights_sha256[:12]}) but was given {embedder.identity.name} "
                f"(weights {embedder.identity.weights_sha256[:12]})"
            )
        index = VectorIndex(settings, collection=config.collection)
        try:
            reader = index.open_reader(config.index_version, expect=embedder.identity)
        except EmbedderMismatchError as exc:
            raise StackMismatch(str(exc)) from exc
        except IndexError_ as exc:
            raise StackError(f"stack {config.name!r} cannot open its index: {exc}") from exc
        try:
            return cls(config, reader=reader, embedder=embedder, settings=settings)
        except BaseException:
            reader.close()
            raise

    def retrieve(
        self, question: str, *, filters: Filters | None = None, top_k: int | None = None
    ) -> list[RetrievedChunk]:
        """The chunks the stack would answer from."""
        return self.retriever.retrieve(question, filters=filters, top_k=top_k)

    def ask(self, question: str, *, filters: Filters | None = None, top_k: int | None = None) -> Answer:
        """Retrieve and answer one question."""
        return self.ask_many([question], filters=filters, top_k=top_k)[0]

    def ask_many(
        self,
        questions: Sequence[str],
        *,
        filters: Filters | Sequence[Filters | None] | None = None,
        top_k: int | None = None,
    ) -> list[Answer]:
        """Answer several questions; the embedder runs once for all of them."""
        batches = self.retriever.retrieve_many(questions, filters=filters, top_k=top_k)
        return [self.answerer.answer(q, chunks) for q, chunks in zip(questions, batches, strict=True)]

    def token_usage(self, question: str, chunks: Sequence[RetrievedChunk], answer: Answer) -> tuple[int, int]:
        """(prompt, completion) tokens of one answered question, in the embedder's word pieces.

        The prompt is the question plus the retrieved chunks handed to the answerer, each counted as ingestion
        measured it (:func:`rag.context_fit.chunk_tokens`), so only the question and the answer are tokenized per
        request.
        """
        question_tokens, answer_tokens = self.embedder.count_tokens([question, answer.text])
        return question_tokens + sum(chunk_tokens(chunks, self.embedder.count_tokens)), answer_tokens

    def close(self) -> None:
        """Release the index reader (and its private copy in embedded mode)."""
        if self._owns_reader:
            self.reader.close()

    def __enter__(self) -> RagEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
