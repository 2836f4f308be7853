"""Synthetic training questions for a corpus nobody labelled: generated, then kept only where a measurement says so.

Why this module: a team that brings ragops documents but no questions still wants the retriever adapted to them.
The published recipe is to *generate* a query per passage and *filter* what was generated (InPars, Promptagator:
keep a query only when the retriever finds its passage again, "round-trip consistency"), then train with mined
negatives that are not secretly relevant (GPL). This module makes the candidates and runs the filters; the miner
(:class:`evaluation.trainset.PairMiner`) supplies the champion's rankings and the hard negatives.

Candidates (all of origin ``synthetic``; the ``query_id`` prefix says which source):

* ``llm:<chunk>``: a question an LLM writes for the opening of a chunk. The prompt is few-shot, and its examples come
  from the corpus itself (a document's title as the "query" for its opening), so the model sees what a search of
  *this* corpus looks like, whatever its domain. The bundled SmolLM2-135M runs in this process, batched
  (:class:`LocalQuestionLlm`); any OpenAI-compatible endpoint, ``ragops server llm`` or a hosted model, is used
  instead when configured (:class:`EndpointQuestionLlm`) and writes better questions.
* ``title:<doc>``: a document's title to its first chunk *without the title line*: with the title left in, the pair
  only teaches that a string matches itself.
* ``ict:<chunk>``: a sentence to the rest of its chunk (the inverse cloze task).

Filters, in order, each counted under its reason (the counts go to the MLflow ``finetune`` run): form (length,
letters, generic questions such as "What is this text about?", a question copied verbatim from its passage),
duplicates (the same normalised text) and near-duplicates (champion embeddings closer than
``near_duplicate_cosine``), and round trip (the champion must rank the source chunk within ``round_trip_k``).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from evaluation.errors import QuestionGenerationError
from evaluation.metrics import normalize_answer
from evaluation.settings import SyntheticSettings

if TYPE_CHECKING:
    import numpy as np

    from pipelines.reembed import StoredChunk
    from rag.settings import LocalLlmSettings

logger = logging.getLogger(__name__)

Source = Literal["llm", "title", "ict"]
Message = dict[str, str]
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\[])")
_WORD = re.compile(r"\w+", re.UNICODE)
_GENERIC = re.compile(
    r"\b(?:this|the|above|following|given|that)\s+(?:text|passage|article|document|paragraph|excerpt|abstract)\b"
    r"|\byou\b|\bquestions?\b|\banswers?\b|\bwhat'?s this\b",
    re.IGNORECASE,
)
_PREFIX = re.compile(r"^\s*(?:query|question|search(?: query)?|q)\s*[:\-]\s*", re.IGNORECASE)
SYSTEM_PROMPT = "You write the search query a reader would type to find a text. Reply with the query only, one line."
ZERO_SHOT_PROMPT = "Write a question that is answered by the text above. Reply with the question only."
EXCERPT_WORDS = 60
SHOT_WORDS = 40


@dataclass(frozen=True)
class Candidate:
    """A generated query and the chunk it should find (``passage`` is what the embedder sees as the positive)."""

    query: str
    chunk: StoredChunk
    passage: str
    source: Source

    @property
    def query_id(self) -> str:
        """Where the query came from: ``llm:<chunk>``, ``title:<doc>`` or ``ict:<chunk>``."""
        key = self.chunk.doc_id if self.source == "title" else self.chunk.chunk_id
        return f"{self.source}:{key}"


@dataclass(frozen=True)
class Shot:
    """One few-shot example of the prompt: an excerpt of the corpus and the query that finds it."""

    excerpt: str
    query: str


@dataclass(frozen=True)
class Generation:
    """What the generator produced: the candidates, how many it asked for, how long it took, and the prompt's
    examples."""

    candidates: tuple[Candidate, ...]
    asked: int
    seconds: float
    model: str
    shots: tuple[Shot, ...] = ()


class QuestionLlm(Protocol):
    """Something that completes chat conversations, many at a time."""

    @property
    def name(self) -> str:
        """The model's name, for the MLflow run."""
        ...

    def complete(self, conversations: Sequence[list[Message]]) -> list[str]:
        """One reply per conversation, in order."""
        ...


