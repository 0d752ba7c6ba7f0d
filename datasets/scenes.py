"""Drawn scenes: one coloured shape on a grey textured background, described by five attributes.

The attribute vocabulary (colour, shape, size, position, background), the drawing and the captions
live here, apart from any Dassl reader, so the tiny-CLIP pretraining (scripts/pretrain_tiny_clip.py)
and the Synthetic benchmark share them: datasets/synthetic.py draws its images with draw_scenes (its
classes are pairs of the first four colours and the first four shapes, each at a random size,
position and background) and fades them. Importing this module is light: NumPy only.
"""
from typing import NamedTuple

import numpy as np

# RGB before jitter; the first four are Synthetic's values.
COLOURS = {
    "red": (215, 40, 40), "green": (40, 170, 60), "blue": (45, 85, 225), "yellow": (230, 205, 35),
    "orange": (240, 135, 30), "purple": (135, 55, 190), "white": (245, 245, 245), "black": (25, 25, 25),
}
# Distinct under any rotation (a diamond would be a turned square); the first four are Synthetic's.
SHAPES = ("circle", "square", "triangle", "ring", "star", "cross")
# Circumradius as a fraction of the image side.
SIZES = {"small": (0.12, 0.16), "medium": (0.18, 0.26), "large": (0.28, 0.34)}
# Anchor (x, y) from the top left, in fractions of the side, and how a caption says it.
POSITIONS = {
    "top left": ((0.28, 0.28), "in the top left corner"),
    "top": ((0.5, 0.28), "near the top"),
    "top right": ((0.72, 0.28), "in the top right corner"),
    "left": ((0.28, 0.5), "on the left"),
    "centre": ((0.5, 0.5), "in the centre"),
    "right": ((0.72, 0.5), "on the right"),
    "bottom left": ((0.28, 0.72), "in the bottom left corner"),
    "bottom": ((0.5, 0.72), "near the bottom"),
    "bottom right": ((0.72, 0.72), "in the bottom right corner"),
}
BACKGROUNDS = ("plain", "striped", "checkered", "dotted")
POSITION_JITTER = 0.07  # so neighbouring positions never overlap: anchors are 0.22 apart
COLOUR_JITTER = 20  # per channel
# (colour, shape) pairs never drawn nor named in pretraining: zero-shot on them tests composition.
# One per colour, none of Synthetic's 16 classes, each shape at most twice.
HELD_OUT_COMBOS = (
    ("red", "cross"), ("green", "star"), ("blue", "cross"), ("yellow", "star"),
    ("orange", "circle"), ("purple", "triangle"), ("white", "square"), ("black", "ring"),
)
ALL_COMBOS = tuple((colour, shape) for colour in COLOURS for shape in SHAPES)
SEEN_COMBOS = tuple(combo for combo in ALL_COMBOS if combo not in HELD_OUT_COMBOS)
CAPTION_FRAMES = (
    "a photo of {}.", "a drawing of {}.", "an image of {}.", "a picture of {}.", "{}.",
    "there is {} in the picture.", "a rendering of {}.", "a simple drawing of {}.",
)


class Scene(NamedTuple):
    colour: str
    shape: str
    size: str = "medium"
    position: str = "centre"
    background: str = "striped"


def combo_name(colour, shape):
    """The class name of a (colour, shape) pair, as Synthetic's classname() writes it: "red circle"."""
    return f"{colour} {shape}"


def sample_scenes(rng, combos):
    """One scene per (colour, shape) in `combos`, its size, position and background uniform."""
    count = len(combos)
    sizes = rng.choice(tuple(SIZES), size=count)
    positions = rng.choice(tuple(POSITIONS), size=count)
    backgrounds = rng.choice(BACKGROUNDS, size=count)
    return [
        Scene(colour, shape, str(size), str(position), str(background))
        for (colour, shape), size, position, background in zip(combos, sizes, positions, backgrounds)
    ]


def _with_article(phrase):
    return f"{'an' if phrase[0] in 'aeiou' else 'a'} {phrase}"


def describe(scene, rng):
    """A caption that always names colour and shape, and each other attribute half the time,
    in a randomly chosen frame: "a photo of a small red circle near the top on a striped background."."""
    noun = f"{scene.colour} {scene.shape}"
    if rng.random() < 0.5:
        noun = f"{scene.size} {noun}"
    phrase = _with_article(noun)
    if rng.random() < 0.5:
        phrase = f"{phrase} {POSITIONS[scene.position][1]}"
    if rng.random() < 0.5:
        background = _with_article(f"{scene.background} background")
        phrase = f"{background} with {phrase}" if rng.random() < 0.5 else f"{phrase} on {background}"
    return CAPTION_FRAMES[rng.integers(len(CAPTION_FRAMES))].format(phrase)


