"""`steprune eval` / `steprune bench` parse with argparse and check what they can before any work (#21 item 8)."""

from __future__ import annotations

import pytest

from steprune.cli import main


def usage_error(capsys, argv: list[str]) -> str:
    """The stderr of a command that must stop with argparse's usage error (exit status 2)."""
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err


def test_suite_equals_world_is_accepted(capsys, tmp_path):
    err = usage_error(capsys, ["eval", "--suite=world", "--backbone", str(tmp_path / "nope")])
    assert "no base model at" in err and "make base" in err  # the world suite ran its own checks


def test_out_named_world_does_not_pick_the_world_suite(capsys):
    err = usage_error(capsys, ["eval", "--suite", "llava15", "--backbone", "/nonexistent", "--out", "world"])
    assert "--backbone: no model directory at /nonexistent" in err and "not looked up on the Hugging Face Hub" in err


def test_eval_help_lists_both_suites(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["eval", "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "{llava15,world}" in out and "--suite world only" in out and "--weights" in out and "--benchmarks" in out


@pytest.mark.parametrize("spelling", ["--budgets", "--budget"])
@pytest.mark.parametrize("suite", ["world", "llava15"])
def test_eval_budgets_abc_is_a_usage_error(capsys, suite, spelling):
    err = usage_error(capsys, ["eval", "--suite", suite, "--backbone", "tiny-llava", spelling, "abc"])
    assert "argument --budgets/--budget: expected comma-separated whole numbers >= 1 like 192,128,64, got 'abc'" in err


def test_bench_budgets_abc_is_a_usage_error(capsys):
    err = usage_error(capsys, ["bench", "--config", "micro", "--budgets", "4,abc"])
    assert "argument --budgets" in err and "'4,abc'" in err


@pytest.mark.parametrize(("option", "value"), [("--limit", "0"), ("--batch-size", "0"), ("--limit", "-3")])
@pytest.mark.parametrize("suite", ["world", "llava15"])
def test_zero_limit_and_batch_size_are_usage_errors(capsys, suite, option, value):
    err = usage_error(capsys, ["eval", "--suite", suite, "--backbone", "tiny-llava", option, value])
    assert f"argument {option}: must be >= 1, got {value}" in err


@pytest.mark.parametrize("suite", ["world", "llava15"])
def test_unwritable_out_is_found_before_the_evaluation(capsys, tmp_path, suite, micro_world_base):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    backbone = "tiny-llava" if suite == "llava15" else str(micro_world_base)
    err = usage_error(capsys, ["eval", "--suite", suite, "--backbone", backbone, "--out", str(blocker / "out")])
    assert f"--out {blocker / 'out'}" in err and "is a file, so nothing can be created under it" in err


def test_an_option_of_the_other_suite_is_a_usage_error(capsys):
    err = usage_error(capsys, ["eval", "--suite", "llava15", "--backbone", "tiny-llava", "--weights", "x.safetensors"])
    assert "--weights: only for --suite world (this is --suite llava15)" in err


def test_world_seed_must_be_an_int(capsys):
    err = usage_error(capsys, ["eval", "--suite", "world", "--seed", "x"])
    assert "argument --seed: invalid int value: 'x'" in err


@pytest.fixture
def micro_world_base(tmp_path):
    """A saved tiny LLaVA with a build_info.json: enough for the world suite's base checks."""
    import json

    from tests.inputs import write_micro_base

    base = write_micro_base(tmp_path / "base")
    (base / "build_info.json").write_text(json.dumps({"world": {}}))
    return base
