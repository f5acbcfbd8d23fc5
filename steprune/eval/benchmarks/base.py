"""What every benchmark shares: the record schema, the `Benchmark` description, and loading — from the
Hugging Face Hub (the lmms-eval copies, under their old or new organisation) or from local files.

    from steprune.eval.benchmarks import get_benchmark
    bench = get_benchmark("pope")
    for record in bench.load(limit=30):                      # Hub: lmms-lab-encoder/POPE, then lmms-lab/POPE
        ...
    bench.load(source="/data/POPE")                           # a local copy (see `open_local` for the layouts)
    bench.load(source="my-org/POPE-mirror")                   # any Hub id with the same schema

Loading is lazy (an iterator over records; images decoded one record at a time), so VQAv2's 214k
validation questions never sit in memory. The Hub is read in streaming mode by default: `limit=N`
fetches only what the first N questions need.

Hub ids. lmms-eval's datasets lived under `lmms-lab/`; in 2026 (EvolvingLMMs-Lab/lmms-eval PR #1416,
"migrate dataset paths to new orgs") the image/text ones moved to `lmms-lab-encoder/` (old paths still
redirect). `Benchmark.hub_ids()` tries the new organisation first, then the old one; `source=` (or
`--data-dir`) overrides both.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import PIL.Image
import torch
from torchmetrics import Metric

ORGS = ("lmms-lab-encoder", "lmms-lab")  # tried in this order: the 2026 organisation, then the original

SHORT_ANSWER = "Answer the question using a single word or phrase."
OPTION_LETTER = "Answer with the option's letter from the given choices directly."


class BenchmarkDataError(FileNotFoundError):
    """A benchmark's dataset, config or split could not be found; the message says where to point the loader."""


@dataclass(frozen=True)
class Record:
    """One question as the model is asked it, in the same schema for every benchmark."""

    id: str  # unique within the benchmark (MMBench: "<index>/r<rotation>")
    image: PIL.Image.Image  # RGB
    question: str  # the question as the dataset writes it
    prompt: str  # the user text sent with the image: question (+ hint, options) + the standard suffix
    answers: tuple[str, ...]  # references: VQA's 10 human answers, GQA's answer, "yes"/"no", an option letter
    options: dict[str, str] | None = None  # letter -> option text, for multiple-choice benchmarks
    metadata: dict[str, Any] = field(default_factory=dict)  # split/category/subtask/group ids, for the metric


ImageDecoder = Callable[[Any], PIL.Image.Image]
Converter = Callable[[dict, ImageDecoder], Iterable[Record]]


def decode_image(value: Any, base_dir: Path | None = None) -> PIL.Image.Image:
    """An RGB PIL image from whatever a dataset column holds: PIL, {'bytes', 'path'}, or a file path."""
    if isinstance(value, PIL.Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict):
        if value.get("bytes"):
            return PIL.Image.open(io.BytesIO(value["bytes"])).convert("RGB")
        value = value.get("path")
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_absolute() and base_dir is not None:
            path = next((p for p in (base_dir / path, base_dir / "images" / path) if p.exists()), base_dir / path)
        if not path.exists():
            raise BenchmarkDataError(f"image file {path} does not exist")
        return PIL.Image.open(path).convert("RGB")
    raise BenchmarkDataError(f"cannot read an image from a {type(value).__name__} ({value!r:.80})")


def is_missing(value: Any) -> bool:
    """None, NaN, '' and the string 'nan' (pandas round-trips) all mean "no value"."""
    if value is None:
        return True
    if isinstance(value, float):
        return value != value
    return isinstance(value, str) and value.strip().lower() in {"", "nan", "none"}


def local_help(name: str, dataset: str) -> str:
    return (
        f"Point the loader at local files instead: `source=/path/to/{dataset}` in Python, or "
        f"`--data-dir DIR` with the files in DIR/{name} or DIR/{dataset}. The directory may hold a "
        "`save_to_disk` dataset or dataset dict, `<split>.parquet` / `<split>.jsonl` (image columns as bytes "
        "or paths relative to the directory), or a Hub snapshot (`[<config>/]<split>-*.parquet`, "
        f"e.g. `huggingface-cli download lmms-lab/{dataset} --repo-type dataset --local-dir DIR/{dataset}`)."
    )


