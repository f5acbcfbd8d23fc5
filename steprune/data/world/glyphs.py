"""A 5x7 pixel font for the digits 0-9, so the world never depends on system fonts.

from steprune.data.world.glyphs import glyph_mask
glyph_mask(7, scale=2)   # (14, 10) bool array, True where the digit is inked
"""

from __future__ import annotations

from functools import cache

import numpy as np

GLYPH_W, GLYPH_H = 5, 7

FONT_5X7: dict[int, tuple[str, ...]] = {
    0: (".###.", "#...#", "#..##", "#.#.#", "##..#", "#...#", ".###."),
    1: ("..#..", ".##..", "..#..", "..#..", "..#..", "..#..", ".###."),
    2: (".###.", "#...#", "....#", "...#.", "..#..", ".#...", "#####"),
    3: ("####.", "....#", "....#", ".###.", "....#", "....#", "####."),
    4: ("...#.", "..##.", ".#.#.", "#..#.", "#####", "...#.", "...#."),
    5: ("#####", "#....", "####.", "....#", "....#", "#...#", ".###."),
    6: ("..##.", ".#...", "#....", "####.", "#...#", "#...#", ".###."),
    7: ("#####", "....#", "...#.", "..#..", ".#...", ".#...", ".#..."),
    8: (".###.", "#...#", "#...#", ".###.", "#...#", "#...#", ".###."),
    9: (".###.", "#...#", "#...#", ".####", "....#", "...#.", ".##.."),
}
"""Rows of each digit, top to bottom; '#' is ink."""


@cache
def glyph_mask(digit: int, scale: int = 1) -> np.ndarray:
    """Bool mask (7*scale, 5*scale) of `digit`, nearest-neighbour upscaled; read-only (cached)."""
    assert digit in FONT_5X7, f"no glyph for {digit!r}; the font has digits 0-9"
    assert scale >= 1, f"scale must be >= 1, got {scale}"
    mask = np.array([[c == "#" for c in row] for row in FONT_5X7[digit]], dtype=bool)  # (7, 5)
    mask = mask.repeat(scale, axis=0).repeat(scale, axis=1)
    mask.flags.writeable = False
    return mask
