"""The table format (DESIGN.md §4), the fingerprint check, and errors on damaged files.

Also home of the small builders the other RIL test modules import (images, fingerprints, tables).
"""
import os
import shutil

import h5py
import numpy as np
import pytest
from PIL import Image

from ril.format import (
    REGION_DATASETS, RILTableError, attributes_sha256, expected_fingerprint, make_attrs, open_table_file, read_attrs,
    validate_structure,
)
from ril.integrity import image_checksum
from ril.precompute import RegionSpec, precompute
from ril.reader import RILTable
from ril.teachers import load_teacher
from ril.writer import create_table

CLASSNAMES = ["red circle", "green square", "blue_triangle", "yellow ring"]


def write_images(root, count, num_classes=len(CLASSNAMES), seed=0):
    """`count` random RGB images of varied sizes under root/<class>/; returns (relative paths, labels)."""
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for index in range(count):
        label = index % num_classes
        relative = f"class{label}/img{index:03d}.png"
        os.makedirs(os.path.join(root, f"class{label}"), exist_ok=True)
        height, width = int(rng.integers(24, 72)), int(rng.integers(24, 72))
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(os.path.join(root, relative))
        paths.append(relative)
        labels.append(label)
    return paths, labels


def toy_fingerprint(image_paths, image_labels, classnames=CLASSNAMES, **changes):
    values = dict(dataset="Toy", num_shots=4, seed=1, subsample="all", classnames=classnames,
                  image_paths=image_paths, labels=image_labels)
    values.update(changes)
    return expected_fingerprint(**values)


def build_table(directory, teacher_path, count=6, regions=5, topk=2, **spec_changes):
    """A complete table over fresh images: returns (table path, image root, paths, labels, teacher)."""
    root = os.path.join(directory, "images")
    paths, labels = write_images(root, count)
    teacher = load_teacher(teacher_path)
    spec = RegionSpec(num_regions=regions, topk=topk, output_size=(32, 32), **spec_changes)
    out = os.path.join(directory, "table.h5")
    precompute(out, root, paths, labels, toy_fingerprint(paths, labels), teacher, spec, batch_size=4, workers=0)
    return out, root, paths, labels, teacher


def restamp(path):
    """Re-sign a table's root attributes after a test changed them on purpose (a table built otherwise)."""
    with h5py.File(path, "r+") as handle:
        handle.attrs["attributes_sha256"] = attributes_sha256(read_attrs(handle.attrs))


def rewrite_rows(path, index, changes):
    """Overwrite datasets of image `index` (name -> value) with a matching checksum: what a faulty
    writer could have stored, as opposed to bytes changed later."""
    with h5py.File(path, "r+") as handle:
        for name, value in changes.items():
            handle[name][index] = value
        rows = {name: handle[name][index] for name in REGION_DATASETS}
        handle["images/checksum"][index] = image_checksum(
            index, handle["images/label"][index], handle["images/size"][index], rows)


def settings(num_regions=3, topk=2):
    return {"teacher": ["file:t.pt"], "teacher_sha256": ["ab"], "ensemble": "none", "templates": ["a photo of a {}."],
            "logit_scale": [100.0],
            "num_regions": num_regions, "topk": topk, "output_size": [32, 32], "crop_scale": [0.08, 1.0],
            "crop_ratio": [0.75, 4 / 3], "flip_prob": 0.5, "interpolation": "bicubic", "crop_seed": 0}


@pytest.fixture
def empty_table(tmp_path):
    paths, labels = ["a/0.png", "b/1.png"], [0, 1]
    path = str(tmp_path / "empty.h5")
    create_table(path, make_attrs(toy_fingerprint(paths, labels), settings()), paths, labels)
    return path


