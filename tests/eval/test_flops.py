"""Tests for steprune.eval.flops: the paper numbers, the in-LLM schedule and FlopCounterMode agreement.

Agreement with FlopCounterMode is asserted *exactly*: it counts only matmul/conv/SDPA ops (2 per
multiply-add, biases ignored) and the analytic formulas count exactly those matmuls; the parts the
formulas ignore (norms, rotary, softmax, activations, residual adds) are not counted by FlopCounterMode
either. The tiny models use full multi-head attention (no GQA), where the convention is exact.
"""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from steprune.eval.flops import (
    PrefillCost,
    decoder_layer_flops,
    equivalent_visual_tokens,
    in_llm_prefill_flops,
    llm_prefill_flops,
    measured_forward_flops,
    measured_prefill_cost,
    prefill_cost,
    projector_flops,
    vision_tower_flops,
)

PROMPT = 92


@pytest.fixture(scope="module")
def vicuna7b() -> LlamaConfig:
    return LlamaConfig(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        vocab_size=32000,
    )


@pytest.fixture(scope="module")
def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        vocab_size=128,
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def tiny_clip() -> CLIPVisionModel:
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=32,
        patch_size=8,
        attn_implementation="sdpa",
    )
    return CLIPVisionModel(cfg).eval()


# ---------------------------------------------------------------- analytic: paper numbers (methods.md §4)
def test_decoder_layer_formula() -> None:
    n, d, m = 3, 5, 7
    assert decoder_layer_flops(n, d, m) == 2 * (4 * n * d**2 + 2 * n**2 * d + 3 * n * d * m)


@pytest.mark.parametrize(("visual", "tflops"), [(576, 8.89), (64, 2.03)])
def test_vicuna7b_reference_numbers(vicuna7b: LlamaConfig, visual: int, tflops: float) -> None:
    assert llm_prefill_flops(vicuna7b, visual + PROMPT) / 1e12 == pytest.approx(tflops, abs=0.01)


def test_lm_head_is_last_position_only(vicuna7b: LlamaConfig) -> None:
    n = 576 + PROMPT
    extra = llm_prefill_flops(vicuna7b, n, include_lm_head=True) - llm_prefill_flops(vicuna7b, n)
    assert extra == 2 * 4096 * 32000


def test_composite_config_reads_text_config(vicuna7b: LlamaConfig) -> None:
    assert llm_prefill_flops(LlavaConfig(text_config=vicuna7b), 668) == llm_prefill_flops(vicuna7b, 668)


# ---------------------------------------------------------------- analytic: in-LLM schedules
def test_in_llm_single_stage_equals_plain(vicuna7b: LlamaConfig) -> None:
    assert in_llm_prefill_flops(vicuna7b, PROMPT, [(0, 576)]) == llm_prefill_flops(vicuna7b, 576 + PROMPT)


def test_fastv_schedule(vicuna7b: LlamaConfig) -> None:
    stages = [(0, 576), (2, 64)]
    per_layer = [decoder_layer_flops(PROMPT + v, 4096, 11008) for v in (576, 64)]
    assert in_llm_prefill_flops(vicuna7b, PROMPT, stages) == 2 * per_layer[0] + 30 * per_layer[1]
    assert equivalent_visual_tokens(vicuna7b, stages) == (2 * 576 + 30 * 64) / 32 == 96.0
    assert equivalent_visual_tokens(32, [(0, 64)]) == 64.0


@pytest.mark.parametrize("stages", [[], [(1, 576)], [(0, 576), (0, 64)], [(0, 576), (32, 64)], [(0, -1)]])
def test_bad_schedules_raise(vicuna7b: LlamaConfig, stages: list[tuple[int, int]]) -> None:
    with pytest.raises(ValueError):
        in_llm_prefill_flops(vicuna7b, PROMPT, stages)


