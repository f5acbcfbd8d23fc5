"""`make base` on a micro configuration: both stages run, the result loads like a real checkpoint,
a missing base says to run `make base`, a corrupt one is reported and never retrained over."""

from __future__ import annotations

import json

import pytest
import torch

from steprune import PrunedVLM
from steprune.base_location import BaseModelError, require_base
from steprune.data.world import Scene, SceneObject, WorldConfig
from steprune.recipes.build_base import BaseRecipe, build_base
from steprune.training.base_recipe import NO_DIGIT, patch_labels

MICRO_WORLD = {"image_size": 32, "max_objects": 3, "max_cells": 1, "max_distractors": 2}
MICRO = BaseRecipe(
    vision_hidden=32,
    vision_layers=2,
    text_hidden=32,
    text_layers=2,
    text_heads=4,
    stage1_steps=2,
    stage1_batch=4,
    stage2_steps=2,
    stage2_batch=4,
    eval_size=8,
    tokenizer_records=40,
    loader_workers=0,
    pool_size=12,
    pool_processes=1,
    turns=3,
    warmup_steps=1,
    curve_size=4,
    stage3_steps=0,
    stage4_steps=0,
    stage5_steps=0,
)


def test_patch_labels_mark_the_object_cells():
    cfg = WorldConfig(image_size=32)
    scene = Scene((SceneObject("blue", "circle", 8, 16, 16, 7),), (), (0, 0, 0), 0, 32)
    labels = patch_labels(scene, cfg)
    grid = {k: v.view(4, 4) for k, v in labels.items()}
    inside = torch.zeros(4, 4, dtype=torch.bool)
    inside[2:4, 1:3] = True
    assert bool((grid["colour"][inside] == cfg.colors.index("blue") + 1).all())
    assert bool((grid["colour"][~inside] == 0).all())
    assert bool((grid["shape"][inside] == cfg.shapes.index("circle") + 1).all())
    assert bool((grid["digit"][inside] == 7).all()) and bool((grid["digit"][~inside] == NO_DIGIT).all())
    assert grid["anchor"].sum() == 1 and grid["anchor"][2, 1] == 1
    assert grid["row"][3, 0] == 3 and grid["col"][3, 0] == 0 and grid["col"][0, 2] == 2


@pytest.fixture(scope="module")
def micro_base(tmp_path_factory):
    out = tmp_path_factory.mktemp("bases") / "base"
    info = build_base(out, world=MICRO_WORLD, recipe=MICRO, progress=False)
    return out, info


def test_micro_build_saves_a_loadable_base(micro_base):
    out, info = micro_base
    assert {"stage1_s", "stage2_s", "total_s"} <= set(info["timings"])
    assert [row["step"] for row in info["curve"]] == [2]  # the accuracy curve always ends at the last step
    assert 0.0 <= info["curve"][0]["overall"] <= 1.0 and info["curve"][0]["train_seconds"] > 0
    assert set(info["test_accuracy"]["per_kind"]) <= {"attribute", "existence", "counting", "spatial", "reading"}
    saved = json.loads((out / "build_info.json").read_text())
    assert saved["recipe"]["stage2_steps"] == 2 and saved["preset"] is None  # the micro recipe is no preset
    from steprune.base_location import weights_digest

    assert saved["weights_sha256"] == weights_digest(out) and saved["weights_sha256"]
    import transformers

    assert saved["provenance"]["packages"]["transformers"] == transformers.__version__
    assert saved["provenance"]["cpu"]["threads"] == MICRO.threads and saved["provenance"]["cpu"]["capability"]
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out)
    assert type(processor.image_processor).__name__ == "CLIPImageProcessorPil"
    vlm = PrunedVLM.from_pretrained(str(out), method="identity", budget=None, dtype=torch.float32)
    from tests.inputs import make_inputs

    inputs = make_inputs(processor)
    with torch.no_grad():
        reference = model(**inputs).logits
    real = inputs["attention_mask"].bool()
    torch.testing.assert_close(vlm(**inputs).logits[real], reference[real])


