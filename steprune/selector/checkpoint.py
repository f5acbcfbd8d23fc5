"""Reading and checking StepPrune selector files: the single safetensors file and the Hugging Face directory.

    StepPruneSelector.save("selector.safetensors")            # one file: weights + metadata (format, config, ...)
    StepPruneSelector.save_pretrained("my-selector")          # config.json + model.safetensors (+ README.md)
    StepPruneSelector.from_pretrained("my-selector" | "org/name" | "selector.safetensors")

Both formats hold the same record: the constructor arguments (`stop_offset` among them), the calibration record
(how `stop_offset` was found, `steprune.training.calibration`) and the base the selector was trained on
(`trained_on`: backbone name + fingerprint, `steprune.backbones.fingerprint`). In the single file they are
safetensors metadata strings; in a directory they are `config.json` (the Hub convention: the constructor
arguments at the top level, as `huggingface_hub.PyTorchModelHubMixin` reads them, beside `format`,
`calibration` and `trained_on`), and its `model.safetensors` is itself a complete single-file selector (same
bytes as `save`), so either file loads on its own. `config.json` is what `from_pretrained` builds from; a
weights file whose own metadata disagrees with it is refused. Every problem is a ValueError (or
FileNotFoundError) that names the file and what is wrong.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

FORMAT = "steprune-selector/1"
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
RECORD_KEYS = ("format", "calibration", "trained_on")
"""Keys of a directory's config.json besides the constructor arguments."""


def file_bytes(state: dict[str, Tensor], config: dict, calibration: dict | None, trained_on: dict | None) -> bytes:
    """The single-file format: the tensors, with the format tag, config, calibration and base as metadata."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    metadata = {"format": FORMAT, "config": json.dumps(config)}
    if calibration is not None:
        metadata["calibration"] = json.dumps(calibration)
    if trained_on is not None:
        metadata["backbone"] = trained_on["backbone"]
        metadata["backbone_fingerprint"] = trained_on["fingerprint"]
    return safetensors_bytes(tensors, metadata=metadata)


def hub_config(config: dict, calibration: dict | None, trained_on: dict | None) -> dict[str, Any]:
    """A directory's config.json: the constructor arguments at the top level, plus the format, calibration, base."""
    return {"format": FORMAT, **config, "calibration": calibration, "trained_on": trained_on}


