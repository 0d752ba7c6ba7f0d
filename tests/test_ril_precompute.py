"""Precompute, resume, merge and teachers, in-process on tiny CLIPs (subprocess runs: test_ril_cli)."""
import json
import os
import shutil
import sys

import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from clip import clip

from ril.features import add_student_features
from ril.format import RILTableError, shard_path
from ril.merge import merge_tables
from ril.precompute import RegionSpec, precompute
from ril.reader import RILTable
from ril.region_dataset import RegionDataset
from ril.summary import describe, verify
from ril.teachers import load_openai_clip, load_teacher, parse_teacher_spec, teacher_identity
from tests.test_ril_format import CLASSNAMES, build_table, restamp, toy_fingerprint, write_images
from trainers.templates import CLIP_SELECTED_TEMPLATES

RESULTS = ("images/size", "images/checksum", "regions/box", "regions/flip", "regions/topk_index",
           "regions/topk_logprob", "regions/logsumexp", "regions/entropy", "progress/done")


def datasets_of(path):
    with h5py.File(path, "r") as handle:
        return {name: handle[name][()] for name in RESULTS}


def assert_same_results(path_a, path_b):
    a, b = datasets_of(path_a), datasets_of(path_b)
    for name in RESULTS:
        assert a[name].dtype == b[name].dtype and np.array_equal(a[name], b[name]), name


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_teacher):
    """(table, image root, paths, labels, teacher) of 6 images x 5 regions, top-2 of 4 classes."""
    return build_table(str(tmp_path_factory.mktemp("precompute")), tiny_teacher)


def _rerun(out, built, overwrite=False, **changes):
    _, root, paths, labels, teacher = built
    spec = RegionSpec(num_regions=5, topk=2, output_size=(32, 32), **changes)
    return precompute(out, root, paths, labels, toy_fingerprint(paths, labels), teacher, spec, batch_size=4,
                      workers=0, overwrite=overwrite)


def test_stored_logits_are_the_teacher_on_the_pixels_the_student_gets(built):
    out, root, _, _, teacher = built
    table = RILTable(out)
    dataset = RegionDataset(table, root, 32, teacher.mean, teacher.std, repeat=3)
    class_features = teacher.class_features(table.classnames, table.attrs["templates"])
    for index in (0, 3, 5):
        item = dataset[index]
        logits = teacher.logits(item["img"], class_features)
        rows = table.read(item["index"].numpy(), item["region"].numpy())
        top_log_prob, top_index = torch.log_softmax(logits, 1).topk(2, dim=1)
        assert np.array_equal(rows["topk_index"], top_index.numpy())
        assert np.allclose(rows["topk_logprob"].astype(np.float32), top_log_prob.numpy(), rtol=2e-3, atol=1e-5)
        assert np.allclose(rows["logsumexp"], torch.logsumexp(logits, 1).numpy(), rtol=1e-5, atol=1e-5)
        entropy = -(torch.softmax(logits, 1) * torch.log_softmax(logits, 1)).sum(1)
        assert np.allclose(rows["entropy"], entropy.numpy(), rtol=1e-4, atol=1e-5)
    assert table.attrs["logit_scale"] == pytest.approx([teacher.logit_scale])


def test_resume_fills_only_unfinished_images_and_gives_the_same_table(built, tmp_path, caplog):
    resumed = str(tmp_path / "resumed.h5")
    shutil.copy(built[0], resumed)
    with h5py.File(resumed, "r+") as handle:
        handle["progress/done"][2:] = 0
        handle["regions/topk_logprob"][2:] = 0
        handle.attrs["complete"] = False
    with caplog.at_level("INFO", logger="ril.precompute"):
        _rerun(resumed, built)
    assert "2 of 6 images already done" in caplog.text
    assert_same_results(built[0], resumed)
    assert RILTable(resumed).attrs["complete"] is True


def test_a_complete_table_is_never_overwritten_without_overwrite(built, tmp_path):
    copy = tmp_path / "complete.h5"
    shutil.copy(built[0], copy)
    before = copy.read_bytes()
    with pytest.raises(FileExistsError, match="--overwrite"):
        _rerun(str(copy), built)
    assert copy.read_bytes() == before
    with h5py.File(copy, "r+") as handle:
        handle["regions/entropy"][0] = -1.0
    _rerun(str(copy), built, overwrite=True)
    assert_same_results(built[0], copy)


