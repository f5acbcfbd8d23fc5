"""The StepPrune LightningModule on a micro LLaVA: trainable parameters, a 2-step fit, resume, metrics."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from steprune.backbones.tiny import tiny_llava
from steprune.data.collate import InstructCollator
from steprune.training.schedules import TemperatureSchedule, TextGateSchedule
from steprune.training.stepprune_module import StepPruneModule, normalise_answer
from tests.inputs import random_images

QA = [("What colour is it?", "red"), ("How many objects are there?", "3"), ("Is there a circle?", "yes")]


def records(count: int) -> list[dict]:
    images = random_images(count, 32, seed=count)
    return [
        {
            "image": img,
            "conversations": [
                {"from": "human", "value": "<image>\n" + QA[i % 3][0]},
                {"from": "gpt", "value": QA[i % 3][1]},
            ],
            "kind": "attribute",
        }
        for i, img in enumerate(images)
    ]


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    model, processor = tiny_llava(text_layers=2)
    path = tmp_path_factory.mktemp("micro_base")
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def loaders(backbone: str) -> tuple[DataLoader, DataLoader]:
    module = StepPruneModule(backbone)
    train = DataLoader(records(8), batch_size=4, collate_fn=InstructCollator(module.processor, "train"))
    val = DataLoader(records(4), batch_size=4, collate_fn=InstructCollator(module.processor, "eval"))
    return train, val


def test_labels_cover_only_the_answer(backbone):
    module = StepPruneModule(backbone)
    batch = InstructCollator(module.processor, "train")(records(3))
    for b in range(3):
        answer_ids = batch["input_ids"][b][batch["labels"][b] != -100]
        text = module.processor.tokenizer.decode(answer_ids)
        assert text.strip().startswith(QA[b][1]) and text.endswith("</s>"), text
        assert "ASSISTANT" not in text and "USER" not in text


def test_only_selector_parameters_train(backbone):
    module = StepPruneModule(backbone)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("selector.") for n in trainable)
    assert trainable == {f"selector.{n}" for n, _ in module.selector.named_parameters()}


def test_two_step_fit_logs_metrics_and_keeps_backbone_out_of_checkpoint(backbone, tmp_path):
    module = StepPruneModule(backbone, t_max=8, warmup_steps=1)
    train, val = loaders(backbone)
    gate, temperature = TextGateSchedule(warmup_steps=4), TemperatureSchedule(2.0, 1.0, steps=4)
    trainer = cpu_trainer(2, [gate, temperature], tmp_path, val_batches=1)
    before = {k: v.clone() for k, v in module.selector.state_dict().items()}
    trainer.fit(module, train, val)
    metrics = trainer.callback_metrics
    for name in ("train/loss_lm", "train/len_penalty", "train/k_mean", "val/acc", "val/k_mean", "val/retention"):
        assert name in metrics, name
    assert any(not torch.equal(before[k], v) for k, v in module.selector.state_dict().items())
    assert module.alpha == pytest.approx(0.5) and gate.steps == 2
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", weights_only=False)["state_dict"]
    assert state and not any(k.startswith("vlm.") for k in state)


def cpu_trainer(steps: int, callbacks: list[L.Callback], root, val_batches: int = 0) -> L.Trainer:
    """A quiet CPU trainer for `steps` optimisation steps with these callbacks."""
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        callbacks=callbacks,
        default_root_dir=root,
        limit_val_batches=val_batches,
    )


def test_resume_continues_schedules_exactly(backbone, tmp_path):
    train, val = loaders(backbone)

    def trainer(steps: int, gate: TextGateSchedule) -> L.Trainer:
        return cpu_trainer(steps, [gate], tmp_path)

    first = trainer(2, TextGateSchedule(8))
    first.fit(StepPruneModule(backbone, t_max=8), train, val)
    first.save_checkpoint(tmp_path / "step2.ckpt")
    gate = TextGateSchedule(8)
    resumed = trainer(4, gate)
    module = StepPruneModule(backbone, t_max=8)
    resumed.fit(module, train, val, ckpt_path=tmp_path / "step2.ckpt")
    assert resumed.global_step == 4 and gate.steps == 4 and module.alpha == pytest.approx(0.5)


def test_normalise_answer():
    assert normalise_answer("  Red.") == "red"
    assert normalise_answer("the circle") == "circle"


def test_length_penalty_warmup_and_k_bar_floor(backbone, tmp_path):
    from steprune.training.schedules import LengthPenaltySchedule

    module = StepPruneModule(backbone, t_max=8, min_k_bar=3.0)
    module.k_bar.fill_(0.0)  # a selector that has learned to stop at once
    train, val = loaders(backbone)
    warmup = LengthPenaltySchedule(warmup_steps=4)
    trainer = cpu_trainer(2, [warmup], tmp_path)
    trainer.fit(module, train, val)
    assert module.lam_scale == pytest.approx(0.5)
    assert float(trainer.callback_metrics["train/lam_scale"]) == pytest.approx(0.25)
    assert LengthPenaltySchedule(0).value(0) == 1.0


def test_resuming_on_a_rebuilt_backbone_is_refused(backbone, tmp_path):
    """A checkpoint remembers its backbone's fingerprint: same base resumes (above), a rebuilt one is refused
    with a message that says what to do, and the checkpoint is left as it was."""
    from steprune.training.stepprune_module import BackboneMismatchError

    train, val = loaders(backbone)
    first = cpu_trainer(1, [], tmp_path)
    first.fit(StepPruneModule(backbone, t_max=8), train, val)
    first.save_checkpoint(tmp_path / "last.ckpt")
    saved = (tmp_path / "last.ckpt").read_bytes()
    model, processor = tiny_llava(text_layers=2)
    with torch.no_grad():
        model.lm_head.weight.add_(0.01)  # "rebuilt": same config, other weights
    rebuilt = tmp_path / "rebuilt"
    model.save_pretrained(rebuilt)
    processor.save_pretrained(rebuilt)
    with pytest.raises(BackboneMismatchError, match="different backbone.*moving the checkpoint directory away"):
        cpu_trainer(2, [], tmp_path).fit(
            StepPruneModule(str(rebuilt), t_max=8), train, val, ckpt_path=tmp_path / "last.ckpt"
        )
    assert (tmp_path / "last.ckpt").read_bytes() == saved
