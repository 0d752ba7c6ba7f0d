"""inspect / verify on a hand-written table whose statistics are known."""
import math

import h5py
import numpy as np
import pytest

from ril.format import make_attrs
from ril.reader import RILTable
from ril.summary import describe, teacher_statistics, verify
from ril.writer import TableWriter, complete_table, create_table
from tests.test_ril_format import rewrite_rows, settings, toy_fingerprint

LOG_C = math.log(4)


@pytest.fixture
def known_table(tmp_path):
    """2 images x 2 regions, K=2 of C=4; teacher top-1 = [[0, 2], [1, 1]] against labels [0, 1]."""
    paths, labels = ["a.png", "b.png"], [0, 1]
    path = str(tmp_path / "known.h5")
    create_table(path, make_attrs(toy_fingerprint(paths, labels), settings(num_regions=2, topk=2)), paths, labels)
    entropies = [[0.0, LOG_C / 2], [LOG_C, LOG_C / 2]]
    with TableWriter(path) as writer:
        for index, top1 in enumerate([[0, 2], [1, 1]]):
            writer.write_image(index, [40, 50], {
                "regions/box": np.array([[0.0, 0.0, 1.0, 1.0], [0.25, 0.5, 0.5, 0.5]], np.float32),
                "regions/flip": np.array([0, 1], np.uint8),
                "regions/topk_index": np.array([[top1[0], 3], [top1[1], 3]], np.uint16),
                "regions/topk_logprob": np.array([[-0.5, -1.5], [-0.5, -3.0]], np.float16),
                "regions/logsumexp": np.array([2.5, 2.0], np.float32),
                "regions/entropy": np.array(entropies[index], np.float32),
                "regions/teacher_top1": np.array([[top1[0]], [top1[1]]], np.uint16),
            })
    complete_table(path)
    return path


def test_teacher_statistics_are_hand_computed(known_table):
    agreement, histogram, mean_weight = teacher_statistics(RILTable(known_table))
    assert agreement == pytest.approx(0.75)
    assert mean_weight == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
    assert histogram.tolist() == [1, 0, 0, 0, 0, 2, 0, 0, 0, 1]


def test_describe_reports_counts_sizes_and_quality(known_table):
    report = "\n".join(describe(RILTable(known_table)))
    assert "N=2 images x M=2 regions, top-K=2 of C=4 classes" in report
    assert "bytes per region: 35; per image: 70" in report  # 16 + 1 + 2*2 + 2*2 + 4 + 4 + 2*1
    assert "75.00% of regions" in report and "mean information weight 0.5000" in report
    assert "dataset=Toy" in report and "2 of 2 images done, complete" in report


def test_verify_accepts_a_sound_table_and_names_each_problem(known_table):
    assert verify(known_table).problems == []
    assert "num_shots=4 but this run uses DATASET.NUM_SHOTS=8" in verify(
        known_table, toy_fingerprint(["a.png", "b.png"], [0, 1], num_shots=8)).problems[0]
    rewrite_rows(known_table, 0, {"regions/box": np.array([[0, 0, 1, 1], [0.25, 0.75, 0.5, 0.5]], np.float32)})
    rewrite_rows(known_table, 1, {"regions/topk_logprob": np.array([[np.nan, -1.5], [-0.5, -3]], np.float16)})
    with h5py.File(known_table, "r+") as handle:
        handle["progress/done"][1] = 0
    problems = verify(known_table).problems
    assert any("unfinished: 1 of 2 images done" in problem for problem in problems)
    assert "image 0 (a.png): boxes not finite and inside the image" in problems  # left 0.75 + width 0.5 > 1
    assert not any("non-finite" in problem for problem in problems)  # image 1 is not done: not checked
    with h5py.File(known_table, "r+") as handle:
        handle["progress/done"][1] = 1
    assert "image 1 (b.png): top-K log-probabilities not finite and <= 0" in verify(known_table).problems


@pytest.mark.parametrize("name,value,problem", [
    ("regions/entropy", np.array([np.nan, 0.5], np.float32), "entropy not finite and within [0, log C]"),
    ("regions/entropy", np.array([np.inf, 0.5], np.float32), "entropy not finite and within [0, log C]"),
    ("regions/logsumexp", np.array([np.nan, 2.0], np.float32), "non-finite logsumexp"),
    ("regions/topk_index", np.array([[4, 3], [1, 3]], np.uint16), "topk_index >= number of classes"),
    ("regions/topk_index", np.array([[3, 3], [1, 3]], np.uint16), "topk_index repeats a class"),
    ("regions/teacher_top1", np.array([[4], [1]], np.uint16), "teacher_top1 >= number of classes"),
    ("regions/box", np.array([[np.nan, 0, 1, 1], [0, 0, 1, 1]], np.float32), "boxes not finite and inside the image"),
    ("regions/flip", np.array([2, 0], np.uint8), "flip not 0 or 1"),
    ("images/size", np.array([0, 50], np.int32), "non-positive image sizes"),
])
def test_verify_rejects_values_no_writer_may_store_even_with_a_matching_checksum(known_table, name, value, problem):
    rewrite_rows(known_table, 1, {name: value})
    problems = verify(known_table).problems
    assert f"image 1 (b.png): {problem}" in problems
    assert all(found.startswith("image 1 (b.png): ") for found in problems)


def test_verify_samples_images_unless_deep(known_table, monkeypatch):
    import ril.summary

    monkeypatch.setattr(ril.summary, "VERIFY_SAMPLE", 1)
    with h5py.File(known_table, "r+") as handle:
        handle["regions/entropy"][1, 0] = 0.25  # a changed byte, the checksum unchanged
    sampled = verify(known_table)
    assert sampled.problems == [] and (sampled.images_checked, sampled.num_images) == (1, 2)
    deep = verify(known_table, deep=True)
    assert deep.images_checked == 2 and len(deep.problems) == 1
    assert "image 1 (b.png) do not match their checksum" in deep.problems[0]


def test_verify_raises_for_a_file_that_is_no_table(known_table):
    with pytest.raises(FileNotFoundError, match="python -m ril precompute"):
        verify(known_table + ".absent")
