"""`make base`: build (or reuse) the built-in world's base MLLM — a tiny LLaVA trained from scratch here.

    python -m steprune.recipes.build_base                    # artifacts/base (STEPRUNE_HOME overrides artifacts/)
    python -m steprune.recipes.build_base --force            # rebuild over an existing base
    python -m steprune.recipes.build_base --stage2-steps 50  # a quick, weak base for trying things
    python -m steprune.recipes.build_base --force --continue-from old/base  # only the stages old/base did not run
    python -m steprune.recipes.build_base --recipe v5 --continue-from artifacts/base --out new/base  # v4 -> v5

Recipe: world text -> byte-level BPE tokenizer -> LlavaProcessor (PIL image processor, no torchvision)
-> LLaVA config (96 px, patch 8: 144 visual tokens) -> stage 1 (vision tower, dense per-patch labels) ->
stage 2 (projector + LM, tower frozen) -> stages 3, 4 (projector + LM on fresh records, each its own cosine;
stage 4 may weight the conversations' extra turns towards some question kinds) ->
test-split accuracy per kind and a blind baseline ->
`save_pretrained` into a temporary directory renamed into place, with `build_info.json`.
A base that exists is reused; one that is corrupt is reported, never silently retrained over.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from steprune.backbones.tiny import LLAVA_CHAT_TEMPLATE, tiny_llava_config, train_tokenizer
from steprune.base_location import check_base, default_base_dir, weights_digest
from steprune.data.length_grouped import LengthGroupedBatchSampler
from steprune.data.world import WorldConfig, generate_records, world_vocabulary
from steprune.data.world_datamodule import ChatPool, MultiTurnCollator, world_config, world_records
from steprune.training.base_recipe import PatchPool, ProjectorLMModule, VisionPretrainModule
from steprune.training.provenance import provenance

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<image>"]


@dataclass
class BaseRecipe:
    """Every knob of the base build (recorded in build_info.json). The defaults are base v5 (session 19): base v2's
    12-layer LM (session 9), so that FastV/DART's unpruned early layers are 2 of 12 (LLaVA-1.5-7B: 2 of 32), not 1
    of 3, plus a 900-step stage 3 (v3, session 12), a 900-step stage 4 with spatial extra turns x3 (v4, session
    18) and a 1000-step stage 5 like it (v5, session 19); `RECIPES` keeps v4, v3, v2 (no stage 3) and the earlier
    3-layer, ~18-minute build as the `quick` preset."""

    seed: int = 0
    vision_hidden: int = 128
    vision_layers: int = 4
    text_hidden: int = 192
    text_layers: int = 12
    text_heads: int = 4
    pool_size: int = 10000
    """Train records generated once (in `pool_processes` processes); both stages make passes over them."""
    pool_processes: int = 2
    stage1_steps: int = 300
    stage1_batch: int = 64
    stage1_lr: float = 2e-3
    stage2_steps: int = 2000
    """2000 for the 12-layer v2 (2.2-2.3 s a step on 2 free cores). The 3-layer `quick` preset: 600 (session 7: 18:43
    build, 65.4 % test); 850 steps learned no more there (reports/base_build.md)."""
    stage2_batch: int = 32
    stage2_lr: float = 1.5e-3
    group_by_length: bool = False
    """Stage-2 batches of similar conversation length (`LengthGroupedBatchSampler`): 16 % fewer padded tokens.
    Off by default: the one build that used it (with two other changes) learned more slowly (reports/base_build.md)."""
    turns: int = 6
    """Questions per stage-2 conversation: the record's own, then further ones about the same scene."""
    locate_turns: int = 1
    """How many of the `turns` are training-only "Where is the <object>?" questions (answer: its 3x3 position).
    A 300-step probe lifted existence 51 -> 70 % on 37 val questions; off by default (reports/base_build.md)."""
    caption_prob: float = 0.3
    """Probability that a stage-2 conversation also asks for the caption (`Describe the image.`)."""
    patch_weight: float = 1.0
    """Weight of stage 2's per-patch auxiliary loss (`ProjectorLMModule`): 0 turns it off."""
    warmup_steps: int = 100
    stage3_steps: int = 900
    """A second projector + LM phase after stage 2 on `stage3_pool` fresh train records (those after stage 2's
    pool), its own warm-up and cosine from `stage3_lr`, no patch loss (stage 1's head is not needed any more), the
    RNG reseeded at its start — so it can also continue a saved stage-2 base (`--stage3-from`) to the same weights.
    900 in v3 (session 12: 72.4 -> see reports/base_build.md); 0: no stage 3 (v2)."""
    stage3_lr: float = 8e-4
    stage3_pool: int = 10000
    stage3_warmup: int = 50
    stage3_turn_boost: str = ""
    """Extra-turn question mix of stage 3 as `kind=factor,...` multipliers of the world's kind weights (the
    record's own question keeps the world's mix); "": the world's mix."""
    stage4_steps: int = 900
    """A further continuation phase like stage 3 on the `stage4_pool` records after stage 3's, seeded with
    `seed + 4`. 900 in v4 (session 18: 78.5 -> 82.3 %, spatial 60.0 -> 69.6, reports/base_build.md); 0 in v3."""
    stage4_lr: float = 6e-4
    stage4_pool: int = 10000
    stage4_warmup: int = 50
    stage4_turn_boost: str = "spatial=3"
    """v4: spatial extra turns x3 (about 32 % of the extra turns instead of 16 %): spatial was the one kind less
    than 20 points above the blind model on v3."""
    stage5_steps: int = 1000
    """A third continuation phase on the `stage5_pool` records after stage 4's, seeded with `seed + 5`: 1000 steps
    from lr 5e-4 with spatial extra turns x3 in v5 (v4's val curve was still rising at step 900; session 19:
    82.3 -> 85.9 %, spatial 69.6 -> 78.0, reports/base_build.md); 0 in v4."""
    stage5_lr: float = 5e-4
    stage5_pool: int = 10000
    stage5_warmup: int = 50
    stage5_turn_boost: str = "spatial=3"
    eval_size: int = 2000
    curve_every: int = 250
    """Every this many stage-2 steps, accuracy on `curve_size` val records goes into build_info (0: never)."""
    curve_size: int = 200
    tokenizer_records: int = 3000
    loader_workers: int = 0
    threads: int = 2

    def __post_init__(self) -> None:
        if not 0 <= self.locate_turns < max(self.turns, 1):
            raise ValueError(
                f"locate_turns={self.locate_turns} must be >= 0 and below turns={self.turns} (the record's own "
                "question is always the first turn); e.g. --locate-turns 0 with --turns 1"
            )


