"""datasets/common.py: subsampling, splitting, the restricted unpickler and the error messages."""
import json
import os
import pickle
import shutil
import subprocess
import sys

import pytest

from tests import dataset_trees
from tests.conftest import REPO_ROOT, requires_dassl
from tests.dataset_trees import read

pytestmark = requires_dassl


def datums(tmp_path, labels, prefix="img"):
    from dassl.data.datasets import Datum

    items = []
    for index, label in enumerate(labels):
        path = tmp_path / f"{prefix}_{index}.jpg"
        path.write_bytes(dataset_trees.TINY_JPEG)
        items.append(Datum(impath=str(path), label=label, classname=f"class {label}"))
    return items


def summary(items):
    return [(os.path.basename(item.impath), item.label, item.classname) for item in items]


def test_subsample_base_and_new_by_hand(tmp_path):
    from datasets.common import subsample_classes

    train = datums(tmp_path, [12, 1, 9, 4, 7, 1], "train")
    test = datums(tmp_path, [7, 12, 3, 4], "test")
    base_train, base_test = subsample_classes(train, test, subsample="base")
    new_train, new_test = subsample_classes(train, test, subsample="new")

    # train labels {1, 4, 7, 9, 12}: base is the first ceil(5 / 2) = 3, relabelled 0, 1, 2
    assert summary(base_train) == [("train_1.jpg", 0, "class 1"), ("train_3.jpg", 1, "class 4"),
                                   ("train_4.jpg", 2, "class 7"), ("train_5.jpg", 0, "class 1")]
    assert summary(base_test) == [("test_0.jpg", 2, "class 7"), ("test_3.jpg", 1, "class 4")]
    assert summary(new_train) == [("train_0.jpg", 1, "class 12"), ("train_2.jpg", 0, "class 9")]
    assert summary(new_test) == [("test_1.jpg", 1, "class 12")]
    assert subsample_classes(train, test, subsample="all") == (train, test)


def test_unknown_subsample_is_named(tmp_path):
    dataset_trees.build("DescribableTextures", tmp_path)
    expected = r"DATASET.SUBSAMPLE_CLASSES is 'novel'; expected one of all, base, new"
    with pytest.raises(ValueError, match=expected):
        read("DescribableTextures", tmp_path, subsample="novel")


def test_split_trainval_holds_out_a_fifth_per_label(tmp_path):
    from datasets.common import split_trainval

    trainval = datums(tmp_path, [5, 5, 2, 5, 2, 5, 2, 5, 5, 5, 5, 5, 5])  # 10 of label 5, 3 of label 2
    train, val = split_trainval(trainval)
    assert [item.label for item in val] == [5, 5, 2]  # round(10 * 0.2) = 2, round(3 * 0.2) = 1
    assert [item.label for item in train] == [5] * 8 + [2] * 2
    assert sorted(summary(train + val)) == sorted(summary(trainval))


def test_split_groups_needs_four_images_per_class(tmp_path):
    from datasets.common import split_groups

    paths = [item.impath for item in datums(tmp_path, [0, 0, 0])]
    with pytest.raises(ValueError, match=r"class 'banded' has 3 images, too few .* \(4 or more"):
        split_groups([(0, "banded", paths)])
    paths.append(datums(tmp_path, [0], "fourth")[0].impath)
    train, val, test = split_groups([(0, "banded", paths)])
    assert (len(train), len(val), len(test)) == (2, 1, 1)


def test_reads_a_fewshot_cache_pickled_as_coop_does(tmp_path):
    """CoOp: pickle.dump({"train": [Datum], "val": [Datum]}, file, protocol=HIGHEST_PROTOCOL)."""
    from datasets.common import load_datum_pickle, save_datum_pickle

    data = {"train": datums(tmp_path, [0, 1], "a"), "val": datums(tmp_path, [1], "b")}
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        with open(tmp_path / "coop.pkl", "wb") as file:
            pickle.dump(data, file, protocol=protocol)
        loaded = load_datum_pickle(str(tmp_path / "coop.pkl"), ("train", "val"), str(tmp_path))
        assert {key: summary(items) for key, items in loaded.items()} == {
            "train": [("a_0.jpg", 0, "class 0"), ("a_1.jpg", 1, "class 1")],
            "val": [("b_0.jpg", 1, "class 1")],
        }
    save_datum_pickle(data, str(tmp_path / "split_fewshot" / "ours.pkl"))
    with open(tmp_path / "split_fewshot" / "ours.pkl", "rb") as file:
        assert summary(pickle.load(file)["train"]) == summary(data["train"])


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


