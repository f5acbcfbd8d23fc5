"""The coverage prior: MMTok's greedy when the pointer's own logits are flat, gradients to its weights, the file
format, clear errors, the pruner and a micro fit."""

from __future__ import annotations

import pytest
import torch

from steprune.data.collate import InstructCollator
from steprune.pruners.mmtok import default_coverage_t, greedy_max_coverage_t
from steprune.selector.coverage_prior import CoveragePrior
from steprune.selector.selector import StepPruneSelector
from steprune.training.stepprune_module import StepPruneModule
from tests.training.test_stepprune_module import backbone, cpu_trainer, loaders, records  # noqa: F401 (fixture)


def tiny(prior: str = "coverage", t_max: int | None = 8, seed: int = 0) -> StepPruneSelector:
    torch.manual_seed(seed)
    return StepPruneSelector(32, 48, 32, 1, 4, decoder_layers=1, decoder_heads=4, prior=prior, t_max=t_max).eval()


def inputs(b: int = 3, n: int = 20, seed: int = 1) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    vision, tokens = torch.randn(b, n, 32, generator=g), torch.randn(b, n, 48, generator=g)
    text, mask = torch.randn(b, 5, 48, generator=g), torch.ones(b, 5, dtype=torch.bool)
    mask[0, :2] = False  # a left-padded prompt
    return vision, tokens, text, mask


def picked(selection) -> list[list[int]]:
    return [row[m].tolist() for row, m in zip(selection.keep, selection.keep_mask, strict=True)]


def test_untrained_the_prior_selector_is_mmtoks_greedy():
    vision, tokens, text, mask = inputs()
    selector = tiny(t_max=7)
    assert not bool(selector.decoder.pointer_q.weight.any())  # W_q starts at 0: u_t = 0 for every token and STOP
    assert bool(tiny(prior="none").decoder.pointer_q.weight.any())  # the paper's init is untouched without it
    cover = default_coverage_t(tokens, vision, text, mask)
    ours = selector.select(vision, text, mask, cover=cover, min_k=7)  # STOP masked for all 7 steps
    greedy = greedy_max_coverage_t(cover, 7)[0].sort(dim=1).values
    assert picked(ours) == greedy.tolist()


def test_the_stop_term_grows_as_coverage_saturates_and_is_zero_at_the_first_step():
    _, tokens, text, mask = inputs(b=2)
    cover = default_coverage_t(tokens, tokens[..., :32], text, mask)  # (B, N, R)
    prior = CoveragePrior(token_weight=1.0, stop_weight=1.0)
    covered = cover.new_zeros(2, cover.shape[2])
    first, stops = None, []
    for _ in range(6):
        logits, first = prior.logits(cover, covered, first)
        stops.append(logits[:, -1])
        fed = logits[:, :-1].argmax(dim=1)
        assert torch.allclose(logits[torch.arange(2), fed], torch.zeros(2), atol=1e-5)  # best token: log(1 + eps)
        covered = CoveragePrior.update(cover, covered, fed)
    stops = torch.stack(stops, dim=1)  # (B, 6)
    assert torch.equal(stops[:, 0], torch.zeros(2))
    assert bool((stops[:, 1:] >= stops[:, :-1]).all()) and bool((stops[:, -1] > 0).all())


def test_the_absolute_stop_stops_where_the_greedy_gain_first_falls_below_exp_offset():
    """prior_stop="absolute": STOP's logit is -w_stop * log(max gain) + offset against the best token's ~0, so the
    untrained selector keeps MMTok's greedy prefix up to the first step whose best gain is below exp(offset)."""
    vision, tokens, text, mask = inputs(b=4, n=24)
    torch.manual_seed(0)
    selector = StepPruneSelector(
        32, 48, 32, 1, 4, decoder_layers=1, decoder_heads=4, prior="coverage", prior_stop="absolute", t_max=16
    ).eval()
    assert selector.decoder.prior.stop == "absolute" and selector.config["prior_stop"] == "absolute"
    cover = default_coverage_t(tokens, vision, text, mask)
    picks = greedy_max_coverage_t(cover, 16)[0]  # (B, 16) in pick order
    best, gains = cover.new_zeros(4, cover.shape[2]), []
    for t in range(16):  # the greedy's best gain before each pick
        gains.append(CoveragePrior.gains(cover, best).max(dim=1).values)
        best = CoveragePrior.update(cover, best, picks[:, t])
    gains = torch.stack(gains, dim=1)  # (B, 16), non-increasing
    threshold = float(gains[:, 5:9].median())  # between the 6th and 9th gains: different K across samples
    ks = (gains >= threshold).sum(dim=1).clamp_min(1)  # min_k 1
    assert ks.unique().numel() > 1
    ours = selector.select(vision, text, mask, cover=cover, stop_offset=float(torch.tensor(threshold).log()) - 1e-4)
    assert ours.lengths.tolist() == ks.tolist()
    expected = [sorted(row[:k].tolist()) for row, k in zip(picks, ks.tolist(), strict=True)]
    assert picked(ours) == expected
    with pytest.raises(ValueError, match="prior_stop must be one of"):
        StepPruneSelector(32, 48, prior="coverage", prior_stop="relative")


