"""How the local LLM server spends the CPU: all cores for the prompt, one for decoding, and a fast single-query path.

Why this exists (measured on a 2-core AVX-512/bf16 EPYC, SmolLM2-135M in bfloat16, a 1,270-token RAG prompt):

- **The prompt (prefill) is what the first token waits for**: about 2.5 CPU-seconds on one thread, about 53% in the
  linear layers and 40% in attention (``logits_to_keep=1`` is already applied by ``generate``, so the 49k-word
  head runs on one position only). Its ops are large, so it scales over free cores (in-process, best of
  interleaved runs: 1.4 s on two threads vs 2.4 s on one; no gain while other work holds the second core).
- **Decoding does tiny ops** (one position), and with two threads every op waits for the other thread: measured
  here it was no faster on a quiet machine and 1.2-1.7x slower on a busy one. So decoding stays on ``decode_threads``.
- **Single-query attention in bfloat16 is slow in torch's CPU flash kernel**: 1.3 ms per layer at 1,290 cached
  positions (it grows with the cache) against 0.13 ms for two small matmuls and a float32 softmax, which is 35 of
  the 90 ms a token took. Prompts keep torch's flash kernel (34 ms per layer, the fastest measured; the matmul
  form materialises the whole score matrix and took 154 ms).

``transformers serve`` builds the model itself and accepts only its built-in attention names, so the one seam is
transformers' public :class:`~transformers.AttentionInterface`: :func:`install` registers :class:`PhaseAttention`
under ``"sdpa"`` in this process (the LLM server's own), delegating everything but single-query bf16/fp16 steps to
the function it replaces. It runs on the inference thread, once per layer, so it is also where the thread count is
switched between the two phases (``torch.set_num_threads`` acts on the calling thread's OpenMP team).

Import this module only after :func:`rag.local_llm.prefer_passive_waits` has run (it imports torch).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger(__name__)

AttentionFn = Callable[..., tuple[torch.Tensor, Any]]

_REDUCED = (torch.bfloat16, torch.float16)
ATTENTION_NAME = "sdpa"


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; the container's share, not the host's core count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        return os.cpu_count() or 1


def single_query_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None,
) -> torch.Tensor:
    """Attention of one new position over the cache, as two matmuls and a float32 softmax.

    ``query`` is ``(batch, heads, 1, dim)``; ``key``/``value`` are ``(batch, kv_heads, positions, dim)`` (grouped-query
    attention: each kv head serves ``heads // kv_heads`` query heads, which become rows of one matmul, so the cache
    is never repeated). ``attention_mask`` is SDPA's: boolean (True attends) or additive float, broadcastable to
    ``(batch, heads, 1, positions)``. Scores are computed in float32 (as torch's kernels accumulate them). Returns
    ``(batch, 1, heads, dim)``, the layout transformers' attention functions return.
    """
    batch, heads, _, dim = query.shape
    kv_heads, positions = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    scale = scaling if scaling is not None else 1.0 / math.sqrt(dim)
    grouped = query.reshape(batch, kv_heads, groups, dim).float()
    scores = torch.matmul(grouped, key.float().transpose(-1, -2)).mul_(scale)  # (batch, kv_heads, groups, positions)
    if attention_mask is not None:
        mask = attention_mask
        if mask.shape[1] == heads and heads != 1:  # one mask per query head: regroup like the query
            mask = mask.reshape(mask.shape[0], kv_heads, groups, positions)
        else:
            mask = mask.reshape(mask.shape[0], mask.shape[1], 1, positions)
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (batch, kv_heads, groups, dim)
    return out.reshape(batch, heads, 1, dim).transpose(1, 2).contiguous()


class PhaseAttention:
    """An attention function for transformers' ``AttentionInterface``: thread count per phase, fast decode steps.

    Usage example::

        attention = PhaseAttention(ALL_ATTENTION_FUNCTIONS["sdpa"], prefill_threads=2, decode_threads=1)
        AttentionInterface.register("sdpa", attention)

    :param fallback: The attention function it replaces; it computes every prompt and every case the fast path
        does not cover (dropout, position bias, softcap, attention weights requested, float32, non-CPU tensors).
    :param prefill_threads: torch threads while a prompt (more than one query position) is computed.
    :param decode_threads: torch threads while single positions are decoded.
    """

    def __init__(self, fallback: AttentionFn, *, prefill_threads: int, decode_threads: int) -> None:
        if prefill_threads < 1 or decode_threads < 1:
            raise ValueError("thread counts must be at least 1")
        self.fallback = fallback
        self.prefill_threads = prefill_threads
        self.decode_threads = decode_threads

    def __call__(
        self,
        module: torch.nn.Module,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, Any]:
        """Switch threads for the phase, then attend (the signature transformers calls attention functions with)."""
        single = query.shape[2] == 1
        wanted = self.decode_threads if single else self.prefill_threads
        if torch.get_num_threads() != wanted:
            torch.set_num_threads(wanted)
        if single and self._fast_path_applies(query, key, dropout, kwargs):
            return single_query_attention(query, key, value, attention_mask, scaling), None
        return self.fallback(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)

    @staticmethod
    def _fast_path_applies(query: torch.Tensor, key: torch.Tensor, dropout: float, kwargs: dict[str, Any]) -> bool:
        return (
            query.device.type == "cpu"
            and query.dtype in _REDUCED
            and dropout == 0.0
            and query.shape[1] % key.shape[1] == 0
            and kwargs.get("position_bias") is None
            and kwargs.get("softcap") is None
            and not kwargs.get("output_attentions", False)
        )


def install(prefill_threads: int, decode_threads: int) -> PhaseAttention:
    """Register :class:`PhaseAttention` as this process's ``"sdpa"`` attention (before the model is loaded).

    Meant for the LLM server's own process: every model using ``"sdpa"`` in it gets the phase-dependent threads.
    Installing twice wraps the original function once.
    """
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = ALL_ATTENTION_FUNCTIONS[ATTENTION_NAME]
    fallback = current.fallback if isinstance(current, PhaseAttention) else current
    attention = PhaseAttention(fallback, prefill_threads=prefill_threads, decode_threads=decode_threads)
    AttentionInterface.register(ATTENTION_NAME, attention)
    torch.set_num_threads(decode_threads)
    logger.info("attention: prompts on %d threads, decoding on %d", prefill_threads, decode_threads)
    return attention
