"""Keep-all pruning must reproduce the unpruned HF model exactly: logits and greedy generation."""

from __future__ import annotations

import torch

from steprune import PrunedVLM
from tests.inputs import make_inputs


def test_identity_logits_equal_hf_forward(family):
    model, processor = family
    inputs = make_inputs(processor)
    assert int(inputs["attention_mask"].eq(0).sum()) > 0, "the batch must contain padding"
    with torch.no_grad():
        reference = model(**inputs).logits
    out = PrunedVLM(model, processor, method="identity")(**inputs)
    real = inputs["attention_mask"].bool()
    assert out.logits.shape == reference.shape
    torch.testing.assert_close(out.logits[real], reference[real], rtol=1e-5, atol=1e-5)


def test_identity_generate_equals_hf_generate(family):
    model, processor = family
    inputs = make_inputs(processor, seed=3)
    with torch.no_grad():
        reference = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    reference = reference[:, inputs["input_ids"].shape[1] :]
    ours = PrunedVLM(model, processor, method="identity").generate(**inputs, max_new_tokens=6)
    assert torch.equal(ours, reference)


def test_full_budget_uniform_equals_identity(family):
    model, processor = family
    inputs = make_inputs(processor)
    n = int((inputs["input_ids"] == model.config.image_token_id).sum(1)[0])
    full = PrunedVLM(model, processor, method="uniform", budget=n)(**inputs)
    ident = PrunedVLM(model, processor, method="identity")(**inputs)
    torch.testing.assert_close(full.logits, ident.logits)