# ---------------------------------------------------------------- analytic: whole LLaVA prefill
def test_prefill_cost_llava15_7b() -> None:
    cfg = LlavaConfig()  # defaults are LLaVA-1.5-7B shaped: CLIP-L/336 (24 layers, 1024), Llama 4096x32
    cost = prefill_cost(cfg, visual_tokens=64, text_tokens=PROMPT, selection_flops=1e9)
    assert isinstance(cost, PrefillCost)
    assert cost.tflops("llm") == pytest.approx(2.03, abs=0.01)
    assert cost.vision == vision_tower_flops(cfg.vision_config, 577)
    assert cost.projector == projector_flops(1024, 4096, 576)
    assert cost.total == cost.vision + cost.projector + 1e9 + cost.llm
    assert cost.tflops() == pytest.approx(cost.total / 1e12)
    fastv = prefill_cost(cfg, 576, PROMPT, stages=[(0, 576), (2, 64)])
    assert fastv.llm == in_llm_prefill_flops(cfg.text_config, PROMPT, [(0, 576), (2, 64)])
    with pytest.raises(ValueError):
        prefill_cost(cfg, 64, PROMPT, stages=[(0, 576), (2, 64)])
    with pytest.raises(ValueError):
        cost.tflops("lm_head")


def test_measured_prefill_cost_follows_the_reported_stages() -> None:
    cfg = LlavaConfig()
    # an in-LLM method reports (0, K_first) then its drops: every layer before the first drop sees all 576
    fastv = measured_prefill_cost(cfg, 576, [(0, 64), (2, 64)], kept=64, text_tokens=PROMPT, selection_flops=1e9)
    assert fastv.total == prefill_cost(cfg, 576, PROMPT, 1e9, stages=[(0, 576), (2, 64)]).total
    # a pre-LLM method (one stage) is costed at the tokens it kept
    uniform = measured_prefill_cost(cfg, 576, [(0, 64)], kept=64, text_tokens=PROMPT)
    assert uniform.total == prefill_cost(cfg, 64, PROMPT).total < fastv.total


# ---------------------------------------------------------------- empirical: FlopCounterMode
@pytest.mark.parametrize("n", [7, 33])
def test_llm_matches_flop_counter_exactly(tiny_llama: LlamaForCausalLM, n: int) -> None:
    x = torch.randn(1, n, 64)
    measured = measured_forward_flops(lambda: tiny_llama.model(inputs_embeds=x))
    assert measured == llm_prefill_flops(tiny_llama.config, n)


def test_lm_head_matches_flop_counter(tiny_llama: LlamaForCausalLM) -> None:
    x = torch.randn(1, 9, 64)
    measured = measured_forward_flops(lambda: tiny_llama(inputs_embeds=x, logits_to_keep=1))
    assert measured == llm_prefill_flops(tiny_llama.config, 9, include_lm_head=True)


def test_cpu_sdpa_registration_matters(tiny_llama: LlamaForCausalLM) -> None:
    n, d, layers = 11, 64, 2
    x = torch.randn(1, n, d)
    with_sdpa = measured_forward_flops(lambda: tiny_llama.model(inputs_embeds=x))
    without = measured_forward_flops(lambda: tiny_llama.model(inputs_embeds=x), count_cpu_sdpa=False)
    assert with_sdpa - without == layers * 2 * (2 * n**2 * d)  # exactly the attention term


def test_clip_tower_matches_flop_counter_exactly(tiny_clip: CLIPVisionModel) -> None:
    px = torch.randn(1, 3, 32, 32)
    measured = measured_forward_flops(lambda: tiny_clip(pixel_values=px))
    assert measured == vision_tower_flops(tiny_clip.config, (32 // 8) ** 2 + 1)


def test_llava_projector_matches_flop_counter() -> None:
    torch.manual_seed(0)
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            patch_size=8,
        ),
        text_config=LlamaConfig(
            hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, vocab_size=128
        ),
        vision_feature_layer=[-2, -1],
    )
    projector = LlavaForConditionalGeneration(cfg).model.multi_modal_projector.eval()
    feats = torch.randn(1, 16, 64)
    assert measured_forward_flops(lambda: projector(feats)) == projector_flops(64, 64, 16)
    assert prefill_cost(cfg, 16, 5).projector == projector_flops(64, 64, 16)