def read_file(path: str | Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    """(metadata, tensors) of a safetensors file; ValueError naming the file when it cannot be read."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from error
    return metadata, tensors


def checked_trained_on(backbone: object, fingerprint: object, where: str, what: str) -> dict[str, str]:
    """{"backbone", "fingerprint"} once the fingerprint is checked to be 'sha256:<hex>'; `where` names its source."""
    if not isinstance(fingerprint, str) or not fingerprint.startswith("sha256:"):
        raise ValueError(f"{where}: its {what} {str(fingerprint)[:40]!r} is not 'sha256:<hex>'")
    return {"backbone": str(backbone if backbone is not None else "unknown"), "fingerprint": fingerprint}


def file_record(metadata: dict[str, str], where: str) -> tuple[dict, dict | None, dict | None]:
    """(constructor arguments, calibration, trained_on) from a single file's metadata."""
    if metadata.get("format") != FORMAT:
        raise ValueError(
            f"{where} is not a StepPrune selector checkpoint: metadata format is "
            f"{metadata.get('format')!r}, expected {FORMAT!r}"
        )
    try:
        config = json.loads(metadata["config"])
    except (KeyError, ValueError) as error:
        raise ValueError(f"{where}: its constructor arguments do not build a StepPruneSelector ({error})") from error
    calibration = None
    if "calibration" in metadata:
        try:
            calibration = json.loads(metadata["calibration"])
        except ValueError as error:
            raise ValueError(f"{where}: its calibration metadata is not JSON ({error})") from error
    trained_on = None
    if "backbone_fingerprint" in metadata:
        trained_on = checked_trained_on(
            metadata.get("backbone"), metadata["backbone_fingerprint"], where, "backbone_fingerprint metadata"
        )
    return config, calibration, trained_on


def directory_record(config: object, where: str, init: type) -> tuple[dict, dict | None, dict | None]:
    """(constructor arguments, calibration, trained_on) from a directory's config.json, checked."""
    if not isinstance(config, dict):
        raise FileNotFoundError(
            f"{where}: no readable {CONFIG_NAME} (a selector directory is written by "
            "StepPruneSelector.save_pretrained; a Hub repo may be missing, private (pass a token) or not a selector)"
        )
    if config.get("format") != FORMAT:
        raise ValueError(
            f"{where}/{CONFIG_NAME} is not a StepPrune selector config: its format is {config.get('format')!r}, "
            f"expected {FORMAT!r}"
        )
    parameters = [name for name in inspect.signature(init).parameters if name != "self"]
    unknown = sorted(set(config) - set(parameters) - set(RECORD_KEYS))
    if unknown:
        raise ValueError(f"{where}/{CONFIG_NAME}: unknown key(s) {unknown}; a selector config holds {parameters}")
    arguments = {k: v for k, v in config.items() if k in parameters}
    calibration = config.get("calibration")
    if calibration is not None and not isinstance(calibration, dict):
        raise ValueError(f"{where}/{CONFIG_NAME}: calibration must be an object or null, got {calibration!r}")
    trained_on = config.get("trained_on")
    if trained_on is not None:
        if not isinstance(trained_on, dict):
            raise ValueError(f"{where}/{CONFIG_NAME}: trained_on must be an object or null, got {trained_on!r}")
        trained_on = checked_trained_on(
            trained_on.get("backbone"),
            trained_on.get("fingerprint"),
            f"{where}/{CONFIG_NAME}",
            "trained_on.fingerprint",
        )
    return arguments, calibration, trained_on


def build(cls: type[nn.Module], config: dict, tensors: dict[str, Tensor], where: str) -> Any:
    """`cls(**config)` with `tensors` as its weights, after checking names, shapes and finiteness."""
    try:
        with torch.device("meta"):
            model = cls(**config)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: its constructor arguments do not build a StepPruneSelector ({error})") from error
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    problems = [f"missing {k}" for k in sorted(expected.keys() - found.keys())]
    problems += [f"unexpected {k}" for k in sorted(found.keys() - expected.keys())]
    problems += [
        f"{k}: shape {found[k]} in the file, {expected[k]} from its config"
        for k in sorted(expected.keys() & found.keys())
        if found[k] != expected[k]
    ]
    if problems:
        shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        raise ValueError(f"{where} does not match the selector its config describes: {shown}")
    broken = sorted(k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if broken:
        raise ValueError(
            f"{where} holds NaN or infinite weights in {len(broken)} tensor(s) ({', '.join(broken[:3])}"
            f"{', ...' if len(broken) > 3 else ''}): its training diverged; retrain it (`make train`, e.g. with a "
            "lower --model.lr) or export the selector from an earlier checkpoint"
        )
    model.load_state_dict(tensors, assign=True)
    return model


def check_agrees(weights_metadata: dict[str, str], arguments: dict, where: str) -> None:
    """A directory's weights file, when it carries its own config (it does when written by save_pretrained),
    must describe the same selector as config.json."""
    if "config" not in weights_metadata:
        return
    try:
        own = json.loads(weights_metadata["config"])
    except ValueError as error:
        raise ValueError(f"{where}/{WEIGHTS_NAME}: its config metadata is not JSON ({error})") from error
    differs = sorted(k for k in set(own) | set(arguments) if own.get(k) != arguments.get(k))
    if differs:
        shown = ", ".join(f"{k}: {arguments.get(k)!r} vs {own.get(k)!r}" for k in differs[:5])
        raise ValueError(
            f"{where}: {CONFIG_NAME} and {WEIGHTS_NAME} describe different selectors ({shown}; config.json vs the "
            "weights file): one of them was edited or copied from another save; save the selector again"
        )


MODEL_CARD = """---
# For reference on model card metadata, see the spec: https://github.com/huggingface/hub-docs/blob/main/modelcard.md?plain=1
{{ card_data }}
---

# A StepPrune visual-token selector

Trained with steprune on a frozen multimodal LLM: it picks the visual tokens the LLM
prefill keeps, one at a time, and stops by itself (adaptive K per image and prompt).

```python
from steprune.pruned_vlm import PrunedVLM

vlm = PrunedVLM.from_pretrained("<the base it was trained on>", method="steprune", selector="<this repo id>")
```

`config.json` names the base (`trained_on`: its name and fingerprint); applied to another base, steprune
refuses it unless `allow_backbone_mismatch=True`. The STOP offset calibrated after training is
`stop_offset` in `config.json`, with how it was found in `calibration`.
"""
