"""The generated Synthetic dataset: layout, class names, compositional halves, nuisances, pinned
images, determinism, atomic generation."""
import hashlib
import json
import math
import os

import numpy as np
import pytest
from PIL import Image

from tests.conftest import requires_dassl
from tests.dataset_trees import read

pytestmark = requires_dassl

DEFAULT_CLASSNAMES = [
    "red circle", "green square", "blue triangle", "yellow ring", "red square", "green triangle", "blue ring",
    "yellow circle", "red triangle", "green ring", "blue circle", "yellow square", "red ring", "green circle",
    "blue square", "yellow triangle",
]
# SHA-256 of draw_image(label, index, 64)'s pixel bytes (not PNG bytes, which depend on zlib). They pin the
# generator: when a change moves them, bump GENERATOR_VERSION so that old folders are refused, then update them.
PINNED_IMAGES = {
    (0, 0): "f05d005facc70d24e9209a2ba4236ef94d70653d51a7891c69db00d56ce96df2",
    (0, 39): "7f9d87d90ae8a34be6f08ace8cb69658780a19f102c6b08c8cb0b7b2a879824e",
    (7, 0): "30b3327261cec3a0ab07b99c67d5efefa3224ed63862cd6045c22b071f74fb3b",
    (7, 39): "a6c4ece26025a93bb9b10dcbebf7508e6e20935dbe49f3d316c2aba3a6eb757e",
    (15, 0): "be737b81241987a87351435fe55121cad97d802542e1b0b0d8218e1b41753299",
    (15, 39): "a9210e734af84999a657082e88ba715f7c43bf99f8d68ecc2f1a0e136c08006b",
}


def settings(num_classes=10, images_per_class=24, image_size=64):
    from datasets.synthetic import check_settings

    return check_settings(num_classes, images_per_class, image_size)


def all_files(directory):
    found = {}
    for folder, _, names in os.walk(directory):
        for name in names:
            with open(os.path.join(folder, name), "rb") as file:
                found[os.path.relpath(os.path.join(folder, name), directory)] = file.read()
    return found


def test_default_layout_split_and_class_names(tmp_path):
    dataset = read("Synthetic", tmp_path)
    dataset_dir = tmp_path / "synthetic"
    assert sorted(os.listdir(dataset_dir)) == ["images", "settings.json", "split_zhou_Synthetic.json"]
    folders = sorted(name.replace(" ", "_") for name in DEFAULT_CLASSNAMES)
    assert sorted(os.listdir(dataset_dir / "images")) == folders
    assert dataset.classnames == DEFAULT_CLASSNAMES
    # 40 per class: 20 train, 8 val, 12 test
    assert (len(dataset.train_x), len(dataset.val), len(dataset.test)) == (320, 128, 192)

    with open(dataset_dir / "split_zhou_Synthetic.json") as file:
        split = json.load(file)
    green_square = {key: [row[0] for row in rows if row[1] == 1] for key, rows in split.items()}
    assert green_square == {
        "train": [f"green_square/{index:04d}.png" for index in range(20)],
        "val": [f"green_square/{index:04d}.png" for index in range(20, 28)],
        "test": [f"green_square/{index:04d}.png" for index in range(28, 40)],
    }
    assert split["test"][-1] == ["yellow_triangle/0039.png", 15, "yellow triangle"]
    with Image.open(dataset.test[0].impath) as image:
        assert (image.size, image.mode) == ((64, 64), "RGB")


def test_fewshot_cache_and_base_classes(tmp_path):
    dataset = read("Synthetic", tmp_path, shots=4, subsample="base")
    assert dataset.classnames == DEFAULT_CLASSNAMES[:8]
    assert (len(dataset.train_x), len(dataset.val), len(dataset.test)) == (32, 32, 96)
    assert os.path.isfile(tmp_path / "synthetic" / "split_fewshot" / "shot_4-seed_1.pkl")
    again = read("Synthetic", tmp_path, shots=4, subsample="base", global_seed=7)
    assert [item.impath for item in again.train_x] == [item.impath for item in dataset.train_x]


def test_generation_is_deterministic(tmp_path):
    from datasets.synthetic import ensure_generated

    first = all_files(ensure_generated(str(tmp_path / "a"), settings()))
    second = all_files(ensure_generated(str(tmp_path / "b"), settings()))
    assert first == second and len(first) == 10 * 24 + 2
    assert first["images/red_circle/0000.png"] != first["images/red_circle/0001.png"]


def test_pinned_images():
    from datasets.synthetic import draw_image

    digests = {key: hashlib.sha256(draw_image(*key, 64).tobytes()).hexdigest() for key in PINNED_IMAGES}
    assert digests == PINNED_IMAGES


def test_base_and_new_halves_pair_the_same_colours_and_shapes_differently():
    from datasets.synthetic import CLASSES, COLOURS, SHAPES

    def halves(num_classes):
        half = math.ceil(num_classes / 2)  # base: the first ceil(n/2) labels, as datasets/common.py subsamples
        return CLASSES[:half], CLASSES[half:num_classes]

    def colours_and_shapes(pairs):
        return {colour for colour, _ in pairs}, {shape for _, shape in pairs}

    every = (set(COLOURS), set(SHAPES))
    base, new = halves(16)
    assert colours_and_shapes(base) == colours_and_shapes(new) == every
    assert not set(base) & set(new)
    # The test suite's 10 classes: base holds every colour and shape, new every colour and three shapes.
    base, new = halves(10)
    assert colours_and_shapes(base) == every
    assert colours_and_shapes(new) == (set(COLOURS), set(SHAPES) - {"square"})
    assert not set(base) & set(new)


