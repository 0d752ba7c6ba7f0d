"""Synthetic: coloured shapes on textured backgrounds, drawn on first use under DATASET.ROOT.

It has the real datasets' layout (synthetic/images/<class>/NNNN.png, split_zhou_Synthetic.json,
split_fewshot/), so demos and tests run every code path without downloading anything.
"""
import json
import os
import shutil
import tempfile

import numpy as np
from dassl.data.datasets import DATASET_REGISTRY
from PIL import Image

from .common import SplitDataset, make_datum, umask, write_split

COLOURS = {"red": (215, 40, 40), "green": (40, 170, 60), "blue": (45, 85, 225), "yellow": (230, 205, 35)}
SHAPES = ("circle", "square", "triangle", "ring")
# (colour, shape) in diagonal order: every colour and every shape recurs every four classes.
CLASSES = tuple(
    (colour, SHAPES[(index + offset) % len(SHAPES)])
    for offset in range(len(SHAPES))
    for index, colour in enumerate(COLOURS)
)
SETTINGS_FILE = "settings.json"
GENERATOR_VERSION = 1


def classname(label):
    """Reads naturally after "a photo of a": "red circle", "blue triangle"."""
    return " ".join(CLASSES[label])


def draw_image(label, index, size):
    """(size, size, 3) uint8: one shape of the class colour on a dim, grey, striped texture.

    Seeded by (label, index) only, so an image never depends on how many classes are generated.
    """
    rng = np.random.default_rng([label, index])
    coords = (np.arange(size, dtype=np.float64) + 0.5) / size
    y, x = np.meshgrid(coords, coords, indexing="ij")
    stripe_angle, phase = rng.uniform(0, np.pi), rng.uniform(0, 2 * np.pi)
    across = x * np.cos(stripe_angle) + y * np.sin(stripe_angle)
    stripes = np.sin(2 * np.pi * rng.uniform(3, 8) * across + phase)
    grey = rng.uniform(80, 170) + 18 * stripes + rng.normal(0, 6, (size, size))
    image = grey[..., None] + rng.uniform(-8, 8, 3)

    centre, radius = rng.uniform(0.32, 0.68, 2), rng.uniform(0.18, 0.26)
    angle = rng.uniform(0, 2 * np.pi)
    u = (x - centre[0]) * np.cos(angle) + (y - centre[1]) * np.sin(angle)
    v = (y - centre[1]) * np.cos(angle) - (x - centre[0]) * np.sin(angle)
    colour_name, shape = CLASSES[label]
    colour = np.array(COLOURS[colour_name]) + rng.uniform(-20, 20, 3)
    image[_shape_mask(shape, u, v, radius)] = colour
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _shape_mask(shape, u, v, radius):
    """Pixels inside `shape` of circumradius about `radius`, in coordinates (u, v) about its centre."""
    squared = u * u + v * v
    if shape == "circle":
        return squared <= radius**2
    if shape == "ring":
        return (squared <= radius**2) & (squared >= (0.55 * radius) ** 2)
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.8 * radius
    normals = (-np.pi / 2, np.pi / 6, 5 * np.pi / 6)  # outward edge normals of a triangle
    return np.all([u * np.cos(a) + v * np.sin(a) <= 0.65 * radius for a in normals], axis=0)


def check_settings(num_classes, images_per_class, image_size):
    """The generator settings as a dict, or an error naming the DATASET.SYNTHETIC key at fault."""
    limits = {
        "NUM_CLASSES": (num_classes, 2, len(CLASSES)),
        "IMAGES_PER_CLASS": (images_per_class, 4, None),
        "IMAGE_SIZE": (image_size, 16, None),
    }
    for key, (value, low, high) in limits.items():
        if not isinstance(value, int) or value < low or (high is not None and value > high):
            expected = f"an integer in [{low}, {high}]" if high else f"an integer >= {low}"
            raise ValueError(f"DATASET.SYNTHETIC.{key} is {value!r}; expected {expected}")
    return {
        "generator_version": GENERATOR_VERSION,
        "num_classes": num_classes,
        "images_per_class": images_per_class,
        "image_size": image_size,
    }


def ensure_generated(root, settings):
    """ROOT/synthetic, generated in a temporary folder and renamed into place when complete."""
    if not root:
        raise ValueError("Synthetic: DATASET.ROOT is empty; pass --root with a folder it may write to")
    root = os.path.abspath(os.path.expanduser(root))
    target = os.path.join(root, "synthetic")
    if not os.path.isdir(target):
        os.makedirs(root, exist_ok=True)
        tmp_dir = tempfile.mkdtemp(prefix=".synthetic-", dir=root)
        try:
            os.chmod(tmp_dir, 0o777 & ~umask())  # mkdtemp's 0700 would hide the dataset from other users
            write_dataset(tmp_dir, settings)
            try:
                os.rename(tmp_dir, target)
            except OSError:
                if not os.path.isdir(target):
                    raise  # otherwise a concurrent run finished first, and its copy is used
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        print(f"Generated the Synthetic dataset at {target}")
    _check_existing(target, settings)
    return target


def write_dataset(directory, settings):
    """Images, split file (per class: first 50 % train, next 20 % val, rest test) and settings."""
    per_class = settings["images_per_class"]
    n_train, n_val = round(per_class * 0.5), round(per_class * 0.2)
    image_dir = os.path.join(directory, "images")
    splits = ([], [], [])
    for label in range(settings["num_classes"]):
        folder = os.path.join(image_dir, "_".join(CLASSES[label]))
        os.makedirs(folder)
        for index in range(per_class):
            path = os.path.join(folder, f"{index:04d}.png")
            Image.fromarray(draw_image(label, index, settings["image_size"])).save(path, format="PNG")
            part = 0 if index < n_train else 1 if index < n_train + n_val else 2
            splits[part].append(make_datum(path, label, classname(label), "the generator"))
    write_split(*splits, os.path.join(directory, "split_zhou_Synthetic.json"), image_dir)
    with open(os.path.join(directory, SETTINGS_FILE), "w", encoding="utf-8") as file:
        json.dump(settings, file, indent=4, sort_keys=True)


def _check_existing(target, settings):
    settings_path = os.path.join(target, SETTINGS_FILE)
    found = None
    if os.path.isfile(settings_path):
        with open(settings_path, encoding="utf-8") as file:
            found = json.load(file)
    if found != settings:
        holds = f"a Synthetic dataset made with {json.dumps(found)}" if found else "no generated dataset"
        raise ValueError(
            f"{target} holds {holds}, but the config asks for {json.dumps(settings)}. "
            f"Delete {target} to regenerate it, or point DATASET.ROOT at another folder."
        )


@DATASET_REGISTRY.register()
class Synthetic(SplitDataset):
    """Drawn from DATASET.SYNTHETIC.{NUM_CLASSES, IMAGES_PER_CLASS, IMAGE_SIZE}, the same each time."""

    dataset_dir = "synthetic"
    image_subdir = "images"

    def __init__(self, cfg):
        keys = cfg.DATASET.SYNTHETIC
        generator_settings = check_settings(keys.NUM_CLASSES, keys.IMAGES_PER_CLASS, keys.IMAGE_SIZE)
        ensure_generated(cfg.DATASET.ROOT, generator_settings)
        super().__init__(cfg)
