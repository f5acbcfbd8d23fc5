"""Every file under sweeps/ parses (and starts with the command that runs it); bad files fail with clear errors."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

from steprune.sweeps.runner import check_sweep
from steprune.sweeps.spec import AblationSpec, SweepConfigError, SweepSpec, load_spec, parse_ablation, parse_sweep
from steprune.sweeps.train import TrainRequest, check_args

ROOT = Path(__file__).resolve().parents[2]
SWEEP_FILES = sorted((ROOT / "sweeps").glob("*.yaml"))
EXPERIMENT = str(ROOT / "experiments" / "stepprune_world.yaml")


def test_there_are_sweep_files():
    names = {p.name for p in SWEEP_FILES}
    assert {"stepprune_lambda_gamma_tau.yaml", "ablation_table4.yaml", "ablation_grid.yaml"} <= names


def test_the_table4_ablation_holds_the_papers_five_rows():
    """Table 4 changes one thing at a time from bidirectional+full; the grid file has all 2 x 4 cells."""
    table4 = load_spec(ROOT / "sweeps" / "ablation_table4.yaml")
    grid = load_spec(ROOT / "sweeps" / "ablation_grid.yaml")
    reference = table4.variants[table4.reference]
    assert reference == {"model.causal": False, "model.aggregation": "full"}
    others = [v for name, v in table4.variants.items() if name != table4.reference]
    assert len(others) == 4 and all(sum(v[k] != reference[k] for k in reference) == 1 for v in others)
    assert len(grid.variants) == 8 and all(v in grid.variants.values() for v in table4.variants.values())
    assert len(table4.seeds) >= 3 and table4.seeds == grid.seeds
    assert "--budget.target_k=16" in table4.training.train_args  # every variant at the same mean K (calibrated)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=[p.name for p in SWEEP_FILES])
def test_every_sweep_file_parses_and_starts_with_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith(("# steprune sweep --config", "# steprune ablate --config")), "line 1: the command"
    assert f"--config sweeps/{path.name}" in first
    spec = load_spec(path)
    assert isinstance(spec, SweepSpec if "sweep --config" in first else AblationSpec)
    assert all(Path(c).is_file() for c in spec.training.experiment)
    if isinstance(spec, SweepSpec):
        assert {"lam", "gamma", "tau", "beta"} <= set(spec.params)
        assert not spec.storage.startswith("sqlite:///mlruns"), "the study never lives in the MLflow database"
        study = optuna.create_study(directions=[o.direction for o in spec.objectives])
        trial = study.ask()
        values = {name: p.suggest(trial) for name, p in spec.params.items()}
        for name, p in spec.params.items():
            if p.type != "categorical":
                assert p.low <= values[name] <= p.high
        check_sweep(spec)  # the training CLI accepts the file's configs + train_args + parameter paths
    else:
        assert len(spec.seeds) >= 3 and spec.reference in spec.variants
        for overrides in spec.variants.values():
            check_args(
                TrainRequest(
                    spec.training.experiment,
                    overrides,
                    0,
                    "0" * 32,
                    "sqlite:///unused.db",
                    "e",
                    Path("."),
                    spec.training.train_args,
                )  # fmt: skip
            )


def _sweep(**changes):
    data = {
        "study_name": "s",
        "experiment": EXPERIMENT,
        "n_trials": 3,
        "metric": "val/retention",
        "params": {"lam": {"path": "model.lam", "low": 0.1, "high": 1.0, "log": True}},
    }
    data.update(changes)
    return {k: v for k, v in data.items() if v is not None}


def test_minimal_sweep_defaults():
    spec = parse_sweep(_sweep())
    assert spec.storage == "sqlite:///optuna.db" and spec.sampler == {"name": "tpe"} and spec.pruner == {"name": "none"}
    assert spec.objectives[0].direction == "maximize" and not spec.multi_objective


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_trails": 3}, "unknown key 'n_trails' \\(did you mean 'n_trials'\\?\\)"),
        ({"n_trials": 0}, "n_trials: expected a positive integer"),
        ({"params": {"lam": {"path": "model.lam", "low": 1.0, "high": 0.1}}}, "low \\(1.0\\) must be < high"),
        ({"params": {"lam": {"path": "model.lam", "low": 0.0, "high": 1.0, "log": True}}}, "log-scale range"),
        ({"params": {"lam": {"path": "lam", "low": 0.1, "high": 1.0}}}, "not an option path"),
        ({"params": {"lam": {"path": "model.lam", "choices": []}}}, "non-empty list"),
        ({"params": {"lam": {"path": "model.lam", "lo": 0.1, "high": 1.0}}}, "did you mean 'low'"),
        ({"sampler": {"name": "tpee"}}, "did you mean 'tpe'"),
        ({"sampler": {"name": "tpe", "n_startup": 3}}, "sampler: unknown key 'n_startup'"),
        (
            {"pruner": "median", "metric": None, "objectives": [{"metric": "val/retention"}, {"metric": "val/k_mean"}]},
            "prunes single-objective studies only",
        ),  # fmt: skip
        ({"metric": "retention"}, "not a logged metric"),
        ({"storage": "optuna.db"}, "is not sqlite:///file.db"),
        ({"experiment": "experiments/nope.yaml"}, "does not exist"),
        ({"enqueue": [{"lamda": 1.0}]}, "did you mean 'lam'"),
        ({"heartbeat_s": 700}, "heartbeat_s < stale_after_s"),
    ],
)
def test_bad_sweeps_say_what_is_wrong(changes, message):
    with pytest.raises(SweepConfigError, match=message):
        parse_sweep(_sweep(**changes), "bad.yaml")


def test_ablation_grid_is_the_product_of_its_axes():
    spec = parse_ablation(
        {
            "kind": "ablation",
            "name": "g",
            "experiment": EXPERIMENT,
            "seeds": [0, 1],
            "axes": {
                "enc": {"path": "model.causal", "values": {"bi": False, "causal": True}},
                "agg": {"path": "model.aggregation", "values": {"full": "full", "last": "last_step"}},
            },
            "reference": "bi+full",
        }
    )
    assert list(spec.variants) == ["bi+full", "bi+last", "causal+full", "causal+last"]
    assert spec.variants["causal+last"] == {"model.causal": True, "model.aggregation": "last_step"}
    with pytest.raises(SweepConfigError, match="reference: 'bi' is not a variant"):
        parse_ablation({"name": "g", "experiment": EXPERIMENT, "seeds": [0], "variants": {"a": {}}, "reference": "bi"})
    with pytest.raises(SweepConfigError, match="either axes .* or variants"):
        parse_ablation({"name": "g", "experiment": EXPERIMENT, "seeds": [0]})
    with pytest.raises(SweepConfigError, match="seed is listed twice"):
        parse_ablation({"name": "g", "experiment": EXPERIMENT, "seeds": [0, 0], "variants": {"a": {}}})


def test_load_spec_errors_name_the_file(tmp_path):
    bad = tmp_path / "x.yaml"
    bad.write_text("kind: sweeep\n")
    with pytest.raises(SweepConfigError, match=f"{bad}.kind: expected sweep or ablation"):
        load_spec(bad)
    bad.write_text(yaml.safe_dump(_sweep(n_trials="many")))
    with pytest.raises(SweepConfigError, match="x.yaml.n_trials: expected a positive integer, got 'many'"):
        load_spec(bad)
    with pytest.raises(SweepConfigError, match="no such sweep file"):
        load_spec(tmp_path / "absent.yaml")