RECIPES: dict[str, dict[str, Any]] = {
    "v5": {},
    "v4": {"stage5_steps": 0, "stage5_turn_boost": ""},
    "v3": {"stage4_steps": 0, "stage4_turn_boost": "", "stage5_steps": 0, "stage5_turn_boost": ""},
    "v2": {"stage3_steps": 0, "stage4_steps": 0, "stage4_turn_boost": "", "stage5_steps": 0, "stage5_turn_boost": ""},
    "quick": {
        "text_layers": 3,
        "pool_size": 6000,
        "stage2_steps": 600,
        "stage2_lr": 2e-3,
        "locate_turns": 0,
        "warmup_steps": 50,
        "eval_size": 500,
        "curve_every": 150,
        "stage3_steps": 0,
        "stage4_steps": 0,
        "stage4_turn_boost": "",
        "stage5_steps": 0,
        "stage5_turn_boost": "",
    },
}
"""Named presets over `BaseRecipe`'s defaults (`--recipe NAME`; explicit flags override them). `quick` is the
3-layer base of sessions 7-8 (18-19 minutes on 2 cores, 65.4 % test): for trying things, not for reports."""


def recipe_named(name: str, **overrides: Any) -> BaseRecipe:
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return BaseRecipe(**{**RECIPES[name], **overrides})


def build_processor(cfg: WorldConfig, recipe: BaseRecipe) -> Any:
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    texts = [" ".join(world_vocabulary(cfg)), "USER: ASSISTANT:"]
    for record in generate_records(
        "train", recipe.tokenizer_records, WorldConfig(**{**cfg.__dict__, "caption_prob": 0.3}), recipe.seed
    ):
        texts.append(f"USER: {record['conversations'][0]['value']} ASSISTANT: {record['answer']}")
    tokenizer = train_tokenizer(texts, SPECIALS, vocab_size=1024)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        chat_template=LLAVA_CHAT_TEMPLATE,
        image_token="<image>",
        num_additional_image_tokens=1,
    )


