"""The local LLM server's CPU runtime: single-query attention, threads per phase, the attention registration.

The fast decode path replaces torch's bf16 flash kernel for one query position, so it is checked against SDPA in
float32 (masks, grouped-query heads) and, end to end, against the stock attention on a tiny random Llama run step by
step with the same inputs (teacher forcing, so a near-tie cannot make the two runs diverge).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from rag.local_llm_runtime import ATTENTION_NAME, PhaseAttention, install, single_query_attention

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def restored_runtime() -> Iterator[None]:
    """Whatever a test registers or sets, the process gets its attention function and thread count back."""
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    original, threads = ALL_ATTENTION_FUNCTIONS[ATTENTION_NAME], torch.get_num_threads()
    try:
        yield
    finally:
        AttentionInterface.register(ATTENTION_NAME, original)
        torch.set_num_threads(threads)


def _reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, enable_gqa=True)
    return out.transpose(1, 2)


class TestSingleQueryAttention:
    @pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
    @pytest.mark.parametrize("mask_kind", ["none", "bool", "additive", "per-head"])
    def test_matches_sdpa(self, dtype: torch.dtype, mask_kind: str) -> None:
        gen = torch.Generator().manual_seed(0)
        q = torch.randn(2, 6, 1, 16, generator=gen).to(dtype)
        k = torch.randn(2, 2, 40, 16, generator=gen).to(dtype)  # 3 query heads per kv head
        v = torch.randn(2, 2, 40, 16, generator=gen).to(dtype)
        keep = torch.rand(2, 6 if mask_kind == "per-head" else 1, 1, 40, generator=gen) > 0.3
        keep[..., 0] = True  # no row masked out entirely
        mask: torch.Tensor | None = {
            "none": None,
            "bool": keep,
            "per-head": keep,
            "additive": torch.where(keep, 0.0, torch.finfo(torch.float32).min).to(dtype),
        }[mask_kind]
        out = single_query_attention(q, k, v, mask, None)
        assert out.shape == (2, 1, 6, 16) and out.dtype == dtype
        # bf16 inputs and output: about the rounding torch's own bf16 kernel shows against float32 (~1e-3)
        tolerance = 1e-5 if dtype == torch.float32 else 1e-2
        assert torch.allclose(out.float(), _reference(q, k, v, keep if mask_kind != "none" else None), atol=tolerance)

    def test_an_explicit_scale_is_used(self) -> None:
        q, k, v = torch.randn(1, 2, 1, 8), torch.randn(1, 2, 5, 8), torch.randn(1, 2, 5, 8)
        expected = F.scaled_dot_product_attention(q, k, v, scale=0.5).transpose(1, 2)
        assert torch.allclose(single_query_attention(q, k, v, None, 0.5), expected, atol=1e-6)


class TestPhaseAttention:
    def _spy(self, calls: list[int]) -> Any:
        def fallback(module: torch.nn.Module, query: torch.Tensor, *args: Any, **kwargs: Any) -> tuple[Any, None]:
            calls.append(query.shape[2])
            return query.transpose(1, 2), None

        return fallback

    def test_prompts_and_decode_steps_run_on_their_thread_counts(self, restored_runtime: None) -> None:
        calls: list[int] = []
        attention = PhaseAttention(self._spy(calls), prefill_threads=2, decode_threads=1)
        module = torch.nn.Module()
        kv = torch.randn(1, 2, 7, 8, dtype=torch.bfloat16)
        attention(module, torch.randn(1, 4, 7, 8, dtype=torch.bfloat16), kv, kv, None)
        assert torch.get_num_threads() == 2 and calls == [7]  # the prompt: the replaced function, two threads
        out, _ = attention(module, torch.randn(1, 4, 1, 8, dtype=torch.bfloat16), kv, kv, None)
        assert torch.get_num_threads() == 1 and calls == [7]  # a bf16 decode step: the fast path, one thread
        assert out.shape == (1, 1, 4, 8)

    @pytest.mark.parametrize(
        ("dtype", "kwargs"),
        [(torch.float32, {}), (torch.bfloat16, {"dropout": 0.1}), (torch.bfloat16, {"softcap": 30.0})],
    )
    def test_what_the_fast_path_does_not_cover_goes_to_the_replaced_function(
        self, restored_runtime: None, dtype: torch.dtype, kwargs: dict[str, Any]
    ) -> None:
        calls: list[int] = []
        attention = PhaseAttention(self._spy(calls), prefill_threads=1, decode_threads=1)
        kv = torch.randn(1, 2, 7, 8, dtype=dtype)
        attention(torch.nn.Module(), torch.randn(1, 4, 1, 8, dtype=dtype), kv, kv, None, **kwargs)
        assert calls == [1]

    def test_thread_counts_below_one_are_refused(self) -> None:
        with pytest.raises(ValueError, match="at least 1"):
            PhaseAttention(self._spy([]), prefill_threads=0, decode_threads=1)


def _tiny_llama() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=97,
        hidden_size=96,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=6,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).to(torch.bfloat16).eval()


def _stepwise_logits(model: Any, ids: torch.Tensor, mask: torch.Tensor, prompt: int) -> torch.Tensor:
    """Last-position logits after the prompt, then after each later token fed one at a time."""
    from transformers import DynamicCache

    with torch.inference_mode():
        out = model(input_ids=ids[:, :prompt], attention_mask=mask[:, :prompt], cache=DynamicCache(), use_cache=True)
        logits = [out.logits[:, -1]]
        for i in range(prompt, ids.shape[1]):
            out = model(input_ids=ids[:, i : i + 1], attention_mask=mask[:, : i + 1], cache=out.cache, use_cache=True)
            logits.append(out.logits[:, -1])
    return torch.stack(logits).float()


def test_a_model_decodes_the_same_with_the_runtime_installed(restored_runtime: None) -> None:
    model = _tiny_llama()
    ids = torch.randint(0, 97, (2, 14), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # the second row is left-padded: decode steps see a real attention mask
    stock = _stepwise_logits(model, ids, mask, prompt=8)
    attention = install(prefill_threads=1, decode_threads=1)
    calls: list[int] = []
    fallback = attention.fallback

    def counting(module: torch.nn.Module, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        calls.append(query.shape[2])
        return fallback(module, query, *args, **kwargs)

    attention.fallback = counting
    ours = _stepwise_logits(model, ids, mask, prompt=8)
    assert calls == [8, 8]  # the prompt, in both layers, through the replaced function; every decode step not
    assert torch.allclose(ours, stock, atol=0.05)
    assert torch.equal(ours.argmax(-1), stock.argmax(-1))


def test_installing_twice_wraps_the_original_once(restored_runtime: None) -> None:
    first = install(prefill_threads=2, decode_threads=1)
    second = install(prefill_threads=1, decode_threads=1)
    assert second.fallback is first.fallback and not isinstance(second.fallback, PhaseAttention)
    assert torch.get_num_threads() == 1


@pytest.mark.parametrize(("preset", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_waits_are_passive_unless_the_user_chose(preset: str | None, expected: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | {"PYTHONPATH": str(REPO)}
    if preset is not None:
        env["OMP_WAIT_POLICY"] = preset
    code = (
        "import os\nfrom rag.local_llm import prefer_passive_waits\n"
        "prefer_passive_waits()\nprint(os.environ['OMP_WAIT_POLICY'])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == expected
