"""Shuffled batches of similar length: fewer pad tokens per batch (the idea of HF's `group_by_length`).

A random permutation is cut into groups of `group_batches` batches; each group is sorted by length and cut
into batches; the batches are then shuffled. Every epoch differs (the generator advances), the same generator
seed gives the same batches, and each index appears at most once per epoch.

    sampler = LengthGroupedBatchSampler(lengths, batch_size=32, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices grouped by `lengths` (any per-item size: tokens, characters)."""

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        group_batches: int = 50,
        drop_last: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        if batch_size < 1 or group_batches < 1:
            raise ValueError(f"batch_size and group_batches must be >= 1, got {batch_size}, {group_batches}")
        self.lengths, self.batch_size, self.group_batches = list(lengths), batch_size, group_batches
        self.drop_last, self.generator = drop_last, generator

    def __len__(self) -> int:
        n, b = len(self.lengths), self.batch_size
        if not self.drop_last:
            return -(-n // b)
        group = b * self.group_batches
        full, rest = divmod(n, group)  # every full group gives group_batches batches, the rest rest // b
        return full * self.group_batches + rest // b

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(len(self.lengths), generator=self.generator).tolist()
        group = self.batch_size * self.group_batches
        batches: list[list[int]] = []
        for start in range(0, len(order), group):
            members = sorted(order[start : start + group], key=lambda i: self.lengths[i], reverse=True)
            batches += [members[j : j + self.batch_size] for j in range(0, len(members), self.batch_size)]
        if self.drop_last:
            batches = [b for b in batches if len(b) == self.batch_size]
        for k in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[k]