def build_model(cfg: WorldConfig, recipe: BaseRecipe, processor: Any) -> Any:
    from transformers import LlavaForConditionalGeneration

    tok = processor.tokenizer
    config = tiny_llava_config(
        vocab_size=len(tok),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        pad_token_id=tok.pad_token_id,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        vision_hidden=recipe.vision_hidden,
        vision_layers=recipe.vision_layers,
        text_hidden=recipe.text_hidden,
        text_layers=recipe.text_layers,
        text_heads=recipe.text_heads,
        text_kv_heads=recipe.text_heads,
    )
    torch.manual_seed(recipe.seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.bos_token_id = tok.bos_token_id
    return model


def trainer(steps: int, root: Path, progress: bool = True, callbacks: list[L.Callback] | None = None) -> L.Trainer:
    return L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        default_root_dir=root,
        enable_progress_bar=progress,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=callbacks,
    )


class AccuracyCurve(L.Callback):
    """Every `every` steps of a stage: exact-match accuracy on a few val records (for build_info.json)."""

    def __init__(self, model: Any, processor: Any, records: list[dict[str, Any]], every: int, stage: int = 2) -> None:
        self.model, self.processor, self.records, self.every, self.stage = model, processor, records, every, stage
        self.rows: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.spent = 0.0  # seconds spent evaluating, not training

    def on_train_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.started = time.perf_counter()  # the clock covers training steps, not the Trainer's set-up

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        if not self.every or (step % self.every and step != trainer.max_steps):
            return
        from steprune.eval.world_accuracy import world_accuracy
        from steprune.pruned_vlm import PrunedVLM

        t = time.perf_counter()
        module.eval()
        scores = world_accuracy(PrunedVLM(self.model, self.processor, method="identity"), self.records)
        trainable(self.model)
        module.train()
        self.spent += time.perf_counter() - t
        # Training time so far, to the millisecond: a micro build's two steps take ~50 ms, which a 0.1 s
        # rounding turned into 0.0 on a fast day (the flaky `train_seconds > 0` of the fresh-install issue).
        seconds = round(time.perf_counter() - self.started - self.spent, 3)
        row = {"step": step, "train_seconds": seconds, "overall": scores["overall"]}
        self.rows.append({**row, "per_kind": scores["per_kind"]})
        print(f"stage {self.stage} step {step}: val accuracy {scores['overall']:.3f} {scores['per_kind']}", flush=True)


def trainable(model: Any) -> None:
    """Stage-2 trainability: projector + language model; the vision tower stays frozen."""
    model.requires_grad_(True)
    model.model.vision_tower.requires_grad_(False)


def stage2_loader(chats: ChatPool, recipe: BaseRecipe, collate: Any, generator: torch.Generator) -> DataLoader:
    """Shuffled stage-2 batches of `recipe.stage2_batch` conversations (grouped by length if the recipe says so)."""
    drop_last = len(chats) >= recipe.stage2_batch
    if recipe.group_by_length:
        lengths = chats.text_lengths()
        sampler = LengthGroupedBatchSampler(lengths, recipe.stage2_batch, drop_last=drop_last, generator=generator)
        batching: dict[str, Any] = {"batch_sampler": sampler}
    else:
        batching = {"batch_size": recipe.stage2_batch, "shuffle": True, "drop_last": drop_last}
    return DataLoader(chats, generator=generator, collate_fn=collate, num_workers=recipe.loader_workers, **batching)


WEIGHT_INDEPENDENT = {"eval_size", "curve_every", "curve_size", "loader_workers"}
"""Recipe fields that do not change the weights a build produces."""

CONTINUATION_STAGES = (3, 4, 5)
"""Stages after stage 2, each owning the recipe fields `stage{n}_*`; a saved base can be continued by them."""


def field_stage(name: str) -> int:
    """The stage a recipe field belongs to: n for `stage{n}_*` with n >= 3, else 2 (stages 1-2 and shared)."""
    for n in CONTINUATION_STAGES:
        if name.startswith(f"stage{n}_"):
            return n
    return 2


def last_stage(recipe: dict[str, Any]) -> int:
    """The last stage a recipe (as a dict, missing fields at their defaults) runs: 2 or a continuation stage."""
    return max([2] + [n for n in CONTINUATION_STAGES if recipe.get(f"stage{n}_steps", 0)])


def turn_boost(spec: str) -> dict[str, float]:
    """`"spatial=3,existence=1.5"` -> {"spatial": 3.0, "existence": 1.5} (question kinds checked by WorldConfig)."""
    boost: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        kind, sep, factor = part.partition("=")
        try:
            value = float(factor) if sep else -1.0
        except ValueError:
            value = -1.0
        if value < 0:
            raise ValueError(f"turn boost {spec!r}: expected kind=factor,... with factors >= 0, got {part!r}")
        boost[kind.strip()] = value
    return boost


