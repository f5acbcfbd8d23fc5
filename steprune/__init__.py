"""steprune: visual-token pruning for multimodal LLMs — StepPrune and the training-free baselines.

import steprune
vlm = steprune.PrunedVLM.from_pretrained(path, method="uniform", budget=64)
"""

from steprune.pruned_vlm import PrunedOutput, PrunedVLM
from steprune.pruners import PRUNERS, PruneContext, PruneResult

__version__ = "0.1.0"
__all__ = ["PRUNERS", "PruneContext", "PruneResult", "PrunedOutput", "PrunedVLM", "__version__"]