def test_multi_turn_labels_cover_the_answers_only(micro_base):
    from transformers import AutoProcessor

    from steprune.data.world import WorldConfig, generate_records
    from steprune.data.world_datamodule import ChatPool, MultiTurnCollator

    out, _ = micro_base
    processor = AutoProcessor.from_pretrained(out)
    cfg = WorldConfig(**{**MICRO_WORLD, "caption_prob": 0.0})
    records = generate_records("train", 4, cfg, seed=0)
    chats = ChatPool(records, cfg, turns=3, caption_prob=0.5, views=2)
    items = [chats[i] for i in range(len(chats))]
    assert items[0][1][0] == (records[0]["conversations"][0]["value"].split("\n", 1)[1], records[0]["answer"])
    assert items[0][1] != items[len(records)][1] or len(items[0][1]) == 1, "views ask different questions"
    batch = MultiTurnCollator(processor)(items)
    tok = processor.tokenizer
    for b, (_, pairs) in enumerate(items):
        labelled = batch["labels"][b][batch["labels"][b] != -100]
        expected = "".join(f" {answer}</s>" for _, answer in pairs)
        assert tok.decode(labelled) == expected
        ids = batch["input_ids"][b][batch["attention_mask"][b].bool()]
        assert int((ids == tok.convert_tokens_to_ids("<image>")).sum()) == 16  # 32 px / patch 8
    assert bool((batch["labels"][batch["attention_mask"] == 0] == -100).all())
    positions = batch["position_ids"][batch["attention_mask"].bool()]
    assert int(positions.min()) == 0