def test_resuming_with_other_settings_is_refused(built, tmp_path):
    unfinished = str(tmp_path / "unfinished.h5")
    shutil.copy(built[0], unfinished)
    with h5py.File(unfinished, "r+") as handle:
        handle.attrs["complete"] = False
    with pytest.raises(RILTableError, match="crop_seed=0.*crop_seed=7.*--overwrite"):
        _rerun(unfinished, built, crop_seed=7)


def test_missing_image_and_wrong_teacher_resolution_are_clear_errors(built, tmp_path):
    _, _, paths, labels, teacher = built
    root = str(tmp_path / "images")
    write_images(root, len(paths))
    os.remove(os.path.join(root, paths[3]))
    fingerprint = toy_fingerprint(paths, labels)
    spec = RegionSpec(num_regions=2, topk=2, output_size=(32, 32))
    with pytest.raises(FileNotFoundError, match=os.path.join(root, paths[3])):
        precompute(str(tmp_path / "t.h5"), root, paths, labels, fingerprint, teacher, spec, workers=0)
    with pytest.raises(ValueError, match=r"takes \(32, 32\) inputs but the regions are \(224, 224\)"):
        precompute(str(tmp_path / "u.h5"), root, paths, labels, fingerprint, teacher,
                   RegionSpec(output_size=(224, 224)), workers=0)


def _partial_copy(source, target, keep):
    shutil.copy(source, target)
    with h5py.File(target, "r+") as handle:
        done = handle["progress/done"][()]
        done[~keep] = 0
        handle["progress/done"][...] = done
        handle.attrs["complete"] = False


def test_merge_assembles_shards_into_the_same_table(built, tmp_path):
    out = built[0]
    even, odd = str(tmp_path / "s0"), str(tmp_path / "s1")
    _partial_copy(out, even, np.arange(6) % 2 == 0)
    _partial_copy(out, odd, np.arange(6) % 2 == 1)
    merged = str(tmp_path / "merged.h5")
    assert merge_tables([even, odd], merged) is True
    assert_same_results(out, merged)
    assert RILTable(merged).attrs["complete"] is True
    with pytest.raises(FileExistsError, match="--overwrite"):
        merge_tables([even, odd], merged)
    assert merge_tables([even], str(tmp_path / "half.h5")) is False
    assert RILTable(str(tmp_path / "half.h5"), require_complete=False).done.tolist() == [1, 0, 1, 0, 1, 0]
    with h5py.File(odd, "r+") as handle:
        handle.attrs["topk"] = 3
    restamp(odd)
    with pytest.raises(RILTableError, match="topk"):
        merge_tables([even, odd], str(tmp_path / "bad.h5"))
    assert not os.path.exists(tmp_path / "bad.h5")
    assert shard_path("t.h5", 1, 4) == "t.h5.rank1-of-4"


def test_class_features_ensemble_templates(tiny_teacher):
    teacher = load_teacher(tiny_teacher)
    names = ["red circle", "blue_triangle"]
    one = teacher.class_features(names, ["a photo of a {}."])
    other = teacher.class_features(names, ["art of the {}."])
    both = teacher.class_features(names, ["a photo of a {}.", "art of the {}."])
    assert torch.allclose(both, F.normalize(one + other, dim=-1), atol=1e-6)
    assert not torch.allclose(one, other)
    direct = F.normalize(teacher.model.encode_text(clip.tokenize(["a photo of a blue triangle."])).float(), dim=-1)
    assert torch.allclose(one[1], direct[0], atol=1e-5)


def test_teacher_specs_and_identity(tiny_teacher):
    assert parse_teacher_spec("ViT-L/14") == ("openai", "ViT-L/14", None)
    assert parse_teacher_spec("open_clip:ViT-H-14-quickgelu/dfn5b") == ("open_clip", "ViT-H-14-quickgelu", "dfn5b")
    assert parse_teacher_spec("open_clip:hf-hub:apple/DFN5B-CLIP-ViT-H-14") == ("open_clip", "hf-hub:apple/DFN5B-CLIP-ViT-H-14", None)
    with pytest.raises(ValueError, match="open_clip:MODEL/PRETRAINED"):
        parse_teacher_spec("open_clip:ViT-H-14")
    teacher = load_openai_clip(tiny_teacher)
    assert teacher.teacher_id == "file:teacher.pt" and len(teacher.checkpoint_sha256) == 64
    assert teacher_identity(str(tiny_teacher)) == (teacher.teacher_id, teacher.checkpoint_sha256)
    assert teacher_identity("ViT-L/14") == ("ViT-L/14", "")
    assert teacher.input_size == (32, 32) and teacher.logit_scale == pytest.approx(1 / 0.07, rel=1e-3)


