"""`python -m ril plan` on the Synthetic dataset with a tiny teacher: size on disk, forwards, measured hours."""
import math
import os
import re

import pytest

from ril.plan import HDF5_METADATA_BYTES
from tests.conftest import requires_dassl
from tests.test_ril_cli import BATCH, NUM_IMAGES, OPTS, REGIONS, TOPK, dataset_flags, precompute_args, ril_main

pytestmark = requires_dassl


def plan_args(root, teachers, *opts):
    flags = [flag for teacher in teachers for flag in ("--teacher", teacher)]
    return ["plan", *dataset_flags(root), *flags, "--regions", str(REGIONS), "--topk", str(TOPK),
            "--batch-size", str(BATCH), "--measure-batches", "2", "--device", "cpu", *OPTS, *opts]


def test_plan_predicts_the_size_of_the_table_precompute_writes(tiny_teacher, tmp_path, capsys):
    root = tmp_path / "data"
    assert ril_main(plan_args(root, [tiny_teacher])) == 0
    report = capsys.readouterr().out
    out = tmp_path / "table.h5"
    assert not out.exists()
    assert ril_main(precompute_args(root, tiny_teacher, out)) == 0
    planned = int(re.search(r"size on disk: .* \((\d+) bytes", report).group(1))
    assert 0 <= planned - os.path.getsize(out) <= HDF5_METADATA_BYTES
    per_region = 16 + 1 + 2 * TOPK + 2 * TOPK + 4 + 4 + 2
    assert f"N={NUM_IMAGES} images x M={REGIONS} regions, top-K={TOPK} of C=4 classes, 1 teacher(s)" in report
    assert f"{per_region} bytes per region" in report
    forwards = NUM_IMAGES * math.ceil(REGIONS / BATCH)
    assert f"teacher forwards: {forwards} per teacher" in report and f"{NUM_IMAGES * REGIONS} regions" in report
    rate = float(re.search(r"teacher file:teacher.pt on cpu: ([\d.]+) regions/s \(measured over 2 batches", report)
                 .group(1))
    hours = float(re.search(r"estimate: ([\d.]+) hours", report).group(1))
    assert rate > 0 and hours == pytest.approx(NUM_IMAGES * REGIONS / rate / 3600, abs=0.01)


def test_plan_of_all_training_images_and_an_ensemble(tiny_teacher, tiny_student, tmp_path, capsys):
    """DATASET.NUM_SHOTS -1: every training image (4 classes x 8, not the 4 shots); two teachers, two
    measured throughputs."""
    opts = ("DATASET.NUM_SHOTS", "-1", "DATASET.SYNTHETIC.IMAGES_PER_CLASS", "16")
    assert ril_main(plan_args(tmp_path / "data", [tiny_teacher, tiny_student], *opts)) == 0
    report = capsys.readouterr().out
    assert "num_shots=-1" in report and "seed=-1" in report
    assert f"N=32 images x M={REGIONS} regions, top-K={TOPK} of C=4 classes, 2 teacher(s)" in report
    assert f"{16 + 1 + 2 * TOPK + 2 * TOPK + 4 + 4 + 2 * 2} bytes per region" in report
    rates = [float(rate) for rate in re.findall(r"teacher file:\w+.pt on cpu: ([\d.]+) regions/s", report)]
    hours = float(re.search(r"estimate: ([\d.]+) hours", report).group(1))
    assert len(rates) == 2 and hours == pytest.approx(sum(32 * REGIONS / rate for rate in rates) / 3600, abs=0.01)


def test_plan_refuses_a_bad_measure_batches_naming_the_flag(tmp_path, capsys):
    assert ril_main(["plan", *dataset_flags(tmp_path / "data"), "--measure-batches", "0", *OPTS]) == 2
    assert "--measure-batches 0 must be at least 1" in capsys.readouterr().err
