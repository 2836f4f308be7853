"""The nouns of the query side: the stack configuration, retrieved chunks, citations and answers.

``StackConfig`` is a frozen pydantic model (it is validated from JSON: the ``stack.json`` artifact of a registered
stack, a CLI file, an API body) with ``extra="forbid"`` so a misspelt key is an error, not a silently ignored
setting. Everything that crosses module boundaries at query time is a frozen dataclass.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rag.guardrails.config import GuardrailsConfig

if TYPE_CHECKING:
    from pipelines.chunk import ChunkingParams
    from pipelines.embed import EmbedderIdentity
    from pipelines.index import IndexVersion

RetrievalMode = Literal["dense", "hybrid"]
AnswererKind = Literal["extractive", "llm"]
FilterValue = str | Sequence[str]
Filters = Mapping[str, FilterValue]
"""Metadata filters: ``{"tenant": "acme"}`` (equality) or ``{"source": ["a.md", "b.md"]}`` (any of)."""

FILTER_KEYS: frozenset[str] = frozenset({"tenant", "source", "doc_id"})
"""Payload keys a query may filter on; anything else is rejected with BadQuery."""

ABSTAIN_TEXT = "The answer was not found in the indexed documents."
"""What the extractive answerer says when the retrieved text does not support an answer."""

DEFAULT_PROMPT_TEMPLATE = (
    "Answer the question using only the numbered context passages below. Cite the passages you use as [n]. "
    "If the passages do not contain the answer, reply exactly: " + ABSTAIN_TEXT + "\n\n"
    "Context:\n{context}\n\nQuestion: {question}\nAnswer:"
)

_FROZEN = ConfigDict(frozen=True, extra="forbid")


class EmbedderRef(BaseModel):
    """The embedder a stack queries with; must equal the identity recorded in the index it reads."""

    model_config = _FROZEN

    name: str = Field(min_length=1)
    weights_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    dim: int = Field(gt=0)
    max_tokens: int = Field(gt=0)
    model_uri: str | None = Field(
        default=None,
        pattern=r"^models:/[A-Za-z0-9._-]+/[0-9]+$",
        description="Registry URI of a fine-tuned embedder (models:/embedder/N); None means the bundled MiniLM.",
    )

    @classmethod
    def from_identity(cls, identity: EmbedderIdentity, *, model_uri: str | None = None) -> EmbedderRef:
        """From the pipelines' identity record (``model_uri`` names a fine-tuned model in the registry)."""
        return cls(
            name=identity.name,
            weights_sha256=identity.weights_sha256,
            dim=identity.dim,
            max_tokens=identity.max_tokens,
            model_uri=model_uri,
        )

    def matches(self, identity: EmbedderIdentity) -> bool:
        """True when ``identity`` puts vectors in the same space (same weights and dimension)."""
        return (self.weights_sha256, self.dim) == (identity.weights_sha256, identity.dim)


class ChunkingRef(BaseModel):
    """The chunking parameters the index was built with (fixed per collection; recorded for provenance)."""

    model_config = _FROZEN

    splitter: str
    chunk_size: int = Field(gt=0)
    chunk_overlap: int = Field(ge=0)
    tokenizer: str

    @classmethod
    def from_params(cls, params: ChunkingParams) -> ChunkingRef:
        """From the pipelines' chunking record."""
        return cls(**asdict(params))


class RetrievalConfig(BaseModel):
    """How chunks are found: dense only, or dense plus BM25 sparse fused by weighted reciprocal rank."""

    model_config = _FROZEN

    mode: RetrievalMode = "dense"
    top_k: int = Field(default=5, ge=1, le=100, description="Chunks handed to the answerer.")
    candidates: int = Field(
        default=30, ge=1, le=1000, description="Hybrid: depth of the dense and of the sparse result list before fusion."
    )
    fusion: Literal["rrf"] = "rrf"
    rrf_k: int = Field(default=60, ge=1, description="RRF constant: score = sum(weight / (rrf_k + rank)).")
    dense_weight: float = Field(default=1.0, ge=0.0)
    sparse_weight: float = Field(default=1.0, ge=0.0)
    score_threshold: float | None = Field(
        default=None, ge=-1.0, le=1.0, description="Drop chunks whose dense cosine similarity is below this."
    )

    @model_validator(mode="after")
    def _check(self) -> RetrievalConfig:
        if self.candidates < self.top_k:
            raise ValueError(f"candidates ({self.candidates}) must be at least top_k ({self.top_k})")
        if self.mode == "hybrid" and self.dense_weight == 0 and self.sparse_weight == 0:
            raise ValueError("dense_weight and sparse_weight cannot both be 0")
        return self


