"""Question generators of the built-in world, one per kind, plus the reference answerer.

Each `ask_<kind>(scene, rng, cfg)` returns a `QA(question, answer, kind)` triple, or None when the
scene cannot support that kind (e.g. no uniquely described object). Every answer is computed by
`answer_from_scene(scene, spec)` from the scene description alone, so it can be re-checked.

    import numpy as np
    from steprune.data.world import WorldConfig, sample_scene, GENERATORS
    rng = np.random.default_rng(0); cfg = WorldConfig(); scene = sample_scene(rng, cfg)
    print(GENERATORS["existence"](scene, rng, cfg))   # QA(question='Is there a red cross?', answer='no', ...)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np

from steprune.data.world.config import CAPTION_KIND, LOCATE_KIND, PALETTE, SHAPES, WorldConfig
from steprune.data.world.scene import Scene, SceneObject

PLURALS: dict[str, str] = {
    "square": "squares",
    "circle": "circles",
    "triangle": "triangles",
    "cross": "crosses",
    "diamond": "diamonds",
}
ROWS, COLS = ("top", "middle", "bottom"), ("left", "center", "right")
CAPTION_PROMPT = "Describe the image."
WORD_RE = re.compile(r"\w+|[^\w\s]")
T = TypeVar("T")


def split_words(text: str) -> list[str]:
    """Words and punctuation marks of `text`, the units `world_vocabulary` lists."""
    return WORD_RE.findall(text)


@dataclass(frozen=True)
class Ref:
    """A noun phrase that picks objects by colour and/or shape (None = any)."""

    color: str | None = None
    shape: str | None = None

    def matches(self, obj: SceneObject) -> bool:
        return (self.color is None or obj.color == self.color) and (self.shape is None or obj.shape == self.shape)

    def phrase(self) -> str:
        if self.shape is not None:
            return f"{self.color} {self.shape}" if self.color else self.shape
        return f"{self.color} object" if self.color else "object"


@dataclass(frozen=True)
class QuestionSpec:
    """A question as data. `ask`: 'colour'|'shape' (attribute), 'horizontal'|'vertical' (spatial)."""

    kind: str
    subject: Ref = Ref()
    ask: str = ""
    other: Ref | None = None


class QA(NamedTuple):
    question: str
    answer: str
    kind: str


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


def _the_one(scene: Scene, ref: Ref) -> SceneObject:
    hits = [o for o in scene.objects if ref.matches(o)]
    if len(hits) != 1:
        raise ValueError(f"'the {ref.phrase()}' matches {len(hits)} objects, not exactly one")
    return hits[0]


def position_phrase(obj: SceneObject, image_size: int) -> str:
    """Coarse 3x3 position of the object's centre, e.g. 'top left', 'middle center'."""
    cx, cy = obj.center
    return f"{ROWS[min(2, int(3 * cy / image_size))]} {COLS[min(2, int(3 * cx / image_size))]}"


def caption(scene: Scene) -> str:
    """Caption listing every object in reading order with its glyph and coarse position."""
    items = []
    for o in sorted(scene.objects, key=lambda o: (o.y, o.x)):
        digit = f" with the digit {o.glyph}" if o.glyph is not None else ""
        items.append(f"{_article(o.color)} {o.color} {o.shape}{digit} at {position_phrase(o, scene.image_size)}")
    n = len(items)
    head = "There is 1 object: " if n == 1 else f"There are {n} objects: "
    body = items[0] if n == 1 else (" and ".join(items) if n == 2 else ", ".join(items[:-1]) + ", and " + items[-1])
    return head + body + "."