def test_size_position_and_background_vary_within_every_class():
    from datasets import scenes
    from datasets.synthetic import CLASSES, scene_of

    drawn = [[scene_of(label, index) for index in range(40)] for label in range(len(CLASSES))]
    for label, class_scenes in enumerate(drawn):
        assert {scene[:2] for scene in class_scenes} == {CLASSES[label]}
        for attribute in ("size", "position", "background"):
            assert len({getattr(scene, attribute) for scene in class_scenes}) > 1, (label, attribute)
    every = [scene for class_scenes in drawn for scene in class_scenes]
    assert {scene.size for scene in every} == set(scenes.SIZES)
    assert {scene.position for scene in every} == set(scenes.POSITIONS)
    assert {scene.background for scene in every} == set(scenes.BACKGROUNDS)


def test_classes_are_separable_by_colour_and_shape():
    """Nearest class mean on (shape colour, compactness, filled centre) features: all 16 classes."""
    from datasets.synthetic import CLASSES, draw_image

    def features(image):
        pixels = image.astype(np.float64)
        shape = pixels.max(axis=2) - pixels.min(axis=2) > 40  # saturated pixels (faded); the texture is grey
        rows, cols = np.nonzero(shape)
        centre_row, centre_col = rows.mean(), cols.mean()
        compactness = len(rows) / ((rows - centre_row) ** 2 + (cols - centre_col) ** 2).max()
        filled_centre = shape[int(round(centre_row)), int(round(centre_col))]
        return np.array([*(pixels[shape].mean(axis=0) / 255), compactness / 3, float(filled_centre)])

    means = np.array([np.mean([features(draw_image(label, index, 64)) for index in range(12)], axis=0)
                      for label in range(len(CLASSES))])
    correct = [
        np.argmin(((means - features(draw_image(label, index, 64))) ** 2).sum(axis=1)) == label
        for label in range(len(CLASSES)) for index in range(17, 24)
    ]
    assert np.mean(correct) >= 0.95


def test_interrupted_generation_leaves_nothing_behind(tmp_path, monkeypatch):
    from datasets import synthetic

    real_draw, calls = synthetic.draw_image, []

    def failing_draw(label, index, size):
        calls.append(index)
        if len(calls) > 5:
            raise KeyboardInterrupt
        return real_draw(label, index, size)

    monkeypatch.setattr(synthetic, "draw_image", failing_draw)
    with pytest.raises(KeyboardInterrupt):
        synthetic.ensure_generated(str(tmp_path), settings())
    assert os.listdir(tmp_path) == []

    monkeypatch.setattr(synthetic, "draw_image", real_draw)
    synthetic.ensure_generated(str(tmp_path), settings())
    assert os.listdir(tmp_path) == ["synthetic"]


def test_concurrent_generation_keeps_the_copy_that_finished_first(tmp_path, monkeypatch):
    from datasets import synthetic

    real_write = synthetic.write_dataset

    def write_while_another_run_finishes(directory, generator_settings):
        other = tmp_path / "other_run"
        real_write(str(other), generator_settings)
        (other / "written_by_other_run").touch()
        os.rename(other, tmp_path / "synthetic")
        real_write(directory, generator_settings)

    monkeypatch.setattr(synthetic, "write_dataset", write_while_another_run_finishes)
    target = synthetic.ensure_generated(str(tmp_path), settings())
    assert os.path.isfile(os.path.join(target, "written_by_other_run"))
    assert os.listdir(tmp_path) == ["synthetic"]


def test_settings_are_checked(tmp_path):
    from datasets.synthetic import ensure_generated

    ensure_generated(str(tmp_path), settings(num_classes=16, images_per_class=4, image_size=16))
    mismatch = r"made with .*\"num_classes\": 16.* asks for .*\"num_classes\": 12.*Delete .*synthetic to"
    with pytest.raises(ValueError, match=mismatch):
        ensure_generated(str(tmp_path), settings(num_classes=12, images_per_class=4, image_size=16))

    settings_path = tmp_path / "synthetic" / "settings.json"
    settings_path.write_text(json.dumps({**json.loads(settings_path.read_text()), "generator_version": 1}))
    old_generator = r"made with .*\"generator_version\": 1.* asks for .*\"generator_version\": 3.*Delete "
    with pytest.raises(ValueError, match=old_generator):
        ensure_generated(str(tmp_path), settings(num_classes=16, images_per_class=4, image_size=16))

    with pytest.raises(ValueError, match=r"SYNTHETIC.NUM_CLASSES is 17; expected an integer in \[2, 16\]"):
        settings(num_classes=17)
    with pytest.raises(ValueError, match=r"SYNTHETIC.IMAGES_PER_CLASS is 3; expected an integer >= 4"):
        settings(images_per_class=3)