@pytest.mark.parametrize("payload", ["system", "eval"])
def test_malicious_fewshot_cache_is_refused_without_running_it(payload, tmp_path):
    dataset_dir = dataset_trees.build("DescribableTextures", tmp_path)
    cache = os.path.join(dataset_dir, "split_fewshot", "shot_2-seed_1.pkl")
    os.makedirs(os.path.dirname(cache))
    marker = tmp_path / "was_run"
    evil = _RunsCode(marker) if payload == "system" else _CallsEval()
    with open(cache, "wb") as file:
        pickle.dump({"train": [evil], "val": []}, file)

    forbidden = {"system": "posix.system", "eval": "builtins.eval"}[payload]
    with pytest.raises(ValueError) as error:
        read("DescribableTextures", tmp_path, shots=2)
    message = str(error.value)
    assert cache in message and forbidden in message and f"Delete {cache}" in message
    assert not marker.exists()


def test_corrupt_and_foreign_caches_are_named(tmp_path):
    from datasets.common import load_datum_pickle

    path = tmp_path / "cache.pkl"
    good = pickle.dumps({"train": datums(tmp_path, [0, 1])})
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"cache.pkl could not be read safely: .* Delete .*cache.pkl"):
        load_datum_pickle(str(path), ("train",), str(tmp_path))

    path.write_bytes(pickle.dumps({"train": ["not a datum"]}))
    with pytest.raises(ValueError, match=r"expected a dict with a list of Dassl Datum under 'train'"):
        load_datum_pickle(str(path), ("train",), str(tmp_path))

    path.write_bytes(good)
    with pytest.raises(ValueError, match=r"expected a dict with a list of Dassl Datum under 'val'"):
        load_datum_pickle(str(path), ("train", "val"), str(tmp_path))

    os.remove(tmp_path / "img_0.jpg")
    with pytest.raises(ValueError, match=r"img_0.jpg, which does not exist. Delete .*cache.pkl"):
        load_datum_pickle(str(path), ("train",), str(tmp_path))


