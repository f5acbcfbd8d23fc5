"""The StepPrune LightningModule: a frozen MLLM + the trainable selector, trained with LM loss + a length term.

    module = StepPruneModule(backbone="artifacts/base", surrogate="removal", kd=1.0)
    lightning.Trainer(max_steps=200, callbacks=[TextGateSchedule(50), BudgetController(target_k=16)]).fit(module, dm)

Training, by `surrogate`:
* "paper" (methods.md §1.3–1.4): vision features -> selector surrogate (soft scores -> SoftTopK -> VP noise
  gate -> denoiser) -> the MLLM's own projector -> the frozen LLM on the full-length sequence.
* "removal" (§1.8): the selector's hard picks with a straight-through gate m; features unchanged; the frozen
  LLM (SDPA) sees every visual key j through the additive attention bias log(m_j + eps), original positions.
Loss: next-token CE on the answer tokens, + `kd` · KL(full-token model ‖ pruned) on the same tokens (the
teacher is the same frozen MLLM with every visual token, no grad), + the length term: λ·E[K]/N with a fixed λ,
or with a `BudgetController` target the augmented Lagrangian λ·c + μ/2·c² of c = mean E[K]/N − ρ*, λ by dual
ascent (or, with the controller's STOP-offset actuator, a fixed λ while the offset on the STOP logit, applied in
training as at inference, holds K; `steprune.training.budget`). E[K] = Σ_t A_t. Optional: `teacher` + `imitate`,
an on-policy imitation term towards a training-free method's tokens (`steprune.training.teacher`); and
`policy_gradient` (with `explore`), REINFORCE on whole sets with the greedy set as baseline
(`steprune.training.policy_gradient`); and `prior: coverage`, MMTok's marginal coverage gains as an input to the
pointer's logits (`steprune.selector.coverage_prior`; `prior_stop: absolute` picks its absolute-gain STOP
term). Under DDP the batch's hard K is averaged over ranks before it updates k̄ or λ, so every rank holds the same
state. Validation runs the hard selection exactly as inference does
(`steprune` pruner through `PrunedVLM.generate`) and reports accuracy, K and retention.

Only selector parameters train; the frozen MLLM is never written to a checkpoint (it is re-loaded from
`backbone`), so a checkpoint holds the selector, the k̄ running average, the optimiser state and the
backbone's fingerprint: resuming on another backbone (a rebuilt base) raises `BackboneMismatchError`. It also
holds every RNG the training step draws from (the global ones through `RNGCheckpoint`, the explore generator
here), so `--ckpt_path last` continues bit for bit as the uninterrupted run would have.
"""

from __future__ import annotations

import re
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torchmetrics import MeanMetric
from torchmetrics.aggregation import CatMetric

from steprune.backbones import adapter_for
from steprune.backbones.attention_bias import removal_forward
from steprune.backbones.base import image_placeholder_mask
from steprune.backbones.fingerprint import BackboneMismatchError, backbone_fingerprint
from steprune.pruned_vlm import PrunedVLM
from steprune.pruners.mmtok import default_coverage_t
from steprune.pruners.stepprune import StepPrunePruner
from steprune.selector.scores import Aggregation
from steprune.selector.selector import StepPruneSelector
from steprune.training.policy_gradient import answer_cost, reinforce_loss, trajectory_log_prob
from steprune.training.rng_state import RNGCheckpoint
from steprune.training.teacher import imitation_loss, teacher_set, teacher_vlm

BACKBONE_PREFIX = "vlm."
VALIDATION_METRICS = ("val/acc", "val/k_mean", "val/k_min", "val/k_max", "val/unpruned_acc", "val/retention")
"""What every validation logs (`on_validation_epoch_end`): the names a sweep's objective may name."""


def normalise_answer(text: str) -> str:
    """Exact-match normalisation: lower case, trimmed, trailing punctuation and articles removed."""
    text = text.strip().lower()
    text = re.sub(r"[.!?,;:]+$", "", text)
    return re.sub(r"^(a|an|the)\s+", "", text).strip()


