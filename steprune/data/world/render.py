"""Deterministic rasteriser of built-in-world scenes: numpy masks -> PIL RGB image (no fonts, no torch).

python -m steprune.data.world.render --seed 0 --out /tmp/world_example.png   # sample + save one scene
"""

from __future__ import annotations

import argparse
from functools import cache

import numpy as np
from PIL import Image

from steprune.data.world.config import PALETTE, WorldConfig
from steprune.data.world.glyphs import glyph_mask
from steprune.data.world.scene import Scene, SceneObject, sample_scene


@cache
def shape_mask(shape: str, size: int) -> np.ndarray:
    """Bool mask (size, size) of `shape` filling its box, sampled at pixel centres; read-only (cached)."""
    u = (np.arange(size) + 0.5) / size - 0.5  # pixel centres in [-0.5, 0.5]
    dx, dy = np.abs(u)[None, :], np.abs(u)[:, None]  # (1, S), (S, 1)
    masks = {
        "square": np.ones((size, size), dtype=bool),
        "circle": dx**2 + dy**2 <= 0.25,
        "triangle": np.abs(u)[None, :] <= (u[:, None] + 0.5) / 2 + 0.5 / size,  # apex up, base at the bottom
        "cross": (dx <= 0.19) | (dy <= 0.19),
        "diamond": dx + dy <= 0.5,
    }
    assert shape in masks, f"unknown shape {shape!r}; known: {sorted(masks)}"
    mask = np.broadcast_to(masks[shape], (size, size)).copy()
    mask.flags.writeable = False
    return mask


def glyph_ink(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    """Glyph colour that contrasts with the object colour: black on light colours, white on dark ones."""
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _draw_object(img: np.ndarray, obj: SceneObject) -> None:
    region = img[obj.y : obj.y + obj.size, obj.x : obj.x + obj.size]  # (S, S, 3) view
    mask = shape_mask(obj.shape, obj.size)
    rgb = PALETTE[obj.color]
    region[mask] = rgb
    if obj.glyph is not None:
        g = glyph_mask(obj.glyph, max(1, obj.size // 8))
        gy, gx = (obj.size - g.shape[0]) // 2, (obj.size - g.shape[1]) // 2
        ink = np.zeros_like(mask)
        ink[gy : gy + g.shape[0], gx : gx + g.shape[1]] = g
        region[ink & mask] = glyph_ink(rgb)


def render_scene(scene: Scene, cfg: WorldConfig) -> Image.Image:
    """Render `scene` as an RGB image of cfg.image_size^2; the same scene always gives the same pixels."""
    w = cfg.image_size
    assert scene.image_size == w, f"scene was sampled for {scene.image_size}px images, cfg renders {w}px"
    rng = np.random.default_rng(scene.texture_seed)
    img = np.empty((w, w, 3), dtype=np.float64)  # (H, W, 3)
    img[:] = scene.background
    yy, xx = np.mgrid[0:w, 0:w] / w
    texture = np.zeros((w, w))
    for _ in range(2):  # two random low-frequency waves
        fx, fy, phase = rng.uniform(0.5, 3.0), rng.uniform(0.5, 3.0), rng.uniform(0, 2 * np.pi)
        texture += np.sin(2 * np.pi * (fx * xx + fy * yy) + phase) / 2
    img += 255 * cfg.background_texture * texture[..., None]
    for s in scene.specks:
        img[s.y : s.y + s.size, s.x : s.x + s.size] = s.rgb
    for obj in scene.objects:
        _draw_object(img, obj)
    img += rng.normal(0.0, 255 * cfg.noise, size=img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8))  # (H, W, 3) uint8 -> RGB


def main() -> None:
    parser = argparse.ArgumentParser(description="Sample one built-in-world scene and save it as a PNG.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="world_example.png")
    args = parser.parse_args()
    cfg = WorldConfig()
    scene = sample_scene(np.random.default_rng(args.seed), cfg)
    render_scene(scene, cfg).save(args.out)
    print(f"{args.out}: {scene.num_objects} objects, {len(scene.specks)} specks\n{scene.to_json()}")


if __name__ == "__main__":
    main()