def test_missing_dataset_folder_names_path_and_fix(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        read("Caltech101", tmp_path)
    message = str(error.value)
    assert f"dataset folder 'caltech-101/' not found at {tmp_path / 'caltech-101'}" in message
    assert "DATASETS.md of CoOp" in message and "DATASET.ROOT (train.py --root)" in message
    assert not (tmp_path / "caltech-101").exists()

    with pytest.raises(ValueError, match="DATASET.ROOT is empty; pass --root"):
        read("Caltech101", "")


def test_missing_split_without_raw_data_names_both(tmp_path):
    (tmp_path / "food-101").mkdir()
    with pytest.raises(FileNotFoundError) as error:
        read("Food101", tmp_path)
    message = str(error.value)
    split_path = tmp_path / "food-101" / "split_zhou_Food101.json"
    assert f"image folder (needed because the split file {split_path} is absent)" in message
    assert f"not found at {tmp_path / 'food-101' / 'images'}" in message


@pytest.mark.parametrize(
    "name, removed, expected",
    [
        ("OxfordPets", "oxford_pets/annotations/test.txt", "annotation file (needed because the split"),
        ("StanfordCars", "stanford_cars/devkit/cars_meta.mat", "class-name file (needed because the"),
        ("FGVCAircraft", "fgvc_aircraft/variants.txt", "FGVCAircraft: variants.txt not found at"),
        ("ImageNetSketch", "imagenet-sketch/classnames.txt", "ImageNetSketch: classnames.txt"),
        ("ImageNet", "imagenet/images/val", "image folder of the val split (to build preprocessed.pkl)"),
    ],
)
def test_missing_raw_file_is_named(name, removed, expected, tmp_path):
    dataset_trees.build(name, tmp_path, split_file=False)
    target = tmp_path / removed
    if target.is_dir():
        for child in sorted(target.rglob("*"), reverse=True):
            child.unlink() if child.is_file() else child.rmdir()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(FileNotFoundError, match="DATASETS.md") as error:
        read(name, tmp_path)
    assert expected in str(error.value) and str(target) in str(error.value)


def test_split_file_problems_are_named(tmp_path):
    dataset_dir = dataset_trees.build("DescribableTextures", tmp_path)
    split_path = os.path.join(dataset_dir, "split_zhou_DescribableTextures.json")
    missing_image = os.path.join(dataset_dir, "images", "banded", "banded_0000.jpg")
    os.remove(missing_image)
    with pytest.raises(FileNotFoundError, match=rf"{missing_image} \(from {split_path}\) is missing"):
        read("DescribableTextures", tmp_path)

    with open(split_path, "w") as file:
        file.write('{"train": [], "val": []}')
    with pytest.raises(ValueError, match=rf'{split_path} has no "test" list; expected'):
        read("DescribableTextures", tmp_path)


def test_package_import_is_light():
    code = (
        "import sys, datasets\n"
        "assert datasets.__file__.startswith(sys.argv[1]), datasets.__file__\n"
        "assert 'dassl' not in sys.modules and 'torch' not in sys.modules, 'heavy import'\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, REPO_ROOT], cwd=REPO_ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


def test_register_all_registers_every_reader():
    from dassl.data.datasets import DATASET_REGISTRY

    from datasets import register_all

    register_all()
    register_all()
    assert set(dataset_trees.BUILDERS) | {"Synthetic"} <= set(DATASET_REGISTRY.registered_names())


def rewrite_split(dataset_dir, name, edit):
    """Apply `edit(split dict)` to a tree's split file."""
    split_path = os.path.join(dataset_dir, f"split_zhou_{name}.json")
    with open(split_path, encoding="utf-8") as file:
        split = json.load(file)
    edit(split)
    with open(split_path, "w", encoding="utf-8") as file:
        json.dump(split, file)
    return split_path


@pytest.mark.parametrize("entry, expected", [
    (["banded/banded_0000.jpg", "0", "banded"], "a label that is not a non-negative integer"),
    (["banded/banded_0000.jpg", -1, "banded"], "a label that is not a non-negative integer"),
    (["banded/banded_0000.jpg", True, "banded"], "a label that is not a non-negative integer"),
    (["banded/banded_0000.jpg", 0, 7], "a class name that is not a string"),
    ([3, 0, "banded"], "an image path that is not a non-empty string"),
    (["../../outside.jpg", 0, "banded"], "points outside the image folder"),
    (["banded/../../../outside.jpg", 0, "banded"], "points outside the image folder"),
    ("ABSOLUTE", "points outside the image folder"),
])
def test_split_entries_with_bad_labels_or_paths_are_named(entry, expected, tmp_path):
    """Each bad entry is named with its file and position; paths never leave the dataset's image folder,
    even to a file that exists there."""
    dataset_dir = dataset_trees.build("DescribableTextures", tmp_path / "data")
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(dataset_trees.TINY_JPEG)
    if entry == "ABSOLUTE":
        entry = [str(outside), 0, "banded"]
    split_path = rewrite_split(dataset_dir, "DescribableTextures", lambda split: split["train"].insert(1, entry))
    with pytest.raises(ValueError) as error:
        read("DescribableTextures", tmp_path / "data")
    assert str(error.value).startswith(f'{split_path}: "train" entry 1, {entry!r}, ')
    assert expected in str(error.value)


def test_files_written_into_data_follow_the_umask(tmp_path):
    """mkstemp and mkdtemp create 0600 files and 0700 folders: another user of a shared $DATA could not read
    the split files, few-shot caches or the Synthetic dataset this run writes."""
    from datasets.common import atomic_write
    from datasets.synthetic import check_settings, ensure_generated

    previous = os.umask(0o002)
    try:
        dataset_trees.build("OxfordPets", tmp_path, split_file=False)
        read("OxfordPets", tmp_path, shots=2)
        written = [tmp_path / "oxford_pets" / "split_zhou_OxfordPets.json",
                   tmp_path / "oxford_pets" / "split_fewshot" / "shot_2-seed_1.pkl"]
        assert [oct(path.stat().st_mode & 0o777) for path in written] == ["0o664", "0o664"]
        synthetic = ensure_generated(str(tmp_path), check_settings(2, 10, 16))
        assert oct(os.stat(synthetic).st_mode & 0o777) == "0o775"
        os.umask(0o027)
        atomic_write(str(tmp_path / "private.txt"), "w", lambda file: file.write("x"))
        assert oct((tmp_path / "private.txt").stat().st_mode & 0o777) == "0o640"
    finally:
        os.umask(previous)


def test_a_failed_atomic_write_leaves_no_file(tmp_path):
    from datasets.common import atomic_write

    def fail(file):
        file.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(tmp_path / "split.json"), "w", fail)
    assert os.listdir(tmp_path) == []


def copied_data(tmp_path, name, shots):
    """A tree read once at data/ (writing its caches), then copied with its caches to copy/."""
    dataset_trees.build(name, tmp_path / "data", split_file=name != "ImageNet")
    original = read(name, tmp_path / "data", shots=shots)
    shutil.copytree(tmp_path / "data", tmp_path / "copy")
    return original


def test_fewshot_cache_copied_with_data_reads_the_copys_images(tmp_path):
    """CoOp's caches hold absolute paths: a copy of $DATA must not train on the original's images."""
    original = copied_data(tmp_path, "DescribableTextures", shots=2)
    copy = read("DescribableTextures", tmp_path / "copy", shots=2)
    for before, after in ((original.train_x, copy.train_x), (original.val, copy.val)):
        assert all(item.impath.startswith(str(tmp_path / "copy") + os.sep) for item in after)
        assert [os.path.relpath(item.impath, tmp_path / "copy") for item in after] == [
            os.path.relpath(item.impath, tmp_path / "data") for item in before]


def test_imagenet_preprocessed_list_copied_with_data_reads_the_copys_images(tmp_path):
    copied_data(tmp_path, "ImageNet", shots=1)
    copy = read("ImageNet", tmp_path / "copy", shots=1)
    for items in (copy.train_x, copy.test):
        assert items and all(item.impath.startswith(str(tmp_path / "copy") + os.sep) for item in items)


def test_fewshot_cache_of_another_split_is_refused(tmp_path):
    """Every cached item must be an item of the current split, with its label and class name."""
    dataset_dir = dataset_trees.build("DescribableTextures", tmp_path)
    cached = read("DescribableTextures", tmp_path, shots=2).train_x[0]
    relpath = os.path.relpath(cached.impath, os.path.join(dataset_dir, "images"))

    def relabel(split):
        for entry in split["train"]:
            if entry[0] == relpath:
                entry[1] = (entry[1] + 1) % 5

    rewrite_split(dataset_dir, "DescribableTextures", relabel)
    cache = os.path.join(dataset_dir, "split_fewshot", "shot_2-seed_1.pkl")
    with pytest.raises(ValueError) as error:
        read("DescribableTextures", tmp_path, shots=2)
    assert str(error.value).startswith(f"{cache} lists {cached.impath} (label {cached.label}, ")
    assert "the cache was drawn from another split" in str(error.value) and f"Delete {cache}" in str(error.value)


def test_a_large_cache_can_skip_the_per_file_check_but_not_the_root_check(tmp_path):
    from datasets.common import load_datum_pickle

    path = tmp_path / "preprocessed.pkl"
    path.write_bytes(pickle.dumps({"train": datums(tmp_path, [0, 1])}))
    os.remove(tmp_path / "img_0.jpg")
    data = load_datum_pickle(str(path), ("train",), str(tmp_path), check_exists=False)
    assert [item.impath for item in data["train"]] == [str(tmp_path / "img_0.jpg"), str(tmp_path / "img_1.jpg")]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(ValueError, match=r"not under this run's image folder"):
        load_datum_pickle(str(path), ("train",), str(elsewhere), check_exists=False)
