"""Benchmark loaders on local fixtures in each dataset's Hub schema (never the network), the other local
layouts (jsonl/parquet + image folder, Hub snapshot), limits, and the errors for a missing dataset/split."""

from __future__ import annotations

import datasets
import pytest

from steprune.eval.benchmarks import BENCHMARKS, BenchmarkDataError, find_in_data_dir, get_benchmark
from steprune.eval.benchmarks import base as benchmarks_base
from tests.eval import benchmark_fixtures as fx


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return fx.make_all(tmp_path_factory.mktemp("benchmarks"))


def load(name, data_dir, **kwargs):
    bench = get_benchmark(name)
    return list(bench.load(source=find_in_data_dir(data_dir, bench), **kwargs))


SHORT = "\nAnswer the question using a single word or phrase."
LETTER = "\nAnswer with the option's letter from the given choices directly."


def test_gqa_joins_images_config(data_dir):
    records = load("gqa", data_dir)
    assert [r.id for r in records] == ["q0", "q1", "q2"]
    assert records[0].prompt == "What colour is the car?" + SHORT
    assert records[0].answers == ("red",) and records[0].metadata["image_id"] == "n1"
    assert records[0].image.mode == "RGB" and records[0].image.size == (40, 30)
    assert list(records[0].image.getdata()) == list(fx.image(1).getdata())  # n1's pixels, not n2's


def test_mmbench_rotations_and_prompts(data_dir):
    records = load("mmbench_en", data_dir)
    # question 0: 4 options -> 4 rotations; question 1: 3 options -> 3; the pre-rotated copy 1000000 is skipped
    assert [r.id for r in records] == ["0/r0", "0/r1", "0/r2", "0/r3", "1/r0", "1/r1", "1/r2"]
    first = records[0]
    assert first.prompt == "Which animal is shown?\nA. cat\nB. dog\nC. bird\nD. fish" + LETTER
    assert [r.answers[0] for r in records[:4]] == ["B", "A", "D", "C"]  # "dog" moves up one letter per rotation
    assert all(r.options[r.answers[0]] == "dog" for r in records[:4])
    hinted = records[4]
    assert hinted.prompt == "A bicycle.\nHow many wheels?\nA. 1\nB. 2\nC. 3" + LETTER
    assert hinted.metadata == {"index": 1, "rotation": 0, "category": "count", "l2_category": "perception"}
    cn = load("mmbench_cn", data_dir, limit=1)  # limit counts questions: one question, all its rotations
    assert len(cn) == 4 and cn[0].prompt.endswith("\n请直接回答选项字母。")


def test_mme_records(data_dir):
    records = load("mme", data_dir)
    assert len(records) == 6
    assert records[0].prompt == "Is there a dog in the image? Please answer yes or no."
    assert records[3].prompt == "Is the word GO in the image? Please answer yes or no."  # suffix added
    assert [r.answers[0] for r in records[:2]] == ["yes", "no"]
    assert records[0].metadata == {"category": "existence", "image_key": "existence/1.png"}


def test_pope_records_and_balanced_limit(data_dir):
    records = load("pope", data_dir)
    assert len(records) == 12 and records[0].prompt == "Is there a cat in the image?" + SHORT
    assert records[0].answers == ("yes",) and records[0].metadata == {"split": "adversarial"}
    assert [r.metadata["split"] for r in load("pope", data_dir, limit=3)] == ["adversarial", "popular", "random"]
    six = load("pope", data_dir, limit=6)
    assert [r.metadata["split"] for r in six] == ["adversarial"] * 2 + ["popular"] * 2 + ["random"] * 2


def test_pope_single_split_from_full_config(tmp_path):
    fx.save(
        {"question_id": ["1", "2"], "question": ["Is there a cat?", "Is there a dog?"], "answer": ["no", "yes"]}
        | {"image": [fx.image(1), fx.image(2)]},
        tmp_path / "POPE" / "Full",
        "adversarial",
    )
    records = list(get_benchmark("pope").load("adversarial", source=tmp_path / "POPE", limit=1))
    assert len(records) == 1 and records[0].metadata == {"split": "adversarial"}


def test_scienceqa_img_skips_rows_without_image(data_dir):
    records = load("sqa", data_dir)
    assert [r.id for r in records] == ["0", "2"]
    assert records[0].prompt == "Which is a mammal?\nA. shark\nB. whale" + LETTER
    assert records[0].answers == ("B",)
    assert records[1].prompt.startswith("Context: Look at the map.\nWhich state is highlighted?\nA. Ohio\n")
    assert records[1].answers == ("C",) and records[1].options["C"] == "Utah"


def test_vqav2_and_textvqa_records(data_dir):
    vqa = load("vqav2", data_dir)
    assert vqa[0].id == "1000" and vqa[0].prompt == "How many dogs are there?" + SHORT
    assert vqa[0].answers == ("2",) * 3 + ("3",) * 7
    text = load("textvqa", data_dir)
    assert text[0].prompt == "What brand is the phone?" + SHORT  # lmms-eval capitalises the question
    assert len(text[1].answers) == 10
    ocr = load("textvqa_ocr", data_dir, limit=1)
    assert ocr[0].prompt == "What brand is the phone?\nReference OCR token: nokia" + SHORT