def test_schema_matches_design(empty_table):
    expected = {  # DESIGN.md §4, N=2 images, M=3 regions, K=2; images/checksum: this project's integrity check
        "images/label": ((2,), "int32"), "images/size": ((2, 2), "int32"), "images/checksum": ((2,), "uint32"),
        "regions/box": ((2, 3, 4), "float32"), "regions/flip": ((2, 3), "uint8"),
        "regions/topk_index": ((2, 3, 2), "uint16"), "regions/topk_logprob": ((2, 3, 2), "float16"),
        "regions/logsumexp": ((2, 3), "float32"), "regions/entropy": ((2, 3), "float32"),
        "regions/teacher_top1": ((2, 3, 1), "uint16"),
        "progress/done": ((2,), "uint8"),
    }
    with h5py.File(empty_table, "r") as handle:
        for name, (shape, dtype) in expected.items():
            assert handle[name].shape == shape and handle[name].dtype == np.dtype(dtype), name
            assert handle[name].chunks is None and handle[name].id.get_offset() is not None, name
        paths = handle["images/path"]
        assert paths.asstr()[()].tolist() == ["a/0.png", "b/1.png"] and paths.dtype == h5py.string_dtype("utf-8", 7)
        assert paths.chunks is None and paths.id.get_offset() is not None  # stored in place, not in a heap
        assert handle["progress/done"][()].tolist() == [0, 0] and handle["images/checksum"][()].tolist() == [0, 0]
        attrs = read_attrs(handle.attrs)
    assert attrs["format"] == "fdbpl-ril" and attrs["version"] == 2 and attrs["complete"] is False
    assert attrs["attributes_sha256"] == attributes_sha256(attrs)
    assert attrs["classnames"] == CLASSNAMES and len(attrs["classnames_sha256"]) == 64
    for key in ("dataset", "split", "num_shots", "seed", "subsample", "image_list_sha256", "teacher", "ensemble",
                "templates", "logit_scale", "num_regions", "topk", "output_size", "crop_scale", "crop_ratio",
                "flip_prob", "interpolation", "crop_seed", "created", "package_version"):
        assert key in attrs, key
    assert not [name for name in os.listdir(os.path.dirname(empty_table)) if "creating" in name]


@pytest.mark.parametrize("field,change,run_name,table_value,run_value", [
    ("dataset", {"dataset": "Other"}, "DATASET.NAME", "Toy", "Other"),
    ("split", {"split": "val"}, "split", "train", "val"),
    ("num_shots", {"num_shots": 16}, "DATASET.NUM_SHOTS", "4", "16"),
    ("seed", {"seed": 2}, "SEED", "1", "2"),
    ("subsample", {"subsample": "base"}, "DATASET.SUBSAMPLE_CLASSES", "all", "base"),
    ("classnames", {"classnames": ["red circle", "cat", "blue_triangle", "yellow ring"]}, "class names",
     "class 1 = 'green square'", "class 1 = 'cat'"),
    ("num_images", {"image_paths": ["a/0.png"], "image_labels": [0]}, "number of training images", "2", "1"),
    ("image_list_sha256", {"image_labels": [1, 1]}, "training image list", None, None),
])
def test_fingerprint_mismatch_names_the_field_and_both_values(empty_table, field, change, run_name, table_value, run_value):
    table = RILTable(empty_table, require_complete=False)
    table.check_fingerprint(toy_fingerprint(["a/0.png", "b/1.png"], [0, 1]))
    with pytest.raises(RILTableError) as error:
        table.check_fingerprint(toy_fingerprint(**{"image_paths": ["a/0.png", "b/1.png"], "image_labels": [0, 1], **change}))
    message = str(error.value)
    assert f"was built for {field}=" in message and f"this run uses {run_name}" in message
    assert "python -m ril precompute" in message and "TRAINER.FDBPL.RIL_TABLE" in message
    if table_value is not None:
        assert f"{field}={table_value} but" in message and f"={run_value};" in message


