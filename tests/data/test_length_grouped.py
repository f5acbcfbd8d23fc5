"""LengthGroupedBatchSampler: every index at most once, batches of similar length, seeded, shuffled.

.venv/bin/pytest tests/data/test_length_grouped.py -q
"""

from __future__ import annotations

import pytest
import torch

from steprune.data.length_grouped import LengthGroupedBatchSampler


def _lengths(n: int, seed: int = 0) -> list[int]:
    return torch.randint(10, 300, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize("drop_last", [True, False])
def test_covers_each_index_once_and_len_matches(drop_last: bool) -> None:
    lengths = _lengths(1000)
    sampler = LengthGroupedBatchSampler(lengths, 32, group_batches=4, drop_last=drop_last)
    batches = list(sampler)
    assert len(batches) == len(sampler)
    flat = [i for b in batches for i in b]
    assert len(flat) == len(set(flat))
    if drop_last:
        assert all(len(b) == 32 for b in batches) and len(flat) >= 1000 - 4 * 32
    else:
        assert sorted(flat) == list(range(1000))


def test_batches_pad_less_than_random_batches() -> None:
    lengths = _lengths(3200)
    grouped = list(LengthGroupedBatchSampler(lengths, 32, generator=torch.Generator().manual_seed(1)))
    random = torch.randperm(3200, generator=torch.Generator().manual_seed(1)).view(-1, 32).tolist()

    def padded(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) for b in batches)

    assert padded(grouped) < 0.75 * padded(random)


def test_seeded_and_reshuffled_each_epoch() -> None:
    lengths = _lengths(640)
    a = LengthGroupedBatchSampler(lengths, 16, generator=torch.Generator().manual_seed(3))
    b = LengthGroupedBatchSampler(lengths, 16, generator=torch.Generator().manual_seed(3))
    first = list(a)
    assert first == list(b)
    assert first != list(a), "a second epoch draws new batches"
    order = [max(lengths[i] for i in batch) for batch in first]
    assert order != sorted(order) and order != sorted(order, reverse=True), "batches are shuffled, not sorted"


def test_rejects_empty_batches() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        LengthGroupedBatchSampler([1, 2], 0)