# --------------------------------------------------------------------------------------------------------- prompts
def words(text: str, limit: int) -> str:
    """The first ``limit`` words of ``text``."""
    return " ".join(text.split()[:limit])


def few_shots(chunks: Sequence[StoredChunk], *, count: int, seed: int) -> tuple[Shot, ...]:
    """Examples for the prompt, from the corpus itself: a titled document's opening and its title as the query.

    A corpus without titles gets no examples and the prompt falls back to a plain instruction.
    """
    rng = random.Random(seed)
    firsts = [
        c for c in chunks if c.position == 0 and 5 <= len(c.title.split()) <= 20 and len(c.text.split()) >= SHOT_WORDS
    ]
    firsts.sort(key=lambda c: c.chunk_id)
    return tuple(Shot(words(c.text, SHOT_WORDS), c.title.strip()) for c in rng.sample(firsts, min(count, len(firsts))))


def conversation(excerpt: str, shots: Sequence[Shot]) -> list[Message]:
    """The chat that asks for one query: examples as earlier turns, then the excerpt."""
    if not shots:
        return [{"role": "user", "content": f"Text: {excerpt}\n\n{ZERO_SHOT_PROMPT}"}]
    messages: list[Message] = [{"role": "system", "content": SYSTEM_PROMPT}]
    for shot in shots:
        messages.append({"role": "user", "content": f"Text: {shot.excerpt}"})
        messages.append({"role": "assistant", "content": shot.query})
    messages.append({"role": "user", "content": f"Text: {excerpt}"})
    return messages


def clean_reply(reply: str) -> str:
    """The first non-empty line of a reply, without a "Query:" prefix or surrounding quotes."""
    line = next((part.strip() for part in reply.splitlines() if part.strip()), "")
    line = _PREFIX.sub("", line).strip().strip("\"'“”`").strip()
    return line


# ------------------------------------------------------------------------------------------------------ generators
class LocalQuestionLlm:
    """The bundled SmolLM2-135M-Instruct in this process, greedy and batched.

    Why not through ``ragops server llm``: that server answers one conversation at a time (about 12 tokens/s on one
    core here), while one batched ``generate`` over 24 short prompts wrote about 50 tokens/s on the same core (24
    questions in 9.5 s). Same weights, same chat template: the converted checkpoint of :mod:`rag.local_llm`.
    """

    def __init__(
        self, settings: LocalLlmSettings, cache_dir: Path, *, batch: int, max_new_tokens: int, threads: int
    ) -> None:
        self._settings = settings
        self._cache_dir = cache_dir
        self._batch = batch
        self._max_new_tokens = max_new_tokens
        self._threads = threads
        self._model: object | None = None
        self._tokenizer: object | None = None

    @property
    def name(self) -> str:
        """The served name of the bundled model."""
        return self._settings.model

    def _load(self) -> tuple[object, object]:
        if self._model is None:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer

            from pipelines.embed import cpu_has_native_bf16
            from rag.local_llm import LocalLlmError, converted_checkpoint, gguf_file

            try:
                checkpoint = converted_checkpoint(gguf_file(self._settings), self._cache_dir / "llm")
            except LocalLlmError as exc:
                raise QuestionGenerationError(f"the local question generator cannot start: {exc}") from exc
            torch.set_num_threads(self._threads)
            tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
            tokenizer.padding_side = "left"  # generation continues every row from its last real token
            dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
            model = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=dtype)
            model.eval()
            self._model, self._tokenizer = model, tokenizer
        assert self._tokenizer is not None
        return self._model, self._tokenizer

    def complete(self, conversations: Sequence[list[Message]]) -> list[str]:
        """Greedy replies, ``batch`` conversations per forward pass."""
        import torch

        model, tokenizer = self._load()
        replies: list[str] = []
        for start in range(0, len(conversations), self._batch):
            part = conversations[start : start + self._batch]
            prompts = [
                tokenizer.apply_chat_template(c, tokenize=False, add_generation_prompt=True)  # type: ignore[attr-defined]
                for c in part
            ]
            encoded = tokenizer(prompts, return_tensors="pt", padding=True)  # type: ignore[operator]
            pad = tokenizer.pad_token_id or tokenizer.eos_token_id  # type: ignore[attr-defined]
            with torch.inference_mode():
                out = model.generate(  # type: ignore[attr-defined]
                    **encoded,
                    max_new_tokens=self._max_new_tokens,
                    do_sample=False,
                    repetition_penalty=1.1,
                    pad_token_id=pad,
                )
            width = encoded["input_ids"].shape[1]
            replies += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)  # type: ignore[attr-defined]
        return replies


