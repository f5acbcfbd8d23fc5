"""In-LLM methods under HF's batch expansion (num_beams, num_return_sequences): each copy = the prompt alone.

`generate(num_beams=r)` / `num_return_sequences=r` repeat every prompt r times (`repeat_interleave`) before
the prefill, so the hook session sees r*B rows for B prompts (the #21 crash: "The expanded size of the tensor
(2) must match the existing size (4)"). Every method must give each expanded row what a run of its prompt alone
with the same generation arguments gives.
"""

from __future__ import annotations

import pytest
import torch

from steprune import PrunedVLM
from steprune.backbones.in_llm import InLLMPruning
from steprune.backbones.tiny import tiny_llava, tiny_qwen2_5_vl
from tests.inputs import make_inputs, select_sample

IN_LLM = ("fastv", "pdrop", "sparsevlm", "dart")


@pytest.fixture(scope="module", params=["llava", "qwen"])
def deep(request):
    torch.manual_seed(0)
    if request.param == "llava":
        return tiny_llava(text_layers=4)
    return tiny_qwen2_5_vl(text_layers=4)


@pytest.mark.parametrize("method", IN_LLM)
@pytest.mark.parametrize(
    "generation",
    [{"num_beams": 2}, {"num_beams": 2, "num_return_sequences": 2}],
    ids=["beams", "beams+return2"],
)
def test_beam_rows_equal_each_prompt_alone(deep, method, generation):
    model, processor = deep
    inputs = make_inputs(processor, seed=3)
    vlm = PrunedVLM(model, processor, method=method, budget=4)
    batch = vlm.generate(**inputs, max_new_tokens=3, **generation)  # (B * returns, T)
    returns = generation.get("num_return_sequences", 1)
    assert batch.shape[0] == 2 * returns
    for b in range(2):
        alone = vlm.generate(**select_sample(inputs, b), max_new_tokens=3, **generation)  # (returns, T)
        assert torch.equal(batch[b * returns : (b + 1) * returns], alone), f"{method}: prompt {b} differs alone"


@pytest.mark.parametrize("method", IN_LLM)
def test_return_sequences_each_equal_the_greedy_answer(deep, method):
    """Sampling restricted to the top token (top_k=1) is greedy: all r returned rows are the greedy answer."""
    model, processor = deep
    inputs = make_inputs(processor, seed=5)
    vlm = PrunedVLM(model, processor, method=method, budget=4)
    greedy = vlm.generate(**inputs, max_new_tokens=3)  # (B, T)
    sampled = vlm.generate(**inputs, max_new_tokens=3, do_sample=True, top_k=1, num_return_sequences=3)  # (3B, T)
    assert torch.equal(sampled, greedy.repeat_interleave(3, dim=0))


def _session(model, processor):
    vlm = PrunedVLM(model, processor, method="fastv", budget=4)
    inputs = make_inputs(processor)
    prepared = vlm.prepare(**inputs)
    session = vlm._in_llm(prepared)
    assert isinstance(session, InLLMPruning)
    return session, prepared.spliced


def test_rows_that_are_not_copies_are_refused(deep):
    model, processor = deep
    session, spliced = _session(model, processor)
    first = session.decoder.layers[0]
    hidden = spliced.inputs_embeds.repeat_interleave(2, dim=0).clone()  # (2B, S, D)
    hidden[1] += 1.0  # the second copy of prompt 0 is not a copy
    with session, pytest.raises(ValueError, match="not copies of one another"):
        session._step_start(first, (hidden,), {})


def test_rows_not_a_multiple_of_the_prompts_are_refused(deep):
    model, processor = deep
    session, spliced = _session(model, processor)
    first = session.decoder.layers[0]
    hidden = torch.cat([spliced.inputs_embeds, spliced.inputs_embeds[:1]])  # (B + 1, S, D)
    with session, pytest.raises(ValueError, match="3 rows for 2 prompts"):
        session._step_start(first, (hidden,), {})
