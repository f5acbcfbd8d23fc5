"""The removal surrogate in the module (methods.md §1.8): gradients reach STOP and every trainable parameter, the
distillation term is zero when nothing is pruned, and the paper's path keeps its trainable set."""

from __future__ import annotations

import pytest
import torch

from steprune.data.collate import InstructCollator
from steprune.training.stepprune_module import StepPruneModule
from tests.training.test_stepprune_module import backbone, records  # noqa: F401 (fixture)


def one_batch(module: StepPruneModule) -> dict:
    return InstructCollator(module.processor, "train")(records(4))


def test_gradients_reach_stop_and_every_trainable_parameter(backbone):  # noqa: F811
    torch.manual_seed(0)
    module = StepPruneModule(backbone, t_max=8, surrogate="removal", kd=1.0)
    module.alpha = 1.0  # the text gate open: W_t is in the graph
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable == {f"selector.{n}" for n, p in module.selector.named_parameters() if "denoiser" not in n}
    loss = module.training_step(one_batch(module), 0)
    loss.backward()
    missing = [n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in module.parameters() if p.grad is not None)
    assert float(module.selector.decoder.stop.grad.abs().sum()) > 0
    assert all(p.grad is None for p in module.selector.denoiser.parameters())


def test_distillation_is_zero_when_every_token_is_kept_and_positive_when_some_are_dropped(backbone):  # noqa: F811
    torch.manual_seed(0)
    module = StepPruneModule(backbone, t_max=16, min_k=16, surrogate="removal", kd=1.0)  # keeps all 16 tokens
    batch = one_batch(module)
    vision = module.adapter.encode_images(pixel_values=batch["pixel_values"])
    out = module.selector.forward_train(
        vision.vision_features, *module.adapter.prompt_embeddings(batch["input_ids"], batch["attention_mask"])
    )
    assert out["k"].tolist() == [16] * 4
    kl_all = module._distillation(batch, module._lm_removal(batch, out).logits, module._full_logprobs(batch, vision))
    assert float(kl_all) == pytest.approx(0.0, abs=1e-5)
    out["keep"] = out["keep"] * 0  # drop every visual token
    kl_none = module._distillation(batch, module._lm_removal(batch, out).logits, module._full_logprobs(batch, vision))
    assert float(kl_none) > 1e-4


def test_paper_surrogate_still_trains_the_denoiser_and_refuses_explore(backbone):  # noqa: F811
    module = StepPruneModule(backbone, t_max=8)
    assert all(p.requires_grad for p in module.selector.denoiser.parameters())
    with pytest.raises(ValueError, match="removal surrogate only"):
        module.selector.forward_train(torch.zeros(1, 16, 32), torch.zeros(1, 2, 32), torch.ones(1, 2), explore=True)
    with pytest.raises(ValueError, match="surrogate"):
        StepPruneModule(backbone, surrogate="noise")