LEGACY_FIELDS: dict[str, Any] = {
    "stage3_steps": 0,
    "stage3_turn_boost": "",
    "stage4_steps": 0,
    "stage4_turn_boost": "",
    "stage5_steps": 0,
    "stage5_turn_boost": "",
}
"""Fields added after some shipped bases were built, at the values that reproduce what those builds did: a
build_info without one of them was built with this value (v2's has no stage 3; v3's neither stage 4 nor turn
boosts)."""


def recipe_of(info: dict[str, Any]) -> dict[str, Any]:
    """A build_info's recipe with every current field: those it predates at their `LEGACY_FIELDS` values."""
    recorded = info.get("recipe", {})
    defaults = {**asdict(BaseRecipe()), **LEGACY_FIELDS}
    return {k: recorded.get(k, defaults[k]) for k in asdict(BaseRecipe())}


def preset_of(recipe: dict[str, Any]) -> str | None:
    """The `RECIPES` preset whose weights-relevant fields equal this recipe's (missing ones at their
    `LEGACY_FIELDS` values), or None for a custom recipe: the name a build_info records as "preset"."""
    full = {**asdict(BaseRecipe()), **LEGACY_FIELDS, **recipe}
    for name in RECIPES:
        preset = asdict(recipe_named(name))
        if all(full[k] == v for k, v in preset.items() if k not in WEIGHT_INDEPENDENT | {"threads", "pool_processes"}):
            return name
    return None


def load_parent_base(directory: Path, recipe: BaseRecipe) -> tuple[Any, Any, dict[str, Any], int]:
    """A saved base whose stages up to its last one are this recipe's, to continue with the stages after it
    (`--continue-from`); returns the model, processor, its build info and its last stage."""
    from transformers import LlavaForConditionalGeneration, LlavaProcessor

    check_base(directory)
    parent = json.loads((directory / "build_info.json").read_text())
    theirs, ours = recipe_of(parent), asdict(recipe)
    ran = last_stage(theirs)
    differ = {
        k: (theirs[k], v)
        for k, v in ours.items()
        if field_stage(k) <= ran and k not in WEIGHT_INDEPENDENT and theirs[k] != v
    }
    if differ:
        raise ValueError(
            f"{directory} was not built by this recipe's stages 1-{ran} (field: (its value, this recipe's) "
            f"{differ}); continue a base built with the same flags, or rebuild from scratch without --continue-from"
        )
    if last_stage(ours) <= ran:
        raise ValueError(
            f"{directory} already ran every stage of this recipe (its last: {ran}); --continue-from needs a later "
            f"stage: give --stage{ran + 1}-steps > 0 (or a preset with it)"
        )
    model = LlavaForConditionalGeneration.from_pretrained(directory, dtype=torch.float32)
    processor = LlavaProcessor.from_pretrained(directory)
    return model, processor, parent, ran


def build_base(
    out: Path,
    world: dict[str, Any] | None = None,
    recipe: BaseRecipe | None = None,
    force: bool = False,
    progress: bool = True,
    continue_from: Path | None = None,
) -> dict[str, Any]:
    """Build the base into `out` (reused when present and sound) and return its build info. With `continue_from`
    (a base built by this recipe's stages up to its last one), those stages are loaded from it and only the later
    ones run — to the same weights as a build from scratch."""
    recipe = recipe or BaseRecipe()
    out = Path(out)
    if out.exists() and not force:
        check_base(out)
        print(f"reusing the base model at {out} (make base ARGS=--force rebuilds it)")
        return json.loads((out / "build_info.json").read_text())
    torch.set_num_threads(recipe.threads)
    build_provenance = provenance()  # taken at the start: the commit whose recipe runs, on this CPU and threads
    L.seed_everything(recipe.seed, verbose=False)
    cfg = world_config(world)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    curve_records = world_records("val", recipe.curve_size, cfg, recipe.seed) if recipe.curve_every else []
    lineage: dict[str, Any] = {}
    rows: list[dict[str, Any]] = []
    ran = 2
    if continue_from is None:
        model, processor = stage1_and_2(cfg, recipe, out, progress, curve_records, timings, rows)
    else:
        model, processor, parent, ran = load_parent_base(Path(continue_from), recipe)
        lineage = {
            f"stage{ran + 1}_from": {
                "weights_sha256": parent.get("weights_sha256"),
                "commit": parent.get("provenance", {}).get("commit"),
                "timings": parent.get("timings", {}),
                "test_accuracy": {k: parent.get("test_accuracy", {}).get(k) for k in ("overall", "per_kind")},
            }
        }
        rows = list(parent.get("curve", []))
    for stage in CONTINUATION_STAGES:
        if stage > ran and getattr(recipe, f"stage{stage}_steps"):
            continuation_stage(stage, model, processor, cfg, recipe, out, progress, curve_records, timings, rows)
    model.eval().requires_grad_(True)

    t = time.perf_counter()
    scores = evaluate_base(model, processor, cfg, recipe)
    timings["eval_s"] = time.perf_counter() - t
    timings["total_s"] = time.perf_counter() - started
    info = {
        "preset": preset_of(asdict(recipe)),
        "recipe": asdict(recipe),
        "world": dict(world or {}),
        "provenance": build_provenance,
        "timings": timings,
        **lineage,
        **scores,
        "curve": rows,
    }
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    info["weights_sha256"] = weights_digest(staging)
    (staging / "build_info.json").write_text(json.dumps(info, indent=2))
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return info


