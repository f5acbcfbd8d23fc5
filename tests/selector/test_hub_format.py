"""Selectors the Hugging Face way: save_pretrained / from_pretrained (dir, Hub id from a local cache, single file),
through PrunedVLM.from_pretrained(..., selector=...), and clear errors for missing, corrupt or edited files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from steprune.backbones.fingerprint import BackboneMismatchError, backbone_fingerprint
from steprune.backbones.tiny import tiny_llava
from steprune.pruned_vlm import PrunedVLM
from steprune.pruners.stepprune import StepPrunePruner, untrained_selector
from steprune.selector.checkpoint import CONFIG_NAME, WEIGHTS_NAME
from steprune.selector.selector import StepPruneSelector
from tests.inputs import make_inputs
from tests.selector.test_checkpoint import _one_thread, batch, micro  # noqa: F401 (an autouse fixture)

REPO = Path(__file__).resolve().parents[2]


def calibrated(**kwargs) -> StepPruneSelector:
    """A micro selector with a calibration record, a STOP offset that changes its picks and a recorded base."""
    selector = micro(**kwargs)
    selector.set_stop_offset(1.0, {"target_k": 1.0, "stop_offset": 1.0, "mean_k": 1.0})
    selector.trained_on = {"backbone": "artifacts/base", "fingerprint": "sha256:" + "ab" * 32}
    return selector


def assert_same_selector(a: StepPruneSelector, b: StepPruneSelector) -> None:
    assert b.config == a.config and b.stop_offset == a.stop_offset
    assert b.calibration == a.calibration and b.trained_on == a.trained_on
    assert list(b.state_dict()) == list(a.state_dict())
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    picks_a, picks_b = a.select(*batch()), b.select(*batch())
    for x, y in zip(picks_a, picks_b, strict=True):
        assert torch.equal(x, y)


def test_save_pretrained_round_trip_gives_identical_picks_and_record(tmp_path):
    selector = calibrated(t_max=6, causal=True)
    assert selector.select(*batch()).lengths.tolist() != selector.select(*batch(), stop_offset=0.0).lengths.tolist()
    selector.save_pretrained(tmp_path / "sel")
    assert {p.name for p in (tmp_path / "sel").iterdir()} == {CONFIG_NAME, WEIGHTS_NAME, "README.md"}
    config = json.loads((tmp_path / "sel" / CONFIG_NAME).read_text())
    assert config["trained_on"] == selector.trained_on and config["stop_offset"] == 1.0
    assert config["calibration"]["target_k"] == 1.0 and config["d_model"] == 16
    again = StepPruneSelector.from_pretrained(tmp_path / "sel")
    assert not again.training, "from_pretrained returns the module in eval mode (the Hugging Face convention)"
    assert_same_selector(selector, again)
    assert_same_selector(selector, StepPruneSelector.load(tmp_path / "sel" / WEIGHTS_NAME))  # the file alone
    assert_same_selector(selector, StepPruneSelector.from_pretrained(str(tmp_path / "sel")))


def test_the_single_file_format_still_loads_through_from_pretrained(tmp_path):
    selector = calibrated()
    selector.save(tmp_path / "selector.safetensors")
    assert_same_selector(selector, StepPruneSelector.from_pretrained(tmp_path / "selector.safetensors"))


def hub_cache(tmp_path: Path, selector: StepPruneSelector, repo_id: str = "steprune-org/world-selector") -> Path:
    """A Hugging Face cache as huggingface_hub lays it out (refs/main -> snapshots/<commit>/files)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / f"models--{repo_id.replace('/', '--')}"
    selector.save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return tmp_path / "hub"


def test_a_hub_id_is_resolved_by_huggingface_hub_from_the_cache(tmp_path):
    selector = calibrated(t_max=6)
    cache = hub_cache(tmp_path, selector)
    again = StepPruneSelector.from_pretrained("steprune-org/world-selector", cache_dir=cache, local_files_only=True)
    assert_same_selector(selector, again)
    with pytest.raises(FileNotFoundError):  # huggingface_hub's LocalEntryNotFoundError: not in this cache
        StepPruneSelector.from_pretrained("steprune-org/other", cache_dir=cache, local_files_only=True)


