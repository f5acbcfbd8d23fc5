"""A path-like model argument that does not exist says so; it is never looked up on the Hugging Face Hub (#21 item 5).

`artifacts/base` is a valid Hub repo id, so without the check a fresh checkout without its base asked the Hub for
a repo named `artifacts/base` ("Repo id must be in the form ...", "couldn't connect to huggingface.co").
The `no_hub` fixture turns Hub access off, so a fall-through fails fast instead of retrying the network.
"""

from __future__ import annotations

from pathlib import Path

import huggingface_hub.constants
import pytest

from steprune import PrunedVLM
from steprune.base_location import looks_like_path, resolve_pretrained

EXPERIMENT = Path(__file__).resolve().parents[2] / "experiments" / "stepprune_world.yaml"


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """Hub offline and a working directory without artifacts/ (a clone whose base is missing)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("STEPRUNE_HOME", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", ["./no/such/dir", "/nonexistent", "no/such/dir/at/all", "~/no-such-model-dir"])
def test_from_pretrained_missing_path_says_so(no_hub, name):
    with pytest.raises(FileNotFoundError, match=r"no model directory at .*not looked up on the Hugging Face Hub"):
        PrunedVLM.from_pretrained(name)


def test_from_pretrained_missing_world_base_says_make_base(no_hub):
    with pytest.raises(FileNotFoundError, match=r"no base model at artifacts/base.*make base"):
        PrunedVLM.from_pretrained("artifacts/base", method="uniform", budget=4)


def test_training_module_without_base_says_make_base(no_hub):
    from steprune.training.stepprune_module import StepPruneModule

    with pytest.raises(FileNotFoundError, match="make base"):
        StepPruneModule(backbone="artifacts/base")


@pytest.mark.slow
def test_train_fit_without_base_says_make_base(no_hub):
    from steprune.training.cli import train_main

    with pytest.raises(FileNotFoundError, match="make base"):
        train_main(["fit", "--config", str(EXPERIMENT), "--trainer.max_steps=1", "--trainer.logger=false"])


def test_world_datamodule_processor_without_base(no_hub):
    from steprune.data.world_datamodule import WorldDataModule

    with pytest.raises(FileNotFoundError, match="make base"):
        WorldDataModule(backbone="artifacts/base").processor  # noqa: B018 (the property loads it)


def test_a_file_is_not_a_model_directory(no_hub):
    (no_hub / "model.safetensors").write_bytes(b"x")
    with pytest.raises(NotADirectoryError, match="is a file: pass the directory"):
        resolve_pretrained("model.safetensors")


def test_hub_ids_and_existing_dirs_pass_through(no_hub):
    (no_hub / "local-model").mkdir()
    assert resolve_pretrained("local-model") == "local-model"
    assert resolve_pretrained(no_hub / "local-model") == str(no_hub / "local-model")
    for hub_id in ("llava-hf/llava-1.5-7b-hf", "Qwen/Qwen2.5-VL-3B-Instruct", "gpt2"):
        assert resolve_pretrained(hub_id) == hub_id
        assert not looks_like_path(hub_id)
    (no_hub / "reports").mkdir()
    assert looks_like_path("reports/nope")  # its first part is a local directory: a path, not owner/name
