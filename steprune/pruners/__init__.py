"""Every token-selection method, registered by name behind the one `Pruner` contract.

from steprune.pruners import PRUNERS
PRUNERS.names()                      # ['identity', 'pool', 'random', 'uniform', ...]
pruner = PRUNERS.create("random", seed=1)
"""

from __future__ import annotations

import importlib
import pkgutil

from steprune.pruners.contract import (
    LayerDrop,
    PrePrunerBase,
    PruneContext,
    Pruner,
    PruneResult,
    check_budget,
)
from steprune.pruners.registry import PRUNERS

_INFRASTRUCTURE = {"contract", "registry"}
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in _INFRASTRUCTURE and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["PRUNERS", "LayerDrop", "PrePrunerBase", "PruneContext", "PruneResult", "Pruner", "check_budget"]