def _looks_like_hub_id(source: str) -> bool:
    return source.count("/") == 1 and not source.startswith((".", "/", "~")) and "\\" not in source


@dataclass(frozen=True)
class Benchmark:
    """One benchmark: where its data lives, how a dataset row becomes records, and how records are scored."""

    name: str  # registry key, e.g. "mmbench_cn"
    title: str  # the column header in the paper's Table 1, e.g. "MMB-CN"
    dataset: str  # repository name inside the lmms-eval organisation, e.g. "MMBench"
    config: str | None  # dataset config (subset), e.g. "cn"
    split: str  # the split the field reports, e.g. "dev"
    convert: Converter  # one dataset row -> its records (none to skip a row, several for MMBench's rotations)
    metric: Callable[[], Metric]  # a fresh torchmetrics Metric: update(predictions, records) / compute() -> dict
    max_new_tokens: int = 16
    image_columns: tuple[str, ...] = ("image",)
    doc: str = ""  # one line: split, prompt and metric, with their source

    def hub_ids(self) -> list[str]:
        return [f"{org}/{self.dataset}" for org in ORGS]

    # ------------------------------------------------------------------------------------------------
    def load(
        self, split: str | None = None, source: str | Path | None = None, limit: int | None = None, streaming=True
    ) -> Records:
        """Records of `split` (default: the split the field reports) from the Hub or a local `source`."""
        if limit is not None and limit <= 0:
            raise ValueError(f"limit must be positive, got {limit}")
        split = split or self.split
        rows, base_dir, where, total = self.rows(split, source, streaming)
        rows = self.take(rows, limit)
        total = min(total, limit) if total is not None and limit is not None else (limit or total)

        def decode(value: Any) -> PIL.Image.Image:
            return decode_image(value, base_dir)

        def records() -> Iterator[Record]:
            for position, row in enumerate(rows):
                yield from self.convert({**row, "_row": position}, decode)  # _row: fallback id

        return Records(self, split, where, records(), total)

    def take(self, rows: Iterable[dict], limit: int | None) -> Iterable[dict]:
        """The first `limit` rows (POPE overrides this to stay balanced over its three splits)."""
        return rows if limit is None else itertools.islice(rows, limit)

    def rows(
        self, split: str, source: str | Path | None, streaming: bool, config: str | None = None
    ) -> tuple[Iterable[dict], Path | None, str, int | None]:
        """(rows with undecoded images, base dir for relative image paths, where they come from, row count)."""
        config = config if config is not None else self.config
        if source is not None and (Path(source).expanduser().exists() or not _looks_like_hub_id(str(source))):
            root = Path(source).expanduser()
            if not root.exists():
                raise BenchmarkDataError(
                    f"{self.title}: local path {root} does not exist. {local_help(self.name, self.dataset)}"
                )
            ds, base = open_local(root, config, split, self)
            where = str(root)
        else:
            ids = [str(source)] if source is not None else self.hub_ids()
            ds, where = open_hub(ids, config, split, streaming, self)
            base = None
        ds = self._undecoded(ds)
        return ds, base, where, _num_rows(ds, split)

    def _undecoded(self, ds):
        """Image columns as raw {'bytes', 'path'}: rows skipped by `limit`/filters never decode an image."""
        features = getattr(ds, "features", None) or {}
        for column in self.image_columns:
            if isinstance(features.get(column), datasets.Image) and features[column].decode:
                ds = ds.cast_column(column, datasets.Image(decode=False))
        return ds


class Records:
    """A one-pass iterator over a benchmark's records, with what the progress bar needs."""

    def __init__(self, benchmark: Benchmark, split: str, where: str, records: Iterator[Record], total: int | None):
        self.benchmark = benchmark
        self.split = split
        self.where = where  # Hub id or local path actually used
        self.total_rows = total  # dataset rows (MMBench asks each row once per rotation); None if unknown
        self._records = records

    def __iter__(self) -> Iterator[Record]:
        return self._records


def _num_rows(ds, split: str) -> int | None:
    if isinstance(ds, datasets.Dataset):
        return len(ds)
    info = getattr(ds, "info", None)
    splits = getattr(info, "splits", None) or {}
    return splits[split].num_examples if split in splits and splits[split].num_examples else None


