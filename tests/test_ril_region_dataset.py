"""Region dataset: items, determinism, workers, collate, the shared pixels, and the feature cache."""
import os
import shutil

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ril.features import add_student_features
from ril.format import RILTableError
from ril.precompute import ImageRegions, SampledRegions, RegionSpec
from ril.reader import RILTable, densify
from ril.region_dataset import RegionDataset, collate_regions
from ril.teachers import load_openai_clip
from trainers.clip_loading import backbone_id
from tests.test_ril_format import build_table

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_teacher):
    return build_table(str(tmp_path_factory.mktemp("regions")), tiny_teacher, count=5, regions=6, topk=2)


def dataset_of(built, **options):
    out, root = built[0], built[1]
    return RegionDataset(RILTable(out), root, (32, 32), MEAN, STD, **options)


def test_item_holds_repeat_regions_of_one_image(built):
    dataset = dataset_of(built, repeat=4)
    item = dataset[2]
    assert len(dataset) == 5
    assert set(item) == {"img", "soft_label", "weight", "entropy", "label", "index", "region"}
    assert item["img"].shape == (4, 3, 32, 32) and item["img"].dtype == torch.float32
    assert item["soft_label"].shape == (4, 4) and item["soft_label"].dtype == torch.float32
    for key in ("weight", "entropy"):
        assert item[key].shape == (4,) and item[key].dtype == torch.float32
    for key in ("label", "index", "region"):
        assert item[key].shape == (4,) and item[key].dtype == torch.int64
    assert item["index"].tolist() == [2] * 4 and len(set(item["region"].tolist())) == 4
    assert item["label"].tolist() == [built[3][2]] * 4
    rows = dataset.table.read(item["index"].numpy(), item["region"].numpy())
    assert torch.equal(item["soft_label"], densify(rows["topk_index"], rows["topk_logprob"], 4))
    assert torch.allclose(item["weight"], 1 - item["entropy"] / np.log(4))


def test_student_pixels_are_the_pixels_the_teacher_scored(built):
    out, root, paths, _, _ = built
    table = RILTable(out)
    spec = RegionSpec(num_regions=6, topk=2, output_size=(32, 32))
    teacher_view = ImageRegions(root, paths, range(5), (32, 32), "bicubic", SampledRegions(spec))
    student = RegionDataset(table, root, (32, 32), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), repeat=6)
    for index in (0, 4):
        _, _, boxes, flips, pixels = teacher_view[index]
        item = student[index]
        assert np.array_equal(boxes[item["region"].numpy()], table.read(item["index"], item["region"])["box"])
        assert torch.equal(item["img"], pixels[item["region"]].float() / 255.0)


def test_regions_are_seeded_by_seed_epoch_and_image(built):
    dataset = dataset_of(built, repeat=3, seed=5)
    first = [dataset.region_indices(i).tolist() for i in range(5)]
    assert first == [dataset_of(built, repeat=3, seed=5).region_indices(i).tolist() for i in range(5)]
    dataset.set_epoch(1)
    assert [dataset.region_indices(i).tolist() for i in range(5)] != first
    dataset.set_epoch(0)
    assert [dataset.region_indices(i).tolist() for i in range(5)] == first
    assert [dataset_of(built, repeat=3, seed=6).region_indices(i).tolist() for i in range(5)] != first


def test_loader_flattens_images_times_regions_identically_with_workers(built):
    dataset = dataset_of(built, repeat=2)
    dataset.set_epoch(3)
    batches = [list(DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate_regions))
               for workers in (0, 2)]
    assert [batch["img"].shape[0] for batch in batches[0]] == [4, 4, 2]
    for plain, parallel in zip(*batches):
        assert plain.keys() == parallel.keys()
        for key in plain:
            assert torch.equal(plain[key], parallel[key]), key
    assert batches[0][0]["index"].tolist() == [0, 0, 1, 1]


def test_wrong_output_size_repeat_and_missing_images_are_clear_errors(built, tmp_path):
    with pytest.raises(RILTableError, match=r"scored at \(32, 32\) pixels but this run asks for \(224, 224\)"):
        RegionDataset(built[0], built[1], 224, MEAN, STD)
    with pytest.raises(ValueError, match="repeat=7"):
        dataset_of(built, repeat=7)
    root = str(tmp_path / "images")
    shutil.copytree(built[1], root)
    os.remove(os.path.join(root, built[2][1]))
    dataset = RegionDataset(built[0], root, 32, MEAN, STD)
    with pytest.raises(FileNotFoundError, match=os.path.join(root, built[2][1])):
        dataset[1]


def test_feature_cache_serves_student_features_without_decoding(built, tmp_path, tiny_student, tiny_teacher):
    table_path, root = str(tmp_path / "table.h5"), str(tmp_path / "images")
    shutil.copy(built[0], table_path)
    shutil.copytree(built[1], root)
    with pytest.raises(RILTableError, match="python -m ril add-features"):
        RegionDataset(table_path, root, 32, MEAN, STD, features=True)
    add_student_features(table_path, root, tiny_student, workers=0)
    student = load_openai_clip(tiny_student)
    pixels_view = RegionDataset(table_path, root, 32, student.mean, student.std, repeat=3)
    expected = {index: student.image_features(pixels_view[index]["img"]) for index in (1, 3)}
    shutil.rmtree(root)  # the cache needs no image
    cached = RegionDataset(table_path, root, 32, MEAN, STD, repeat=3, features=True,
                           student_id=backbone_id(tiny_student))
    for index, features in expected.items():
        item = cached[index]
        assert "img" not in item and item["feature"].shape == (3, 64) and item["feature"].dtype == torch.float32
        assert torch.equal(item["region"], torch.from_numpy(pixels_view.region_indices(index)))
        assert torch.allclose(item["feature"], features, rtol=2e-3, atol=2e-3)
    with pytest.raises(RILTableError, match="caches features of student"):
        RegionDataset(table_path, root, 32, MEAN, STD, features=True, student_id=backbone_id(tiny_teacher))
    with pytest.raises(RILTableError, match="not of this run's 'ViT-B/16'"):
        RegionDataset(table_path, root, 32, MEAN, STD, features=True, student_id="ViT-B/16")
    with pytest.raises(RILTableError, match="already caches features of 'file:student.pt'; pass --overwrite"):
        add_student_features(table_path, root, tiny_teacher, workers=0)