class StepPruneModule(L.LightningModule):
    """Trains a `StepPruneSelector` on a frozen MLLM loaded from `backbone` (a local dir or hub id)."""

    def __init__(
        self,
        backbone: str,
        lam: float = 0.5,
        gamma: float = 0.9,
        beta: float = 10.0,
        tau: float = 1.0,
        t_max: int | None = None,
        d_model: int | None = None,
        encoder_layers: int = 2,
        decoder_layers: int = 2,
        heads: int = 4,
        causal: bool = False,
        aggregation: Aggregation = "full",
        polarisation: str = "ot",
        horizon: str = "stop",
        k_bar_momentum: float = 0.9,
        min_k_bar: float = 1.0,
        lr: float = 3e-4,
        weight_decay: float = 0.01,
        warmup_steps: int = 20,
        max_new_tokens: int = 4,
        dtype: str = "float32",
        surrogate: str = "paper",
        kd: float = 0.0,
        min_k: int = 1,
        explore: bool = False,
        bias_eps: float = 1e-6,
        teacher: str | None = None,
        imitate: float = 0.0,
        policy_gradient: float = 0.0,
        prior: str = "none",
        prior_stop: str = "saturation",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        from steprune.base_location import resolve_pretrained

        source = resolve_pretrained(backbone)  # a missing local path says so (the world base: `make base`)
        self.processor = AutoProcessor.from_pretrained(source)
        self.vlm = AutoModelForImageTextToText.from_pretrained(source, dtype=getattr(torch, dtype))
        self.vlm.eval().requires_grad_(False)
        self.adapter = adapter_for(self.vlm)
        d_vision, d_text = self._widths()
        self.selector = StepPruneSelector(
            d_vision,
            d_text,
            d_model,
            encoder_layers,
            heads,
            causal,
            decoder_layers,
            heads,
            denoiser_heads=heads,
            t_max=t_max,
            aggregation=aggregation,
            polarisation=polarisation,
            horizon=horizon,
            surrogate=surrogate,
            min_k=min_k,
            prior=prior,
            prior_stop=prior_stop,
        )
        if kd < 0:
            raise ValueError(f"kd (the distillation weight) must be >= 0, got {kd}")
        if imitate < 0 or (imitate > 0) != (teacher is not None):
            raise ValueError(
                f"imitate (got {imitate}) must be >= 0, and > 0 exactly when a teacher is named (got {teacher!r}): "
                "e.g. --model.teacher mmtok --model.imitate 1.0"
            )
        if policy_gradient < 0 or (policy_gradient > 0 and not (explore and surrogate == "removal")):
            raise ValueError(
                f"policy_gradient (got {policy_gradient}) must be >= 0 and needs sampled trajectories: "
                "--model.surrogate removal --model.explore true --model.policy_gradient 1.0"
            )
        self.teacher = teacher_vlm(self.vlm, self.processor, teacher) if teacher is not None else None
        if surrogate == "removal":  # no noise, no denoiser on this path: it stays in the file, untrained
            self.selector.denoiser.requires_grad_(False)
        self.alpha = 0.0  # the text gate, annealed by TextGateSchedule
        self.tau = tau  # the pointer temperature, annealed by TemperatureSchedule
        self.lam_scale = 1.0  # λ's warm-up factor, set by LengthPenaltySchedule (fixed-λ training only)
        self.budget_controller: Any = None  # a BudgetController with a target sets itself here on train start
        self.last_k_stats: tuple[float, int, int, int] | None = None  # (mean hard K, N, T_max, step), for it
        self._explore_generator: torch.Generator | None = None
        self._explore_state: Tensor | None = None  # its state from a checkpoint, applied when it is created
        self.register_buffer("k_bar", torch.tensor(-1.0))  # running mean of the hard K (-1: unset)
        self.register_buffer("unpruned_acc", torch.tensor(-1.0))  # cached: the frozen model never changes
        self.strict_loading = False  # checkpoints carry no backbone weights
        revision = getattr(self.vlm.config, "_commit_hash", None)
        self.backbone_fingerprint = backbone_fingerprint(backbone, revision)
        self.val_acc, self.val_k, self.val_full_acc = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_ks = CatMetric()

    def _widths(self) -> tuple[int, int]:
        config = self.vlm.config
        d_text = config.get_text_config().hidden_size
        if self.adapter.family == "llava":
            layers = config.vision_feature_layer
            count = 1 if isinstance(layers, int) else len(layers)
            return config.vision_config.hidden_size * count, d_text
        return d_text, d_text  # Qwen2.5-VL: the selector reads the merged tokens

    # -- training ------------------------------------------------------------------------------------
    def train(self, mode: bool = True) -> StepPruneModule:
        super().train(mode)
        self.vlm.eval()  # frozen: no dropout, ever
        return self

    def configure_callbacks(self) -> list[L.Callback]:
        """The global RNGs travel with every checkpoint (`RNGCheckpoint`), so a resume is exact bit for bit."""
        return [RNGCheckpoint()]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(BACKBONE_PREFIX)]:
            del state[key]
        checkpoint["backbone_fingerprint"] = self.backbone_fingerprint
        if self._explore_generator is not None:  # the sampled pointer actions continue exactly on resume
            checkpoint["explore_generator"] = self._explore_generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume a selector trained on another backbone (e.g. after `make base ARGS=--force`)."""
        self._explore_state = checkpoint.get("explore_generator")
        saved = checkpoint.get("backbone_fingerprint")
        if saved is None:
            rank_zero_warn("this checkpoint predates backbone fingerprints: it is resumed without that check")
        elif saved != self.backbone_fingerprint:
            raise BackboneMismatchError(
                f"this checkpoint was trained on a different backbone than {self.hparams.backbone!r} "
                f"({saved[:19]} then, {self.backbone_fingerprint[:19]} now; e.g. the base was rebuilt). Nothing "
                "was changed: start a new run by moving the checkpoint directory away (make train: checkpoints/) "
                "or by leaving out --ckpt_path."
            )

    def _rank_mean(self, value: Tensor) -> Tensor:
        """Mean over DDP ranks (the value itself in a single process: no op, bit for bit)."""
        if self._trainer is not None and self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(value, reduce_op="mean")
        return value

    def _explore_rng(self) -> torch.Generator | None:
        if not self.hparams.explore:
            return None
        if self._explore_generator is None:  # seeded from the run's seed and rank, never the global RNG
            rank = self.global_rank if self._trainer is not None else 0
            self._explore_generator = torch.Generator().manual_seed(torch.initial_seed() % 2**31 + rank)
            if self._explore_state is not None:  # resumed: where the checkpointed run left it
                self._explore_generator.set_state(self._explore_state)
        return self._explore_generator

    def _lm_paper(self, batch: dict[str, Tensor], out: dict[str, Tensor]) -> Any:
        tokens = self.adapter.project(out["features"])  # (B, N, D_llm), grad flows through the frozen projector
        embeds = self.adapter.full_length_embeds(batch["input_ids"], tokens)
        extras = {k: v for k, v in batch.items() if k in ("image_grid_thw", "mm_token_type_ids")}
        positions = self.adapter.full_positions(batch["input_ids"], batch["attention_mask"], **extras)
        return self.vlm(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            position_ids=positions,
            labels=batch["labels"],
            use_cache=False,
        )

    def _lm_removal(self, batch: dict[str, Tensor], out: dict[str, Tensor]) -> Any:
        """The frozen LLM on the full sequence, every visual key j biased by log(keep_j + eps) (SDPA, original
        positions): forward = the inference subset, backward = the information removing each token loses."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad():  # features pass unchanged: nothing upstream of the mask needs a gradient
            tokens = self.adapter.project(out["features"])  # (B, N, D_llm)
            embeds = self.adapter.full_length_embeds(ids, tokens)
        extras = {k: v for k, v in batch.items() if k in ("image_grid_thw", "mm_token_type_ids")}
        positions = self.adapter.full_positions(ids, mask, **extras)
        slots = image_placeholder_mask(ids, self.adapter.image_token_id, tokens.shape[1])  # (B, S)
        return removal_forward(
            self.vlm, embeds, mask, slots, out["keep"], positions, labels=batch["labels"], eps=self.hparams.bias_eps
        )

    def _full_logprobs(self, batch: dict[str, Tensor], vision: Any) -> Tensor:
        """(B, S-1, V) log-softmax of the frozen MLLM with every visual token (the distillation teacher), no grad."""
        with torch.no_grad():
            tokens = self.adapter.project(vision.vision_features)
            embeds = self.adapter.full_length_embeds(batch["input_ids"], tokens)
            extras = {k: v for k, v in batch.items() if k in ("image_grid_thw", "mm_token_type_ids")}
            positions = self.adapter.full_positions(batch["input_ids"], batch["attention_mask"], **extras)
            logits = self.vlm(
                inputs_embeds=embeds, attention_mask=batch["attention_mask"], position_ids=positions, use_cache=False
            ).logits[:, :-1]
            return logits.float().log_softmax(-1)

    def _distillation(self, batch: dict[str, Tensor], student_logits: Tensor, full: Tensor) -> Tensor:
        """KL(p_full ‖ p_pruned) on the answer tokens; `full` is `_full_logprobs` of the same batch."""
        answer = batch["labels"][:, 1:] != -100  # (B, S-1): token t+1 is predicted at position t
        student = student_logits[:, :-1][answer].float().log_softmax(-1)  # (A, V)
        teacher = full[answer]  # (A, V)
        return (teacher.exp() * (teacher - student)).sum(-1).mean()

    def _pointer_pass(
        self,
        vision: Any,
        text: Tensor,
        text_mask: Tensor,
        k_bar: Tensor | None = None,
        generator: torch.Generator | None = None,
        explore: bool = False,
    ) -> dict[str, Tensor]:
        """The selector's training forward at the current schedules; the STOP offset is 0 unless the budget
        controller's STOP-offset actuator sets it. A selector with the coverage prior gets MMTok's coverage matrix
        of the answer-free prompt, as the `steprune` pruner gives it at inference."""
        cover = None
        if self.selector.prior == "coverage":
            cover = default_coverage_t(vision.image_tokens, vision.vision_features, text, text_mask)  # (B, N, R)
        return self.selector.forward_train(
            vision.vision_features,
            text,
            text_mask,
            alpha=self.alpha,
            tau=self.tau,
            gamma=self.hparams.gamma,
            beta=self.hparams.beta,
            k_bar=k_bar,
            generator=generator,
            explore=explore,
            stop_offset=self.selector.stop_offset,
            cover=cover,
        )

    def _policy_gradient(
        self,
        batch: dict[str, Tensor],
        vision: Any,
        text: Tensor,
        text_mask: Tensor,
        sampled: dict[str, Tensor],
        sampled_logits: Tensor,
        full: Tensor | None,
        lam: float | Tensor,
        n: int,
    ) -> tuple[Tensor, Tensor]:
        """REINFORCE on the sampled sets, the greedy set of the same input (what inference keeps) as baseline; the
        cost is CE + kd * KL + lam * K / N per sample. Returns (the term, the mean advantage)."""
        kd = float(self.hparams.kd)
        with torch.no_grad():
            greedy = self._pointer_pass(vision, text, text_mask)
            greedy_logits = self._lm_removal(batch, greedy).logits
            lam = float(lam)
            cost_greedy = answer_cost(greedy_logits, batch["labels"], full, kd) + lam * greedy["k"].float() / n
            cost_sampled = answer_cost(sampled_logits, batch["labels"], full, kd) + lam * sampled["k"].float() / n
            advantage = cost_sampled - cost_greedy  # (B,)
        log_prob = trajectory_log_prob(sampled["pi"], sampled["step_valid"], sampled["actions"])  # (B,)
        return reinforce_loss(log_prob, advantage), advantage.mean()

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        vision_inputs = {k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw")}
        with torch.no_grad():
            vision = self.adapter.encode_images(**vision_inputs)
            prompt = batch["labels"] == -100
            text, text_mask = self.adapter.prompt_embeddings(batch["input_ids"], batch["attention_mask"], prompt)
        removal = self.hparams.surrogate == "removal"
        # k̄ for SoftTopK (paper surrogate): the running mean of the hard K, floored so that a selector that stops
        # early still lets a few tokens through the gate (else no gradient can tell which tokens matter)
        k_bar = None if float(self.k_bar) < 0 else self.k_bar.clamp(min=self.hparams.min_k_bar)
        out = self._pointer_pass(
            vision,
            text,
            text_mask,
            k_bar=None if removal else k_bar,
            generator=self._explore_rng() if removal else None,
            explore=removal and self.hparams.explore,
        )
        lm = self._lm_removal(batch, out) if removal else self._lm_paper(batch, out)
        n = vision.vision_features.shape[1]
        t_max = self.selector.steps_for(n)
        expected_k = out["expected_length"].mean()
        controller = self.budget_controller
        if controller is not None:
            len_penalty, constraint = controller.penalty(expected_k, n, t_max, self.global_step)
            lam = controller.lam_effective
        else:
            lam = self.lam_scale * self.hparams.lam
            len_penalty = lam * expected_k / n
        loss = lm.loss + len_penalty
        logs: dict[str, Any] = {}
        full = self._full_logprobs(batch, vision) if self.hparams.kd > 0 else None  # (B, S-1, V), no grad
        if full is not None:
            kl = self._distillation(batch, lm.logits, full)
            loss = loss + self.hparams.kd * kl
            logs["train/kd"] = kl
        if self.hparams.policy_gradient > 0:
            pg, advantage = self._policy_gradient(batch, vision, text, text_mask, out, lm.logits, full, lam, n)
            loss = loss + self.hparams.policy_gradient * pg
            logs["train/policy_gradient"] = pg
            logs["train/advantage"] = advantage
        if self.teacher is not None:  # the teacher's tokens at the (warmed) target, imitated on-policy
            budget = t_max if controller is None else controller.target_tokens(self.global_step, t_max)
            picked = teacher_set(
                self.teacher, batch["input_ids"], batch["attention_mask"], prompt, vision, max(round(budget), 1)
            )
            imitation = imitation_loss(out["pi"], out["step_valid"], out["actions"], picked)
            loss = loss + self.hparams.imitate * imitation
            logs["train/imitation"] = imitation
        hard_k = self._rank_mean(out["k"].float().mean().detach())
        self.last_k_stats = (float(hard_k), n, t_max, self.global_step)
        with torch.no_grad():
            m = self.hparams.k_bar_momentum
            self.k_bar.copy_(hard_k if float(self.k_bar) < 0 else m * self.k_bar + (1 - m) * hard_k)
        size = batch["input_ids"].shape[0]
        if controller is not None:
            logs["train/constraint"] = constraint
        self.log_dict(
            {
                "train/loss": loss,
                "train/loss_lm": lm.loss,
                "train/len_penalty": len_penalty,
                "train/k_mean": hard_k,
                "train/expected_k": expected_k,
                "train/k_bar": self.k_bar,
                "train/alpha": float(self.alpha),
                "train/tau": float(self.tau),
                "train/lam_scale": float(self.lam_scale),
                "train/lam": float(lam),
                **logs,
            },
            prog_bar=False,
            batch_size=size,
        )
        self.log("train/k", hard_k, prog_bar=True, batch_size=size)
        return loss

    def configure_optimizers(self) -> dict[str, Any]:
        params = [p for p in self.selector.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        total = self.trainer.estimated_stepping_batches if self.trainer else 1000
        total = max(int(total), self.hparams.warmup_steps + 1)
        warmup = torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, 1.0, total_iters=max(self.hparams.warmup_steps, 1))
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total - self.hparams.warmup_steps)
        schedule = torch.optim.lr_scheduler.SequentialLR(optimizer, [warmup, cosine], [self.hparams.warmup_steps])
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # -- validation: the hard selection, exactly as at inference ---------------------------------------
    def pruned_vlm(self, method: str = "steprune") -> PrunedVLM:
        pruner = StepPrunePruner.from_selector(self.selector, tau=self.tau) if method == "steprune" else method
        return PrunedVLM(self.vlm, self.processor, method=pruner)

    def _answers(self, vlm: PrunedVLM, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
        inputs = {k: v for k, v in batch.items() if isinstance(v, Tensor) and k != "labels"}
        new = vlm.generate(**inputs, max_new_tokens=self.hparams.max_new_tokens)
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        correct = [normalise_answer(t) == normalise_answer(a) for t, a in zip(texts, batch["answers"], strict=True)]
        k = vlm.prepare(**inputs).result.lengths.float() if vlm.pruner.name == "steprune" else torch.zeros(len(texts))
        return torch.tensor(correct, dtype=torch.float32), k

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.selector.eval()
        correct, k = self._answers(self.pruned_vlm(), batch)
        self.val_acc.update(correct)
        self.val_k.update(k)
        self.val_ks.update(k)
        if float(self.unpruned_acc) < 0:
            full, _ = self._answers(self.pruned_vlm("identity"), batch)
            self.val_full_acc.update(full)

    def on_validation_epoch_end(self) -> None:
        if float(self.unpruned_acc) < 0 and self.val_full_acc.update_count > 0:
            self.unpruned_acc.fill_(float(self.val_full_acc.compute()))
            self.val_full_acc.reset()
        acc = self.val_acc.compute()
        ks = self.val_ks.compute()
        self.log_dict(
            {
                "val/acc": acc,
                "val/k_mean": self.val_k.compute(),
                "val/k_min": ks.min(),
                "val/k_max": ks.max(),
                "val/unpruned_acc": self.unpruned_acc,
                "val/retention": acc / self.unpruned_acc.clamp(min=1e-6),
            },
            prog_bar=True,
        )
        for metric in (self.val_acc, self.val_k, self.val_ks):
            metric.reset()
