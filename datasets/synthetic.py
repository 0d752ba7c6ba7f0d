"""Synthetic: compositional classes of drawn scenes, generated on first use under DATASET.ROOT.

A class is a (colour, shape) pair; each image is a scene of datasets/scenes.py with the class's colour
and shape and a random size, position and background, so base-to-new asks for colour-shape pairs never
seen in training, among nuisances that say nothing of the class. The scenes are faded (FADE), which
makes Synthetic a transfer domain for CLIPs pretrained on the unfaded scenes. It has the real datasets' layout
(synthetic/images/<class>/NNNN.png, split_zhou_Synthetic.json, split_fewshot/), so demos and tests
run every code path without downloading anything.
"""
import json
import os
import shutil
import tempfile

import numpy as np
from dassl.data.datasets import DATASET_REGISTRY
from PIL import Image

from . import scenes
from .common import SplitDataset, make_datum, umask, write_split

# (colour, shape) in diagonal order over Synthetic's four colours and four shapes, the first four of
# datasets/scenes.py's: every colour and every shape recurs every four classes, so the base half and the
# new half of the 16 classes each hold all four colours and all four shapes, in pairs the other half lacks.
COLOURS, SHAPES = tuple(scenes.COLOURS)[:4], scenes.SHAPES[:4]
CLASSES = tuple(
    (colour, SHAPES[(index + offset) % len(SHAPES)])
    for offset in range(len(SHAPES))
    for index, colour in enumerate(COLOURS)
)
# Contrast of Synthetic's images about mid-grey, relative to the pretraining scenes'. A faded print is
# a domain the tiny CLIPs were not pretrained on, as satellite photos (EuroSAT) or textures (DTD) are
# for CLIP: measured with the pretrained student, its zero-shot accuracy on the base classes drops
# by about 30 points while a linear probe on its image features loses about 10, so prompt learning has
# something to recover, as on the real benchmarks; colour and shape stay visible.
FADE = 0.45
SETTINGS_FILE = "settings.json"
GENERATOR_VERSION = 3


def classname(label):
    """Reads naturally after "a photo of a": "red circle", "blue triangle"."""
    return " ".join(CLASSES[label])


def scene_of(label, index):
    """The scenes.Scene image `index` of class `label` shows: the class's colour and shape, and a size,
    position and background drawn at random."""
    return _scene_and_rng(label, index)[0]


def draw_image(label, index, size):
    """(size, size, 3) uint8: the scene of scene_of(label, index), drawn by scenes.draw_scenes, faded.

    Seeded by (label, index) only, so an image never depends on how many classes are generated.
    """
    scene, rng = _scene_and_rng(label, index)
    drawn = scenes.draw_scenes([scene], rng, size)[0].astype(np.float32)
    return np.rint(128 + FADE * (drawn - 128)).astype(np.uint8)


def _scene_and_rng(label, index):
    """The scene, then the generator its continuous details (exact size, place, colour, texture) come from."""
    rng = np.random.default_rng([label, index])
    return scenes.sample_scenes(rng, [CLASSES[label]])[0], rng


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