def test_without_few_shot_sampling_the_seed_does_not_matter():
    all_images = dict(image_paths=["a/0.png"], image_labels=[0], num_shots=-1)
    assert toy_fingerprint(seed=1, **all_images) == toy_fingerprint(seed=2, **all_images)
    assert toy_fingerprint(seed=1, **all_images)["seed"] == -1
    assert toy_fingerprint(["a/0.png"], [0], seed=1) != toy_fingerprint(["a/0.png"], [0], seed=2)


def test_garbage_file_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "garbage.h5"
    path.write_bytes(b"this is not HDF5" * 100)
    with pytest.raises(RILTableError, match="truncated or corrupt"):
        RILTable(str(path))


def test_truncated_file_is_reported(tmp_path, empty_table):
    truncated = tmp_path / "truncated.h5"
    shutil.copy(empty_table, truncated)
    with open(truncated, "r+b") as handle:
        handle.truncate(os.path.getsize(truncated) // 2)
    with pytest.raises(RILTableError, match="truncated or corrupt"):
        RILTable(str(truncated), require_complete=False)


def test_other_hdf5_files_and_missing_datasets_are_refused(tmp_path, empty_table):
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as handle:
        handle["x"] = np.zeros(3)
    with pytest.raises(RILTableError, match="not an RIL table"):
        RILTable(str(other))
    with h5py.File(empty_table, "r+") as handle:
        del handle["regions/entropy"]
    with pytest.raises(RILTableError, match="lacks dataset regions/entropy"):
        RILTable(empty_table, require_complete=False)
    with pytest.raises(FileNotFoundError, match="python -m ril precompute"):
        RILTable(str(tmp_path / "absent.h5"))


def test_newer_format_version_is_refused(empty_table):
    with h5py.File(empty_table, "r+") as handle:
        handle.attrs["version"] = 99
    with open_table_file(empty_table) as handle, pytest.raises(RILTableError, match="format version 99"):
        validate_structure(handle, empty_table)


def test_a_version_1_table_is_refused_with_why_and_how_to_rebuild_it(empty_table):
    """Version 1 stored top-K logits in fp16; they are not converted, since the rounding is already in them."""
    with h5py.File(empty_table, "r+") as handle:
        handle.move("regions/topk_logprob", "regions/topk_logit")
        handle.attrs["version"] = 1
    restamp(empty_table)
    with pytest.raises(RILTableError) as error:
        RILTable(empty_table, require_complete=False)
    message = str(error.value)
    assert f"RIL table {empty_table} has format version 1" in message
    assert "regions/topk_logit" in message and "regions/topk_logprob" in message
    assert "rebuild it with the same python -m ril precompute command and --overwrite" in message


def test_a_table_without_checksums_is_refused_with_the_command_to_rebuild_it(empty_table):
    """Tables written before checksums existed cannot be checked, so they are not read at all."""
    with h5py.File(empty_table, "r+") as handle:
        del handle["images/checksum"]
    with pytest.raises(RILTableError, match="before tables carried checksums.*python -m ril precompute --overwrite"):
        RILTable(empty_table, require_complete=False)


@pytest.mark.parametrize("name,value", [("crop_seed", 1), ("interpolation", "bilinear"), ("classnames_sha256", "0")])
def test_a_changed_root_attribute_is_detected(empty_table, name, value):
    with h5py.File(empty_table, "r+") as handle:
        handle.attrs[name] = value
    with pytest.raises(RILTableError, match="is damaged: its root attributes do not match their attributes_sha256"):
        RILTable(empty_table, require_complete=False)


def test_a_complete_flag_that_is_not_a_bool_is_damage(empty_table):
    """`complete` is outside the digest (it changes); a damaged bool type reads back as an int."""
    with h5py.File(empty_table, "r+") as handle:
        handle.attrs["complete"] = 1
    with pytest.raises(RILTableError, match="root attribute complete is 1, not true or false"):
        RILTable(empty_table, require_complete=False)
