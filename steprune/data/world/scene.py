"""Scene description of the built-in world and its sampler: non-overlapping coloured shapes + specks.

A `Scene` is pure data (no pixels); `render.render_scene` turns it into an image and
`questions` asks about it. Geometry is in pixels; objects sit on the patch grid by default.

    import numpy as np
    from steprune.data.world import WorldConfig, sample_scene
    scene = sample_scene(np.random.default_rng(0), WorldConfig())
    print(scene.num_objects, scene.fingerprint(), scene.to_json())
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass

import numpy as np

from steprune.data.world.config import PALETTE, WorldConfig


@dataclass(frozen=True)
class SceneObject:
    """One shape: its box is [x, x+size) x [y, y+size) in pixels."""

    color: str
    shape: str
    x: int
    y: int
    size: int
    glyph: int | None = None
    """Digit drawn on the object, or None."""

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) of the box centre in pixels."""
        return self.x + self.size / 2, self.y + self.size / 2


@dataclass(frozen=True)
class Speck:
    """A distractor: a tiny filled square of `size` pixels at (x, y), never inside an object's footprint."""

    x: int
    y: int
    size: int
    rgb: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    """Everything needed to render a scene deterministically and to answer questions about it."""

    objects: tuple[SceneObject, ...]
    specks: tuple[Speck, ...]
    background: tuple[int, int, int]
    texture_seed: int
    """Seeds the background texture and pixel noise at render time."""
    image_size: int
    """Side of the image the geometry lives in, in pixels."""

    @property
    def num_objects(self) -> int:
        """Scene complexity: how many objects (specks are not objects)."""
        return len(self.objects)

    def description(self) -> str:
        """Canonical text of the object layout (colour, shape, box, glyph), independent of noise."""
        objs = sorted(self.objects, key=lambda o: (o.y, o.x))
        return json.dumps([[o.color, o.shape, o.x, o.y, o.size, o.glyph] for o in objs], separators=(",", ":"))

    def fingerprint(self) -> str:
        """Hash of `description()`: two scenes with the same layout share it (used for split disjointness)."""
        return hashlib.sha256(self.description().encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Scene:
        d = json.loads(text)
        return cls(
            objects=tuple(SceneObject(**o) for o in d["objects"]),
            specks=tuple(Speck(s["x"], s["y"], s["size"], tuple(s["rgb"])) for s in d["specks"]),
            background=tuple(d["background"]),
            texture_seed=d["texture_seed"],
            image_size=d["image_size"],
        )


def _free(occ: np.ndarray, r: int, c: int, f: int, gap: int) -> bool:
    """Whether footprint [r, r+f) x [c, c+f) plus `gap` cells around it is unoccupied."""
    return not occ[max(0, r - gap) : r + f + gap, max(0, c - gap) : c + f + gap].any()


def sample_scene(rng: np.random.Generator, cfg: WorldConfig) -> Scene:
    """Sample a scene: `min..max_objects` non-overlapping objects on the patch grid, then distractor specks."""
    g, p = cfg.grid_size, cfg.patch_size
    occ = np.zeros((g, g), dtype=bool)  # (G, G) patch cells taken by object footprints
    objects: list[SceneObject] = []
    for _ in range(int(rng.integers(cfg.min_objects, cfg.max_objects + 1))):
        cells = int(rng.integers(cfg.min_cells, cfg.max_cells + 1))
        spot = None
        for size in dict.fromkeys((cells, cfg.min_cells)):  # fall back to the smallest size when crowded
            f = size + (0 if cfg.grid_aligned else 1)  # unaligned objects get one spare cell to jitter in
            if f > g:
                continue
            for _try in range(40):
                r, c = (int(v) for v in rng.integers(0, g - f + 1, size=2))
                if _free(occ, r, c, f, cfg.min_gap):
                    spot = (r, c, f, size)
                    break
            if spot:
                break
        if spot is None:
            break  # grid is full: the scene keeps the objects placed so far
        r, c, f, size = spot
        occ[r : r + f, c : c + f] = True
        dx, dy = (0, 0) if cfg.grid_aligned else (int(v) for v in rng.integers(0, p + 1, size=2))
        shape = str(rng.choice(cfg.shapes))
        glyph = None
        if shape in cfg.glyph_shapes and rng.random() < cfg.glyph_prob:
            glyph = int(rng.integers(10))
        objects.append(SceneObject(str(rng.choice(cfg.colors)), shape, c * p + dx, r * p + dy, size * p, glyph))

    specks: list[Speck] = []
    free_cells = np.argwhere(~occ)  # (F, 2) rows, cols
    for _ in range(int(rng.integers(0, cfg.max_distractors + 1))):
        if len(free_cells) == 0:
            break
        r, c = free_cells[int(rng.integers(len(free_cells)))]
        s = int(rng.integers(1, cfg.distractor_px + 1))
        ox, oy = (int(v) for v in rng.integers(0, p - s + 1, size=2))
        if rng.random() < 0.5:
            rgb = PALETTE[str(rng.choice(cfg.colors))]
        else:
            rgb = (int(rng.integers(90, 230)),) * 3
        specks.append(Speck(int(c) * p + ox, int(r) * p + oy, s, rgb))

    background = tuple(int(v) for v in rng.integers(35, 75, size=3))
    return Scene(tuple(objects), tuple(specks), background, int(rng.integers(2**31)), cfg.image_size)
