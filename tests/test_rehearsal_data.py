"""scripts/make_rehearsal_data.py: real layouts at real class counts, read back as train.py reads them."""
import hashlib
import importlib.util
import math
import os

import pytest

from tests.conftest import REPO_ROOT, requires_dassl, run_script

pytestmark = requires_dassl

SCRIPT = os.path.join(REPO_ROOT, "scripts", "make_rehearsal_data.py")
# (all, base, new) classes of the benchmarks; the test-only ImageNet variants ignore
# SUBSAMPLE_CLASSES, as CoOp's readers do.
REAL_COUNTS = {
    "imagenet": (1000, 500, 500),
    "oxford_pets": (37, 19, 18),
    "eurosat": (10, 5, 5),
    "sun397": (397, 199, 198),
    "imagenet_a": (200, 200, 200),
}
SUBSAMPLES = ("all", "base", "new")


@pytest.fixture(scope="module")
def maker():
    spec = importlib.util.spec_from_file_location("make_rehearsal_data", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    """(root, stdout) of one run of the script, as a user runs it, on the datasets of REAL_COUNTS."""
    root = tmp_path_factory.mktemp("rehearsal")
    result = run_script(SCRIPT, "--out", str(root), "--datasets", *REAL_COUNTS, "--image-size", "16")
    return root, result.stdout


def read(root, name, subsample):
    """The dataset train.py builds for --root root --seed 1 DATASET.NUM_SHOTS 16."""
    import datasets
    from dassl.data.datasets import build_dataset
    from dassl.utils import set_random_seed

    from train import build_parser
    from trainers.config import setup_cfg

    datasets.register_all()
    args = build_parser().parse_args([
        "--root", str(root), "--seed", "1",
        "--dataset-config-file", os.path.join(REPO_ROOT, "configs", "datasets", f"{name}.yaml"),
        "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", subsample,
    ])
    cfg = setup_cfg(args)
    set_random_seed(cfg.SEED)
    return build_dataset(cfg)


def tree_digest(root):
    """sha256 over every file's relative path and bytes."""
    digest = hashlib.sha256()
    for folder, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for filename in sorted(filenames):
            path = os.path.join(folder, filename)
            digest.update(os.path.relpath(path, root).encode())
            with open(path, "rb") as file:
                digest.update(file.read())
    return digest.hexdigest()


@pytest.mark.parametrize("subsample", SUBSAMPLES)
@pytest.mark.parametrize("name", list(REAL_COUNTS))
def test_readers_see_the_real_class_counts(rehearsal, name, subsample):
    root, _ = rehearsal
    dataset = read(root, name, subsample)
    expected = REAL_COUNTS[name][SUBSAMPLES.index(subsample)]
    assert dataset.num_classes == expected
    assert len(dataset.classnames) == expected
    for split in (dataset.train_x, dataset.val, dataset.test):
        if split is None:
            continue
        assert {item.label for item in split} == set(range(expected))
        for item in split:
            assert os.path.isfile(item.impath), item.impath
    assert (dataset.val is None) == name.startswith("imagenet_")


@pytest.mark.parametrize("name", ["imagenet", "oxford_pets", "sun397"])
def test_new_classes_are_the_second_half_of_all(rehearsal, name):
    root, _ = rehearsal
    full, new = read(root, name, "all"), read(root, name, "new")
    assert new.classnames == full.classnames[math.ceil(full.num_classes / 2):]


def test_summary_line_per_dataset(rehearsal):
    """ImageNet: train and val; split datasets: train, val and test; ImageNet-A: one folder."""
    _, stdout = rehearsal
    images = {"imagenet": 2000, "oxford_pets": 111, "eurosat": 30, "sun397": 1191, "imagenet_a": 200}
    lines = stdout.splitlines()
    assert len(lines) == len(REAL_COUNTS)
    for line, (name, (classes, _, _)) in zip(lines, REAL_COUNTS.items()):
        assert line.startswith(f"{name}: {classes} classes, {images[name]} images, ")
        assert ", built (" in line


def test_rerun_skips_and_leaves_files_alone(maker, tmp_path, capsys):
    maker.main(["--out", str(tmp_path), "--datasets", "eurosat"])
    before = tree_digest(tmp_path)
    capsys.readouterr()
    maker.main(["--out", str(tmp_path), "--datasets", "eurosat"])
    assert "eurosat: 10 classes, 30 images, " in (out := capsys.readouterr().out)
    assert "skipped: already built" in out
    assert tree_digest(tmp_path) == before


def test_same_flags_give_the_same_bytes(maker, tmp_path):
    flags = ["--datasets", "oxford_pets", "fgvc_aircraft", "--images-per-class", "2", "--image-size", "24"]
    maker.main(["--out", str(tmp_path / "a"), *flags])
    maker.main(["--out", str(tmp_path / "b"), *flags])
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    with open(tmp_path / "a" / "fgvc_aircraft" / "images_variant_test.txt") as file:
        assert len(file.readlines()) == 100 * 2


def test_other_flags_on_a_built_dataset_are_an_error(maker, tmp_path):
    maker.main(["--out", str(tmp_path), "--datasets", "eurosat"])
    with pytest.raises(SystemExit, match="--images-per-class 1, not 2"):
        maker.main(["--out", str(tmp_path), "--datasets", "eurosat", "--images-per-class", "2"])


def test_an_interrupted_build_leaves_nothing_that_looks_complete(maker, tmp_path, monkeypatch):
    written = []

    def image_then_fail(self, relpath, label, number):
        written.append(relpath)
        if len(written) == 5:
            raise KeyboardInterrupt
        original(self, relpath, label, number)

    original = maker.TreeWriter.image
    monkeypatch.setattr(maker.TreeWriter, "image", image_then_fail)
    with pytest.raises(KeyboardInterrupt):
        maker.main(["--out", str(tmp_path), "--datasets", "eurosat"])
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()
    maker.main(["--out", str(tmp_path), "--datasets", "eurosat"])
    assert os.listdir(tmp_path) == ["eurosat"]


def test_generated_names_keep_real_world_hazards(maker):
    """Spaces, hyphens, apostrophes, and a ten-word name among the base and among the new classes."""
    names = maker.spaced_names("flower", 102)
    lengths = [len(name.split()) for name in names]
    assert max(lengths[:51]) == max(lengths[51:]) == 10
    assert any("-" in name for name in names) and any("'" in name for name in names)
    assert len(set(names)) == len(names)
    folders = maker.folder_names("dish", 101)
    assert not any(" " in name or "'" in name for name in folders)
    assert len(set(folders)) == len(folders)