def stage1_and_2(
    cfg: WorldConfig,
    recipe: BaseRecipe,
    out: Path,
    progress: bool,
    curve_records: list[dict[str, Any]],
    timings: dict[str, float],
    rows: list[dict[str, Any]],
) -> tuple[Any, Any]:
    """Tokenizer, model, stage 1 (vision tower) and stage 2 (projector + LM with the patch loss)."""
    t = time.perf_counter()
    pool = world_records("train", recipe.pool_size, cfg, recipe.seed, recipe.pool_processes)
    timings["world_s"] = time.perf_counter() - t
    t = time.perf_counter()
    processor = build_processor(cfg, recipe)
    model = build_model(cfg, recipe, processor)
    timings["setup_s"] = time.perf_counter() - t
    generator = torch.Generator().manual_seed(recipe.seed)

    t = time.perf_counter()
    stage1 = VisionPretrainModule(
        model.model.vision_tower,
        model.config.vision_feature_layer,
        len(cfg.colors),
        len(cfg.shapes),
        cfg.grid_size,
        recipe.stage1_lr,
        recipe.warmup_steps,
    )
    loader = DataLoader(
        PatchPool(pool, cfg, processor.image_processor),
        batch_size=recipe.stage1_batch,
        shuffle=True,
        drop_last=len(pool) >= recipe.stage1_batch,
        generator=generator,
        num_workers=recipe.loader_workers,
    )
    trainer(recipe.stage1_steps, out.parent, progress).fit(stage1, loader)
    timings["stage1_s"] = time.perf_counter() - t

    t = time.perf_counter()
    trainable(model)
    chats = ChatPool(
        pool,
        cfg,
        recipe.turns,
        recipe.caption_prob,
        views=1 + recipe.stage2_steps * recipe.stage2_batch // len(pool),
        locate_turns=recipe.locate_turns,
    )
    loader = stage2_loader(chats, recipe, MultiTurnCollator(processor), generator)
    curve = AccuracyCurve(model, processor, curve_records, recipe.curve_every)
    stage2 = ProjectorLMModule(
        model, recipe.stage2_lr, recipe.warmup_steps, stage1.head, stage1.sizes, recipe.patch_weight
    )
    trainer(recipe.stage2_steps, out.parent, progress, [curve]).fit(stage2, loader)  # on_fit_end unhooks
    timings["stage2_s"] = time.perf_counter() - t - curve.spent
    timings["curve_s"] = curve.spent
    rows.extend({**row, "stage": 2} for row in curve.rows)
    return model, processor


