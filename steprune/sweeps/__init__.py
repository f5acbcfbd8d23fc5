"""Optuna sweeps and ablation grids of StepPrune, tracked in MLflow (issue 6).

    steprune sweep --config sweeps/stepprune_lambda_gamma_tau.yaml      # make sweep SWEEP=sweeps/...yaml
    steprune ablate --config sweeps/ablation_table4.yaml                 # make ablate

spec.py      the sweep / ablation files as validated data      study.py     Optuna storage, resume, workers
tracking.py  MLflow parent + nested runs, comparison tags      train.py     one `steprune train fit` run
callbacks.py Optuna pruning + validation K (Lightning)         figures.py   retention vs K, K histogram, bars
runner.py    the sweep loop (`steprune sweep`)                 ablation.py  the grid x seeds (`steprune ablate`)
"""

from steprune.sweeps.spec import AblationSpec, SweepConfigError, SweepSpec, load_spec

__all__ = ["AblationSpec", "SweepConfigError", "SweepSpec", "load_spec"]