def _stage2_batch(out, records: int, seed: int, turns: int):
    """The micro base reloaded, and a collated stage-2 batch of `records` conversations of `turns` turns."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from steprune.data.world import WorldConfig, generate_records
    from steprune.data.world_datamodule import ChatPool, MultiTurnCollator

    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out)
    cfg = WorldConfig(**MICRO_WORLD)
    chats = ChatPool(generate_records("train", records, cfg, seed=seed), cfg, turns=turns)
    return model, MultiTurnCollator(processor)([chats[i] for i in range(records)])


def test_stage2_trains_projector_and_lm_only(micro_base):
    from steprune.training.base_recipe import ProjectorLMModule, cosine_adamw

    model, batch = _stage2_batch(micro_base[0], records=2, seed=0, turns=2)
    module = ProjectorLMModule(model, lr=1e-2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = cosine_adamw(module, 1e-2, total_steps=2, warmup=1)["optimizer"]
    module.training_step(batch, 0).backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and not any("vision_tower" in k for k in changed)
    assert any("multi_modal_projector" in k for k in changed) and any("language_model" in k for k in changed)


def test_stage2_answer_loss_equals_the_models_own_loss(micro_base):
    from steprune.training.base_recipe import ProjectorLMModule

    model, batch = _stage2_batch(micro_base[0], records=3, seed=1, turns=3)
    assert int((batch["attention_mask"] == 0).sum()) > 0  # padded rows are part of the check
    module = ProjectorLMModule(model)
    keys = ("input_ids", "attention_mask", "position_ids", "pixel_values", "labels")
    expected = model(**{k: batch[k] for k in keys}, use_cache=False).loss
    torch.testing.assert_close(module.answer_loss(batch), expected, rtol=1e-5, atol=1e-6)


def test_second_build_reuses(micro_base, capsys):
    out, info = micro_base
    again = build_base(out, world=MICRO_WORLD, recipe=MICRO, progress=False)
    assert again["timings"] == info["timings"] and "reusing" in capsys.readouterr().out


def test_recipe_rejects_locate_turns_that_leave_no_question():
    with pytest.raises(ValueError, match="--locate-turns 0 with --turns 1"):
        BaseRecipe(turns=1, locate_turns=1)
    with pytest.raises(ValueError, match="locate_turns=-1"):
        BaseRecipe(locate_turns=-1)
    assert BaseRecipe(turns=2, locate_turns=1).locate_turns == 1


def test_stage2_loader_batches_every_conversation_once_and_groups_by_length():
    from dataclasses import replace

    from steprune.data.world import WorldConfig, generate_records
    from steprune.data.world_datamodule import ChatPool
    from steprune.recipes.build_base import stage2_loader

    cfg = WorldConfig(**MICRO_WORLD)
    chats = ChatPool(generate_records("train", 32, cfg, seed=0), cfg, turns=3, caption_prob=0.5, views=2)
    everything = sorted(str(chats[i][1]) for i in range(len(chats)))

    def chars(pairs):
        return sum(len(q) + len(a) for q, a in pairs)

    spread = {}
    for grouped in (False, True):
        loader = stage2_loader(chats, replace(MICRO, group_by_length=grouped), list, torch.Generator().manual_seed(0))
        batches = list(loader)
        assert len(batches) == len(loader) == len(chats) // MICRO.stage2_batch
        assert sorted(str(pairs) for batch in batches for _, pairs in batch) == everything
        spread[grouped] = sum(max(map(chars, p)) - min(map(chars, p)) for p in ([x[1] for x in b] for b in batches))
    assert spread[True] < 0.5 * spread[False], spread


def test_missing_base_says_make_base(tmp_path):
    with pytest.raises(FileNotFoundError, match="make base"):
        require_base(tmp_path / "absent")


def test_corrupt_base_is_reported_not_retrained(micro_base, tmp_path):
    import shutil

    out, _ = micro_base
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(BaseModelError, match="corrupt|truncated"):
        require_base(broken)
    with pytest.raises(BaseModelError):
        build_base(broken, world=MICRO_WORLD, recipe=MICRO, progress=False)
    assert weights.stat().st_size < next(out.glob("*.safetensors")).stat().st_size, "nothing was rebuilt"
    (broken / "config.json").unlink()
    with pytest.raises(BaseModelError, match="config.json is missing"):
        require_base(broken)


def test_world_eval_writes_json_and_markdown(micro_base, tmp_path):
    from steprune.eval.world_eval import main as world_main

    out, _ = micro_base
    target = tmp_path / "world"
    assert (
        world_main(
            [
                "--backbone",
                str(out),
                "--methods",
                "uniform,fastv,prumerge_plus",
                "--budgets",
                "4",
                "--limit",
                "6",
                "--out",
                str(target),
            ]
        )
        == 0
    )
    report = json.loads(target.with_suffix(".json").read_text())
    rows = {r["method"]: r for r in report["rows"]}
    assert list(rows) == ["vanilla", "uniform", "fastv", "prumerge_plus"]
    assert rows["vanilla"]["k_mean"] == 16 and rows["uniform"]["k_mean"] == 4 and rows["fastv"]["k_mean"] == 4
    assert rows["prumerge_plus"]["k_max"] <= 4 and rows["prumerge_plus"]["k_spearman_objects"] is not None
    assert rows["uniform"]["prefill_tflops"] < rows["vanilla"]["prefill_tflops"]
    # FastV keeps all 16 tokens up to its drop layer: same final K as uniform, more FLOPs, fewer than vanilla
    assert rows["uniform"]["prefill_tflops"] < rows["fastv"]["prefill_tflops"] < rows["vanilla"]["prefill_tflops"]
    assert all(0.0 <= r["overall"] <= 1.0 for r in rows.values())
    assert "| uniform | 4 |" in target.with_suffix(".md").read_text()


def test_spearman():
    from steprune.eval.world_eval import spearman

    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)


def test_make_train_end_to_end_on_the_micro_base(micro_base, tmp_path, monkeypatch):
    import shutil

    from steprune.recipes.make_train import main as make_train

    out, _ = micro_base
    shutil.copytree(out, tmp_path / "artifacts" / "base")
    monkeypatch.chdir(tmp_path)  # the default configs are found from any working directory
    monkeypatch.setenv("STEPRUNE_HOME", str(tmp_path / "artifacts"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlruns.db'}")
    args = [  # no --config: make train's default (removal surrogate, coverage prior, target K)
        "--limit",
        "4",
        "--trainer.max_steps=2",
        "--trainer.val_check_interval=2",
        "--data.init_args.val_size=4",
        "--data.init_args.batch_size=2",
        "--model.t_max=8",
        "--budget.target_k=4",
        "--trainer.enable_progress_bar=false",
    ]
    assert make_train(args) == 0
    report = json.loads((tmp_path / "reports" / "train_comparison.json").read_text())
    methods = [r["method"] for r in report["rows"]]
    assert methods[:2] == ["vanilla", "steprune"] and {"uniform", "mmtok", "fastv"} <= set(methods)
    budget = max(1, round(report["stepprune_mean_k"]))
    assert all(r["budget"] == budget for r in report["rows"][2:])
    assert (tmp_path / "artifacts" / "selector.safetensors").exists()
    from steprune.recipes.make_train import checkpoint_dir

    assert (tmp_path / checkpoint_dir(tmp_path / "artifacts" / "base") / "last.ckpt").exists()
    assert len(list((tmp_path / "checkpoints").iterdir())) == 1  # one directory per base
    assert set(report["timings"]) == {"base_s", "train_s", "compare_s"}
    adaptive = report["adaptivity"]
    steprune = report["rows"][1]
    assert (adaptive["k_min"], adaptive["k_max"]) == (steprune["k_min"], steprune["k_max"])
    assert sum(v["n"] for v in adaptive["k_by_objects"].values()) == 4  # every test question, grouped by objects
    means = [v["k_mean"] for v in adaptive["k_by_objects"].values()]
    spread = max(means) / min(means) if min(means) > 0 else float("inf")  # a bucket that keeps 0 tokens: inf
    assert adaptive["k_by_objects_max_over_min"] == pytest.approx(spread)
    assert (tmp_path / "reports" / "train_comparison_k.png").stat().st_size > 1000
    said = report["stepprune"]  # the table says which StepPrune it compared: surrogate, target, calibration
    assert said["surrogate"] == "removal" and said["prior"] == "coverage" and said["calibration"]["target_k"] == 4.0
    assert abs(said["calibration"]["mean_k"] - 4.0) <= 0.5 or not said["calibration"]["reachable"]
    text = (tmp_path / "reports" / "train_comparison.md").read_text()
    assert "surrogate `removal`, prior `coverage` (STOP `absolute`), target mean K 4" in text
    from steprune.selector.selector import StepPruneSelector

    exported = StepPruneSelector.load(tmp_path / "artifacts" / "selector.safetensors")  # the recipe of the default
    assert exported.config["d_model"] == 32 and exported.config["prior_stop"] == "absolute"
    assert steprune["acc_ci"] is not None and "diff_retention_ci" in steprune
    assert "StepPrune adaptivity" in (tmp_path / "reports" / "train_comparison.md").read_text()
    buckets = report["k_buckets"]  # the paper's Fig. 4: every test question in exactly one K bucket
    assert sum(b["n"] for b in buckets) == 4 and buckets[0]["k_low"] == steprune["k_min"]
    assert buckets[-1]["k_high"] == steprune["k_max"]
    assert (tmp_path / "reports" / "train_comparison_k_buckets.png").stat().st_size > 1000


def test_patch_loss_keeps_the_teachers_labels_readable_and_unhooks(micro_base):
    """Stage 2's auxiliary loss: its gradient reaches the projector (not the LM, not the teacher), it falls
    when trained, and once the hook is removed the model runs exactly as before."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from steprune.data.world import WorldConfig, generate_records
    from steprune.data.world_datamodule import ChatPool, MultiTurnCollator
    from steprune.training.base_recipe import ProjectorLMModule, VisionPretrainModule, cosine_adamw

    out, _ = micro_base
    processor = AutoProcessor.from_pretrained(out)
    model = AutoModelForImageTextToText.from_pretrained(out)
    cfg = WorldConfig(**MICRO_WORLD)
    teacher = VisionPretrainModule(model.model.vision_tower, -2, len(cfg.colors), len(cfg.shapes), cfg.grid_size)
    chats = ChatPool(generate_records("train", 2, cfg, seed=0), cfg, turns=2)
    batch = MultiTurnCollator(processor)([chats[0], chats[1]])
    module = ProjectorLMModule(model, 1e-2, 1, teacher.head, teacher.sizes, patch_weight=1.0)
    teacher_before = teacher.head.weight.clone()
    module.training_step(batch, 0)
    patch = module.patch_loss()
    grads = torch.autograd.grad(patch, [p for p in model.parameters() if p.requires_grad], allow_unused=True)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    reached = {n for n, g in zip(names, grads, strict=True) if g is not None and g.abs().sum() > 0}
    assert reached and all("multi_modal_projector" in n for n in reached)
    optimizer = cosine_adamw(module, 1e-2, total_steps=20, warmup=1)["optimizer"]
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        module.training_step(batch, 0)
        loss = module.patch_loss()
        losses.append(loss.item())
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] and torch.equal(teacher.head.weight, teacher_before)
    module.remove_hook()
    assert not model.model.multi_modal_projector._forward_hooks


