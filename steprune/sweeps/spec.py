"""Sweep and ablation files (`sweeps/*.yaml`) as typed, validated data: what to train, what to search, where.

    spec = load_spec("sweeps/stepprune_lambda_gamma_tau.yaml")     # -> SweepSpec (or AblationSpec)
    spec.params["lam"].suggest(trial)                              # the Optuna suggestion of one parameter

A sweep file names its base experiment config(s), fixed training overrides, the objective(s) and
direction(s), the number of trials, the sampler (+ seed), the pruner, the Optuna storage URL (its own
SQLite file by default; `journal:///shared/x.journal` or a PostgreSQL URL for many workers), the study
name and the parameters with their ranges. An ablation file (`kind: ablation`) names axes whose product
is the grid, and the seeds. Every problem is reported with the file and the key, and unknown keys get a
did-you-mean, so configs never rot silently (a test parses every file under `sweeps/`).
"""

from __future__ import annotations

import difflib
import inspect
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_STORAGE = "sqlite:///optuna.db"
SAMPLERS = ("tpe", "nsga2", "random")
PRUNERS = ("median", "hyperband", "threshold", "none")
DIRECTIONS = ("maximize", "minimize")


class SweepConfigError(ValueError):
    """A sweep or ablation file that cannot be used; the message names the file and the key."""


def _check_keys(where: str, data: dict[str, Any], allowed: set[str], required: set[str] = frozenset()) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), sorted(allowed), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(sorted(allowed))})"
            raise SweepConfigError(f"{where}: unknown key {key!r}{hint}")
    missing = sorted(required - set(data))
    if missing:
        raise SweepConfigError(f"{where}: missing required key(s) {', '.join(missing)}")


def _type(where: str, value: Any, kinds: type | tuple[type, ...], what: str) -> Any:
    if isinstance(value, bool) and bool not in (kinds if isinstance(kinds, tuple) else (kinds,)):
        raise SweepConfigError(f"{where}: expected {what}, got {value!r}")
    if not isinstance(value, kinds):
        raise SweepConfigError(f"{where}: expected {what}, got {value!r}")
    return value


def _path_key(where: str, value: Any) -> str:
    """A training option as the CLI names it, e.g. `model.lam` or `temperature.end`."""
    _type(where, value, str, "an option path like model.lam")
    if not value or value.startswith("-") or "." not in value or " " in value:
        raise SweepConfigError(f"{where}: {value!r} is not an option path like model.lam or temperature.end")
    return value


@dataclass(frozen=True)
class ParamSpec:
    """One searched training option: `path` is its CLI key; float/int ranges (optionally log) or choices."""

    name: str
    path: str
    type: str = "float"  # float | int | categorical
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def suggest(self, trial: Any) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.type == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    @classmethod
    def parse(cls, where: str, name: str, data: Any) -> ParamSpec:
        if not isinstance(data, dict):
            raise SweepConfigError(f"{where}: expected a mapping with path and low/high or choices, got {data!r}")
        _check_keys(where, data, {"path", "type", "low", "high", "log", "step", "choices"}, {"path"})
        path = _path_key(f"{where}.path", data["path"])
        if "choices" in data:
            choices = _type(f"{where}.choices", data["choices"], list, "a non-empty list")
            if not choices or {"low", "high", "log", "step"} & set(data):
                raise SweepConfigError(f"{where}: choices must be a non-empty list and excludes low/high/log/step")
            if data.get("type", "categorical") != "categorical":
                raise SweepConfigError(f"{where}: a parameter with choices has type categorical")
            return cls(name, path, "categorical", choices=tuple(choices))
        kind = data.get("type", "float")
        if kind not in ("float", "int"):
            raise SweepConfigError(f"{where}.type: expected float, int or categorical (with choices), got {kind!r}")
        if "low" not in data or "high" not in data:
            raise SweepConfigError(f"{where}: a {kind} parameter needs low and high (or choices)")
        number = int if kind == "int" else (int, float)
        low = _type(f"{where}.low", data["low"], number, f"a {kind}")
        high = _type(f"{where}.high", data["high"], number, f"a {kind}")
        log = _type(f"{where}.log", data.get("log", False), bool, "true or false")
        step = data.get("step")
        if step is not None:
            _type(f"{where}.step", step, number, f"a {kind}")
            if step <= 0 or log:
                raise SweepConfigError(f"{where}.step: must be > 0 and cannot be combined with log")
        if not low < high:
            raise SweepConfigError(f"{where}: low ({low}) must be < high ({high})")
        if log and low <= 0:
            raise SweepConfigError(f"{where}: a log-scale range needs low > 0, got {low}")
        return cls(name, path, kind, float(low) if kind == "float" else low, high, log, step)