def test_missing_open_clip_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)
    with pytest.raises(ImportError, match="pip install open_clip_torch"):
        load_teacher("open_clip:ViT-H-14-quickgelu/dfn5b")


def test_open_clip_teacher_from_a_local_weights_file(tmp_path):
    """The real open_clip package: a tiny model config, its weights in a file, a table built with it."""
    open_clip = pytest.importorskip("open_clip", reason="open_clip_torch is not installed (scripts/install.sh "
                                    "--teachers)")
    config = {"embed_dim": 32, "quick_gelu": True,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1}}
    (tmp_path / "Tiny-Test.json").write_text(json.dumps(config))
    open_clip.add_model_config(str(tmp_path / "Tiny-Test.json"))
    torch.manual_seed(0)
    reference = open_clip.create_model("Tiny-Test").eval()
    weights = tmp_path / "tiny_weights.pt"
    torch.save(reference.state_dict(), weights)

    teacher = load_teacher(f"open_clip:Tiny-Test/{weights}")
    assert teacher.teacher_id == "open_clip:Tiny-Test/tiny_weights.pt" and len(teacher.checkpoint_sha256) == 64
    assert teacher_identity(f"open_clip:Tiny-Test/{weights}") == (teacher.teacher_id, teacher.checkpoint_sha256)
    assert teacher.input_size == (32, 32) and teacher.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    features = teacher.class_features(["red circle", "cat"], ["a photo of a {}."])
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        text = F.normalize(reference.encode_text(open_clip.tokenize(["a photo of a red circle.",
                                                                     "a photo of a cat."])), dim=-1)
        expected = reference.logit_scale.exp() * F.normalize(reference.encode_image(images), dim=-1) @ text.t()
    torch.testing.assert_close(teacher.logits(images, features), expected, rtol=1e-4, atol=1e-4)

    root = str(tmp_path / "images")
    paths, labels = write_images(root, 3)
    out = str(tmp_path / "table.h5")
    spec = RegionSpec(num_regions=2, topk=2, output_size=teacher.input_size)
    precompute(out, root, paths, labels, toy_fingerprint(paths, labels), teacher, spec, batch_size=4, workers=0)
    table = RILTable(out)
    assert table.attrs["teacher"] == [teacher.teacher_id]
    assert table.attrs["teacher_sha256"] == [teacher.checkpoint_sha256]


def test_topk_above_the_class_count_keeps_every_class_and_says_so(built, tmp_path, caplog, tiny_student):
    """K = min(K, C): --topk 20 on 4 classes stores K = 4, and every reader of the table takes it."""
    _, root, paths, labels, teacher = built
    out = str(tmp_path / "k20.h5")
    with caplog.at_level("INFO", logger="ril.precompute"):
        precompute(out, root, paths, labels, toy_fingerprint(paths, labels), teacher,
                   RegionSpec(num_regions=5, topk=20, output_size=(32, 32)), batch_size=4, workers=0)
    assert "--topk 20 requested, the run has 4 classes, so the table keeps K = 4 classes per region" in caplog.text
    table = RILTable(out)
    assert table.topk == table.attrs["topk"] == len(CLASSNAMES) == 4
    assert verify(out, toy_fingerprint(paths, labels), deep=True).problems == []
    for mode in ("smooth", "renorm"):
        item = RegionDataset(table, root, 32, teacher.mean, teacher.std, repeat=5, densify_mode=mode)[2]
        assert item["soft_label"].shape == (5, 4) and (item["soft_label"] > 0).all()
        assert torch.allclose(item["soft_label"].sum(1), torch.ones(5), atol=1e-5)
    add_student_features(out, root, tiny_student, workers=0)
    assert RILTable(out).has_features()
    with pytest.raises(ValueError, match="--topk 0: K, the teacher classes kept per region, must be at least 1"):
        precompute(str(tmp_path / "k0.h5"), root, paths, labels, toy_fingerprint(paths, labels), teacher,
                   RegionSpec(num_regions=5, topk=0, output_size=(32, 32)), workers=0)