class EndpointQuestionLlm:
    """Any OpenAI-compatible chat endpoint: ``ragops server llm``, vLLM, llama.cpp, Ollama or a hosted model.

    Requests go ``concurrency`` at a time; a failure names the endpoint and what it answered, and stops the cycle
    (half a synthetic set would train on a biased sample).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None,
        concurrency: int,
        max_new_tokens: int,
        timeout_s: float,
    ) -> None:
        self._base_url = base_url
        self._model = model
        self._api_key = api_key
        self._concurrency = concurrency
        self._max_new_tokens = max_new_tokens
        self._timeout_s = timeout_s

    @property
    def name(self) -> str:
        """The model name sent to the endpoint."""
        return self._model

    def complete(self, conversations: Sequence[list[Message]]) -> list[str]:
        """Replies in order; raises :class:`QuestionGenerationError` on the first failure."""
        import openai
        from llama_index.core.base.llms.types import ChatMessage
        from llama_index.core.callbacks import CallbackManager
        from llama_index.llms.openai_like import OpenAILike

        from rag.llm import clip_message

        # llama-index's client, as the answerer (rag/llm.py) and the judge use: one way to reach an endpoint
        llm = OpenAILike(
            model=self._model,
            api_base=self._base_url,
            api_key=self._api_key or "unused",
            is_chat_model=True,
            is_function_calling_model=False,
            timeout=self._timeout_s,
            max_retries=1,
            temperature=0.0,
            max_tokens=self._max_new_tokens,
            reuse_client=True,
            callback_manager=CallbackManager([]),
        )

        def one(messages: list[Message]) -> str:
            try:
                reply = llm.chat([ChatMessage(role=m["role"], content=m["content"]) for m in messages])
            except openai.APIStatusError as exc:
                detail = clip_message(exc.message, 200)
                raise QuestionGenerationError(
                    f"question generation at {self._base_url} failed: HTTP {exc.status_code}: {detail}"
                ) from exc
            except (openai.APIConnectionError, openai.APITimeoutError) as exc:
                raise QuestionGenerationError(
                    f"question generation at {self._base_url} failed: {type(exc).__name__}: {exc}"
                ) from exc
            except Exception as exc:  # e.g. a reply without choices: the endpoint does not speak the protocol
                raise QuestionGenerationError(
                    f"question generation at {self._base_url} failed: {type(exc).__name__}: {clip_message(str(exc))}"
                ) from exc
            return str(reply.message.content or "")

        with ThreadPoolExecutor(max_workers=self._concurrency, thread_name_prefix="questions") as pool:
            return list(pool.map(one, conversations))


def question_llm(settings: SyntheticSettings, local: LocalLlmSettings, cache_dir: Path) -> QuestionLlm | None:
    """The generator ``settings`` asks for, or None when LLM questions are off."""
    if settings.questions == "off" or settings.llm_chunks == 0:
        return None
    if settings.questions == "endpoint":
        if not settings.endpoint_url or not settings.endpoint_model:
            raise QuestionGenerationError(
                "questions=endpoint needs RAGOPS_FINETUNE__SYNTHETIC__ENDPOINT_URL and __ENDPOINT_MODEL"
            )
        import os

        return EndpointQuestionLlm(
            settings.endpoint_url,
            settings.endpoint_model,
            api_key=os.environ.get(settings.endpoint_api_key_env) if settings.endpoint_api_key_env else None,
            concurrency=settings.endpoint_concurrency,
            max_new_tokens=settings.max_new_tokens,
            timeout_s=settings.endpoint_timeout_s,
        )
    return LocalQuestionLlm(
        local, cache_dir, batch=settings.batch, max_new_tokens=settings.max_new_tokens, threads=settings.threads
    )


# ------------------------------------------------------------------------------------------------------ candidates
def llm_candidates(
    chunks: Sequence[StoredChunk],
    llm: QuestionLlm,
    *,
    limit: int,
    shots: int,
    seed: int,
    embed_text: Callable[[StoredChunk], str],
    progress: Callable[[int], None] | None = None,
) -> Generation:
    """One LLM question for each of ``limit`` chunks sampled from the corpus (examples excluded)."""
    examples = few_shots(chunks, count=shots, seed=seed)
    used = {e.excerpt for e in examples}
    rng = random.Random(seed + 1)
    pool = [c for c in chunks if len(c.text.split()) >= 20 and words(c.text, SHOT_WORDS) not in used]
    pool.sort(key=lambda c: c.chunk_id)
    picked = rng.sample(pool, min(limit, len(pool)))
    started = time.perf_counter()
    candidates: list[Candidate] = []
    step = 64
    for start in range(0, len(picked), step):
        part = picked[start : start + step]
        replies = llm.complete([conversation(words(c.text, EXCERPT_WORDS), examples) for c in part])
        for chunk, reply in zip(part, replies, strict=True):
            question = clean_reply(reply)
            if question:
                candidates.append(Candidate(question, chunk, embed_text(chunk), "llm"))
        if progress:
            progress(len(part))
    seconds = time.perf_counter() - started
    logger.info(
        "generated %d questions for %d chunks with %s in %.0f s (%d few-shot examples)",
        len(candidates),
        len(picked),
        llm.name,
        seconds,
        len(examples),
    )
    return Generation(tuple(candidates), len(picked), seconds, llm.name, examples)


def heuristic_candidates(
    chunks: Sequence[StoredChunk],
    *,
    embed_text: Callable[[StoredChunk], str],
    limit: int,
    seed: int,
    sources: Iterable[Source] = ("title", "ict"),
) -> list[Candidate]:
    """Title -> first chunk (title line removed) and sentence -> rest of its chunk, at most ``limit`` in all."""
    wanted = set(sources)
    rng = random.Random(seed)
    by_doc: dict[str, list[StoredChunk]] = {}
    for chunk in chunks:
        by_doc.setdefault(chunk.doc_id, []).append(chunk)
    out: list[Candidate] = []
    for doc_id in sorted(by_doc):
        doc_chunks = sorted(by_doc[doc_id], key=lambda c: c.position)
        first = doc_chunks[0]
        if "title" in wanted and len(first.title.split()) >= 5:
            out.append(Candidate(first.title.strip(), first, embed_text(replace(first, title="")), "title"))
        if "ict" in wanted:
            chunk = rng.choice(doc_chunks)
            sentences = [s.strip() for s in _SENTENCE.split(chunk.text) if len(s.split()) >= 5]
            if len(sentences) >= 3:
                pick = rng.randrange(len(sentences))
                rest = " ".join(s for i, s in enumerate(sentences) if i != pick)
                out.append(Candidate(sentences[pick], chunk, embed_text(replace(chunk, text=rest)), "ict"))
    rng.shuffle(out)
    return out[:limit]


# --------------------------------------------------------------------------------------------------------- filters
def form_reason(query: str, passage: str, *, min_words: int, max_words: int) -> str | None:
    """Why a query is useless on its face, or None: length, letters, generic wording, copied verbatim."""
    tokens = query.split()
    if len(tokens) < min_words:
        return "too short"
    if len(tokens) > max_words:
        return "too long"
    found = _WORD.findall(query)
    letters = sum(1 for w in found if any(ch.isalpha() for ch in w))
    if not found or letters / len(found) < 0.6:
        return "not language (mostly numbers or symbols)"
    if len(set(w.lower() for w in found)) < max(2, len(found) // 3):
        return "repetitive"
    if _GENERIC.search(query):
        return "generic (about the text, not its content)"
    norm = normalize_answer(query)
    if norm and norm in normalize_answer(passage):
        return "copied verbatim from its passage"
    return None


def by_form(
    candidates: Sequence[Candidate], dropped: Counter[str], *, min_words: int, max_words: int
) -> list[Candidate]:
    """Candidates that pass :func:`form_reason`; the rest counted as ``<source>: <reason>``."""
    kept = []
    for candidate in candidates:
        why = form_reason(candidate.query, candidate.passage, min_words=min_words, max_words=max_words)
        if why:
            dropped[f"synthetic {candidate.source}: {why}"] += 1
        else:
            kept.append(candidate)
    return kept


def distinct(
    candidates: Sequence[Candidate], vectors: np.ndarray, dropped: Counter[str], *, cosine: float
) -> list[int]:
    """Indexes of candidates kept after removing duplicates and near-duplicates (first one wins).

    ``vectors`` are the champion's unit embeddings of the queries, row for row.
    """
    import numpy as np

    seen: set[str] = set()
    kept: list[int] = []
    for i, candidate in enumerate(candidates):
        norm = normalize_answer(candidate.query)
        if norm in seen:
            dropped[f"synthetic {candidate.source}: duplicate"] += 1
            continue
        if kept and float(np.max(vectors[kept] @ vectors[i])) >= cosine:
            dropped[f"synthetic {candidate.source}: near-duplicate"] += 1
            continue
        seen.add(norm)
        kept.append(i)
    return kept


def round_trip(
    candidates: Sequence[Candidate], rankings: Sequence[Sequence[str]], dropped: Counter[str], *, k: int
) -> list[int]:
    """Indexes of candidates whose source chunk the champion ranks within ``k`` (a query that does not find its own
    passage is more likely noise than a hard example)."""
    kept = []
    for i, (candidate, ranking) in enumerate(zip(candidates, rankings, strict=True)):
        if candidate.chunk.chunk_id in ranking[:k]:
            kept.append(i)
        else:
            dropped[f"synthetic {candidate.source}: round trip (source not in the champion's top {k})"] += 1
    return kept


# -------------------------------------------------------------------------------------------------------- assembly
@dataclass(frozen=True)
class SyntheticReport:
    """What the synthetic source did: candidates and kept pairs per source, the generator, and a few examples."""

    generated: dict[str, int]
    kept: dict[str, int]
    model: str | None
    llm_seconds: float
    shots: tuple[Shot, ...]
    examples: tuple[tuple[str, str, str], ...]
    false_negatives: int

    def to_json(self) -> dict[str, object]:
        """Plain JSON (the ``synthetic.json`` artifact of the ``finetune`` run)."""
        return {
            "generated": self.generated,
            "kept": self.kept,
            "model": self.model,
            "llm_seconds": round(self.llm_seconds, 1),
            "shots": [{"excerpt": s.excerpt, "query": s.query} for s in self.shots],
            "examples": [{"source": s, "query": q, "passage": p} for s, q, p in self.examples],
            "negatives_dropped_as_false": self.false_negatives,
        }


class ChampionView(Protocol):
    """What the synthetic source needs of the champion (:class:`evaluation.trainset.PairMiner` provides it)."""

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit embeddings, row for row."""
        ...

    def ranked(
        self,
        queries: Sequence[str],
        *,
        vectors: np.ndarray | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[str]]:
        """Chunk ids the champion ranks for each query, best first (``vectors``: the queries' embeddings, if known)."""
        ...

    def chunk(self, chunk_id: str) -> StoredChunk:
        """A chunk of the index by id."""
        ...

    def text(self, chunk: StoredChunk) -> str:
        """The chunk as the embedder sees it."""
        ...


