"""`steprune sweep` / `make sweep SWEEP=...`: an Optuna study over StepPrune's hyper-parameters, tracked in MLflow.

    steprune sweep --config sweeps/stepprune_lambda_gamma_tau.yaml             # runs / resumes the study
    steprune sweep --config sweeps/x.yaml --trainer.max_steps=50               # extra training overrides
    steprune sweep --config sweeps/x.yaml --storage journal:///shared/x.journal --worker 1   # one more worker

Each trial trains StepPrune in-process (`steprune.sweeps.train`) with the sampled values, into an MLflow
run nested under the study's parent run (params, per-validation metrics, final metrics, a K histogram),
reports the monitored `val/` metric to Optuna after each validation (pruning), and is told to the study
as COMPLETE, PRUNED or FAIL (the error kept as the trial's `error` user attr; the sweep goes on).

Resuming: the study lives in its own storage (default `sqlite:///optuna.db`, never the MLflow database)
and is loaded when it exists. The same command again runs only what is missing: COMPLETE + PRUNED + FAIL
trials count toward `n_trials`; a trial left RUNNING by a killed worker is marked FAIL ("killed", not
counted) and its parameters are re-queued. Several workers may share one storage (a journal file on a
shared disk, or PostgreSQL); each claims a place before training, so together they run exactly n_trials.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from steprune.eval.report_figures import k_histogram, retention_vs_k
from steprune.sweeps.callbacks import OptunaPruning, ValidationK
from steprune.sweeps.spec import SweepConfigError, SweepSpec, load_spec
from steprune.sweeps.study import (
    HOST,
    Heartbeat,
    counts,
    is_stale,
    make_sampler,
    open_storage,
    open_study,
    public_storage_url,
    rank,
    recover_stale,
    requeue,
)
from steprune.sweeps.tracking import Tracker
from steprune.sweeps.train import TrainRequest, check_args, train_run
from steprune.training.stepprune_module import VALIDATION_METRICS

log = logging.getLogger("steprune.sweeps")
RETENTION, K_MEAN = "val/retention", "val/k_mean"


def check_objectives(spec: SweepSpec) -> None:
    """Every objective names a metric StepPruneModule logs at validation (a typo must not use up the study)."""
    for objective in spec.objectives:
        if objective.metric not in VALIDATION_METRICS:
            close = difflib.get_close_matches(objective.metric, VALIDATION_METRICS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise SweepConfigError(
                f"{spec.source}: objective metric {objective.metric!r} is never logged by StepPruneModule at "
                f"validation, so no trial could report it.{hint} It logs: {', '.join(VALIDATION_METRICS)}"
            )


def check_sweep(spec: SweepSpec, extra_args: Sequence[str] = ()) -> None:
    """Check the objectives and parse the trials' command line (the first value of every parameter) before any
    trial is claimed."""
    check_objectives(spec)
    first = {p.path: p.choices[0] if p.type == "categorical" else p.low for p in spec.params.values()}
    request = TrainRequest(
        configs=spec.training.experiment,
        overrides=first,
        seed=spec.seed,
        run_id="0" * 32,
        tracking_uri="sqlite:///unused.db",
        experiment=spec.mlflow.experiment,
        workdir=Path(spec.training.workdir),
        extra_args=[*spec.training.train_args, *extra_args],
    )
    try:
        check_args(request)
    except ValueError as error:
        raise SweepConfigError(f"{spec.source}: {error}") from error


class Sweep:
    """One worker of a study: open (or resume) it, run trials until n_trials are claimed, summarise."""

    def __init__(self, spec: SweepSpec, storage_url: str | None = None, worker: int = 0) -> None:
        self.spec, self.worker = spec, worker
        self.url = storage_url or spec.storage
        self.storage = open_storage(self.url)
        self.study = open_study(spec, self.storage)
        self.study_id = self.storage.get_study_id_from_name(spec.study_name)
        self.tracker = Tracker(spec.mlflow.tracking_uri, spec.mlflow.experiment)
        key = {"sweep.study": spec.study_name, "sweep.storage": public_storage_url(self.url)}
        self.parent = self.tracker.parent_run(
            key,
            spec.study_name,
            tags={
                "method": "stepprune",
                "budget": "adaptive",
                "seed": str(spec.seed),
                "variant": "sweep",
                "sweep.file": spec.source,
                "sweep.objectives": ", ".join(f"{o.metric} ({o.direction})" for o in spec.objectives),
                "sweep.sampler": str(spec.sampler),
                "sweep.pruner": str(spec.pruner),
                **spec.training.tags,
            },
        )
        if "mlflow" not in self.study.user_attrs:
            self.study.set_user_attr(
                "mlflow",
                {"tracking_uri": self.tracker.uri, "experiment": spec.mlflow.experiment, "parent_run_id": self.parent},
            )
        self.single = not spec.multi_objective
        self.prunes = self.single and spec.pruner["name"] != "none"

    def trial_id(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    # -- the loop ------------------------------------------------------------------------------------
    def claimed(self) -> int:
        trials = self.study.get_trials(deepcopy=False)
        live = [t for t in trials if t.state == TrialState.RUNNING and not is_stale(t, self.spec.stale_after_s)]
        return sum(counts(t) for t in trials) + len(live)

    def run(self, max_trials: int | None = None, extra_args: Sequence[str] = ()) -> dict[str, Any]:
        """Run trials until the study holds n_trials (or `max_trials` ran here); call `check_sweep` first."""
        recovered = recover_stale(self.study, self.storage, self.spec.stale_after_s)
        if recovered:
            log.warning("trials %s were left RUNNING by a stopped worker: marked FAIL and re-queued", recovered)
        for number in recovered:  # their MLflow runs stopped with their worker
            run_id = self.storage.get_trial(self.trial_id(number)).user_attrs.get("mlflow_run_id")
            if run_id is not None:
                self.tracker.client.set_tag(run_id, "optuna.state", "FAIL (killed, re-queued)")
                self.tracker.finish(run_id, "KILLED")
        ran = 0
        while (max_trials is None or ran < max_trials) and self.claimed() < self.spec.n_trials:
            # reseed per ask: a resumed run or a second worker does not replay the same random start-up points
            offset = len(self.study.get_trials(deepcopy=False)) + 1000 * self.worker
            self.study.sampler = make_sampler(self.spec.sampler, offset)
            trial = self.study.ask()
            try:
                params = {name: p.suggest(trial) for name, p in self.spec.params.items()}
            except Exception as error:  # e.g. an enqueued value outside a log-scale range
                params = None
                reason = f"{type(error).__name__} while sampling the parameters: {error}"
            if rank(self.study, trial.number) > self.spec.n_trials:  # another worker took the last place
                frozen = self.storage.get_trial(self.trial_id(trial.number))
                again = any(k in frozen.user_attrs for k in ("enqueued", "retry_of"))
                requeue(self.study, self.storage, frozen, "surplus: n_trials already claimed", enqueue_again=again)
                break
            if params is None:
                trial.set_user_attr("error", reason)
                self.study.tell(trial, state=TrialState.FAIL)
                log.warning("trial %d FAILED: %s", trial.number, reason)
            else:
                self.run_trial(trial, params, extra_args)
            ran += 1
            self.update_parent()
        summary = self.update_parent()
        summary.update(ran=ran, recovered=recovered)
        return summary

    def run_trial(self, trial: optuna.Trial, params: dict[str, Any], extra_args: Sequence[str]) -> None:
        spec = self.spec
        trial_id = self.trial_id(trial.number)
        trial.set_user_attr("worker", {"host": HOST, "pid": os.getpid(), "index": self.worker})
        with Heartbeat(self.storage, trial_id, spec.heartbeat_s):
            overrides = {spec.params[name].path: value for name, value in params.items()}
            tags = {
                "method": "stepprune",
                "budget": "adaptive",
                "seed": str(spec.seed),
                "variant": f"trial-{trial.number}",
                "sweep.study": spec.study_name,
                "sweep.trial": str(trial.number),
                "sweep.role": "trial",
                **spec.training.tags,
            }
            if "retry_of" in trial.user_attrs:
                tags["sweep.retry_of"] = str(trial.user_attrs["retry_of"])
            run_id = self.tracker.child_run(self.parent, f"{spec.study_name}-trial-{trial.number}", tags, overrides)
            trial.set_user_attr("mlflow_run_id", run_id)
            pruning = OptunaPruning(trial, spec.objectives[0].metric) if self.prunes else None
            ks = ValidationK()
            request = TrainRequest(
                configs=spec.training.experiment,
                overrides=overrides,
                seed=spec.seed,
                run_id=run_id,
                tracking_uri=self.tracker.uri,
                experiment=spec.mlflow.experiment,
                workdir=Path(spec.training.workdir) / spec.study_name / f"trial-{trial.number:04d}",
                extra_args=[*spec.training.train_args, *extra_args],
                callbacks=[c for c in (pruning, ks) if c is not None],
            )
            try:
                result = train_run(request)
                missing = [o.metric for o in spec.objectives if o.metric not in result.metrics]
                if missing:
                    raise KeyError(f"objective metric(s) {missing} were never logged (no validation ran?)")
                values = [result.metrics[o.metric] for o in spec.objectives]
                self.tracker.log_final(run_id, result.metrics, fallback_step=result.global_step)
                trial.set_user_attr("metrics", {k: v for k, v in result.metrics.items() if k.startswith("val/")})
                if ks.ks:
                    fig = k_histogram(ks.ks, f"{spec.study_name} trial {trial.number}: K on the validation set")
                    self.tracker.client.log_figure(run_id, fig, "figures/k_histogram.png")
                if pruning is not None and pruning.pruned:
                    self.study.tell(trial, state=TrialState.PRUNED)
                else:
                    self.study.tell(trial, values if not self.single else values[0])
                state = self.storage.get_trial(trial_id).state.name
                self.tracker.client.set_tag(run_id, "optuna.state", state)
                self.tracker.finish(run_id, "FINISHED")
                log.info("trial %d %s: %s -> %s", trial.number, state, params, values)
            except Exception as error:  # the trial fails alone; the sweep goes on
                message = f"{type(error).__name__}: {error}"
                trial.set_user_attr("error", message[:4000])
                trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
                self.study.tell(trial, state=TrialState.FAIL)
                self.tracker.client.set_tag(run_id, "optuna.state", "FAIL")
                self.tracker.client.set_tag(run_id, "error", message[:4000])
                self.tracker.finish(run_id, "FAILED")
                log.warning("trial %d FAILED: %s", trial.number, message)
            except BaseException:  # Ctrl-C / SystemExit: give the place back, keep the parameters
                frozen = self.storage.get_trial(trial_id)
                requeue(self.study, self.storage, frozen, "killed: interrupted; re-queued")
                self.tracker.finish(run_id, "KILLED")
                raise

    # -- the parent run: counts, best values, retention vs K --------------------------------------------
    def update_parent(self) -> dict[str, Any]:
        trials = self.study.get_trials(deepcopy=False)
        counted = [t for t in trials if counts(t)]
        metrics = {"trials/counted": len(counted)}
        for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
            metrics[f"trials/{state.name.lower()}"] = sum(t.state == state for t in counted)
        complete = [t for t in trials if t.state == TrialState.COMPLETE]
        if complete and self.single:
            metrics[f"best/{self.spec.objectives[0].metric.split('/', 1)[1]}"] = self.study.best_value
        self.tracker.log_metrics(self.parent, metrics, step=len(counted))
        points = [
            (t.user_attrs["metrics"][K_MEAN], t.user_attrs["metrics"][RETENTION], t.number)
            for t in complete
            if {K_MEAN, RETENTION} <= set(t.user_attrs.get("metrics", {}))
        ]
        if points:
            fig = retention_vs_k(points, f"{self.spec.study_name}: retention vs mean K")
            self.tracker.client.log_figure(self.parent, fig, "figures/retention_vs_k.png")
        running = [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
        done = len(counted) >= self.spec.n_trials and not any(t.state == TrialState.RUNNING for t in running)
        if done:
            self.tracker.finish(self.parent, "FINISHED")
        return {
            "study": self.spec.study_name,
            "storage": public_storage_url(self.url),
            "parent_run_id": self.parent,
            "done": done,
            **{k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("trials/")},
        }


def print_trials(study: optuna.Study) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"study {study.study_name}")
    for column in ("#", "state", "values", "params", "note"):
        table.add_column(column)
    for t in study.get_trials(deepcopy=False):
        values = ", ".join(f"{v:.4g}" for v in t.values) if t.values else "-"
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        note = t.user_attrs.get("error", "")[:60]
        table.add_row(str(t.number), t.state.name, values, params, note)
    Console().print(table)


def run_sweep(
    config: str | Path | SweepSpec,
    storage: str | None = None,
    worker: int = 0,
    max_trials: int | None = None,
    extra_args: Sequence[str] = (),
) -> dict[str, Any]:
    spec = config if isinstance(config, SweepSpec) else load_spec(config)
    if not isinstance(spec, SweepSpec):
        raise SweepConfigError(f"{config}: an ablation grid; run it with `steprune ablate --config {config}`")
    check_sweep(spec, extra_args)
    return Sweep(spec, storage, worker).run(max_trials, extra_args)


def sweep_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="steprune sweep",
        description=__doc__.splitlines()[0],
        epilog="Any other --option goes to every trial's `steprune train fit` (e.g. --trainer.max_steps=50).",
    )
    parser.add_argument("--config", required=True, help="a sweep file under sweeps/")
    parser.add_argument("--storage", default=None, help="override the file's Optuna storage URL")
    parser.add_argument("--worker", type=int, default=0, help="this worker's index (offsets the sampler seed)")
    parser.add_argument("--max-trials", type=int, default=None, help="run at most this many trials in this process")
    args, train_args = parser.parse_known_args(argv)  # the rest goes to every trial's `steprune train fit`
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        spec = load_spec(args.config)
        if not isinstance(spec, SweepSpec):
            parser.error(f"{args.config} is an ablation grid: run `steprune ablate --config {args.config}`")
        check_sweep(spec, train_args)  # before any storage, study or MLflow run is touched
        sweep = Sweep(spec, args.storage, args.worker)
        summary = sweep.run(args.max_trials, train_args)
    except SweepConfigError as error:
        parser.error(str(error))
    print_trials(sweep.study)
    print(summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(sweep_main())
