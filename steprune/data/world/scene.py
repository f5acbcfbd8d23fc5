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

    def fingerprint(self) -> str:
        """Hash of the object layout: scenes with the same layout share it (split disjointness keys on it)."""
        return layout_fingerprint(self.objects)

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


def layout_fingerprint(objects: tuple[SceneObject, ...]) -> str:
    """Hash of the canonical object layout (colour, shape, box, glyph); noise and specks do not enter."""
    rows = sorted([o.y, o.x, o.color, o.shape, o.size, o.glyph] for o in objects)
    return hashlib.sha256(json.dumps(rows, separators=(",", ":")).encode()).hexdigest()[:16]


def _free(occ: np.ndarray, r: int, c: int, f: int, gap: int) -> bool:
    """Whether footprint [r, r+f) x [c, c+f) plus `gap` cells around it is unoccupied."""
    return not occ[max(0, r - gap) : r + f + gap, max(0, c - gap) : c + f + gap].any()


def sample_layout(rng: np.random.Generator, cfg: WorldConfig) -> tuple[SceneObject, ...]:
    """Sample `min..max_objects` objects whose footprints (plus `min_gap` patches) never overlap."""
    g, p, n_tries = cfg.grid_size, cfg.patch_size, 40
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    # all randomness up front, in [0, 1): per object 7 attributes, then 2 sizes x n_tries spots x (row, col)
    u = rng.random((n, 7)).tolist()
    spots = rng.random((n, 2, n_tries, 2))
    occ = np.zeros((g, g), dtype=bool)  # (G, G) patch cells taken by object footprints
    objects: list[SceneObject] = []
    for i, (u_cells, u_jx, u_jy, u_color, u_shape, u_glyph, u_digit) in enumerate(u):
        cells = cfg.min_cells + int(u_cells * (cfg.max_cells - cfg.min_cells + 1))
        spot = None
        for k, size in enumerate((cells, cfg.min_cells)):  # fall back to the smallest size when crowded
            f = size + (0 if cfg.grid_aligned else 1)  # unaligned objects get one spare cell to jitter in
            if f > g:
                continue
            tries = (spots[i, k] * (g - f + 1)).astype(np.int64).tolist()
            spot = next(((r, c, f, size) for r, c in tries if _free(occ, r, c, f, cfg.min_gap)), None)
            if spot:
                break
        if spot is None:
            break  # grid is full: the scene keeps the objects placed so far
        r, c, f, size = spot
        occ[r : r + f, c : c + f] = True
        dx, dy = (0, 0) if cfg.grid_aligned else (int(u_jx * (p + 1)), int(u_jy * (p + 1)))
        shape = cfg.shapes[int(u_shape * len(cfg.shapes))]
        glyph = int(u_digit * 10) if shape in cfg.glyph_shapes and u_glyph < cfg.glyph_prob else None
        color = cfg.colors[int(u_color * len(cfg.colors))]
        objects.append(SceneObject(color, shape, c * p + dx, r * p + dy, size * p, glyph))
    return tuple(objects)


def dress_layout(objects: tuple[SceneObject, ...], rng: np.random.Generator, cfg: WorldConfig) -> Scene:
    """Complete a layout: distractor specks in patches no object touches, background, noise seed."""
    g, p = cfg.grid_size, cfg.patch_size
    occ = np.zeros((g, g), dtype=bool)
    for o in objects:
        occ[o.y // p : -(-(o.y + o.size) // p), o.x // p : -(-(o.x + o.size) // p)] = True
    free_cells = np.argwhere(~occ).tolist()  # [[row, col], ...]
    specks: list[Speck] = []
    for _ in range(int(rng.integers(0, cfg.max_distractors + 1)) if free_cells else 0):
        cell, s, grey, color_i = rng.integers(0, [len(free_cells), cfg.distractor_px, 140, len(cfg.colors)]).tolist()
        ox, oy = rng.integers(0, p - s, size=2).tolist()  # speck side is s + 1
        rgb = PALETTE[cfg.colors[color_i]] if rng.random() < 0.5 else (grey + 90,) * 3
        r, c = free_cells[cell]
        specks.append(Speck(c * p + ox, r * p + oy, s + 1, rgb))
    background = tuple(int(v) for v in rng.integers(35, 75, size=3))
    return Scene(objects, tuple(specks), background, int(rng.integers(2**31)), cfg.image_size)


def sample_scene(rng: np.random.Generator, cfg: WorldConfig) -> Scene:
    """Sample a scene: non-overlapping objects on the patch grid, then distractor specks."""
    return dress_layout(sample_layout(rng, cfg), rng, cfg)