def question_text(spec: QuestionSpec) -> str:
    """The English question for `spec`."""
    s = spec.subject.phrase()
    if spec.kind == "attribute":
        return f"What {spec.ask} is the {s}?"
    if spec.kind == "existence":
        return f"Is there {_article(s)} {s}?"
    if spec.kind == "counting":
        if spec.subject.shape is not None:
            return f"How many {PLURALS[spec.subject.shape]} are there?"
        return f"How many {s}s are there?"
    if spec.kind == "spatial":
        assert spec.other is not None, "a spatial question needs a second object"
        relation = "left or right of" if spec.ask == "horizontal" else "above or below"
        return f"Is the {s} {relation} the {spec.other.phrase()}?"
    if spec.kind == "reading":
        return f"What digit is on the {s}?"
    if spec.kind == LOCATE_KIND:
        return f"Where is the {s}?"
    if spec.kind == CAPTION_KIND:
        return CAPTION_PROMPT
    raise ValueError(f"unknown question kind {spec.kind!r}")


def answer_from_scene(scene: Scene, spec: QuestionSpec) -> str:
    """The correct answer to `spec`, derived from the scene description only."""
    if spec.kind == "attribute":
        obj = _the_one(scene, spec.subject)
        return obj.color if spec.ask == "colour" else obj.shape
    if spec.kind == "existence":
        return "yes" if any(spec.subject.matches(o) for o in scene.objects) else "no"
    if spec.kind == "counting":
        return str(sum(spec.subject.matches(o) for o in scene.objects))
    if spec.kind == "spatial":
        assert spec.other is not None, "a spatial question needs a second object"
        (ax, ay), (bx, by) = _the_one(scene, spec.subject).center, _the_one(scene, spec.other).center
        if spec.ask == "horizontal":
            return "left" if ax < bx else "right"
        return "above" if ay < by else "below"
    if spec.kind == "reading":
        glyph = _the_one(scene, spec.subject).glyph
        if glyph is None:
            raise ValueError(f"the {spec.subject.phrase()} carries no digit")
        return str(glyph)
    if spec.kind == LOCATE_KIND:
        return position_phrase(_the_one(scene, spec.subject), scene.image_size)
    if spec.kind == CAPTION_KIND:
        return caption(scene)
    raise ValueError(f"unknown question kind {spec.kind!r}")


def finish(scene: Scene, spec: QuestionSpec) -> QA:
    """Turn a spec into its (question, answer, kind) triple."""
    return QA(question_text(spec), answer_from_scene(scene, spec), spec.kind)


def unique_refs(scene: Scene, obj: SceneObject, *, by_color: bool = True, by_shape: bool = True) -> list[Ref]:
    """Descriptions of `obj` (colour+shape, shape, colour) that match no other object in the scene."""
    refs = []
    if by_color and by_shape:
        refs.append(Ref(obj.color, obj.shape))
    if by_shape:
        refs.append(Ref(shape=obj.shape))
    if by_color:
        refs.append(Ref(color=obj.color))
    return [r for r in refs if sum(r.matches(o) for o in scene.objects) == 1]


def _pick(rng: np.random.Generator, options: Sequence[T]) -> T:
    return options[int(rng.integers(len(options)))]


def ask_attribute(scene: Scene, rng: np.random.Generator, cfg: WorldConfig) -> QA | None:
    """'What colour is the triangle?' (shape unique) / 'What shape is the blue object?' (colour unique)."""
    objs = scene.objects
    options = [QuestionSpec("attribute", r, "colour") for o in objs for r in unique_refs(scene, o, by_color=False)]
    options += [QuestionSpec("attribute", r, "shape") for o in objs for r in unique_refs(scene, o, by_shape=False)]
    return finish(scene, _pick(rng, options)) if options else None


def ask_existence(scene: Scene, rng: np.random.Generator, cfg: WorldConfig) -> QA | None:
    """'Is there a red square?' — yes/no with p=0.5; negatives are adversarial (POPE) when possible."""
    present = [(o.color, o.shape) for o in scene.objects]
    if rng.random() < 0.5:
        return finish(scene, QuestionSpec("existence", Ref(*_pick(rng, present))))
    colors, shapes = {c for c, _ in present}, {s for _, s in present}
    absent = [(c, s) for c in cfg.colors for s in cfg.shapes if (c, s) not in present]
    adversarial = [(c, s) for c, s in absent if c in colors and s in shapes]
    half = [(c, s) for c, s in absent if c in colors or s in shapes]
    return finish(scene, QuestionSpec("existence", Ref(*_pick(rng, adversarial or half or absent))))


