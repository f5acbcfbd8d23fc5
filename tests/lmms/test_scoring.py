"""The lmms-eval model's own arithmetic and the world task's rows, in the default venv (no lmms-eval needed)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from steprune.data.collate import InstructCollator
from steprune.data.world import WorldConfig, generate_records
from steprune.integrations.lmms import scoring, world_task
from steprune.pruned_vlm import PrunedVLM
from tests.inputs import random_images

QUESTIONS = ("What colour is it?", "How many objects are there in the whole scene today?")
CONTINUATIONS = (" red", " 3 blue squares")


def _single_logprob(vlm: PrunedVLM, prompt: str, continuation: str, image) -> float:
    """log p(continuation | prompt) of one sample alone, from the logits of the model on its own."""
    n = scoring.continuation_lengths(vlm.processor.tokenizer, [prompt], [continuation])[0]
    inputs = vlm.processor(images=[image], text=[prompt + continuation], return_tensors="pt", padding=True)
    inputs = {k: v for k, v in dict(inputs).items() if isinstance(v, torch.Tensor)}
    logits = vlm(**inputs).logits[0] if vlm.budget is not None else vlm.model(**inputs).logits[0]
    scores = logits.float().log_softmax(-1)
    ids = inputs["input_ids"][0]
    return sum(float(scores[len(scores) - n - 1 + j, ids[len(ids) - n + j]]) for j in range(n))


@pytest.mark.parametrize("budget", [None, 4])
def test_batched_continuation_logprobs_equal_each_sample_alone(family, budget):
    """Left-padded batch, continuations of different lengths, pruned or not: each row's sum log p equals the
    one computed on that sample alone (identity: on the plain HF model)."""
    model, processor = family
    processor.tokenizer.padding_side = "left"
    vlm = PrunedVLM(model, processor, method="identity" if budget is None else "uniform", budget=budget)
    images = random_images(2, 32, seed=3)
    prompts = [scoring.chat_prompt(processor, q, 1) for q in QUESTIONS]
    lengths = scoring.continuation_lengths(processor.tokenizer, prompts, CONTINUATIONS)
    assert lengths[0] != lengths[1] and min(lengths) > 0
    full = [p + c for p, c in zip(prompts, CONTINUATIONS, strict=True)]
    inputs = {k: v for k, v in dict(processor(images=images, text=full, return_tensors="pt", padding=True)).items()}
    inputs = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
    logprob, greedy = scoring.continuation_logprobs(vlm(**inputs).logits, inputs["input_ids"], lengths)
    expected = [_single_logprob(vlm, p, c, im) for p, c, im in zip(prompts, CONTINUATIONS, images, strict=True)]
    assert torch.allclose(logprob, torch.tensor(expected, dtype=torch.float64), atol=1e-4), (logprob, expected)
    assert greedy.dtype == torch.bool and greedy.shape == (2,)


def test_greedy_flag_is_true_exactly_for_the_argmax_continuation():
    vocab, length = 7, 6
    logits = torch.randn(2, length, vocab)
    argmax = logits.argmax(-1)  # (2, L): position j predicts token j + 1
    ids = torch.randint(0, vocab, (2, length))
    ids[0, -2:] = argmax[0, -3:-1]  # row 0's last two tokens are the greedy ones
    ids[1, -3:] = argmax[1, -4:-1]
    ids[1, -1] = (argmax[1, -2] + 1) % vocab  # row 1's last token is not
    logprob, greedy = scoring.continuation_logprobs(logits, ids, [2, 3])
    assert greedy.tolist() == [True, False]
    manual = logits[0].log_softmax(-1)[[-3, -2], ids[0, -2:]].sum()
    assert torch.isclose(logprob[0], manual.double(), atol=1e-6)


def test_kept_tokens_counts_the_last_stage_of_in_llm_methods():
    stats = scoring.KeptTokens()
    stats.update(torch.tensor([3, 5]), torch.tensor([16, 16]), [(0, 5)], 2e9)  # before the LLM: per-sample K
    stats.update(torch.tensor([16]), torch.tensor([16]), [(0, 16), (2, 8)], 1e9)  # in-LLM: alive after the drop
    summary = stats.summary()
    assert summary["kept_tokens_mean"] == pytest.approx((3 + 5 + 8) / 3)
    assert (summary["kept_tokens_min"], summary["kept_tokens_max"]) == (3, 8)
    assert summary["kept_ratio"] == pytest.approx(16 / 48)
    assert summary["selection_gflops_per_question"] == pytest.approx(1.0)
    assert scoring.KeptTokens().summary() == {}


def test_cut_at_stops():
    assert scoring.cut_at_stops("red\n\nblue", ["\n\n"]) == "red"
    assert scoring.cut_at_stops("red. blue", [".", "\n"]) == "red"
    assert scoring.cut_at_stops("red", []) == "red"


def test_chat_prompt_is_the_eval_collators(family):
    """The plugin's prompt for a world question is token for token the one `steprune eval` sends."""
    model, processor = family
    records = generate_records("test", 3, WorldConfig(), seed=0)
    batch = InstructCollator(processor, "eval")(records)
    prompts = [scoring.chat_prompt(processor, world_task.doc_to_text(_row(i)), 1) for i in range(3)]
    ours = processor(
        images=[r["image"].convert("RGB") for r in records], text=prompts, return_tensors="pt", padding=True
    )
    assert torch.equal(ours["input_ids"], batch["input_ids"])


def _row(index: int) -> dict:
    return {"split": "test", "seed": 0, "index": index}


def test_world_task_rows_are_the_eval_questions():
    """Row i of the shipped task is record i of `steprune eval --suite world`: question, answer, image."""
    import json

    rows = [json.loads(line) for line in (world_task_dir() / "questions.jsonl").read_text().splitlines()]
    assert len(rows) == 2000 and rows[:3] == [_row(0), _row(1), _row(2)]
    records = generate_records("test", 6, world_task._config(), seed=0)
    for i, rec in enumerate(records):
        doc = rows[i]
        assert world_task.doc_to_text(doc) == rec["conversations"][0]["value"].replace("<image>", "").strip()
        assert world_task.doc_to_target(doc) == rec["answer"]
        assert np.array_equal(np.asarray(world_task.doc_to_visual(doc)[0]), np.asarray(rec["image"].convert("RGB")))
        assert world_task.process_results(doc, [f" {rec['answer'].upper()}."]) == {"accuracy": 1.0, rec["kind"]: 1.0}
        assert world_task.process_results(doc, ["zebra"])["accuracy"] == 0.0
        choices = world_task.doc_to_choice(doc)
        assert choices[world_task.doc_to_choice_target(doc)] == rec["answer"] and len(set(choices)) == len(choices)


def world_task_dir():
    from steprune.integrations.lmms import TASKS_DIR

    return TASKS_DIR / "steprune_world"


def test_the_package_imports_without_lmms_eval(monkeypatch):
    """`steprune.integrations.lmms` (what the entry point names) loads with lmms_eval unimportable; only the
    manifest, which lmms-eval itself calls, needs it."""
    import importlib

    import steprune.integrations.lmms as package

    monkeypatch.setitem(sys.modules, "lmms_eval", None)  # `import lmms_eval` now raises ImportError
    monkeypatch.setitem(sys.modules, "lmms_eval.models.registry_v2", None)
    reloaded = importlib.reload(package)
    assert (reloaded.TASKS_DIR / "steprune_world" / "steprune_world.yaml").is_file()
    with pytest.raises(ImportError):
        reloaded.manifest()