def test_default_templates_are_the_datasets_coop_template_and_sets_stay_selectable(built, tmp_path):
    _, root, paths, labels, teacher = built
    for dataset, templates, recorded in (
        ("OxfordPets", (), ["a photo of a {}, a type of pet."]),
        ("EuroSAT", (), ["a centered satellite photo of {}."]),
        ("Toy", (), ["a photo of a {}."]),
        ("OxfordPets", ("imagenet7", "art of a {}."), [*CLIP_SELECTED_TEMPLATES, "art of a {}."]),
    ):
        out = str(tmp_path / f"{dataset}_{len(templates)}.h5")
        precompute(out, root, paths[:2], labels[:2], toy_fingerprint(paths[:2], labels[:2], dataset=dataset),
                   teacher, RegionSpec(num_regions=2, topk=2, output_size=(32, 32), templates=templates), workers=0)
        assert RILTable(out).attrs["templates"] == recorded


def whole_distributions(path):
    """(table, probabilities (N, M, C) float64, logits (N, M, C)) of a table with K = C, read from the file."""
    table = RILTable(path)
    rows = table.read(*np.indices((table.num_images, table.num_regions)).reshape(2, -1))
    log_prob = np.zeros((len(rows["topk_index"]), table.num_classes))
    np.put_along_axis(log_prob, rows["topk_index"].astype(np.int64), rows["topk_logprob"].astype(np.float64), axis=1)
    shape = (table.num_images, table.num_regions, table.num_classes)
    return table, np.exp(log_prob).reshape(shape), (log_prob + rows["logsumexp"][:, None]).reshape(shape)


def test_an_ensemble_table_is_the_mean_of_its_teachers_tables(built, tmp_path, tiny_student):
    """Two tiny teachers, K = C: the ensemble's probabilities are the mean of the single-teacher tables'
    (mean-prob) or the softmax of their mean logits (mean-logit), region by region, to fp16 rounding."""
    _, root, paths, labels, teacher = built
    other = load_teacher(tiny_student)
    fingerprint = toy_fingerprint(paths, labels)
    found = {}
    for name, teachers, ensemble in (("a", teacher, "mean-prob"), ("b", other, "mean-prob"),
                                     ("ab", [teacher, other], "mean-prob"),
                                     ("ab_logit", [teacher, other], "mean-logit")):
        out = str(tmp_path / f"{name}.h5")
        spec = RegionSpec(num_regions=5, topk=4, output_size=(32, 32), ensemble=ensemble)
        precompute(out, root, paths, labels, fingerprint, teachers, spec, batch_size=4, workers=0)
        found[name] = whole_distributions(out)
    (table_a, prob_a, logit_a), (table_b, prob_b, logit_b) = found["a"], found["b"]
    table, prob, _ = found["ab"]
    assert np.abs(prob_a - prob_b).max() > 0.05  # the teachers disagree, so the mean is not either of them
    np.testing.assert_allclose(prob, (prob_a + prob_b) / 2, rtol=2e-3, atol=1e-4)
    mean_logit = torch.softmax(torch.from_numpy((logit_a + logit_b) / 2), dim=-1).numpy()
    np.testing.assert_allclose(found["ab_logit"][1], mean_logit, rtol=2e-3, atol=1e-4)
    assert np.abs(found["ab_logit"][1] - prob).max() > 1e-3
    for name in ("box", "flip"):
        assert np.array_equal(table.array(f"regions/{name}"), table_a.array(f"regions/{name}"))
    own = table.array("regions/teacher_top1")
    assert np.array_equal(own[..., 0], table_a.array("regions/topk_index")[..., 0])
    assert np.array_equal(own[..., 1], table_b.array("regions/topk_index")[..., 0])
    assert table.attrs["teacher"] == [teacher.teacher_id, other.teacher_id] and table.attrs["ensemble"] == "mean-prob"
    assert table.attrs["teacher_sha256"] == [teacher.checkpoint_sha256, other.checkpoint_sha256]
    assert table.attrs["logit_scale"] == pytest.approx([teacher.logit_scale, other.logit_scale])
    assert table_a.attrs["ensemble"] == "none" and verify(table.path, fingerprint, deep=True).problems == []
    report = "\n".join(describe(table))
    assert "teachers: ensemble of 2 (mean-prob)" in report
    for number, single in enumerate((table_a, table_b), start=1):
        top1 = single.array("regions/topk_index")[..., 0]
        label_rate = (top1 == single.labels[:, None]).mean()
        ensemble_rate = (top1 == table.array("regions/topk_index")[..., 0]).mean()
        assert (f"teacher {number}: {single.attrs['teacher'][0]} (sha256 {single.attrs['teacher_sha256'][0]}), "
                f"logit scale {single.attrs['logit_scale'][0]:.4g}; top-1 agrees with the ground-truth label on "
                f"{100 * label_rate:.2f}% of regions and with the ensemble's top-1 on {100 * ensemble_rate:.2f}%"
                ) in report
    unfinished = str(tmp_path / "unfinished.h5")
    shutil.copy(table.path, unfinished)
    with h5py.File(unfinished, "r+") as handle:
        handle.attrs["complete"] = False
    with pytest.raises(RILTableError, match=r"teacher=\[.*teacher.pt.*student.pt.*\] but this request has teacher"):
        precompute(unfinished, root, paths, labels, fingerprint, teacher,
                   RegionSpec(num_regions=5, topk=4, output_size=(32, 32)), workers=0)