@pytest.mark.slow  # a fresh interpreter (huggingface_hub reads HF_HUB_OFFLINE at import): ~10 s
def test_the_pruner_takes_a_hub_id_offline(tmp_path):
    """`selector="org/name"` with HF_HUB_OFFLINE=1 and a cache: the picks of the selector saved into it."""
    selector = calibrated(t_max=6)
    cache = hub_cache(tmp_path, selector)
    expected = selector.select(*batch()).keep.tolist()
    script = (
        "import torch, json\n"
        "from steprune.pruners.stepprune import StepPrunePruner\n"
        "from tests.selector.test_checkpoint import batch\n"
        "pruner = StepPrunePruner(selector='steprune-org/world-selector')\n"
        "print(json.dumps(pruner._own.select(*batch()).keep.tolist()))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


def test_local_paths_that_do_not_exist_never_go_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for missing in ("./no/such/selector", str(tmp_path / "absent"), "selector.safetensors", "runs/../x"):
        with pytest.raises(FileNotFoundError, match="not looked up on the Hugging Face Hub"):
            StepPruneSelector.from_pretrained(missing)


def test_missing_corrupt_and_edited_directories_are_named(tmp_path):
    selector = calibrated()
    good = tmp_path / "good"
    selector.save_pretrained(good)

    def variant(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(good, target)
        return target

    no_config = variant("no_config")
    (no_config / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=r"no_config is not a selector directory: config\.json is missing"):
        StepPruneSelector.from_pretrained(no_config)
    no_weights = variant("no_weights")
    (no_weights / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors is missing"):
        StepPruneSelector.from_pretrained(no_weights)
    corrupt = variant("corrupt")
    (corrupt / WEIGHTS_NAME).write_bytes((good / WEIGHTS_NAME).read_bytes()[:-64])
    with pytest.raises(ValueError, match=r"corrupt/model\.safetensors is not a readable safetensors file"):
        StepPruneSelector.from_pretrained(corrupt)
    foreign = variant("foreign")
    (foreign / CONFIG_NAME).write_text(json.dumps({"hidden_size": 32, "model_type": "llama"}))
    with pytest.raises(ValueError, match=r"foreign/config\.json is not a StepPrune selector config"):
        StepPruneSelector.from_pretrained(foreign)
    garbled = variant("garbled")
    (garbled / CONFIG_NAME).write_text("{not json")
    with pytest.raises(ValueError):  # json's own error, from the mixin reading config.json
        StepPruneSelector.from_pretrained(garbled)

    def edited(name: str, **changes) -> Path:
        target = variant(name)
        config = json.loads((target / CONFIG_NAME).read_text())
        (target / CONFIG_NAME).write_text(json.dumps(config | changes))
        return target

    with pytest.raises(ValueError, match=r"config\.json and model\.safetensors describe different selectors.*d_model"):
        StepPruneSelector.from_pretrained(edited("wider", d_model=32))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['layers_of_magic'\]"):
        StepPruneSelector.from_pretrained(edited("magic", layers_of_magic=3))
    with pytest.raises(
        ValueError, match=r"fingerprint/config\.json: its trained_on.fingerprint 'md5:1' is not 'sha256:<hex>'"
    ):
        StepPruneSelector.from_pretrained(edited("fingerprint", trained_on={"backbone": "b", "fingerprint": "md5:1"}))

    stripped = variant("stripped")  # weights without their own config metadata: config.json decides, shapes checked
    tensors = load_file(str(good / WEIGHTS_NAME))
    save_file({k: v for k, v in tensors.items() if k != "decoder.stop"}, str(stripped / WEIGHTS_NAME))
    with pytest.raises(ValueError, match=r"does not match the selector its config describes: missing decoder\.stop"):
        StepPruneSelector.from_pretrained(stripped)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="is not a selector: pass a directory written by save_pretrained"):
        StepPruneSelector.from_pretrained(tmp_path / "notes.txt")


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    """A saved tiny LLaVA and a "rebuilt" one (same widths, other weights)."""
    root = tmp_path_factory.mktemp("bases")
    torch.manual_seed(0)
    model, processor = tiny_llava(text_layers=2)
    for name in ("base", "rebuilt"):
        if name == "rebuilt":
            with torch.no_grad():
                model.lm_head.weight.add_(0.01)
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
    return root


def test_pruned_vlm_from_pretrained_takes_a_selector_directory(bases, tmp_path):
    base = str(bases / "base")
    model = PrunedVLM.from_pretrained(base, method="identity", budget=None).model
    selector = untrained_selector(model.config.vision_config.hidden_size, model.config.text_config.hidden_size)
    selector.set_stop_offset(2.0, {"target_k": 9.0, "stop_offset": 2.0})
    selector.trained_on = {"backbone": base, "fingerprint": backbone_fingerprint(base)}
    selector.save_pretrained(tmp_path / "sel")
    selector.save(tmp_path / "sel.safetensors")

    from_dir = PrunedVLM.from_pretrained(base, method="steprune", budget=None, selector=str(tmp_path / "sel"))
    from_file = PrunedVLM.from_pretrained(
        base, method="steprune", budget=None, weights=str(tmp_path / "sel.safetensors")
    )
    assert from_dir.pruner._own.stop_offset == 2.0 and from_dir.pruner._own.calibration["target_k"] == 9.0
    inputs = make_inputs(from_dir.processor)
    a, b = from_dir.prepare(**inputs).result, from_file.prepare(**inputs).result
    assert torch.equal(a.keep, b.keep) and torch.equal(a.lengths, b.lengths)
    live = PrunedVLM(from_file.model, from_file.processor, StepPrunePruner.from_selector(selector.eval()), None)
    assert torch.equal(live.prepare(**inputs).result.keep, a.keep)  # the in-memory selector the files came from
    assert from_dir.generate(**inputs, max_new_tokens=2).shape == (2, 2)

    with pytest.raises(BackboneMismatchError, match="trained on another base"):  # the base travels in config.json
        PrunedVLM.from_pretrained(
            str(bases / "rebuilt"), method="steprune", budget=None, selector=str(tmp_path / "sel")
        )
    with pytest.raises(ValueError, match="not both"):
        PrunedVLM.from_pretrained(
            base, method="steprune", selector=str(tmp_path / "sel"), weights=str(tmp_path / "sel.safetensors")
        )
    with pytest.raises(FileNotFoundError, match="not looked up on the Hugging Face Hub.*make train"):
        PrunedVLM.from_pretrained(base, method="steprune", selector=str(tmp_path / "nope"))
