"""`world_eval.spearman` (torchmetrics' Spearman) against scipy's exact one, with ties and constant inputs."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from steprune.eval.world_eval import spearman


def test_spearman_matches_scipy_with_ties():
    rng = np.random.default_rng(0)
    for n in (3, 7, 40, 500):
        objects = rng.integers(1, 7, n)  # object counts: many ties, as on the world
        ks = objects * 2 + rng.integers(0, 9, n)  # K: correlated, with its own ties
        assert spearman(objects.tolist(), ks.tolist()) == pytest.approx(spearmanr(objects, ks).statistic, abs=1e-5)
        assert spearman(objects.tolist(), (-ks).tolist()) == pytest.approx(-spearmanr(objects, ks).statistic, abs=1e-5)


def test_spearman_is_zero_when_a_side_is_constant():
    assert spearman([3, 3, 3, 3], [1, 2, 3, 4]) == 0.0  # scipy: NaN with a warning; a report wants a number
