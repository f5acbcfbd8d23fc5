"""`--model steprune` in lmms-eval, end to end and offline: the CLI on a tiny random LLaVA, a tiny Qwen2.5-VL
through `simple_evaluate`, and the world task against `steprune eval --suite world` on the shipped base.
Needs lmms-eval: `make test-lmms` (skipped in the default venv)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
TASKS = ["steprune_world", "steprune_world_choice"]


def _evaluate(lm, tasks, limit, batch_size):
    """lmms-eval's own `simple_evaluate` on the shipped world tasks (its default tasks not indexed)."""
    from lmms_eval.evaluator import simple_evaluate
    from lmms_eval.tasks import TaskManager

    from steprune.integrations.lmms import TASKS_DIR

    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    return simple_evaluate(
        model=lm, tasks=tasks, limit=limit, batch_size=batch_size, task_manager=manager, bootstrap_iters=0
    )


def test_loglikelihood_pairs_survive_lmms_eval_unwrapping(lmms_eval):
    """What our loglikelihood returns comes out of lmms-eval's `unwrap_generation_output` as (float, bool)."""
    from lmms_eval.api.instance import unwrap_generation_output

    from steprune.integrations.lmms.model import LOGLIKELIHOOD_IS_STRINGIFIED, GenerationResult

    pair = (-1.25, True)
    returned = GenerationResult(text=pair) if LOGLIKELIHOOD_IS_STRINGIFIED else pair
    assert unwrap_generation_output(returned)[0] == pair


def test_cli_runs_both_request_types_on_a_tiny_llava(lmms_eval, tiny_llava_dir, tmp_path):
    """`lmms-eval eval --model steprune ...`: the entry point resolves, both world tasks score, the results JSON
    carries the kept-token statistics (the CLI exits 0 even when it fails, so the file is what counts)."""
    from steprune.integrations.lmms import TASKS_DIR

    command = [
        str(Path(sys.executable).with_name("lmms-eval")),
        "eval",
        "--model",
        "steprune",
        "--model_args",
        f"pretrained={tiny_llava_dir},method=uniform,budget=4",
        "--tasks",
        ",".join(TASKS),
        "--include_path",
        str(TASKS_DIR),
        "--limit",
        "4",
        "--batch_size",
        "3",
        "--log_samples",
        "--output_path",
        str(tmp_path / "out"),
    ]
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **OFFLINE}, timeout=600)
    files = list((tmp_path / "out").rglob("*_results.json"))
    assert files, f"no results file; exit {run.returncode}\n{run.stderr[-3000:]}"
    results = json.loads(files[0].read_text())
    assert set(results["results"]) == set(TASKS)
    assert 0.0 <= results["results"]["steprune_world"]["accuracy,none"] <= 1.0
    assert 0.0 <= results["results"]["steprune_world_choice"]["acc,none"] <= 1.0
    throughput = results["throughput"]
    assert throughput["avg_kept_tokens_mean"] == throughput["avg_kept_tokens_max"] == 4.0
    assert throughput["avg_visual_tokens_mean"] == 16.0 and throughput["total_gen_tokens"] > 0
    samples = [json.loads(line) for line in next((tmp_path / "out").rglob("*steprune_world_choice.jsonl")).open()]
    assert len(samples) == 4 and all(s["acc"] in (0.0, 1.0) for s in samples)
    assert all(float(ll) < 0 for s in samples for ll, _ in s["filtered_resps"])


def test_qwen2_5_vl_batched_through_simple_evaluate(lmms_eval, qwen):
    """A tiny Qwen2.5-VL (ragged per-image token counts, mrope positions) with an adaptive-position policy."""
    from steprune.integrations.lmms.model import StepruneLMM
    from steprune.pruned_vlm import PrunedVLM

    model, processor = qwen
    lm = StepruneLMM.from_vlm(PrunedVLM(model, processor, method="mmtok", budget=5), batch_size=3)
    results = _evaluate(lm, TASKS, limit=4, batch_size=3)["results"]
    assert set(results) == set(TASKS)
    kinds = {s["request_type"]: s for s in lm.kept_token_stats}
    assert set(kinds) == {"generate_until", "loglikelihood"}
    assert kinds["generate_until"]["kept_tokens_max"] == 5 and kinds["generate_until"]["pruned_questions"] == 4


@pytest.mark.parametrize(("method", "budget"), [("mmtok", 16), ("fastv", 16)])
def test_world_task_equals_steprune_eval(lmms_eval, method, budget):
    """The harness on the shipped base gives `steprune eval --suite world`'s numbers on the same questions:
    every question's exact match, overall and per-kind accuracy, and the mean K."""
    from steprune.eval.world_eval import evaluate_world
    from steprune.integrations.lmms.model import StepruneLMM

    limit, batch = 12, 5
    ours = evaluate_world(
        "artifacts/base", [method], [budget], limit=limit, batch_size=batch, include_vanilla=False, vanilla_accuracy=1.0
    )
    row = ours["rows"][0]
    lm = StepruneLMM(pretrained="artifacts/base", method=method, budget=budget, batch_size=batch, dtype="float32")
    out = _evaluate(lm, ["steprune_world"], limit=limit, batch_size=batch)
    samples = sorted(out["samples"]["steprune_world"], key=lambda s: s["doc_id"])
    assert [int(s["accuracy"]) for s in samples] == row["correct"]
    result = out["results"]["steprune_world"]
    assert result["accuracy,none"] == pytest.approx(row["overall"], abs=1e-6)  # ours: a float32 MeanMetric
    for kind, accuracy in row["per_kind"].items():
        assert result[f"{kind},none"] == pytest.approx(accuracy, abs=1e-6)
    assert lm.kept_token_stats[-1]["kept_tokens_mean"] == pytest.approx(row["k_mean"])


def test_our_metrics_agree_with_lmms_evals_task_code(lmms_eval):
    """Same predictions through our metrics and lmms-eval's process_results + aggregation: equal everywhere but
    the two documented harness quirks (POPE's yes-ratio counts the ground truth; VQAv2 normalises unanimous
    human answers, unlike the official script)."""
    from steprune.integrations.lmms.metric_agreement import compare

    rows = compare(seed=1, n=60)
    quirks = {"POPE yes-ratio, splits pooled", "VQAv2 soft accuracy, human answers as typed"}
    assert {r.name for r in rows} >= quirks and len(rows) == 17
    for row in rows:
        if row.name not in quirks:
            assert row.ours == pytest.approx(row.harness, abs=1e-4), row.row()
            assert not row.differing, row.row()
    typed = next(r for r in rows if r.name == "VQAv2 soft accuracy, human answers as typed")
    assert typed.differing and all(len(set(d["answers"])) == 1 for d in typed.differing)  # unanimous answers only