def continuation_stage(
    stage: int,
    model: Any,
    processor: Any,
    cfg: WorldConfig,
    recipe: BaseRecipe,
    out: Path,
    progress: bool,
    curve_records: list[dict[str, Any]],
    timings: dict[str, float],
    rows: list[dict[str, Any]],
) -> None:
    """Stage 3, 4 or 5: projector + LM again on `stage{n}_pool` fresh train records (the indices after the earlier
    stages' pools), with its own warm-up and cosine, no patch loss, the extra turns' question mix boosted by
    `stage{n}_turn_boost`; the RNG is reseeded first (`seed + n`), so a build from scratch and a continuation of
    a saved base (`--continue-from`) train the same stage."""
    steps, lr = getattr(recipe, f"stage{stage}_steps"), getattr(recipe, f"stage{stage}_lr")
    size, warmup = getattr(recipe, f"stage{stage}_pool"), getattr(recipe, f"stage{stage}_warmup")
    boost = turn_boost(getattr(recipe, f"stage{stage}_turn_boost"))
    start = recipe.pool_size + sum(getattr(recipe, f"stage{n}_pool") for n in CONTINUATION_STAGES if n < stage)
    turn_mix = replace(cfg, kind_weights={k: w * boost.pop(k, 1.0) for k, w in cfg.kind_weights.items()})
    if boost:
        raise ValueError(f"stage{stage}_turn_boost names kinds the world does not ask: {sorted(boost)}")
    L.seed_everything(recipe.seed + stage, verbose=False)
    t = time.perf_counter()
    pool = world_records("train", size, cfg, recipe.seed, recipe.pool_processes, start=start)
    timings[f"stage{stage}_world_s"] = time.perf_counter() - t
    t = time.perf_counter()
    generator = torch.Generator().manual_seed(recipe.seed + stage)
    trainable(model)
    chats = ChatPool(
        pool,
        turn_mix,
        recipe.turns,
        recipe.caption_prob,
        views=1 + steps * recipe.stage2_batch // len(pool),
        locate_turns=recipe.locate_turns,
    )
    loader = stage2_loader(chats, recipe, MultiTurnCollator(processor), generator)
    curve = AccuracyCurve(model, processor, curve_records, recipe.curve_every, stage)
    module = ProjectorLMModule(model, lr, warmup).train()  # a loaded base is in eval mode
    trainer(steps, out.parent, progress, [curve]).fit(module, loader)
    timings[f"stage{stage}_s"] = time.perf_counter() - t - curve.spent
    timings[f"stage{stage}_curve_s"] = curve.spent
    rows.extend({**row, "stage": stage} for row in curve.rows)


def evaluate_base(model: Any, processor: Any, cfg: WorldConfig, recipe: BaseRecipe) -> dict[str, Any]:
    from steprune.eval.world_accuracy import world_accuracy
    from steprune.pruned_vlm import PrunedVLM

    records = generate_records("test", recipe.eval_size, cfg, recipe.seed)
    vlm = PrunedVLM(model, processor, method="identity")
    full = world_accuracy(vlm, records)
    blind = world_accuracy(vlm, records, blank=True)
    for result in (full, blind):
        result.pop("objects_and_k")
    return {"test_accuracy": full, "blind_accuracy": blind}


def print_report(info: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="built-in world base model — test split")
    for column in ("question kind", "all tokens", "blind (blank image)", "gap (points)"):
        table.add_column(column, justify="right" if column != "question kind" else "left")
    full, blind = info["test_accuracy"], info["blind_accuracy"]
    for kind in full["per_kind"]:
        a, b = full["per_kind"][kind], blind["per_kind"].get(kind, 0.0)
        table.add_row(kind, f"{a:.1%}", f"{b:.1%}", f"{100 * (a - b):+.1f}")
    table.add_row(
        "overall",
        f"{full['overall']:.1%}",
        f"{blind['overall']:.1%}",
        f"{100 * (full['overall'] - blind['overall']):+.1f}",
    )
    Console().print(table)
    Console().print({k: round(v, 1) for k, v in info["timings"].items()})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="build (or reuse) the built-in world's base MLLM")
    parser.add_argument("--out", default=None, help="directory (default: $STEPRUNE_HOME/base or artifacts/base)")
    parser.add_argument("--force", action="store_true", help="rebuild even if a base exists")
    parser.add_argument("--recipe", default="v5", choices=sorted(RECIPES), help="preset (flags below override it)")
    parser.add_argument(
        "--continue-from",
        "--stage3-from",
        dest="continue_from",
        type=Path,
        default=None,
        help="a base built by this recipe's stages up to its last: load it and run only the later stages (same "
        "weights as a full build)",
    )
    for name, value in asdict(BaseRecipe()).items():
        flag = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=type(value), default=None, help=f"v5 default: {value}")
    args = parser.parse_args(argv)
    try:
        given = {k: getattr(args, k) for k in asdict(BaseRecipe()) if getattr(args, k) is not None}
        recipe = recipe_named(args.recipe, **given)
    except ValueError as error:
        parser.error(str(error))
    out = Path(args.out) if args.out else default_base_dir()
    try:
        info = build_base(out, recipe=recipe, force=args.force, continue_from=args.continue_from)
    except ValueError as error:
        parser.error(str(error))
    print_report(info)
    print(f"base model: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