def draw_scenes(scenes, rng, size):
    """(N, size, size, 3) uint8 images of `scenes`; every continuous detail (exact size, place,
    rotation, colour and texture) is drawn from `rng`, in a fixed order, whatever the attributes."""
    count = len(scenes)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    grey, tint = _backgrounds([scene.background for scene in scenes], rng, x, y)

    radius_range = np.array([SIZES[scene.size] for scene in scenes])
    radius = rng.uniform(radius_range[:, 0], radius_range[:, 1]).astype(np.float32)
    anchor = np.array([POSITIONS[scene.position][0] for scene in scenes])
    centre = anchor + rng.uniform(-POSITION_JITTER, POSITION_JITTER, (count, 2))
    centre = np.clip(centre, 0.75 * radius[:, None], 1 - 0.75 * radius[:, None]).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi, count).astype(np.float32)
    colour = np.array([COLOURS[scene.colour] for scene in scenes]) + rng.uniform(
        -COLOUR_JITTER, COLOUR_JITTER, (count, 3))

    dx, dy = x - centre[:, 0, None, None], y - centre[:, 1, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u, v = dx * cos + dy * sin, dy * cos - dx * sin
    shapes = np.array([scene.shape for scene in scenes])
    inside = np.empty((count, size, size), dtype=bool)
    for shape in set(shapes):
        chosen = shapes == shape
        inside[chosen] = shape_mask(shape, u[chosen], v[chosen], radius[chosen, None, None])
    # Channel by channel: a (N, S, S, 3) broadcast costs several times as much.
    image = np.empty((count, size, size, 3), dtype=np.uint8)
    for channel in range(3):
        paint = colour[:, channel, None, None].astype(np.float32)
        values = np.where(inside, paint, grey + tint[:, channel, None, None])
        image[..., channel] = np.clip(np.rint(values, out=values), 0, 255, out=values)
    return image


def _backgrounds(kinds, rng, x, y):
    """(N, S, S) grey textures and (N, 3) tints: a grey level, a tint and noise, with a pattern of each kind."""
    count, side = len(kinds), x.shape[0]
    level = rng.uniform(80, 170, count).astype(np.float32)
    tint = rng.uniform(-8, 8, (count, 3)).astype(np.float32)
    amplitude = (rng.uniform(12, 35, count) * rng.choice((-1.0, 1.0), count)).astype(np.float32)
    frequency = rng.uniform(3, 8, count).astype(np.float32)
    angle = rng.uniform(0, np.pi, count).astype(np.float32)
    phase = rng.uniform(0, 2 * np.pi, (count, 2)).astype(np.float32)
    # Uniform noise of standard deviation 6: Gaussian draws cost five times as much.
    grey = (rng.random((count, side, side), dtype=np.float32) - 0.5) * np.float32(6 * np.sqrt(12))
    grey += level[:, None, None]

    kinds = np.array(kinds)
    for kind in ("striped", "checkered", "dotted"):
        chosen = kinds == kind
        if not chosen.any():
            continue
        cos, sin = np.cos(angle[chosen])[:, None, None], np.sin(angle[chosen])[:, None, None]
        wave_frequency = 2 * np.pi * frequency[chosen, None, None]
        wave_a = np.cos(wave_frequency * (x * cos + y * sin) + phase[chosen, 0, None, None])
        if kind == "striped":
            pattern = wave_a
        else:
            wave_b = np.cos(wave_frequency * (y * cos - x * sin) + phase[chosen, 1, None, None])
            # Checks: the sign of two crossed waves; dots: round spots where both waves peak.
            pattern = np.sign(wave_a * wave_b) if kind == "checkered" else ((1 + wave_a) * (1 + wave_b) > 2.4)
        grey[chosen] += amplitude[chosen, None, None] * pattern
    return grey, tint


def shape_mask(shape, u, v, radius):
    """Pixels inside `shape` of circumradius about `radius`, in coordinates (u, v) about its centre."""
    squared = u * u + v * v
    if shape == "circle":
        return squared <= radius**2
    if shape == "ring":
        return (squared <= radius**2) & (squared >= (0.55 * radius) ** 2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * radius
    if shape == "triangle":
        return _inside_lines(u, v, (-np.pi / 2, np.pi / 6, 5 * np.pi / 6), 0.65 * radius) == 3
    if shape == "star":
        # A filled five-pointed star is where at least four of its five edge lines have the centre's side.
        tip = 1.2 * radius
        normals = [np.pi / 2 + 2 * np.pi * k / 5 for k in range(5)]
        return _inside_lines(u, v, normals, tip * np.cos(2 * np.pi / 5)) >= 4
    if shape == "cross":
        arm, half_width = 0.9 * radius, 0.3 * radius
        abs_u, abs_v = np.abs(u), np.abs(v)
        return ((abs_u <= arm) & (abs_v <= half_width)) | ((abs_v <= arm) & (abs_u <= half_width))
    raise ValueError(f"shape {shape!r} is not one of {', '.join(SHAPES)}")


def _inside_lines(u, v, normal_angles, distance):
    """How many of the lines {p : p . n = distance}, n the outward normals at `normal_angles`, have p on the
    centre's side."""
    return sum((u * np.cos(a) + v * np.sin(a) <= distance).astype(np.int64) for a in normal_angles)
