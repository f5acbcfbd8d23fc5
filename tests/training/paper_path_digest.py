"""The paper path's reference fit and a digest of the selector it trains (#18: `surrogate: paper` stays untouched).

The test (`test_paper_path_reference.py`) compares the digest of a 6-step `stepprune_world.yaml` fit with `--model.min_k
0` on a micro base against `tests/data/paper_path_592d5dd.json`, which this script wrote with the code of 592d5dd (the
commit before the removal surrogate, the controller and the floor landed):

    git worktree add /tmp/wt592 592d5dd
    PYTHONPATH=/tmp/wt592 python tests/training/paper_path_digest.py \
        --config /tmp/wt592/experiments/stepprune_world.yaml --label 592d5dd --out tests/data/paper_path_592d5dd.json

(steprune is imported from the worktree, this file from HEAD.)

No validation runs before the last step (no sanity check, val at step 6): since b32698b validation draws from a
generator of its own, so a mid-run validation no longer shifts the training RNG, a deliberate change of the data
stream, not of the paper path.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
from pathlib import Path

import torch

STEPS = 6


def micro_base(path: Path) -> Path:
    """The tiny random LLaVA of `steprune.backbones.tiny` (seeded), saved as a checkpoint."""
    from steprune.backbones.tiny import tiny_llava

    model, processor = tiny_llava()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path


def fit_args(config: str, base: Path, root: Path, steps: int = STEPS) -> list[str]:
    """`steprune train fit` on the world yaml, shrunk to a micro run (CPU, seconds)."""
    return [
        "fit",
        f"--config={config}",
        f"--model.backbone={base}",
        "--model.t_max=6",
        "--data=steprune.data.world_datamodule.WorldDataModule",
        '--data.world={"max_objects": 3}',
        "--data.batch_size=3",
        "--data.val_size=3",
        f"--trainer.logger.init_args.tracking_uri=sqlite:///{root / 'mlruns.db'}",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={steps}",
        "--trainer.num_sanity_val_steps=0",
        "--seed_everything=0",
        f"--export.path={root / 'selector.safetensors'}",
    ]


def digest(tensors: dict[str, torch.Tensor]) -> dict:
    """Per tensor: sum, L2 norm and a seeded random projection (float64), plus the SHA-256 of every byte."""
    sha = hashlib.sha256()
    rows = {}
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        sha.update(name.encode() + t.numpy().tobytes())
        flat = t.double().flatten()  # (numel,)
        probe = torch.randn(flat.numel(), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        rows[name] = {
            "numel": flat.numel(),
            "sum": flat.sum().item(),
            "norm": flat.norm().item(),
            "projection": (flat @ probe).item(),
        }
    return {"sha256": sha.hexdigest(), "tensors": rows}


def platform_key() -> dict[str, str]:
    """What bit-for-bit equality depends on: the torch build and the CPU kernels it picks."""
    return {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }


def reference_fit(config: str, root: Path, steps: int = STEPS) -> dict:
    """Fit in `root` (the working directory: checkpoints/ land there) and return the exported selector's digest."""
    from safetensors.torch import load_file

    from steprune.training.cli import train_main

    root.mkdir(parents=True, exist_ok=True)
    base = micro_base(root / "base")
    here = Path.cwd()
    os.chdir(root)
    try:
        train_main(fit_args(config, base, root, steps) + (["--model.min_k=0"] if _has_floor() else []))
    finally:
        os.chdir(here)
    return digest(load_file(root / "selector.safetensors"))


def _has_floor() -> bool:
    """HEAD's world yaml sets min_k 1; the paper's loop (and 592d5dd, which had no floor) is min_k 0."""
    import inspect

    from steprune.training.stepprune_module import StepPruneModule

    return "min_k" in inspect.signature(StepPruneModule.__init__).parameters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="the stepprune_world.yaml of the code under test")
    parser.add_argument("--out", required=True, help="the digest JSON to write")
    parser.add_argument("--root", default="/tmp/paper_path_reference", help="where the fit runs")
    parser.add_argument("--label", default="592d5dd", help="the commit whose code ran the fit")
    args = parser.parse_args()
    record = {"code": args.label, "platform": platform_key(), "steps": STEPS}
    record |= reference_fit(args.config, Path(args.root))
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