@dataclass(frozen=True)
class Mined:
    """Negatives chosen for one kept candidate."""

    candidate: Candidate
    negatives: tuple[str, ...]


def with_negatives(
    kept: Sequence[Candidate],
    rankings: Sequence[Sequence[str]],
    queries: np.ndarray,
    champion: ChampionView,
    *,
    negatives: int,
    skip: int,
    margin: float,
) -> tuple[list[Mined], int]:
    """Hard negatives per candidate from the champion's ranking (ranks ``skip`` on, other documents), without the
    ones the champion scores within ``margin`` of the positive: those are as likely relevant as the positive, and
    teaching them as wrong is what GPL's margin labels avoid. ``queries`` are the champion's embeddings of the
    candidates' queries, row for row (:func:`filtered` returns them). Returns the mined pairs and how many negatives
    the guard refused."""
    import numpy as np

    if negatives == 0 or not kept:
        return [Mined(c, ()) for c in kept], 0
    options = []
    for candidate, ranking in zip(kept, rankings, strict=True):
        others = [cid for cid in ranking[skip:] if champion.chunk(cid).doc_id != candidate.chunk.doc_id]
        options.append(others[: negatives + 1])
    positives = champion.encode([c.passage for c in kept])
    flat = sorted({cid for ids in options for cid in ids})
    where = {cid: i for i, cid in enumerate(flat)}
    texts = [champion.text(champion.chunk(cid)) for cid in flat]
    vectors = champion.encode(texts) if flat else np.empty((0, 1))
    out: list[Mined] = []
    refused = 0
    for i, (candidate, ids) in enumerate(zip(kept, options, strict=True)):
        positive = float(queries[i] @ positives[i])
        chosen: list[str] = []
        for cid in ids:
            if len(chosen) >= negatives:
                break
            if float(queries[i] @ vectors[where[cid]]) > positive - margin:
                refused += 1
                continue
            chosen.append(texts[where[cid]])
        out.append(Mined(candidate, tuple(chosen)))
    return out, refused


