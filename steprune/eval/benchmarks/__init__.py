"""The standard image benchmarks of the paper's Table 1, as lmms-eval runs them: loaders, prompts, metrics.

    from steprune.eval.benchmarks import BENCHMARKS, get_benchmark
    bench = get_benchmark("mme")                       # names: see BENCHMARKS (did-you-mean on a typo)
    records = bench.load(limit=20)                     # or source="/data/MME" / a Hub id
    metric = bench.metric()
    metric.update(predictions, batch_of_records); metric.compute()["score"]

`steprune.eval.suite.run_suite` runs a whole suite on a `PrunedVLM`. Each module's docstring says which
dataset id / config / split / columns it reads, the prompt, and the metric with its source.
"""

from __future__ import annotations

import difflib

from steprune.eval.benchmarks.base import (
    ORGS,
    Benchmark,
    BenchmarkDataError,
    MeanScore,
    Record,
    Records,
    find_in_data_dir,
)
from steprune.eval.benchmarks.gqa import GQA
from steprune.eval.benchmarks.mmbench import MMBENCH_CN, MMBENCH_EN, CircularAccuracy
from steprune.eval.benchmarks.mme import MME, MMEScore
from steprune.eval.benchmarks.pope import POPE, POPEScore
from steprune.eval.benchmarks.scienceqa import SCIENCEQA_IMG
from steprune.eval.benchmarks.textvqa import TEXTVQA, TEXTVQA_OCR
from steprune.eval.benchmarks.vqav2 import VQAV2

BENCHMARKS: dict[str, Benchmark] = {
    b.name: b for b in (GQA, MMBENCH_EN, MMBENCH_CN, MME, POPE, SCIENCEQA_IMG, VQAV2, TEXTVQA, TEXTVQA_OCR)
}
ALIASES = {
    "mmb": "mmbench_en",
    "mmbench": "mmbench_en",
    "mmb_cn": "mmbench_cn",
    "sqa": "scienceqa_img",
    "scienceqa": "scienceqa_img",
    "vqa": "vqav2",
    "vqa_text": "textvqa",
}


def get_benchmark(name: str) -> Benchmark:
    """The benchmark called `name` (or an alias: mmb, mmb_cn, sqa, ...); a typo raises with suggestions."""
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key in BENCHMARKS:
        return BENCHMARKS[key]
    close = difflib.get_close_matches(key, [*BENCHMARKS, *ALIASES], n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise ValueError(f"unknown benchmark {name!r}.{hint} Known: {', '.join(BENCHMARKS)}.")


__all__ = [
    "ALIASES",
    "BENCHMARKS",
    "ORGS",
    "Benchmark",
    "BenchmarkDataError",
    "CircularAccuracy",
    "MMEScore",
    "MeanScore",
    "POPEScore",
    "Record",
    "Records",
    "find_in_data_dir",
    "get_benchmark",
]