def test_recipe_presets_and_flags_override_them():
    from dataclasses import asdict

    from steprune.recipes.build_base import RECIPES, recipe_named

    quick = recipe_named("quick", stage2_steps=5)
    assert quick.text_layers == 3 and quick.stage2_steps == 5 and recipe_named("v5") == BaseRecipe()
    assert recipe_named("v2").stage3_steps == 0 < BaseRecipe().stage3_steps
    assert recipe_named("v3").stage4_steps == 0 == quick.stage4_steps < BaseRecipe().stage4_steps
    assert recipe_named("v4").stage5_steps == 0 < BaseRecipe().stage5_steps
    assert BaseRecipe().text_layers >= 8, "the default base's LM is deep enough not to flatter in-LLM methods"
    assert set(RECIPES["quick"]) <= set(asdict(BaseRecipe()))
    with pytest.raises(ValueError, match="unknown recipe 'fast'; known"):
        recipe_named("fast")


def test_a_build_info_names_its_preset_even_from_before_the_fields_existed():
    import json
    from dataclasses import asdict
    from pathlib import Path

    from steprune.recipes.build_base import RECIPES, last_stage, preset_of, recipe_named, recipe_of

    assert all(preset_of(asdict(recipe_named(name))) == name for name in RECIPES)
    assert preset_of(asdict(recipe_named("v4", stage4_lr=1e-3))) is None  # a custom recipe
    assert preset_of(asdict(recipe_named("v4", eval_size=10, threads=1))) == "v4"  # the weights do not change
    v2 = json.loads((Path(__file__).parents[2] / "reports/base_build_v2.json").read_text())  # before stage 3
    assert "stage3_steps" not in v2["recipe"] and preset_of(v2["recipe"]) == "v2" == preset_of(recipe_of(v2))
    assert last_stage(recipe_of(v2)) == 2