def ask_counting(scene: Scene, rng: np.random.Generator, cfg: WorldConfig) -> QA | None:
    """'How many objects are there?' / 'How many red objects are there?' / 'How many circles are there?'."""
    mode = int(rng.integers(3))
    if mode == 0:
        return finish(scene, QuestionSpec("counting", Ref()))
    attr = "color" if mode == 1 else "shape"
    universe = cfg.colors if mode == 1 else cfg.shapes
    present = [v for v in universe if any(getattr(o, attr) == v for o in scene.objects)]
    value = _pick(rng, present if rng.random() < 0.85 else list(universe))
    return finish(scene, QuestionSpec("counting", Ref(**{attr: value})))


def _separated(a: SceneObject, b: SceneObject, axis: str) -> bool:
    (a0, b0) = (a.x, b.x) if axis == "horizontal" else (a.y, b.y)
    return a0 + a.size <= b0 or b0 + b.size <= a0


def ask_spatial(scene: Scene, rng: np.random.Generator, cfg: WorldConfig) -> QA | None:
    """'Is the red square left or right of the green circle?' / '... above or below ...'."""
    options = [
        (a, b, axis)
        for a in scene.objects
        for b in scene.objects
        if a is not b
        for axis in ("horizontal", "vertical")
        if _separated(a, b, axis)
    ]
    options = [(a, b, axis) for a, b, axis in options if unique_refs(scene, a) and unique_refs(scene, b)]
    if not options:
        return None
    a, b, axis = _pick(rng, options)
    spec = QuestionSpec("spatial", _pick(rng, unique_refs(scene, a)), axis, _pick(rng, unique_refs(scene, b)))
    return finish(scene, spec)


def ask_reading(scene: Scene, rng: np.random.Generator, cfg: WorldConfig) -> QA | None:
    """'What digit is on the yellow square?' for a uniquely described object that carries a glyph."""
    options = [r for o in scene.objects if o.glyph is not None for r in unique_refs(scene, o)]
    return finish(scene, QuestionSpec("reading", _pick(rng, options))) if options else None


def ask_locate(scene: Scene, rng: np.random.Generator, cfg: WorldConfig) -> QA | None:
    """'Where is the red square?' -> 'top left' (3x3 position of a uniquely described object; training only)."""
    options = [r for o in scene.objects for r in unique_refs(scene, o)]
    return finish(scene, QuestionSpec(LOCATE_KIND, _pick(rng, options))) if options else None


def ask_describe(scene: Scene, rng: np.random.Generator, cfg: WorldConfig) -> QA | None:
    """'Describe the image.' -> caption listing every object (training split only)."""
    return finish(scene, QuestionSpec(CAPTION_KIND))


GENERATORS: dict[str, Callable[[Scene, np.random.Generator, WorldConfig], QA | None]] = {
    "attribute": ask_attribute,
    "existence": ask_existence,
    "counting": ask_counting,
    "spatial": ask_spatial,
    "reading": ask_reading,
    CAPTION_KIND: ask_describe,
    LOCATE_KIND: ask_locate,
}

_TEMPLATE_TEXT = (
    "What colour is the ? What shape is the object ? Is there a an ? How many objects are there ? "
    "Is the left or right of the above or below the ? What digit is on the ? Where is the ? yes no "
    f"{CAPTION_PROMPT} There is 1 object : There are objects : with the digit at , and . " + " ".join(ROWS + COLS)
)


def world_vocabulary(cfg: WorldConfig) -> list[str]:
    """Every word, punctuation mark and answer the world can emit under `cfg` (sorted; excludes '<image>')."""
    words = set(split_words(_TEMPLATE_TEXT)) | set(cfg.colors) | set(cfg.shapes)
    words |= {PLURALS[s] for s in cfg.shapes} | {str(d) for d in range(10)}
    words |= {str(n) for n in range(cfg.max_objects + 1)}
    assert set(cfg.colors) <= set(PALETTE) and set(cfg.shapes) <= set(SHAPES)
    return sorted(words)
