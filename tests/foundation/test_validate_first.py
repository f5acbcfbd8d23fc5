"""`PrunedVLM.from_pretrained` checks its arguments before any weights load (#21 item 7).

The directory given is empty: an argument checked only after loading would fail on the missing config instead.
"""

from __future__ import annotations

import pytest

from steprune import PrunedVLM


@pytest.mark.parametrize(("budget", "error"), [(0, ValueError), (-1, ValueError), (2.5, TypeError)])
def test_bad_budget_before_loading(tmp_path, budget, error):
    with pytest.raises(error, match="budget must be"):
        PrunedVLM.from_pretrained(str(tmp_path), method="uniform", budget=budget)


def test_method_kwarg_typo_lists_the_valid_ones(tmp_path):
    with pytest.raises(
        TypeError, match=r"'fastv' takes no argument\(s\) 'layr'.*'layr' -> 'layer'.*layer, reference_layers"
    ):
        PrunedVLM.from_pretrained(str(tmp_path), method="fastv", budget=4, layr=3)


def test_method_kwarg_typo_in_the_constructor(llava):
    model, processor = llava
    with pytest.raises(TypeError, match=r"Its arguments: layers, decay, ratios, shift_layers"):
        PrunedVLM(model, processor, method="pdrop", budget=4, ratio=(0.5,))


def test_trust_remote_code_is_refused_not_called_a_pruner_kwarg(tmp_path):
    with pytest.raises(ValueError, match=r"trust_remote_code=True is not supported.*never runs code from the Hub"):
        PrunedVLM.from_pretrained(str(tmp_path), method="uniform", budget=4, trust_remote_code=True)


def test_unknown_method_before_loading(tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'fastv'"):
        PrunedVLM.from_pretrained(str(tmp_path), method="fasttv", budget=4)


def test_trust_remote_code_false_is_what_happens_anyway(tmp_path):
    from tests.inputs import write_micro_base

    vlm = PrunedVLM.from_pretrained(
        str(write_micro_base(tmp_path / "m")), method="uniform", budget=4, trust_remote_code=False
    )
    assert vlm.budget == 4