def test_the_loss_reaches_both_prior_weights_through_the_removal_path():
    vision, tokens, text, mask = inputs()
    selector = StepPruneSelector(32, 48, 32, 1, 4, decoder_layers=1, decoder_heads=4, prior="coverage")
    selector.surrogate = "removal"
    out = selector.forward_train(vision, text, mask, cover=default_coverage_t(tokens, vision, text, mask))
    (out["keep"].sum() + out["expected_length"].sum()).backward()
    prior = selector.decoder.prior
    for weight in (prior.token_weight, prior.stop_weight):
        assert weight.grad is not None and torch.isfinite(weight.grad) and weight.grad != 0


def test_a_saved_prior_selector_loads_with_its_weights_and_picks(tmp_path):
    vision, tokens, text, mask = inputs()
    selector = tiny()
    selector.decoder.prior.token_weight.data.fill_(2.5)
    torch.nn.init.normal_(selector.decoder.pointer_q.weight)
    cover = default_coverage_t(tokens, vision, text, mask)
    selector.save(tmp_path / "s.safetensors")
    loaded = StepPruneSelector.load(tmp_path / "s.safetensors")
    assert loaded.prior == "coverage" and float(loaded.decoder.prior.token_weight.detach()) == 2.5
    ours, theirs = (s.select(vision, text, mask, cover=cover) for s in (loaded, selector))
    assert picked(ours) == picked(theirs)
    assert tiny(prior="none").decoder.prior is None  # a selector without the prior has no extra weights


def test_bad_prior_inputs_are_refused_clearly():
    vision, tokens, text, mask = inputs()
    with pytest.raises(ValueError, match="prior must be one of"):
        tiny(prior="covrage")
    with pytest.raises(ValueError, match="needs `cover`"):
        tiny().select(vision, text, mask)
    with pytest.raises(ValueError, match="needs `cover`"):
        tiny(prior="none").select(vision, text, mask, cover=default_coverage_t(tokens, vision, text, mask))
    with pytest.raises(ValueError, match="coverage matrix"):
        tiny().select(vision, text, mask, cover=default_coverage_t(tokens, vision, text, mask)[:, :10])


def test_the_pruner_gives_the_selector_the_contexts_coverage(backbone):  # noqa: F811
    module = StepPruneModule(backbone, surrogate="removal", prior="coverage", t_max=6)
    module.selector.eval()
    batch = InstructCollator(module.processor, "eval")(records(3))
    inputs_ = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    vlm = module.pruned_vlm()
    result = vlm.prepare(**inputs_).result
    vision = module.adapter.encode_images(pixel_values=batch["pixel_values"])
    ctx = vlm.context(batch["input_ids"], batch["attention_mask"], vision)
    cover = default_coverage_t(ctx.image_tokens, ctx.vision_features, ctx.text_embeds, ctx.text_mask)
    direct = module.selector.select(ctx.vision_features, ctx.text_embeds, ctx.text_mask, cover=cover)
    assert picked(direct) == [row[m].tolist() for row, m in zip(result.keep, result.keep_mask, strict=True)]
    plain = StepPruneSelector(**{**module.selector.config, "prior": "none"})
    assert module.selector.flops(16, 5, 4) > plain.flops(16, 5, 4)  # the coverage matrix and the gains are counted


def test_a_micro_fit_with_the_prior_trains_its_weights(backbone, tmp_path):  # noqa: F811
    train, val = loaders(backbone)
    torch.manual_seed(0)
    module = StepPruneModule(backbone, t_max=4, lr=3e-3, warmup_steps=1, surrogate="removal", kd=1.0, prior="coverage")
    before = module.selector.decoder.prior.token_weight.detach().clone()
    cpu_trainer(3, [], tmp_path).fit(module, train, val)
    assert not torch.equal(module.selector.decoder.prior.token_weight.detach(), before)
