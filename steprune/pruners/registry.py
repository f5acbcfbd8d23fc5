"""The pruner registry: `@PRUNERS.register("name")` on a class makes it available by name everywhere."""

from __future__ import annotations

from steprune.pruners.contract import Pruner
from steprune.registry import Registry

PRUNERS: Registry[Pruner] = Registry("pruning method")