def test_every_benchmark_has_a_fixture_and_a_metric(data_dir):
    for name, bench in BENCHMARKS.items():
        records = list(bench.load(source=find_in_data_dir(data_dir, bench), limit=2))
        assert records, name
        metric = bench.metric()
        metric.update([r.answers[0] for r in records], records)  # the reference answer scores > 0
        assert metric.compute()["score"] > 0, name


# --- other local layouts ------------------------------------------------------------------------------
def test_jsonl_with_image_folder(tmp_path):
    root = tmp_path / "GQA"
    (root / "images").mkdir(parents=True)
    fx.image(5).save(root / "images" / "n5.jpg")
    (root / "testdev.jsonl").write_text('{"id": "q9", "imageId": "n5", "question": "What is it?", "answer": "cup"}\n')
    records = list(get_benchmark("gqa").load(source=root))
    assert len(records) == 1 and records[0].answers == ("cup",) and records[0].image.size == (40, 30)


def test_parquet_with_relative_image_paths(tmp_path):
    root = tmp_path / "textvqa"
    (root / "images").mkdir(parents=True)
    fx.image(7).save(root / "images" / "a.png")
    ds = datasets.Dataset.from_dict(
        {"question_id": [3], "question": ["what is written?"], "answers": [["stop"] * 10], "image": ["images/a.png"]}
    )
    ds.to_parquet(str(root / "validation.parquet"))
    records = list(get_benchmark("textvqa").load(source=root))
    assert records[0].id == "3" and list(records[0].image.getdata()) == list(fx.image(7).getdata())


def test_hub_snapshot_layout(tmp_path, data_dir):
    snapshot = tmp_path / "POPE"
    (snapshot / "data").mkdir(parents=True)
    datasets.load_from_disk(str(data_dir / "POPE"))["test"].to_parquet(
        str(snapshot / "data" / "test-00000-of-00001.parquet")
    )
    records = list(get_benchmark("pope").load(source=snapshot, limit=3))
    assert [r.metadata["split"] for r in records] == ["adversarial", "popular", "random"]


# --- errors ---------------------------------------------------------------------------------------------
def test_missing_local_path_names_it_and_the_options(tmp_path):
    with pytest.raises(BenchmarkDataError, match="does not exist") as info:
        get_benchmark("mme").load(source=tmp_path / "nowhere" / "MME")
    assert "--data-dir" in str(info.value) and "source=" in str(info.value)


def test_missing_split_lists_available_splits(data_dir):
    with pytest.raises(BenchmarkDataError, match=r"no split 'val'.*\['test'\]") as info:
        get_benchmark("mme").load("val", source=data_dir / "MME")
    assert "--data-dir" in str(info.value)


def test_local_dir_without_the_split(tmp_path):
    (tmp_path / "VQAv2").mkdir()
    with pytest.raises(BenchmarkDataError, match=r"no split 'validation'.*VQAv2"):
        get_benchmark("vqav2").load(source=tmp_path / "VQAv2")


def test_data_dir_without_the_benchmark(tmp_path):
    with pytest.raises(BenchmarkDataError, match=r"GQA: not found in --data-dir .*GQA"):
        find_in_data_dir(tmp_path, get_benchmark("gqa"))


def test_hub_failure_lists_old_and_new_ids(monkeypatch):
    tried = []

    def offline(repo, config=None, split=None, streaming=False):
        tried.append((repo, config, split, streaming))
        raise datasets.exceptions.DatasetNotFoundError(f"Dataset '{repo}' doesn't exist on the Hub")

    monkeypatch.setattr(benchmarks_base.datasets, "load_dataset", offline)
    with pytest.raises(BenchmarkDataError) as info:
        get_benchmark("mmbench_cn").load()
    message = str(info.value)
    assert tried == [("lmms-lab-encoder/MMBench", "cn", "dev", True), ("lmms-lab/MMBench", "cn", "dev", True)]
    assert "split 'dev' of config 'cn'" in message and "lmms-lab-encoder/MMBench" in message
    assert "lmms-lab/MMBench: DatasetNotFoundError" in message and "--data-dir" in message


def test_hub_falls_back_to_the_old_organisation_and_takes_a_user_id(monkeypatch, data_dir):
    local = datasets.load_from_disk(str(data_dir / "MME"))["test"]
    tried = []

    def hub(repo, config=None, split=None, streaming=False):
        tried.append(repo)
        if repo.startswith("lmms-lab-encoder/"):
            raise ConnectionError("offline")
        return local

    monkeypatch.setattr(benchmarks_base.datasets, "load_dataset", hub)
    data = get_benchmark("mme").load(limit=2)
    assert data.where == "lmms-lab/MME" and len(list(data)) == 2
    assert tried == ["lmms-lab-encoder/MME", "lmms-lab/MME"]
    tried.clear()
    get_benchmark("mme").load(source="my-org/MME-mirror")
    assert tried == ["my-org/MME-mirror"]


def test_unknown_benchmark_suggests():
    with pytest.raises(ValueError, match="Did you mean 'pope'"):
        get_benchmark("popee")
    assert get_benchmark("MMB-CN").name == "mmbench_cn" and get_benchmark("sqa").name == "scienceqa_img"