@dataclass(frozen=True)
class Objective:
    metric: str
    direction: str = "maximize"


@dataclass(frozen=True)
class MlflowSpec:
    experiment: str
    tracking_uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else sqlite:///mlruns.db


@dataclass(frozen=True)
class TrainingSpec:
    """What every run trains: base config files (`--config` each, in order), fixed overrides, the seed."""

    experiment: tuple[str, ...]
    train_args: tuple[str, ...] = ()
    workdir: str = "checkpoints/sweeps"
    tags: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSpec:
    source: str
    study_name: str
    training: TrainingSpec
    mlflow: MlflowSpec
    n_trials: int
    objectives: tuple[Objective, ...]
    params: dict[str, ParamSpec]
    seed: int = 0  # the training seed (seed_everything), the same for every trial
    storage: str = DEFAULT_STORAGE
    sampler: dict[str, Any] = field(default_factory=lambda: {"name": "tpe"})
    pruner: dict[str, Any] = field(default_factory=lambda: {"name": "none"})
    enqueue: tuple[dict[str, Any], ...] = ()
    heartbeat_s: float = 30.0  # a RUNNING trial whose heartbeat is older than stale_after_s was killed
    stale_after_s: float = 600.0

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


@dataclass(frozen=True)
class AblationSpec:
    source: str
    name: str
    training: TrainingSpec
    mlflow: MlflowSpec
    seeds: tuple[int, ...]
    variants: dict[str, dict[str, Any]]  # variant name -> {option path: value}
    reference: str | None = None  # the variant the paper's ordering compares against
    metrics: dict[str, str] = field(default_factory=lambda: {"retention": "val/retention", "k": "val/k_mean"})
    test_limit: int = 0  # > 0: also evaluate the exported selector on this many test questions (test/ metrics)
    out: str = "reports/ablation_table4"