# ----------------------------------------------------------------------------------------------------
def open_hub(ids: Sequence[str], config: str | None, split: str, streaming: bool, bench: Benchmark):
    """The first of `ids` that loads; otherwise one error listing every id tried and why it failed."""
    failures = []
    for repo in ids:
        try:
            return datasets.load_dataset(repo, config, split=split, streaming=streaming), repo
        except Exception as error:  # noqa: BLE001 — any failure (not found, offline, bad split) tries the next id
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            failures.append(f"  - {repo}: {type(error).__name__}: {first[:300]}")
    what = f"split {split!r}" + (f" of config {config!r}" if config else "")
    raise BenchmarkDataError(
        f"{bench.title}: could not load {what} from the Hugging Face Hub. Tried:\n"
        + "\n".join(failures)
        + f"\n{local_help(bench.name, bench.dataset)}"
    )


_LOCAL_PATTERNS = ("{split}.parquet", "{split}-*.parquet", "data/{split}-*.parquet", "{split}.jsonl", "{split}.json")


def open_local(root: Path, config: str | None, split: str, bench: Benchmark):
    """Open `split` from a local copy. Tried in `root/<config>` (when the benchmark has a config), then `root`:

    - a `DatasetDict.save_to_disk` directory (has `dataset_dict.json`): its `split`;
    - a `Dataset.save_to_disk` directory (has `state.json`): taken as the split, whatever its name;
    - `<split>/` holding a saved `Dataset`;
    - `<split>.parquet`, `<split>-*.parquet`, `data/<split>-*.parquet` (Hub snapshot), `<split>.jsonl`, `<split>.json`.
    Returns (dataset, the directory relative image paths are resolved against).
    """
    dirs = [root / config, root] if config else [root]
    dirs = [d for d in dirs if d.is_dir()]
    for d in dirs:
        if (d / "dataset_dict.json").exists():
            dd = datasets.load_from_disk(str(d))
            if split not in dd:
                raise BenchmarkDataError(
                    f"{bench.title}: the local dataset at {d} has no split {split!r} (it has: {sorted(dd)}). "
                    f"Pass `split=` / save the split under that name. {local_help(bench.name, bench.dataset)}"
                )
            return dd[split], d
        if (d / "state.json").exists():
            return datasets.load_from_disk(str(d)), d
        if (d / split / "state.json").exists():
            return datasets.load_from_disk(str(d / split)), d
        for pattern in _LOCAL_PATTERNS:
            files = sorted(d.glob(pattern.format(split=split)))
            if files:
                kind = "parquet" if files[0].suffix == ".parquet" else "json"
                data_files = [str(f) for f in files]
                return datasets.load_dataset(kind, data_files=data_files, split="train", streaming=True), files[
                    0
                ].parent
    looked = ", ".join(str(d) for d in (dirs or [root]))
    what = f"split {split!r}" + (f" (config {config!r})" if config else "")
    raise BenchmarkDataError(f"{bench.title}: no {what} found under {looked}. {local_help(bench.name, bench.dataset)}")


def find_in_data_dir(data_dir: str | Path, bench: Benchmark) -> Path:
    """`data_dir/<name>` or `data_dir/<dataset>` (e.g. DIR/mmbench_cn or DIR/MMBench with en/ and cn/ inside)."""
    data_dir = Path(data_dir).expanduser()
    candidates = [data_dir / bench.name, data_dir / bench.dataset, data_dir / bench.dataset.lower()]
    for path in candidates:
        if path.exists():
            return path
    raise BenchmarkDataError(
        f"{bench.title}: not found in --data-dir {data_dir} (looked for {', '.join(str(c) for c in candidates)}). "
        + local_help(bench.name, bench.dataset)
    )


# ----------------------------------------------------------------------------------------------------
class MeanScore(Metric):
    """Mean of a per-question score in [0, 1], reported ×100 (GQA / ScienceQA exact match, VQA soft accuracy)."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, score_fn: Callable[[str, Record], float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.score_fn = score_fn
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], records: Sequence[Record]) -> None:
        assert len(predictions) == len(records), f"{len(predictions)} predictions for {len(records)} records"
        for prediction, record in zip(predictions, records, strict=True):
            self.total += float(self.score_fn(prediction, record))
        self.count += len(records)

    def compute(self) -> dict[str, float]:
        n = int(self.count)
        accuracy = 100.0 * float(self.total) / n if n else 0.0
        return {"score": accuracy, "accuracy": accuracy, "questions": n}