def test_the_micro_recipe_built_twice_gives_identical_weights(micro_base, tmp_path):
    from steprune.base_location import weights_digest

    out, info = micro_base
    again = build_base(tmp_path / "again", world=MICRO_WORLD, recipe=MICRO, progress=False)
    assert again["weights_sha256"] == info["weights_sha256"] == weights_digest(tmp_path / "again")


def test_stage3_continued_from_a_saved_base_equals_the_full_build(micro_base, tmp_path):
    """`--continue-from` (load stages 1-2, run stage 3) gives the weights of the same recipe built from scratch, and
    records its parent; a base from other stage-1/2 flags is refused by name."""
    from dataclasses import replace

    out, info = micro_base
    with_stage3 = replace(MICRO, stage3_steps=2, stage3_pool=8, stage3_warmup=1)
    full = build_base(tmp_path / "full", world=MICRO_WORLD, recipe=with_stage3, progress=False)
    continued = build_base(
        tmp_path / "continued", world=MICRO_WORLD, recipe=with_stage3, progress=False, continue_from=out
    )
    assert full["weights_sha256"] == continued["weights_sha256"] != info["weights_sha256"]
    assert continued["stage3_from"]["weights_sha256"] == info["weights_sha256"]
    assert [row["stage"] for row in full["curve"]] == [2, 3] == [row["stage"] for row in continued["curve"]]
    with pytest.raises(ValueError, match="stage2_steps"):
        build_base(
            tmp_path / "bad",
            world=MICRO_WORLD,
            recipe=replace(with_stage3, stage2_steps=3),
            progress=False,
            continue_from=out,
        )
    with pytest.raises(ValueError, match="stage3-steps"):
        build_base(tmp_path / "bad", world=MICRO_WORLD, recipe=MICRO, progress=False, continue_from=out)


