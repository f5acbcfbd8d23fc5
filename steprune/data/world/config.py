"""Difficulty knobs of the built-in world: procedurally generated scenes of coloured shapes + QA.

Every field is a knob with a docstring, so the config doubles as the CLI schema (jsonargparse).

    from steprune.data.world import WorldConfig
    easy = WorldConfig(max_objects=3, glyph_prob=0.0, kind_weights={"attribute": 1.0, "existence": 1.0})
    hard = WorldConfig(max_distractors=24, noise=0.06, grid_aligned=False)
"""

from __future__ import annotations

from dataclasses import dataclass, field

PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "orange": (245, 140, 20),
    "white": (240, 240, 240),
    "cyan": (40, 210, 220),
}
"""Every colour the world knows, with well-separated RGB values; `WorldConfig.colors` picks from it."""

SHAPES: tuple[str, ...] = ("square", "circle", "triangle", "cross", "diamond")
"""Every shape the renderer can draw."""

QUESTION_KINDS: tuple[str, ...] = ("attribute", "existence", "counting", "spatial", "reading")
"""Question kinds that appear in every split."""

CAPTION_KIND = "describe"
"""The caption kind: training split only, never in val/test."""

LOCATE_KIND = "locate"
"""'Where is the <unique object>?' -> its coarse 3x3 position: a training-only turn (never a record's own
question, never in val/test) that teaches the language model to find one object before comparing two."""


def _default_kind_weights() -> dict[str, float]:
    return dict.fromkeys(QUESTION_KINDS, 1.0)


@dataclass(frozen=True)
class WorldConfig:
    """All difficulty knobs of the synthetic world (scene sampling, rendering, question mix)."""

    image_size: int = 96
    """Side of the square RGB image in pixels."""
    patch_size: int = 8
    """Side of one vision-tower patch in pixels: the image is an (image_size / patch_size)^2 token grid."""
    min_objects: int = 1
    """Fewest objects in a scene (scene complexity lower bound)."""
    max_objects: int = 8
    """Most objects in a scene; fewer are placed when the grid has no free room left."""
    min_cells: int = 1
    """Smallest object side, in patches."""
    max_cells: int = 2
    """Largest object side, in patches."""
    grid_aligned: bool = True
    """Snap objects to the patch grid (much easier to learn from scratch); False jitters them by pixels."""
    min_gap: int = 1
    """Free patches kept between object footprints, so objects never touch or overlap."""
    background_texture: float = 0.08
    """Amplitude (fraction of 255) of the smooth background texture."""
    noise: float = 0.03
    """Standard deviation (fraction of 255) of the per-pixel Gaussian noise over the whole image."""
    max_distractors: int = 12
    """Most distractor specks (tiny coloured dots in free space); each scene draws 0..max uniformly."""
    distractor_px: int = 2
    """Largest distractor speck side in pixels (keep it well below patch_size)."""
    colors: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
    """Object colours, names from `PALETTE`."""
    shapes: tuple[str, ...] = SHAPES
    """Object shapes, names from `SHAPES`."""
    glyph_prob: float = 0.5
    """Probability that an object whose shape is in `glyph_shapes` carries a digit glyph (for reading)."""
    glyph_shapes: tuple[str, ...] = ("square", "circle")
    """Shapes that may carry a glyph (the 5x7 digit is only legible on roomy shapes)."""
    kind_weights: dict[str, float] = field(default_factory=_default_kind_weights)
    """Relative frequency of each question kind (keys from `QUESTION_KINDS`; missing keys weigh 0)."""
    caption_prob: float = 0.15
    """Probability that a *training* record is a `describe` caption instead of a question."""

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {self.min_objects}..{self.max_objects}")
        if not 1 <= self.min_cells <= self.max_cells <= self.grid_size:
            raise ValueError(f"need 1 <= min_cells <= max_cells <= {self.grid_size}")
        if self.min_gap < 0 or self.max_distractors < 0 or not 1 <= self.distractor_px < self.patch_size:
            raise ValueError("min_gap and max_distractors must be >= 0 and 1 <= distractor_px < patch_size")
        unknown = [c for c in self.colors if c not in PALETTE] + [s for s in self.shapes if s not in SHAPES]
        unknown += [s for s in self.glyph_shapes if s not in self.shapes]
        unknown += [k for k in self.kind_weights if k not in QUESTION_KINDS]
        if unknown:
            raise ValueError(
                f"unknown names {unknown}; colours: {sorted(PALETTE)}, shapes: {SHAPES}, "
                f"kinds: {QUESTION_KINDS} (glyph_shapes must be among shapes)"
            )
        if len(set(self.colors)) < 2 or len(set(self.shapes)) < 2:
            raise ValueError("need at least two distinct colours and two distinct shapes")
        if any(w < 0 for w in self.kind_weights.values()) or sum(self.kind_weights.values()) <= 0:
            raise ValueError(f"kind_weights must be >= 0 with a positive sum, got {self.kind_weights}")
        if self.kind_weights.get("reading", 0.0) > 0 and (self.glyph_prob <= 0 or not self.glyph_shapes):
            raise ValueError("reading questions need glyph_prob > 0 and a non-empty glyph_shapes")
        if not (0.0 <= self.glyph_prob <= 1.0 and 0.0 <= self.caption_prob < 1.0):
            raise ValueError("glyph_prob must be in [0, 1] and caption_prob in [0, 1)")

    @property
    def grid_size(self) -> int:
        """Patches per image side (12 for the defaults, i.e. 144 visual tokens)."""
        return self.image_size // self.patch_size