def test_a_teacher_of_an_ensemble_reads_its_own_templates(built, tmp_path, tiny_student):
    """--teacher-templates 2=...: teacher 2's class texts are its own, teacher 1 keeps the shared ones; the
    ensemble equals the mean of single-teacher tables built with those templates, the table records one
    list per teacher, and a lazy table of it is filled (by precompute) with the same values."""
    _, root, paths, labels, teacher = built
    other = load_teacher(tiny_student)
    fingerprint = toy_fingerprint(paths, labels)
    own = "a blurry photo of a {}."
    found = {}
    for name, teachers, templates, per_teacher in (
        ("a", teacher, (), ()), ("b", other, (own,), ()), ("ab", [teacher, other], (), ((2, own),)),
        ("ab_shared", [teacher, other], (), ()),
    ):
        out = str(tmp_path / f"{name}.h5")
        spec = RegionSpec(num_regions=5, topk=4, output_size=(32, 32), templates=templates,
                          teacher_templates=per_teacher)
        precompute(out, root, paths, labels, fingerprint, teachers, spec, batch_size=4, workers=0)
        found[name] = whole_distributions(out)
    table, prob, _ = found["ab"]
    assert table.attrs["templates"] == [["a photo of a {}."], [own]]
    np.testing.assert_allclose(prob, (found["a"][1] + found["b"][1]) / 2, rtol=2e-3, atol=1e-4)
    assert np.abs(prob - found["ab_shared"][1]).max() > 1e-3  # the own templates changed teacher 2's texts
    assert "templates per teacher" in "\n".join(describe(table))
    assert f"logit scale {other.logit_scale:.4g}, 1 template(s): ['{own}']" in "\n".join(describe(table))
    with pytest.raises(ValueError, match="--teacher-templates names teacher 3, but there are 2 --teacher"):
        precompute(str(tmp_path / "bad.h5"), root, paths, labels, fingerprint, [teacher, other],
                   RegionSpec(num_regions=5, topk=4, output_size=(32, 32), teacher_templates=((3, own),)), workers=0)

    lazy = str(tmp_path / "lazy.h5")
    precompute(lazy, root, paths, labels, fingerprint, [teacher, other],
               RegionSpec(num_regions=5, topk=4, output_size=(32, 32), teacher_templates=((2, own),)), workers=0,
               lazy=True)
    precompute(lazy, root, paths, labels, fingerprint, [teacher, other],
               RegionSpec(num_regions=5, topk=4, output_size=(32, 32), teacher_templates=((2, own),)),
               batch_size=4, workers=0)
    np.testing.assert_allclose(whole_distributions(lazy)[1], prob, rtol=2e-3, atol=1e-4)