def test_stage4_continues_a_stage3_base_to_the_full_builds_weights(tmp_path):
    """v3 -> v4: a stage-3 base continued by stage 4 equals the stage-4 recipe built from scratch; stage 4's
    turn boost changes the weights; a parent whose stage 3 differs is refused by the stage-3 field's name."""
    from dataclasses import replace

    with_stage3 = replace(MICRO, stage3_steps=2, stage3_pool=8, stage3_warmup=1)
    with_stage4 = replace(with_stage3, stage4_steps=2, stage4_pool=8, stage4_warmup=1, stage4_turn_boost="spatial=3")
    parent = build_base(tmp_path / "v3", world=MICRO_WORLD, recipe=with_stage3, progress=False)
    full = build_base(tmp_path / "full", world=MICRO_WORLD, recipe=with_stage4, progress=False)
    continued = build_base(
        tmp_path / "continued", world=MICRO_WORLD, recipe=with_stage4, progress=False, continue_from=tmp_path / "v3"
    )
    unboosted = build_base(
        tmp_path / "plain", world=MICRO_WORLD, recipe=replace(with_stage4, stage4_turn_boost=""), progress=False
    )
    assert full["weights_sha256"] == continued["weights_sha256"] != parent["weights_sha256"]
    assert unboosted["weights_sha256"] != full["weights_sha256"]
    assert continued["stage4_from"]["weights_sha256"] == parent["weights_sha256"]
    assert [row["stage"] for row in continued["curve"]] == [2, 3, 4]
    with pytest.raises(ValueError, match="stage3_lr"):
        build_base(
            tmp_path / "bad",
            world=MICRO_WORLD,
            recipe=replace(with_stage4, stage3_lr=1e-3),
            progress=False,
            continue_from=tmp_path / "v3",
        )


def test_turn_boost_multiplies_the_extra_turns_kind_mix():
    from dataclasses import replace

    from steprune.data.world_datamodule import chat_turns, world_config, world_records
    from steprune.recipes.build_base import turn_boost

    assert turn_boost("spatial=3, existence=1.5") == {"spatial": 3.0, "existence": 1.5} and turn_boost("") == {}
    for bad in ("spatial", "spatial=x", "spatial=-1"):
        with pytest.raises(ValueError, match="kind=factor"):
            turn_boost(bad)
    cfg = world_config(None)
    records = world_records("train", 60, cfg, 0, 1)

    def spatial_turns(factor: float) -> int:
        mix = replace(cfg, kind_weights={**cfg.kind_weights, "spatial": factor})
        turns = [q for r in records for q, _ in chat_turns(r, mix, 6, 0.3, 0, 0, 1)[1:]]
        return sum("left or right" in q or "above or below" in q for q in turns)

    assert spatial_turns(0.0) == 0 < spatial_turns(1.0) < spatial_turns(3.0)
