"""Configs and sweep objectives are checked before any base is built or any trial runs (#21 item 7)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENT = str(ROOT / "experiments" / "stepprune_world.yaml")


@pytest.fixture
def no_base_work(monkeypatch):
    """make_train must stop before it builds (or even checks) the base."""
    import steprune.recipes.build_base

    def forbidden(*args, **kwargs):
        raise AssertionError("make_train started base work before checking its configs")

    monkeypatch.setattr(steprune.recipes.build_base, "build_base", forbidden)


def test_make_train_missing_config_fails_before_the_base(no_base_work, capsys):
    from steprune.recipes.make_train import main

    with pytest.raises(SystemExit) as stop:
        main(["--config", "experiments/nope.yaml"])
    assert stop.value.code == 2
    assert "--config experiments/nope.yaml: no such file" in capsys.readouterr().err


def test_make_train_config_with_a_typo_fails_before_the_base(no_base_work, tmp_path, capsys):
    from steprune.recipes.make_train import main

    delta = tmp_path / "typo.yaml"
    delta.write_text("model:\n  lamm: 0.3\n")
    with pytest.raises(SystemExit) as stop:
        main(["--config", EXPERIMENT, "--config", str(delta), "--ckpt_path", "last"])
    assert stop.value.code == 2
    assert "does not parse" in (err := capsys.readouterr().err) and "lamm" in err


def test_misspelled_objective_fails_before_trial_one(tmp_path, capsys):
    from steprune.sweeps.runner import sweep_main
    from tests.sweeps.conftest import write_micro_sweep

    path = write_micro_sweep(
        tmp_path, tmp_path / "base", objectives=[{"metric": "val/retension", "direction": "maximize"}]
    )
    with pytest.raises(SystemExit) as stop:
        sweep_main(["--config", str(path)])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert "objective metric 'val/retension' is never logged" in err and "Did you mean 'val/retention'?" in err
    assert not (tmp_path / "optuna.db").exists(), "the study was touched"


def test_validation_logs_exactly_the_metrics_sweeps_may_name(tmp_path):
    from steprune.training.stepprune_module import VALIDATION_METRICS, StepPruneModule
    from tests.inputs import write_micro_base

    module = StepPruneModule(backbone=str(write_micro_base(tmp_path / "base")))
    module.unpruned_acc.fill_(0.5)
    module.val_acc.update(torch.tensor([1.0, 0.0]))
    module.val_k.update(torch.tensor([3.0, 5.0]))
    module.val_ks.update(torch.tensor([3.0, 5.0]))
    logged: list[str] = []
    module.log_dict = lambda metrics, **kwargs: logged.extend(metrics)  # the keys one validation logs
    module.on_validation_epoch_end()
    assert sorted(logged) == sorted(VALIDATION_METRICS)