class AnswererConfig(BaseModel):
    """Which answerer runs and when it abstains."""

    model_config = _FROZEN

    kind: AnswererKind = "extractive"
    max_sentences: int = Field(default=3, ge=1, le=10)
    min_support: float = Field(
        default=0.35, ge=0.0, le=1.0, description="Abstain when the best sentence's support is below this."
    )


class LlmConfig(BaseModel):
    """An OpenAI-compatible chat endpoint (used when ``answerer.kind == "llm"``). The key itself is never stored."""

    model_config = _FROZEN

    base_url: str | None = None
    model: str | None = None
    timeout_s: float = Field(default=30.0, gt=0.0)
    api_key_env: str | None = Field(default=None, description="Name of the environment variable holding the key.")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    max_tokens: int = Field(default=512, ge=1, description="Most tokens the LLM may write per answer.")
    max_input_tokens: int | None = Field(
        default=None,
        ge=16,
        description="Most context tokens the LLM reads per answer: lower-ranked chunks are dropped, then the rest "
        "trimmed to their best sentences (None: every retrieved chunk, whole).",
    )
    input_usd_per_mtok: float = Field(
        default=0.0, ge=0.0, description="Price of a million prompt tokens (0: a local or free model)."
    )
    output_usd_per_mtok: float = Field(default=0.0, ge=0.0, description="Price of a million completion tokens.")

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What a call with these token counts costs at the stack's prices."""
        return (prompt_tokens * self.input_usd_per_mtok + completion_tokens * self.output_usd_per_mtok) / 1e6


ROUTER_FEATURES: tuple[str, ...] = (
    "question_words",
    "open_question",
    "top_similarity",
    "similarity_spread",
    "extractive_support",
    "extractive_abstained",
    "number_missing",
    "question_overlap",
)
"""What the router knows before any generation, in the order its coefficients follow (see :mod:`rag.routing`)."""


class TierConfig(BaseModel):
    """One answering tier: the extractive answerer (free) or an OpenAI-compatible LLM with its own URL and prices."""

    model_config = _FROZEN

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    kind: AnswererKind = "extractive"
    llm: LlmConfig | None = None
    coef: tuple[float, ...] | None = Field(
        default=None,
        description="Logistic coefficients over ROUTER_FEATURES for 'this tier's answer passes'; None: never "
        "chosen up front (only reached by escalation), which is how the top tier is written.",
    )
    intercept: float = 0.0

    @model_validator(mode="after")
    def _check(self) -> TierConfig:
        if self.kind == "llm" and not (self.llm and self.llm.base_url and self.llm.model):
            raise ValueError(f"tier {self.name!r} of kind 'llm' needs llm.base_url and llm.model")
        if self.coef is not None and len(self.coef) != len(ROUTER_FEATURES):
            raise ValueError(f"tier {self.name!r} needs {len(ROUTER_FEATURES)} coefficients, got {len(self.coef)}")
        return self


class RoutingConfig(BaseModel):
    """Tiers cheapest first and the router's fitted parameters (versioned with the stack: a refit is a new stack).

    The router picks the first tier whose predicted chance of passing the output check reaches ``threshold``; the
    check (grounding share, abstention where the context has support) escalates a failed answer to the next tier.
    """

    model_config = _FROZEN

    tiers: tuple[TierConfig, ...] = Field(min_length=1)
    threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    grounding_threshold: float = Field(default=0.6, ge=-1.0, le=1.0, description="Cosine a sentence needs.")
    min_grounded_share: float = Field(default=0.5, ge=0.0, le=1.0, description="Supported sentences needed.")
    answerable_similarity: float = Field(
        default=0.55, ge=-1.0, le=1.0, description="Top retrieval similarity from which an abstention is a failure."
    )
    max_escalations: int = Field(default=2, ge=0, le=5)
    fitted_on: str | None = Field(default=None, description="The evaluation set and metric the parameters came from.")

    @model_validator(mode="after")
    def _check(self) -> RoutingConfig:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError(f"tier names must be unique, got {names}")
        return self


class PromptRef(BaseModel):
    """A prompt template in MLflow's Prompt Registry (``prompts:/<name>/<version>``)."""

    model_config = _FROZEN

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    version: int = Field(ge=1)

    @property
    def uri(self) -> str:
        """MLflow's URI of the prompt version."""
        return f"prompts:/{self.name}/{self.version}"