def synthetic_candidates(
    chunks: Sequence[StoredChunk],
    settings: SyntheticSettings,
    *,
    llm: QuestionLlm | None,
    embed_text: Callable[[StoredChunk], str],
    limit: int,
    seed: int,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Candidate], Generation | None]:
    """Heuristic candidates and, with a generator, LLM ones (before any filter)."""
    candidates = heuristic_candidates(
        chunks, embed_text=embed_text, limit=limit, seed=seed, sources=settings.heuristics
    )
    generation = None
    if llm is not None:
        generation = llm_candidates(
            chunks,
            llm,
            limit=settings.llm_chunks,
            shots=settings.shots,
            seed=seed,
            embed_text=embed_text,
            progress=progress,
        )
        # LLM questions first: when two candidates are near-duplicates, the first one is kept.
        candidates = list(generation.candidates) + candidates
    return candidates, generation


def filtered(
    candidates: Sequence[Candidate],
    champion: ChampionView,
    settings: SyntheticSettings,
    dropped: Counter[str],
    *,
    on_total: Callable[[int], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[Candidate], list[list[str]], np.ndarray]:
    """The candidates every filter kept, with the champion's ranking and embedding of each query (for mining).

    ``on_total`` is told how many queries the round trip searches (after the cheaper filters), ``progress`` how
    many it has searched."""
    shaped = by_form(candidates, dropped, min_words=settings.min_words, max_words=settings.max_words)
    vectors = champion.encode([c.query for c in shaped])
    if not shaped:
        return [], [], vectors
    rows = distinct(shaped, vectors, dropped, cosine=settings.near_duplicate_cosine)
    unique, vectors = [shaped[i] for i in rows], vectors[rows]
    if on_total:
        on_total(len(unique))
    rankings = champion.ranked([c.query for c in unique], vectors=vectors, progress=progress)
    kept = round_trip(unique, rankings, dropped, k=settings.round_trip_k)
    return [unique[i] for i in kept], [rankings[i] for i in kept], vectors[kept]


def counts(candidates: Iterable[Candidate]) -> dict[str, int]:
    """Candidates per source."""
    return dict(sorted(Counter(c.source for c in candidates).items()))


def examples(candidates: Sequence[Candidate], *, per_source: int = 5) -> tuple[tuple[str, str, str], ...]:
    """A few kept pairs per source, for people reading the MLflow run."""
    out: list[tuple[str, str, str]] = []
    seen: Counter[str] = Counter()
    for candidate in candidates:
        if seen[candidate.source] < per_source:
            seen[candidate.source] += 1
            out.append((candidate.source, candidate.query, words(candidate.passage, 50)))
    return tuple(out)
