"""`StepPruneSelector`: encoder + pointer decoder + surrogate + denoiser, composed (methods.md §1).

    sel = StepPruneSelector(d_vision=1024, d_text=4096, d_model=256, t_max=192)
    out = sel.forward_train(x_v, text, text_mask, alpha=1.0, tau=1.0, gamma=0.9, beta=10.0, k_bar=64.0)
    loss = lm_loss(projector(out["features"])) + lam * out["expected_length"].mean() / N
    keep, keep_mask = sel.select(x_v, text, text_mask)     # inference: hard adaptive-K subset, spatial order
    sel.save("selector.safetensors"); sel = StepPruneSelector.load("selector.safetensors")
    sel.save_pretrained("my-selector"); sel = StepPruneSelector.from_pretrained("my-selector")  # or "org/name"
    sel.push_to_hub("org/name")                               # config.json + model.safetensors + README.md

Training (`forward_train`), by `surrogate`:
* "paper" (methods.md §1.3): pointer loop -> soft scores -> g = SoftTopK(s; k_bar, beta) -> noise gate ->
  local denoiser; the frozen MLLM consumes `features` (B, N, D_v) at full length.
* "removal" (methods.md §1.8): the sample's own hard picks h (B, N) with the straight-through gate
  `keep = h + q - stopgrad(q)`, q = min(1, s); features pass unchanged (no SoftTopK, k_bar, noise or
  denoiser); the LLM sees the visual keys through the attention bias log(keep + eps)
  (`steprune.backbones.attention_bias`).
Inference (`select`): the hard pointer choices only, sorted back into spatial order; no noise, no denoiser;
STOP masked until `min_k` tokens are chosen, and the calibrated `stop_offset` added to the STOP logit.

A checkpoint is one safetensors file; its metadata holds the format tag and the constructor arguments as
JSON, so `load` rebuilds the exact module, plus the calibration record and the base it was trained on
(`trained_on`: the backbone's name and fingerprint, `steprune.backbones.fingerprint`; the `steprune` pruner
refuses to apply it to another base). A `save_pretrained` directory holds the same record as config.json beside
that same file as model.safetensors (`steprune.selector.checkpoint`). Anything unreadable or inconsistent raises
a ValueError that names the file and the problem. Files are replaced atomically (`steprune.atomic_file`).

Choices where the specification is open:
* `t_max=None` means T_max = N (every token may be chosen); an int must be <= N (checked per call).
* `k_bar=None` in `forward_train` uses the batch mean of the hard K (the training loop normally passes
  its running EMA).
* The denoiser works in the vision width D_v (its output feeds the MLLM's projector).
* `horizon="stop"` (default): the surrogate sums over each sample's own steps, up to its STOP (§1.2: a
  stopped sample contributes nothing after its stop). `horizon="t_max"` runs the pointer's continuation in
  training (every sample runs T_max steps, see `PointerDecoder`) and sums the alive-weighted scores and E[K]
  over t = 1..T_max, the literal form of §1.4's E[K]. Measured on the built-in world (committed config,
  seed 1): "stop" collapses to K of about 3 by step 44; "t_max" goes the other way, K = T_max = 32 from
  step 24 with val retention 0.61 — the continuation lets the LM loss ask for more tokens before the length
  term has warmed up, and the STOP probability saturates.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import Tensor, nn

from steprune.atomic_file import atomic_write
from steprune.selector import checkpoint
from steprune.selector.checkpoint import FORMAT
from steprune.selector.coverage_prior import PRIOR_STOPS, PRIORS, Prior, PriorStop
from steprune.selector.denoiser import LocalDenoiser
from steprune.selector.encoder import CrossModalEncoder
from steprune.selector.fast_pointer import FastPointerLoop
from steprune.selector.noise_gate import vp_noise_gate
from steprune.selector.pointer import PointerDecoder, PointerOutput
from steprune.selector.scores import AGGREGATIONS, Aggregation, expected_length, soft_scores
from steprune.selector.soft_topk import sigmoid_topk, soft_topk

__all__ = ["FORMAT", "SURROGATES", "Selection", "StepPruneSelector", "spatial_order"]
Polarisation = Literal["ot", "sigmoid"]
Horizon = Literal["t_max", "stop"]
Surrogate = Literal["paper", "removal"]
SURROGATES: tuple[str, ...] = ("paper", "removal")


class Selection(NamedTuple):
    keep: Tensor  # (B, K_max) long, sorted ascending over valid entries, padding 0 at the end
    keep_mask: Tensor  # (B, K_max) bool
    lengths: Tensor  # (B,) long: K per sample (0 when STOP came first)


def spatial_order(chosen: Tensor, chosen_mask: Tensor, num_tokens: int) -> Selection:
    """Chosen indices in choice order (B, T) -> sorted padded (B, max(K_max, 1)) + mask."""
    b = chosen.shape[0]
    counts = torch.zeros(b, num_tokens, dtype=torch.long, device=chosen.device)
    picked = counts.scatter_add_(1, chosen.masked_fill(~chosen_mask, 0), chosen_mask.long()) > 0  # (B, N)
    position = torch.arange(num_tokens, device=chosen.device).expand(b, -1)
    k_max = max(int(picked.sum(dim=1).max()), 1)
    keep = torch.where(picked, position, position + num_tokens).argsort(dim=1)[:, :k_max]
    keep_mask = picked.gather(1, keep)
    return Selection(keep.masked_fill(~keep_mask, 0), keep_mask, keep_mask.sum(dim=1))


class StepPruneSelector(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="steprune",
    tags=["steprune", "visual-token-pruning"],
    model_card_template=checkpoint.MODEL_CARD,
):
    """All trainable parts of StepPrune: E (with W_t), the pointer decoder (q_0, s, W_p), the denoiser.

    Saved as one file (`save` / `load`) or the Hugging Face way (`save_pretrained` / `from_pretrained` /
    `push_to_hub`, from `huggingface_hub.PyTorchModelHubMixin`; `steprune.selector.checkpoint`)."""

    def __init__(
        self,
        d_vision: int,
        d_text: int,
        d_model: int | None = None,
        encoder_layers: int = 2,
        encoder_heads: int = 8,
        causal: bool = False,
        decoder_layers: int = 2,
        decoder_heads: int = 8,
        mlp_ratio: float = 4.0,
        denoiser_heads: int = 8,
        denoiser_layer_scale: float = 1e-3,
        t_max: int | None = None,
        aggregation: Aggregation = "full",
        polarisation: Polarisation = "ot",
        polarisation_iters: int = 100,
        horizon: Horizon = "stop",
        surrogate: Surrogate = "paper",
        min_k: int = 1,
        stop_offset: float = 0.0,
        prior: Prior = "none",
        prior_stop: PriorStop = "saturation",
    ) -> None:
        super().__init__()
        if prior not in PRIORS:
            raise ValueError(f"prior must be one of {PRIORS}, got {prior!r}")
        if prior_stop not in PRIOR_STOPS:
            raise ValueError(f"prior_stop must be one of {PRIOR_STOPS}, got {prior_stop!r}")
        if surrogate not in SURROGATES:
            raise ValueError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
        if isinstance(min_k, bool) or not isinstance(min_k, int) or min_k < 0:
            raise ValueError(f"min_k must be an int >= 0 (the fewest visual tokens kept), got {min_k!r}")
        if t_max is not None and isinstance(t_max, int) and min_k > t_max:
            raise ValueError(f"min_k={min_k} is above t_max={t_max}: no selection could satisfy both")
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if polarisation not in ("ot", "sigmoid"):
            raise ValueError(f"polarisation must be 'ot' or 'sigmoid', got {polarisation!r}")
        if horizon not in ("t_max", "stop"):
            raise ValueError(f"horizon must be 't_max' or 'stop', got {horizon!r}")
        if t_max is not None and (isinstance(t_max, bool) or not isinstance(t_max, int) or t_max < 1):
            raise ValueError(f"t_max must be a positive int or None (= N), got {t_max!r}")
        self.config = {
            "d_vision": d_vision,
            "d_text": d_text,
            "d_model": d_model,
            "encoder_layers": encoder_layers,
            "encoder_heads": encoder_heads,
            "causal": causal,
            "decoder_layers": decoder_layers,
            "decoder_heads": decoder_heads,
            "mlp_ratio": mlp_ratio,
            "denoiser_heads": denoiser_heads,
            "denoiser_layer_scale": denoiser_layer_scale,
            "t_max": t_max,
            "aggregation": aggregation,
            "polarisation": polarisation,
            "polarisation_iters": polarisation_iters,
            "horizon": horizon,
            "surrogate": surrogate,
            "min_k": min_k,
            "stop_offset": float(stop_offset),
            "prior": prior,
            "prior_stop": prior_stop,
        }
        self.prior: Prior = prior
        self.t_max = t_max
        self.surrogate: Surrogate = surrogate
        self.min_k = min_k
        self.stop_offset = float(stop_offset)
        self.calibration: dict | None = None  # how stop_offset was set (`steprune.training.calibration`)
        self.trained_on: dict[str, str] | None = None  # {"backbone": name, "fingerprint": "sha256:..."} (metadata)
        self.aggregation: Aggregation = aggregation
        self.polarisation: Polarisation = polarisation
        self.polarisation_iters = polarisation_iters
        self.horizon: Horizon = horizon
        self.encoder = CrossModalEncoder(d_vision, d_text, d_model, encoder_layers, encoder_heads, mlp_ratio, causal)
        self.decoder = PointerDecoder(
            self.encoder.d_model,
            decoder_layers,
            decoder_heads,
            mlp_ratio,
            coverage_prior=prior == "coverage",
            prior_stop=prior_stop,
        )
        self.denoiser = LocalDenoiser(d_vision, denoiser_heads, mlp_ratio, denoiser_layer_scale)

    # ------------------------------------------------------------------------------------------------
    def pointer(
        self,
        vision: Tensor,
        text: Tensor,
        text_mask: Tensor,
        alpha: float | Tensor,
        tau: float,
        t_max: int | None,
        continue_after_stop: bool = False,
        stop_offset: float = 0.0,
        explore: bool = False,
        generator: torch.Generator | None = None,
        min_k: int | None = None,
        cover: Tensor | None = None,
    ) -> PointerOutput:
        """Encoder + pointer loop: the hard trajectory and its distributions. `cover` (B, N, R): MMTok's coverage
        matrix, which a selector with `prior="coverage"` needs (`steprune.selector.coverage_prior`)."""
        h = self.encoder(vision, text, text_mask, alpha)  # (B, N, D)
        return self.decode(h, tau, t_max, continue_after_stop, stop_offset, explore, generator, min_k, cover)

    def steps_for(self, num_tokens: int, t_max: int | None = None) -> int:
        """T_max for a call: the argument, else the selector's own, else N."""
        return t_max if t_max is not None else (self.t_max if self.t_max is not None else num_tokens)

    def decode(
        self,
        h: Tensor,
        tau: float = 1.0,
        t_max: int | None = None,
        continue_after_stop: bool = False,
        stop_offset: float = 0.0,
        explore: bool = False,
        generator: torch.Generator | None = None,
        min_k: int | None = None,
        cover: Tensor | None = None,
    ) -> PointerOutput:
        """The pointer loop on encoded tokens h (B, N, D), with the floor `min_k` (None: the selector's own),
        capped at T_max."""
        steps = self.steps_for(h.shape[1], t_max)
        min_k = min(self.min_k if min_k is None else min_k, steps)
        return self.decoder(h, steps, tau, continue_after_stop, min_k, stop_offset, explore, generator, cover)

    def forward_train(
        self,
        vision: Tensor,
        text: Tensor,
        text_mask: Tensor,
        alpha: float | Tensor = 1.0,
        tau: float = 1.0,
        gamma: float = 0.9,
        beta: float = 10.0,
        k_bar: float | Tensor | None = None,
        generator: torch.Generator | None = None,
        t_max: int | None = None,
        explore: bool = False,
        stop_offset: float = 0.0,
        cover: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The training surrogate (`self.surrogate`) for vision (B, N, D_v), text (B, L, D_llm), text_mask (B, L).

        `explore` (removal surrogate only) samples each pointer action from pi_t instead of the argmax.
        `stop_offset` is added to the STOP logit at every step, as `select` adds the calibrated one (the budget
        controller's STOP-offset actuator trains with it; 0 leaves the loop as specified, bit for bit).
        """
        if self.surrogate == "removal":
            return self._forward_removal(
                vision, text, text_mask, alpha, tau, gamma, generator, t_max, explore, stop_offset, cover
            )
        if explore:
            raise ValueError("explore samples the pointer's actions: it belongs to the removal surrogate only")
        out = self.pointer(
            vision,
            text,
            text_mask,
            alpha,
            tau,
            t_max,
            continue_after_stop=self.horizon == "t_max",
            stop_offset=stop_offset,
            cover=cover,
        )
        scores = soft_scores(out.pi, out.step_valid, gamma, self.aggregation, out.horizon)  # (B, N)
        k = out.lengths.to(scores.dtype).mean() if k_bar is None else k_bar
        if self.polarisation == "ot":
            g = soft_topk(scores, k, beta, self.polarisation_iters)  # (B, N)
        else:
            g = sigmoid_topk(scores, k, beta, self.polarisation_iters)
        features = self.denoiser(vp_noise_gate(vision, g, generator))  # (B, N, D_v)
        return {
            "g": g,
            "scores": scores,
            "expected_length": expected_length(out.pi, out.horizon),  # (B,)
            "k": out.lengths,  # (B,) hard K
            "features": features,
            "pi": out.pi,  # (B, T, N+1)
            "step_valid": out.step_valid,  # (B, T)
            "horizon": out.horizon,  # (B, T)
            "chosen": out.chosen,  # (B, T_max) choice order
            "chosen_mask": out.chosen_mask,
            "actions": out.actions,  # (B, T) the hard choice per step (N = STOP)
        }

    def _forward_removal(
        self,
        vision: Tensor,
        text: Tensor,
        text_mask: Tensor,
        alpha: float | Tensor,
        tau: float,
        gamma: float,
        generator: torch.Generator | None,
        t_max: int | None,
        explore: bool,
        stop_offset: float = 0.0,
        cover: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """methods.md §1.8 items 1-2: the hard set with a straight-through gate; features unchanged."""
        loop = {"stop_offset": stop_offset, "explore": explore, "generator": generator, "cover": cover}
        out = self.pointer(vision, text, text_mask, alpha, tau, t_max, **loop)
        scores = soft_scores(out.pi, out.step_valid, gamma, self.aggregation, out.horizon)  # (B, N)
        b, n = scores.shape
        hard = torch.zeros(b, n, dtype=scores.dtype, device=scores.device)
        hard.scatter_add_(1, out.chosen, out.chosen_mask.to(scores.dtype))  # (B, N): 1 on the sample's picks
        q = scores.clamp(max=1.0)
        keep = hard + q - q.detach()  # forward: exactly the inference subset; backward: through every pi_t
        return {
            "keep": keep,  # (B, N)
            "scores": scores,
            "expected_length": expected_length(out.pi, out.horizon),  # (B,)
            "k": out.lengths,
            "features": vision,  # unchanged: removal, not noise, is the "off" state
            "pi": out.pi,
            "step_valid": out.step_valid,
            "horizon": out.horizon,
            "chosen": out.chosen,
            "chosen_mask": out.chosen_mask,
            "actions": out.actions,  # (B, T) the hard choice per step (N = STOP)
        }

    @torch.no_grad()
    def select(
        self,
        vision: Tensor,
        text: Tensor,
        text_mask: Tensor,
        tau: float = 1.0,
        alpha: float = 1.0,
        t_max: int | None = None,
        min_k: int | None = None,
        stop_offset: float | None = None,
        cover: Tensor | None = None,
    ) -> Selection:
        """Inference: the hard adaptive-K subset, sorted into spatial order (tau does not change the argmax).

        STOP is masked until `min_k` tokens are chosen; the calibrated `stop_offset` is added to STOP's logit
        (None: the selector's own values). `cover`: MMTok's coverage matrix (B, N, R) for `prior="coverage"`; that
        prior runs the eager loop (`PointerDecoder.forward`), the fast loop knows no prior.
        """
        offset = self.stop_offset if stop_offset is None else stop_offset
        h = self.encoder(vision, text, text_mask, alpha)  # (B, N, D)
        steps = self.steps_for(h.shape[1], t_max)
        floor = min(self.min_k if min_k is None else min_k, steps)
        if self.decoder.prior is not None or cover is not None:
            picks = self.decoder(h, steps, tau, min_k=floor, stop_offset=offset, cover=cover)
        else:
            picks = FastPointerLoop(self.decoder)(h, steps, tau, floor, offset)  # the eager loop's picks, bit for bit
        return spatial_order(picks.chosen, picks.chosen_mask, vision.shape[1])

    def set_stop_offset(self, offset: float, calibration: dict | None = None) -> None:
        """Set the inference STOP offset (saved in the file's config) and how it was found (saved as metadata)."""
        self.stop_offset = self.config["stop_offset"] = float(offset)
        self.calibration = calibration

    # ------------------------------------------------------------------------------------------------
    def flops(self, num_tokens: int, text_tokens: int, steps: int) -> float:
        """Analytic FLOPs of `select` for one sample (multiply-add = 2): encoder + `steps` decoder steps.

        Counts the matmuls (projections, attention scores and weighted sums, MLPs, pointer logits, the
        feedback y @ M; with the coverage prior its coverage matrix and per-step gains); norms, softmax and
        activations are ignored, as in `steprune.eval.flops`.
        """
        c = self.config
        d_v, d_t = c["d_vision"], c["d_text"]
        d = self.encoder.d_model
        m = int(d * c["mlp_ratio"])
        mem = num_tokens + 1
        s = num_tokens + text_tokens
        macs = text_tokens * d_t * d_v + (0 if d == d_v else s * d_v * d)  # W_t, input projection
        macs += c["encoder_layers"] * (4 * s * d * d + 2 * s * s * d + 2 * s * d * m)
        layers = c["decoder_layers"]
        macs += layers * mem * 2 * d * d + mem * d * d  # cross-attention K/V of M, pointer keys W_k M
        past = steps * (steps + 1) // 2  # keys attended by the cached self-attention, summed over steps
        per_step_layer = 4 * d * d + 2 * d * d + 2 * mem * d + 2 * d * m  # self qkv+o, cross q+o, cross attn, MLP
        macs += layers * (steps * per_step_layer + 2 * past * d)
        macs += steps * (d * d + 2 * mem * d)  # W_q h_t, logits over M, feedback y_t @ M
        if self.prior == "coverage":  # MMTok's coverage matrix (text-vision + vision-vision similarities) once,
            rows = text_tokens + num_tokens  # then every step's gains over the (N, R) matrix, counted as N * R
            d_llm = d_t
            macs += text_tokens * num_tokens * d_llm + num_tokens * num_tokens * d_v + steps * num_tokens * rows
        return 2.0 * macs

    # ------------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        """Write the weights and the constructor arguments to one safetensors file (atomically)."""
        data = checkpoint.file_bytes(self.state_dict(), self.config, self.calibration, self.trained_on)
        atomic_write(path, lambda handle: handle.write(data), what="selector")

    @classmethod
    def load(cls, path: str | Path) -> StepPruneSelector:
        """Rebuild a selector saved by `save`; FileNotFoundError if absent, ValueError if corrupt or mismatched."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no StepPrune selector checkpoint at {path}")
        metadata, tensors = checkpoint.read_file(path)
        config, calibration, trained_on = checkpoint.file_record(metadata, str(path))
        model = checkpoint.build(cls, config, tensors, str(path))
        model.calibration, model.trained_on = calibration, trained_on
        return model

    def _save_pretrained(self, save_directory: Path) -> None:
        """`save_pretrained` / `push_to_hub` (PyTorchModelHubMixin): config.json + model.safetensors.

        config.json is written here from the selector's own record (a `config=` given to save_pretrained is not
        used); model.safetensors is the single-file format, so it also loads with `load`."""
        record = checkpoint.hub_config(self.config, self.calibration, self.trained_on)
        self.save(save_directory / checkpoint.WEIGHTS_NAME)
        text = json.dumps(record, indent=2, sort_keys=True).encode()
        atomic_write(save_directory / checkpoint.CONFIG_NAME, lambda handle: handle.write(text), what="selector")

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike[str],
        *,
        revision: str | None = None,
        cache_dir: str | Path | None = None,
        force_download: bool = False,
        local_files_only: bool = False,
        token: str | bool | None = None,
    ) -> StepPruneSelector:
        """A selector from a `save_pretrained` directory, a Hub repo id (resolved by huggingface_hub, cached,
        `HF_HUB_OFFLINE` honoured) or a single `.safetensors` file; in eval mode, on the CPU.

        A local path that does not exist raises FileNotFoundError and is never looked up on the Hub
        (`steprune.base_location.resolve_pretrained`)."""
        from steprune.base_location import resolve_pretrained

        path = Path(os.fspath(pretrained_model_name_or_path)).expanduser()
        if path.is_file():
            if path.suffix != ".safetensors":
                raise ValueError(
                    f"{path} is not a selector: pass a directory written by save_pretrained, a Hub id, or a "
                    ".safetensors file written by save (or `make train`)"
                )
            return cls.load(path).eval()
        source = resolve_pretrained(path if path.exists() else os.fspath(pretrained_model_name_or_path))
        if Path(source).is_dir():
            for name in (checkpoint.CONFIG_NAME, checkpoint.WEIGHTS_NAME):
                if not (Path(source) / name).is_file():
                    raise FileNotFoundError(
                        f"{source} is not a selector directory: {name} is missing (write one with "
                        "StepPruneSelector.save_pretrained, or pass the .safetensors file `make train` exports)"
                    )
        return super().from_pretrained(
            source,
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            local_files_only=local_files_only,
            token=token,
        )

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: dict | None = None,
        **constructor_arguments: object,  # the mixin's copy of config.json's arguments: `config` is read instead
    ) -> StepPruneSelector:
        """The mixin's loading hook: config.json (already read, as `config`) + model.safetensors, checked."""
        arguments, calibration, trained_on = checkpoint.directory_record(config, model_id, cls.__init__)
        if os.path.isdir(model_id):
            weights = os.path.join(model_id, checkpoint.WEIGHTS_NAME)
        else:
            from huggingface_hub import hf_hub_download

            weights = hf_hub_download(
                repo_id=model_id,
                filename=checkpoint.WEIGHTS_NAME,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                token=token,
                local_files_only=local_files_only,
            )
        metadata, tensors = checkpoint.read_file(weights)
        checkpoint.check_agrees(metadata, arguments, model_id)
        model = checkpoint.build(cls, arguments, tensors, f"{model_id}/{checkpoint.WEIGHTS_NAME}")
        model.calibration, model.trained_on = calibration, trained_on
        return model.eval()
