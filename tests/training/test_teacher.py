"""Imitation of a training-free teacher: the loss on the pointer's own trajectory, the teacher's set, a micro fit."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from steprune.data.collate import InstructCollator
from steprune.pruned_vlm import PrunedVLM
from steprune.training.schedules import TextGateSchedule
from steprune.training.stepprune_module import StepPruneModule
from steprune.training.teacher import imitation_loss, teacher_set
from tests.training.test_stepprune_module import backbone, cpu_trainer, loaders, records  # noqa: F401 (fixture)


def test_imitation_loss_by_hand_skips_stop_and_chosen_tokens():
    pi = torch.tensor(
        [
            [
                [0.1, 0.2, 0.3, 0.2, 0.2],  # step 1 chooses token 2 (a teacher token)
                [0.4, 0.1, 0.0, 0.3, 0.2],  # step 2 chooses token 0: token 2 is no longer open
                [0.0, 0.3, 0.0, 0.2, 0.5],  # step 3 chooses STOP: not imitated
            ]
        ]
    )
    actions = torch.tensor([[2, 0, 4]])
    teacher = torch.tensor([[True, False, True, False]])
    loss = imitation_loss(pi, torch.ones(1, 3, dtype=torch.bool), actions, teacher)
    expected = -(math.log(0.4 / 0.8) + math.log(0.4 / 0.8)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    all_chosen = imitation_loss(pi[:, 2:], torch.ones(1, 1, dtype=torch.bool), actions[:, 2:], teacher)
    assert float(all_chosen) == 0.0, "only a STOP step: nothing to imitate"


def test_imitation_never_pushes_the_stop_logit():
    """The ratio restricts pi_t to the visual tokens: its gradient with respect to STOP's logit is exactly 0, and a
    step down the gradient raises the teacher tokens' share."""
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 7, requires_grad=True)
    pi = logits.softmax(-1)
    actions = torch.tensor([[0, 1, 2, 3], [5, 4, 6, 6]])
    teacher = torch.tensor([[0, 0, 0, 1, 1, 1], [1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    valid = torch.tensor([[True] * 4, [True, True, True, False]])
    loss = imitation_loss(pi, valid, actions, teacher)
    loss.backward()
    assert logits.grad[..., -1].abs().max() < 1e-7
    assert logits.grad[..., :-1].abs().max() > 1e-3
    with torch.no_grad():
        after = imitation_loss((logits - 0.5 * logits.grad).softmax(-1), valid, actions, teacher)
    assert float(after) < float(loss)


def test_the_teacher_set_is_the_method_on_the_prompt_without_its_answer(backbone):  # noqa: F811
    module = StepPruneModule(backbone, surrogate="removal", teacher="mmtok", imitate=1.0)
    train = InstructCollator(module.processor, "train")(records(3))
    prompt = train["labels"] == -100
    vision = module.adapter.encode_images(pixel_values=train["pixel_values"])
    picked = teacher_set(module.teacher, train["input_ids"], train["attention_mask"], prompt, vision, 5)
    assert picked.shape == (3, vision.image_tokens.shape[1]) and picked.sum(dim=1).tolist() == [5, 5, 5]
    generation = InstructCollator(module.processor, "eval")(records(3))  # the same prompts, no answer
    reference = PrunedVLM(module.vlm, module.processor, method="mmtok", budget=5)
    inputs = {k: generation[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    result = reference.prepare(**inputs).result
    expected = torch.zeros_like(picked).scatter_(1, result.keep, True)
    assert torch.equal(picked, expected)


@pytest.mark.parametrize("teacher", ["fastv", "identity"])
def test_a_teacher_that_does_not_choose_before_the_llm_is_refused(backbone, teacher):  # noqa: F811
    with pytest.raises(ValueError, match="training-free method that chooses before the LLM"):
        StepPruneModule(backbone, surrogate="removal", teacher=teacher, imitate=1.0)
    with pytest.raises(ValueError, match="exactly when a teacher is named"):
        StepPruneModule(backbone, surrogate="removal", imitate=1.0)


def test_a_micro_fit_learns_the_teachers_tokens(backbone, tmp_path):  # noqa: F811
    """Uniform at 3 of 16 tokens is one fixed set for every image: 30 steps of imitation make the selector's picks on
    the training prompts overlap it far more than the untrained selector's do, and the run logs the imitation term.
    (Eight random images are too few to generalise from: the overlap is measured where it was taught.)"""
    train, val = loaders(backbone)
    torch.manual_seed(0)
    module = StepPruneModule(
        backbone, t_max=3, lr=3e-3, warmup_steps=1, surrogate="removal", teacher="uniform", imitate=5.0, min_k=3
    )

    seen = InstructCollator(module.processor, "eval")(records(8))  # the training images and prompts, no answer

    def overlap() -> float:
        batch = seen
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
        kept = module.pruned_vlm().prepare(**inputs).result
        teacher = PrunedVLM(module.vlm, module.processor, method="uniform", budget=3).prepare(**inputs).result
        ours = torch.zeros(kept.keep.shape[0], 16, dtype=torch.bool).scatter_(1, kept.keep, kept.keep_mask)
        theirs = torch.zeros_like(ours).scatter_(1, teacher.keep, True)
        return float((ours & theirs).sum() / theirs.sum())

    module.selector.eval()
    before = overlap()
    logged: list[float] = []

    class Log(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            logged.append(float(trainer.callback_metrics["train/imitation"]))

    cpu_trainer(30, [Log(), TextGateSchedule(0)], tmp_path).fit(module, train, val)  # α = 1, as at inference
    module.selector.eval()
    after = overlap()
    assert after >= 0.9 and after > before + 0.3, (before, after)
    assert all(math.isfinite(v) for v in logged) and logged[-1] < logged[0]
