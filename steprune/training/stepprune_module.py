"""The StepPrune LightningModule: a frozen MLLM + the trainable selector, trained with LM loss + λ·E[K]/N.

    module = StepPruneModule(backbone="artifacts/base", lam=0.5, gamma=0.9, beta=10.0)
    lightning.Trainer(max_steps=200, callbacks=[TextGateSchedule(50), TemperatureSchedule(...)]).fit(module, dm)

Training (methods.md §1.3–1.4): vision features -> selector surrogate (soft scores -> SoftTopK -> VP noise
gate -> denoiser) -> the MLLM's own projector -> the frozen LLM on the full-length sequence -> next-token
loss on the answer tokens, plus λ·E[K]/N with E[K] = Σ_t A_t. Validation runs the hard selection exactly
as inference does (`steprune` pruner through `PrunedVLM.generate`) and reports accuracy, K and retention.

Only selector parameters train; the frozen MLLM is never written to a checkpoint (it is re-loaded from
`backbone`), so a checkpoint holds the selector, the k̄ running average, the optimiser state and the
backbone's fingerprint: resuming on another backbone (a rebuilt base) raises `BackboneMismatchError`.
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
from steprune.backbones.fingerprint import backbone_fingerprint
from steprune.pruned_vlm import PrunedVLM
from steprune.pruners.stepprune import StepPrunePruner
from steprune.selector.scores import Aggregation
from steprune.selector.selector import StepPruneSelector

BACKBONE_PREFIX = "vlm."


def normalise_answer(text: str) -> str:
    """Exact-match normalisation: lower case, trimmed, trailing punctuation and articles removed."""
    text = text.strip().lower()
    text = re.sub(r"[.!?,;:]+$", "", text)
    return re.sub(r"^(a|an|the)\s+", "", text).strip()


class BackboneMismatchError(ValueError):
    """A checkpoint's selector was trained on another backbone than the one loaded now."""


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
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(backbone)
        self.vlm = AutoModelForImageTextToText.from_pretrained(backbone, dtype=getattr(torch, dtype))
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
        )
        self.alpha = 0.0  # the text gate, annealed by TextGateSchedule
        self.tau = tau  # the pointer temperature, annealed by TemperatureSchedule
        self.lam_scale = 1.0  # λ's warm-up factor, set by LengthPenaltySchedule
        self.lam_multiplier = 1.0  # λ's budget-control factor, set by BudgetController (1 = fixed λ)
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

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(BACKBONE_PREFIX)]:
            del state[key]
        checkpoint["backbone_fingerprint"] = self.backbone_fingerprint

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse to resume a selector trained on another backbone (e.g. after `make base ARGS=--force`)."""
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

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        vision_inputs = {k: v for k, v in batch.items() if k in ("pixel_values", "image_grid_thw")}
        with torch.no_grad():
            vision = self.adapter.encode_images(**vision_inputs)
            prompt = batch["labels"] == -100
            text, text_mask = self.adapter.prompt_embeddings(batch["input_ids"], batch["attention_mask"], prompt)
        # k̄ for SoftTopK: the running mean of the hard K, floored so that a selector that stops early still
        # lets a few tokens through the gate (else no gradient can tell which tokens matter)
        k_bar = None if float(self.k_bar) < 0 else self.k_bar.clamp(min=self.hparams.min_k_bar)
        out = self.selector.forward_train(
            vision.vision_features,
            text,
            text_mask,
            alpha=self.alpha,
            tau=self.tau,
            gamma=self.hparams.gamma,
            beta=self.hparams.beta,
            k_bar=k_bar,
        )
        tokens = self.adapter.project(out["features"])  # (B, N, D_llm), grad flows through the frozen projector
        embeds = self.adapter.full_length_embeds(batch["input_ids"], tokens)
        extras = {k: v for k, v in batch.items() if k in ("image_grid_thw", "mm_token_type_ids")}
        positions = self.adapter.full_positions(batch["input_ids"], batch["attention_mask"], **extras)
        lm = self.vlm(
            inputs_embeds=embeds,
            attention_mask=batch["attention_mask"],
            position_ids=positions,
            labels=batch["labels"],
            use_cache=False,
        )
        n = vision.vision_features.shape[1]
        lam = self.lam_scale * self.lam_multiplier * self.hparams.lam
        len_penalty = lam * out["expected_length"].mean() / n
        loss = lm.loss + len_penalty
        hard_k = out["k"].float().mean().detach()
        with torch.no_grad():
            m = self.hparams.k_bar_momentum
            self.k_bar.copy_(hard_k if float(self.k_bar) < 0 else m * self.k_bar + (1 - m) * hard_k)
        size = batch["input_ids"].shape[0]
        self.log_dict(
            {
                "train/loss": loss,
                "train/loss_lm": lm.loss,
                "train/len_penalty": len_penalty,
                "train/k_mean": hard_k,
                "train/expected_k": out["expected_length"].mean(),
                "train/k_bar": self.k_bar,
                "train/alpha": float(self.alpha),
                "train/tau": float(self.tau),
                "train/lam_scale": float(self.lam_scale),
                "train/lam": float(lam),
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
