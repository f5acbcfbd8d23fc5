"""Tiny local copies of each benchmark in its Hugging Face (lmms-eval) schema, written with
`Dataset.from_dict(...).save_to_disk` — the tests never download anything.

`make_all(root)` writes every one under root/<dataset repo name>, the layout `--data-dir` reads.
"""

from __future__ import annotations

from pathlib import Path

import datasets
import numpy as np
import PIL.Image
from datasets import Features, Image, List, Value


def image(seed: int, size: tuple[int, int] = (40, 30)) -> PIL.Image.Image:
    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def save(columns: dict, path: Path, split: str, features: Features | None = None) -> Path:
    ds = datasets.Dataset.from_dict(columns, features=features)
    datasets.DatasetDict({split: ds}).save_to_disk(str(path))
    return path


def make_gqa(root: Path) -> Path:
    root = root / "GQA"
    save(
        {
            "id": ["q0", "q1", "q2"],
            "imageId": ["n1", "n2", "n1"],
            "question": ["What colour is the car?", "Is it sunny?", "Which side is the tree on?"],
            "answer": ["red", "yes", "left"],
            "fullAnswer": ["The car is red.", "Yes, it is sunny.", "The tree is on the left."],
        },
        root / "testdev_balanced_instructions",
        "testdev",
    )
    save({"id": ["n2", "n1"], "image": [image(2), image(1)]}, root / "testdev_balanced_images", "testdev")
    return root


MMBENCH_FEATURES = Features(
    {
        "index": Value("int64"),
        "question": Value("string"),
        "hint": Value("string"),
        "A": Value("string"),
        "B": Value("string"),
        "C": Value("string"),
        "D": Value("string"),
        "answer": Value("string"),
        "category": Value("string"),
        "L2-category": Value("string"),
        "source": Value("string"),
        "split": Value("string"),
        "image": Image(),
    }
)


def make_mmbench(root: Path) -> Path:
    root = root / "MMBench"
    for config, question in (("en", "Which animal is shown?"), ("cn", "图中是什么动物?")):
        save(
            {
                "index": [0, 1, 1000000],  # the last: a pre-rotated copy of 0, which the loader skips
                "question": [question, "How many wheels?", question],
                "hint": [None, "A bicycle.", None],
                "A": ["cat", "1", "dog"],
                "B": ["dog", "2", "bird"],
                "C": ["bird", "3", "fish"],
                "D": ["fish", None, "cat"],
                "answer": ["B", "B", "A"],
                "category": ["animal", "count", "animal"],
                "L2-category": ["perception", "perception", "perception"],
                "source": ["x", "y", "x"],
                "split": ["dev", "dev", "dev"],
                "image": [image(10), image(11), image(10)],
            },
            root / config,
            "dev",
            MMBENCH_FEATURES,
        )
    return root


def make_mme(root: Path) -> Path:
    rows = [
        ("existence/1.png", "Is there a dog in the image? Please answer yes or no.", "Yes", "existence"),
        ("existence/1.png", "Is there a cat in the image? Please answer yes or no.", "No", "existence"),
        ("OCR/2.png", "Is the word STOP in the image? Please answer yes or no.", "Yes", "OCR"),
        ("OCR/2.png", "Is the word GO in the image?", "No", "OCR"),
        ("code_reasoning/3.png", "Does the code print 3? Please answer yes or no.", "No", "code_reasoning"),
        ("code_reasoning/3.png", "Does the code print 4? Please answer yes or no.", "Yes", "code_reasoning"),
    ]
    columns = {k: [r[i] for r in rows] for i, k in enumerate(("question_id", "question", "answer", "category"))}
    return save({**columns, "image": [image(20 + i // 2) for i in range(len(rows))]}, root / "MME", "test")


def make_pope(root: Path) -> Path:
    categories = ["adversarial"] * 4 + ["popular"] * 4 + ["random"] * 4
    n = len(categories)
    return save(
        {
            "id": [str(i) for i in range(n)],
            "question_id": [str(100 + i) for i in range(n)],
            "question": [f"Is there a {obj} in the image?" for obj in ["cat", "dog", "car", "tree"] * 3],
            "answer": ["yes", "no"] * (n // 2),
            "image_source": [f"COCO_val2014_{i:012d}" for i in range(n)],
            "image": [image(30 + i) for i in range(n)],
            "category": categories,
        },
        root / "POPE",
        "test",
    )


SQA_FEATURES = Features(
    {
        "image": Image(),
        "question": Value("string"),
        "choices": List(Value("string")),
        "answer": Value("int8"),
        "hint": Value("string"),
        "task": Value("string"),
        "grade": Value("string"),
        "subject": Value("string"),
        "topic": Value("string"),
        "category": Value("string"),
        "skill": Value("string"),
        "lecture": Value("string"),
        "solution": Value("string"),
    }
)


def make_scienceqa(root: Path) -> Path:
    n = 3
    return save(
        {
            "image": [image(40), None, image(42)],  # the second has no image: not part of the IMG subset
            "question": ["Which is a mammal?", "Which is heavier?", "Which state is highlighted?"],
            "choices": [["shark", "whale"], ["a feather", "a brick", "a leaf"], ["Ohio", "Texas", "Utah", "Iowa"]],
            "answer": [1, 1, 2],
            "hint": ["", "", "Look at the map."],
            "task": ["closed choice"] * n,
            "grade": ["grade3"] * n,
            "subject": ["natural science", "natural science", "social science"],
            "topic": ["biology", "physics", "geography"],
            "category": ["Classify"] * n,
            "skill": ["s"] * n,
            "lecture": [""] * n,
            "solution": [""] * n,
        },
        root / "ScienceQA" / "ScienceQA-IMG",
        "test",
        SQA_FEATURES,
    )


def make_vqav2(root: Path) -> Path:
    def answers(values: list[str]) -> list[dict]:
        return [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(values)]

    return save(
        {
            "question_type": ["how many", "what color"],
            "multiple_choice_answer": ["2", "red"],
            "answers": [answers(["2"] * 3 + ["3"] * 7), answers(["red"] * 10)],
            "image_id": [1, 2],
            "answer_type": ["number", "other"],
            "question_id": [1000, 2000],
            "question": ["How many dogs are there?", "What color is the bus?"],
            "image": [image(50), image(51)],
        },
        root / "VQAv2",
        "validation",
    )


def make_textvqa(root: Path) -> Path:
    n = 2
    return save(
        {
            "image_id": ["a", "b"],
            "question_id": [1, 2],
            "question": ["what brand is the phone?", "what number is on the shirt?"],
            "question_tokens": [["what", "brand"], ["what", "number"]],
            "image": [image(60), image(61)],
            "image_width": [40] * n,
            "image_height": [30] * n,
            "flickr_original_url": [""] * n,
            "flickr_300k_url": [""] * n,
            "answers": [["nokia"] * 10, ["10"] * 6 + ["ten"] * 4],
            "image_classes": [["phone"], ["shirt"]],
            "set_name": ["val"] * n,
            "ocr_tokens": [["nokia"], ["10"]],
        },
        root / "textvqa",
        "validation",
    )


def make_all(root: Path) -> Path:
    for make in (make_gqa, make_mmbench, make_mme, make_pope, make_scienceqa, make_vqav2, make_textvqa):
        make(root)
    return root
