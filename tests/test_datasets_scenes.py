"""datasets/scenes.py: Synthetic's colours and shapes kept, geometry of the new shapes, attributes
drawn where and as large as named, captions that name the scene, held-out pairs, determinism."""
import numpy as np
import pytest

from datasets import scenes
from tests.conftest import requires_dassl


def synthetic_module():
    from datasets import synthetic  # a Dassl reader: imported only when Dassl is there

    return synthetic


@requires_dassl
def test_synthetic_images_show_their_scenes_where_named():
    synthetic = synthetic_module()
    assert synthetic.COLOURS == tuple(scenes.COLOURS)[:4] and synthetic.SHAPES == scenes.SHAPES[:4]
    for label, (colour, shape) in enumerate(synthetic.CLASSES):
        for index in range(3):
            scene = synthetic.scene_of(label, index)
            assert (scene.colour, scene.shape) == (colour, shape)
            faded_colour = 128 + synthetic.FADE * (np.array(scenes.COLOURS[colour]) - 128)
            rows, cols = np.nonzero(shape_pixels(synthetic.draw_image(label, index, 64), faded_colour))
            x, y = scenes.POSITIONS[scene.position][0]
            assert abs(cols.mean() / 64 - x) < 0.11 and abs(rows.mean() / 64 - y) < 0.11, scene


@requires_dassl
def test_every_synthetic_class_is_a_pair_the_pretraining_draws():
    synthetic = synthetic_module()
    names = [synthetic.classname(label) for label in range(len(synthetic.CLASSES))]
    seen = [scenes.combo_name(*combo) for combo in scenes.SEEN_COMBOS]
    assert set(names) <= set(seen)


def test_held_out_pairs_one_per_colour_and_never_seen():
    assert sorted(colour for colour, _ in scenes.HELD_OUT_COMBOS) == sorted(scenes.COLOURS)
    assert not set(scenes.HELD_OUT_COMBOS) & set(scenes.SEEN_COMBOS)
    assert len(scenes.SEEN_COMBOS) + len(scenes.HELD_OUT_COMBOS) == len(scenes.COLOURS) * len(scenes.SHAPES)


def polar(radius, angle):
    return radius * np.cos(angle), radius * np.sin(angle)


def test_star_has_five_tips_and_notches_between_them():
    radius = 0.25
    tip = 1.2 * radius  # the star's circumradius
    for k in range(5):
        tip_angle = np.pi / 2 + 2 * np.pi * k / 5
        notch_angle = tip_angle + np.pi / 5
        assert scenes.shape_mask("star", *polar(0.9 * tip, tip_angle), radius)
        assert not scenes.shape_mask("star", *polar(1.05 * tip, tip_angle), radius)
        # Inner vertices lie at cos(72°) / cos(36°) = 0.382 of the circumradius.
        assert scenes.shape_mask("star", *polar(0.3 * tip, notch_angle), radius)
        assert not scenes.shape_mask("star", *polar(0.5 * tip, notch_angle), radius)


def test_cross_has_four_arms_and_empty_corners():
    radius = 0.25
    for u, v in ((0.85 * radius, 0), (0, -0.85 * radius), (0.2 * radius, 0.2 * radius)):
        assert scenes.shape_mask("cross", u, v, radius)
    assert not scenes.shape_mask("cross", 0.5 * radius, 0.5 * radius, radius)
    with pytest.raises(ValueError, match="'hexagon' is not one of circle"):
        scenes.shape_mask("hexagon", 0.0, 0.0, radius)


def shape_pixels(image, colour):
    """Pixels within the colour jitter of `colour` (the textures are grey, far from pure red)."""
    return np.abs(image.astype(np.int64) - np.array(colour)).max(axis=2) <= scenes.COLOUR_JITTER + 2


def test_shapes_are_drawn_where_and_as_large_as_named():
    rng = np.random.default_rng(1)
    areas = {}
    for size in scenes.SIZES:
        for position, ((x, y), _) in scenes.POSITIONS.items():
            scene = scenes.Scene("red", "square", size, position, "striped")
            mask = shape_pixels(scenes.draw_scenes([scene], rng, 64)[0], scenes.COLOURS["red"])
            rows, cols = np.nonzero(mask)
            # Anchors are 0.22 apart and jitter at most 0.07, plus the clamp that keeps large shapes in frame.
            assert abs(cols.mean() / 64 - x) < 0.11 and abs(rows.mean() / 64 - y) < 0.11, (size, position)
            areas.setdefault(size, []).append(mask.mean())
    assert max(areas["small"]) < min(areas["medium"]) and max(areas["medium"]) < min(areas["large"])


def test_backgrounds_differ_in_texture():
    rng = np.random.default_rng(2)
    spread = {}
    for background in scenes.BACKGROUNDS:
        batch = [scenes.Scene("red", "circle", "small", "top left", background)] * 8
        images = scenes.draw_scenes(batch, rng, 64).astype(np.float64)
        spread[background] = images[:, 32:, 32:].std(axis=(1, 2, 3)).mean()  # a corner the shape never reaches
    assert spread["plain"] < 8  # only Synthetic's pixel noise (standard deviation 6) and rounding
    assert min(spread[kind] for kind in ("striped", "checkered", "dotted")) > 8


def test_drawing_is_a_function_of_the_generator_state():
    combos = [scenes.SEEN_COMBOS[index] for index in range(0, 40, 3)]
    first = scenes.draw_scenes(scenes.sample_scenes(np.random.default_rng(5), combos), np.random.default_rng(6), 64)
    second = scenes.draw_scenes(scenes.sample_scenes(np.random.default_rng(5), combos), np.random.default_rng(6), 64)
    other = scenes.draw_scenes(scenes.sample_scenes(np.random.default_rng(5), combos), np.random.default_rng(7), 64)
    assert first.dtype == np.uint8 and first.shape == (len(combos), 64, 64, 3)
    np.testing.assert_array_equal(first, second)
    assert (first != other).any()


def test_captions_name_colour_and_shape_and_only_the_scene_attributes():
    rng = np.random.default_rng(3)
    scene = scenes.Scene("orange", "star", "large", "bottom left", "dotted")
    captions = {scenes.describe(scene, rng) for _ in range(400)}
    others = [phrase for name, (_, phrase) in scenes.POSITIONS.items() if name != scene.position]
    for caption in captions:
        assert "orange star" in caption and caption.endswith(".")
        assert not any(phrase in caption for phrase in others)
        assert not any(word in caption for word in ("small", "medium", "striped", "plain", "checkered"))
        assert " a orange" not in caption and not caption.startswith("a orange")
    assert "a photo of an orange star." in captions  # the zero-shot prompt of the class is a caption
    for part in ("large orange star", "in the bottom left corner", "on a dotted background",
                 "a dotted background with"):
        assert any(part in caption for caption in captions), part