def _training(where: str, data: dict[str, Any], root: Path, workdir: str) -> TrainingSpec:
    configs = data.pop("experiment")
    configs = [configs] if isinstance(configs, str) else configs
    if not isinstance(configs, list) or not configs or not all(isinstance(c, str) for c in configs):
        raise SweepConfigError(f"{where}.experiment: expected a config path or a list of them")
    for i, config in enumerate(configs):
        if not Path(config).is_file():  # relative to the working directory, else to the project root
            if not (root / config).is_file():
                raise SweepConfigError(f"{where}.experiment: {config} does not exist")
            configs[i] = str(root / config)
    args = data.pop("train_args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise SweepConfigError(f"{where}.train_args: expected a list of strings like --trainer.max_steps=100")
    tags = data.pop("tags", {})
    if not isinstance(tags, dict):
        raise SweepConfigError(f"{where}.tags: expected a mapping")
    workdir = _type(f"{where}.workdir", data.pop("workdir", workdir), str, "a directory")
    return TrainingSpec(tuple(configs), tuple(args), workdir, {str(k): str(v) for k, v in tags.items()})


def _mlflow(where: str, data: Any, default_experiment: str) -> MlflowSpec:
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise SweepConfigError(f"{where}: expected a mapping with experiment (and tracking_uri)")
    _check_keys(where, data, {"experiment", "tracking_uri"})
    return MlflowSpec(str(data.get("experiment", default_experiment)), data.get("tracking_uri"))


def _component(where: str, data: Any, names: tuple[str, ...], default: str) -> dict[str, Any]:
    """A sampler/pruner: {name, **kwargs}; kwargs are checked against the Optuna class's signature."""
    data = {"name": data} if isinstance(data, str) else dict(data or {"name": default})
    name = data.get("name", default)
    if name not in names:
        close = difflib.get_close_matches(str(name), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SweepConfigError(f"{where}.name: {name!r} is not one of {', '.join(names)}{hint}")
    if name != "none":
        accepted = set(inspect.signature(optuna_class(name)).parameters) - {"self"}
        _check_keys(where, data, accepted | {"name"})
    elif set(data) - {"name"}:
        raise SweepConfigError(f"{where}: pruner none takes no options")
    return {**data, "name": name}


def optuna_class(name: str) -> Any:
    import optuna

    return {
        "tpe": optuna.samplers.TPESampler,
        "nsga2": optuna.samplers.NSGAIISampler,
        "random": optuna.samplers.RandomSampler,
        "median": optuna.pruners.MedianPruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "threshold": optuna.pruners.ThresholdPruner,
    }[name]


def _objectives(where: str, data: dict[str, Any]) -> tuple[Objective, ...]:
    if "objectives" in data and ("metric" in data or "direction" in data):
        raise SweepConfigError(f"{where}: give either metric/direction or objectives, not both")
    raw = data.pop("objectives", None)
    if raw is None:
        if "metric" not in data:
            raise SweepConfigError(f"{where}: missing metric (or objectives: [{{metric, direction}}, ...])")
        raw = [{"metric": data.pop("metric"), "direction": data.pop("direction", "maximize")}]
    if not isinstance(raw, list) or not raw:
        raise SweepConfigError(f"{where}.objectives: expected a non-empty list of {{metric, direction}}")
    out = []
    for i, item in enumerate(raw):
        at = f"{where}.objectives[{i}]"
        if not isinstance(item, dict):
            raise SweepConfigError(f"{at}: expected {{metric, direction}}, got {item!r}")
        _check_keys(at, item, {"metric", "direction"}, {"metric"})
        metric = _type(f"{at}.metric", item["metric"], str, "a logged metric name like val/retention")
        if "/" not in metric:
            raise SweepConfigError(f"{at}.metric: {metric!r} is not a logged metric (slash-scoped, e.g. val/acc)")
        direction = item.get("direction", "maximize")
        if direction not in DIRECTIONS:
            raise SweepConfigError(f"{at}.direction: expected maximize or minimize, got {direction!r}")
        out.append(Objective(metric, direction))
    if len({o.metric for o in out}) != len(out):
        raise SweepConfigError(f"{where}.objectives: a metric is listed twice")
    return tuple(out)


SWEEP_KEYS = {
    "kind", "study_name", "storage", "experiment", "train_args", "workdir", "tags", "seed", "n_trials",
    "metric", "direction", "objectives", "sampler", "pruner", "mlflow", "params", "enqueue", "heartbeat_s",
    "stale_after_s",
}  # fmt: skip
ABLATION_KEYS = {
    "kind", "name", "experiment", "train_args", "workdir", "tags", "seeds", "axes", "variants", "reference",
    "mlflow", "metrics", "test_limit", "out",
}  # fmt: skip


def parse_sweep(data: dict[str, Any], source: str = "<sweep>", root: Path = Path(".")) -> SweepSpec:
    where = source
    data = dict(data)
    _check_keys(where, data, SWEEP_KEYS, {"study_name", "experiment", "n_trials", "params"})
    data.pop("kind", None)
    name = _type(f"{where}.study_name", data.pop("study_name"), str, "a study name")
    training = _training(where, data, root, "checkpoints/sweeps")
    n_trials = _type(f"{where}.n_trials", data.pop("n_trials"), int, "a positive integer")
    if n_trials < 1:
        raise SweepConfigError(f"{where}.n_trials: expected a positive integer, got {n_trials}")
    objectives = _objectives(where, data)
    raw_params = data.pop("params")
    if not isinstance(raw_params, dict) or not raw_params:
        raise SweepConfigError(f"{where}.params: expected a non-empty mapping name -> {{path, low, high | choices}}")
    params = {str(k): ParamSpec.parse(f"{where}.params.{k}", str(k), v) for k, v in raw_params.items()}
    paths = [p.path for p in params.values()]
    if len(set(paths)) != len(paths):
        raise SweepConfigError(f"{where}.params: two parameters set the same option")
    sampler = _component(f"{where}.sampler", data.pop("sampler", None), SAMPLERS, "tpe")
    pruner = _component(f"{where}.pruner", data.pop("pruner", None), PRUNERS, "none")
    if len(objectives) > 1 and pruner["name"] != "none":
        raise SweepConfigError(f"{where}.pruner: Optuna prunes single-objective studies only; use pruner: none")
    enqueue = data.pop("enqueue", [])
    if not isinstance(enqueue, list) or not all(isinstance(e, dict) for e in enqueue):
        raise SweepConfigError(f"{where}.enqueue: expected a list of {{param: value}} mappings")
    for i, fixed in enumerate(enqueue):
        _check_keys(f"{where}.enqueue[{i}]", fixed, set(params))
    storage = _type(f"{where}.storage", data.pop("storage", DEFAULT_STORAGE), str, "a storage URL")
    if not storage.startswith(("sqlite:///", "journal://", "postgresql", "mysql")):
        raise SweepConfigError(
            f"{where}.storage: {storage!r} is not sqlite:///file.db, journal:///path/file.journal or a "
            "postgresql:// / mysql:// URL"
        )
    seed = _type(f"{where}.seed", data.pop("seed", 0), int, "an integer")
    heartbeat = _type(f"{where}.heartbeat_s", data.pop("heartbeat_s", 30.0), (int, float), "seconds")
    stale = _type(f"{where}.stale_after_s", data.pop("stale_after_s", 600.0), (int, float), "seconds")
    if not 0 < heartbeat < stale:
        raise SweepConfigError(f"{where}: need 0 < heartbeat_s < stale_after_s")
    spec = SweepSpec(
        source=source,
        study_name=name,
        training=training,
        mlflow=_mlflow(f"{where}.mlflow", data.pop("mlflow", None), "sweeps"),
        n_trials=n_trials,
        objectives=objectives,
        params=params,
        seed=seed,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        enqueue=tuple(enqueue),
        heartbeat_s=float(heartbeat),
        stale_after_s=float(stale),
    )
    assert not data, f"unparsed keys {sorted(data)}"
    return spec


def parse_ablation(data: dict[str, Any], source: str = "<ablation>", root: Path = Path(".")) -> AblationSpec:
    where = source
    data = dict(data)
    _check_keys(where, data, ABLATION_KEYS, {"name", "experiment", "seeds"})
    data.pop("kind", None)
    name = _type(f"{where}.name", data.pop("name"), str, "a grid name")
    training = _training(where, data, root, "checkpoints/ablations")
    seeds = data.pop("seeds")
    if not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds):
        raise SweepConfigError(f"{where}.seeds: expected a non-empty list of integers")
    if len(set(seeds)) != len(seeds):
        raise SweepConfigError(f"{where}.seeds: a seed is listed twice")
    axes, variants = data.pop("axes", None), data.pop("variants", None)
    if (axes is None) == (variants is None):
        raise SweepConfigError(f"{where}: give either axes (their product is the grid) or variants")
    grid: dict[str, dict[str, Any]] = {}
    if axes is not None:
        if not isinstance(axes, dict) or not axes:
            raise SweepConfigError(f"{where}.axes: expected a mapping axis -> {{path, values: {{label: value}}}}")
        levels = []
        for axis, spec in axes.items():
            at = f"{where}.axes.{axis}"
            if not isinstance(spec, dict):
                raise SweepConfigError(f"{at}: expected {{path, values: {{label: value}}}}")
            _check_keys(at, spec, {"path", "values"}, {"path", "values"})
            path = _path_key(f"{at}.path", spec["path"])
            values = spec["values"]
            if not isinstance(values, dict) or not values:
                raise SweepConfigError(f"{at}.values: expected a non-empty mapping label -> value")
            levels.append([(str(label), path, value) for label, value in values.items()])
        for combo in itertools.product(*levels):
            grid["+".join(label for label, _, _ in combo)] = {path: value for _, path, value in combo}
    else:
        if not isinstance(variants, dict) or not variants:
            raise SweepConfigError(f"{where}.variants: expected a mapping name -> {{option path: value}}")
        for variant, overrides in variants.items():
            if not isinstance(overrides, dict):
                raise SweepConfigError(f"{where}.variants.{variant}: expected {{option path: value}}")
            grid[str(variant)] = {_path_key(f"{where}.variants.{variant}", k): v for k, v in overrides.items()}
    reference = data.pop("reference", None)
    if reference is not None and reference not in grid:
        raise SweepConfigError(f"{where}.reference: {reference!r} is not a variant ({', '.join(grid)})")
    metrics = data.pop("metrics", {"retention": "val/retention", "k": "val/k_mean"})
    if not isinstance(metrics, dict) or set(metrics) != {"retention", "k"}:
        raise SweepConfigError(f"{where}.metrics: expected {{retention: <metric>, k: <metric>}}")
    test_limit = _type(f"{where}.test_limit", data.pop("test_limit", 0), int, "a number of test questions")
    out = _type(f"{where}.out", data.pop("out", "reports/ablation_table4"), str, "a report path (no suffix)")
    spec = AblationSpec(
        source=source,
        name=name,
        training=training,
        mlflow=_mlflow(f"{where}.mlflow", data.pop("mlflow", None), name),
        seeds=tuple(seeds),
        variants=grid,
        reference=reference,
        metrics={str(k): str(v) for k, v in metrics.items()},
        test_limit=test_limit,
        out=out,
    )
    assert not data, f"unparsed keys {sorted(data)}"
    return spec


def load_spec(path: str | Path) -> SweepSpec | AblationSpec:
    """Parse a file under `sweeps/`: `kind: ablation` -> AblationSpec, otherwise (`kind: sweep`) SweepSpec."""
    path = Path(path)
    if not path.is_file():
        raise SweepConfigError(f"{path}: no such sweep file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise SweepConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise SweepConfigError(f"{path}: expected a mapping at the top level")
    kind = data.get("kind", "sweep")
    root = path.resolve().parents[1]  # configs are named relative to the project root
    if kind == "ablation":
        return parse_ablation(data, str(path), root)
    if kind == "sweep":
        return parse_sweep(data, str(path), root)
    raise SweepConfigError(f"{path}.kind: expected sweep or ablation, got {kind!r}")
