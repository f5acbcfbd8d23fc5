"""Peak memory of one call: the most tensor bytes it holds at once, above what was live when it started.

    peak = peak_bytes(lambda: pruner.select(ctx), device="cpu")     # bytes

On CUDA this is the caching allocator's own count (`torch.cuda.max_memory_allocated` after
`reset_peak_memory_stats`, minus what was allocated before). On a CPU torch keeps no such count (tracemalloc
does not see torch's allocator; RSS counts pages the allocator keeps after a free and misses short peaks), so
`TensorBytes`, a `TorchDispatchMode` for the duration of the call, counts every storage an op creates (outputs
sharing an input's storage — views, in-place ops — are not new) and forgets it when the storage is freed (a
weakref finalizer on the storage object, which torch keeps alive exactly as long as the storage): the peak of that
live sum is the call's peak tensor memory. Workspace an aten kernel allocates and frees inside itself is not
seen; composite ops reach the mode decomposed, so their temporaries are.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class TensorBytes(TorchDispatchMode):
    """Live and peak bytes of the storages created while the mode is active (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, int] = {}

    def _free(self, key: int) -> None:
        self.live -= self._sizes.pop(key, 0)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        inputs = {t.untyped_storage()._cdata for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self._sizes:
                continue
            self._sizes[key] = storage.nbytes()
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key)
        return out


def peak_bytes(call: Callable[[], Any], device: str | torch.device = "cpu") -> int:
    """The peak tensor bytes `call()` holds above what was live before it (its result included while it lives)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        call()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    mode = TensorBytes()
    with mode:
        call()
    return mode.peak