class StackConfig(BaseModel):
    """Everything that decides an answer. Registered as one version of the MLflow model ``rag-stack``.

    Usage example::

        with VectorIndex(settings).reader() as reader:
            config = StackConfig.for_index(reader.version, name="baseline", retrieval={"mode": "hybrid"})
        StackConfig.model_validate_json(config.model_dump_json()) == config   # round-trips
    """

    model_config = _FROZEN

    schema_version: Literal[1] = 1
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    collection: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    index_version: int | None = Field(default=None, ge=1, description="Pinned index version; None follows current.")
    embedder: EmbedderRef
    chunking: ChunkingRef
    retrieval: RetrievalConfig = Field(default_factory=RetrievalConfig)
    answerer: AnswererConfig = Field(default_factory=AnswererConfig)
    llm: LlmConfig = Field(default_factory=LlmConfig)
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    prompt: PromptRef | None = Field(
        default=None,
        description="The registered prompt the template came from (rag.prompts); None: the template as written.",
    )
    guardrails: GuardrailsConfig | None = Field(
        default=None, description="None: a stack registered before guardrails (no checks, serves as before)."
    )
    routing: RoutingConfig | None = Field(
        default=None, description="Tiers and router (rag.routing); None: the one answerer ``answerer`` names."
    )

    @model_validator(mode="after")
    def _check(self) -> StackConfig:
        for slot in ("{question}", "{context}"):
            if slot not in self.prompt_template:
                raise ValueError(f"prompt_template must contain {slot}")
        if self.answerer.kind == "llm" and not (self.llm.base_url and self.llm.model):
            raise ValueError("answerer.kind 'llm' needs llm.base_url and llm.model")
        return self

    @classmethod
    def for_index(
        cls,
        version: IndexVersion,
        *,
        name: str,
        pin: bool = False,
        model_uri: str | None = None,
        **overrides: Any,
    ) -> StackConfig:
        """A stack over ``version``'s collection with its embedder and chunking; ``pin`` fixes the version number.

        ``model_uri`` names the registered embedder when the index was built by a fine-tuned one
        (:func:`rag.embedders.model_uri_for`). ``overrides`` are further fields (``retrieval={"mode": "hybrid"}``,
        ``answerer=...``), validated as usual.
        """
        data: dict[str, Any] = {
            "name": name,
            "collection": version.collection,
            "index_version": version.version if pin else None,
            "embedder": EmbedderRef.from_identity(version.embedder, model_uri=model_uri).model_dump(),
            "chunking": ChunkingRef.from_params(version.chunking).model_dump(),
            # a new stack has the guardrails' defaults on; a stored stack without the key keeps serving without them
            "guardrails": GuardrailsConfig().model_dump(),
        }
        data.update(overrides)
        return cls.model_validate(data)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON (the ``stack.json`` artifact)."""
        return self.model_dump(mode="json")

    def fingerprint(self) -> str:
        """SHA-256 of the canonical JSON minus the name: two stacks that answer identically share it."""
        data = self.to_json()
        data.pop("name", None)
        for key in ("prompt", "routing"):  # stacks from before these keys keep their fingerprint
            if data.get(key) is None:
                data.pop(key, None)
        return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def flat_params(self) -> dict[str, str]:
        """Dotted ``key -> value`` pairs for MLflow params (long values, e.g. the prompt, are cut to 500 chars)."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, inner in value.items():
                    walk(f"{prefix}.{key}" if prefix else key, inner)
            else:
                out[prefix] = str(value)[:500]

        walk("", self.to_json())
        return out


@dataclass(frozen=True)
class RetrievedChunk:
    """One chunk returned by retrieval.

    ``score`` ranks the list: the cosine similarity in dense mode, the fused RRF score in hybrid mode.
    ``similarity`` is always the dense cosine similarity (comparable across modes; what thresholds and the
    answerer's support use), ``None`` only if it could not be computed.
    """

    chunk_id: str
    doc_id: str
    title: str
    source: str
    position: int
    text: str
    score: float
    similarity: float | None = None
    tenant: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Citation:
    """A numbered reference from an answer to the chunk that supports it."""

    n: int
    doc_id: str
    source: str
    chunk_id: str
    position: int
    score: float
    title: str


@dataclass(frozen=True)
class TokenCount:
    """Tokens of one LLM call as the model counted them (its own tokenizer: what it bills)."""

    prompt: int
    completion: int


@dataclass(frozen=True)
class Answer:
    """An answer with its citations; ``abstained`` answers carry no citations.

    ``support`` is the answerer's confidence in [0, 1] that the cited text answers the question; ``sentences`` are
    the pieces of ``text`` (what a stream yields, joined by single spaces).
    """

    text: str
    citations: tuple[Citation, ...]
    abstained: bool
    support: float
    sentences: tuple[str, ...] = ()
    tokens: TokenCount | None = None
    """What the model reported it read and wrote (None: no model was called, or it reported nothing)."""

    def to_json(self) -> dict[str, Any]:
        """Plain JSON for APIs and the pyfunc output."""
        return {
            "text": self.text,
            "citations": [asdict(c) for c in self.citations],
            "abstained": self.abstained,
            "support": round(self.support, 4),
        }
