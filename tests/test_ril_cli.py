"""`python -m ril` end to end on the Synthetic dataset: one process, torchrun shards and a SIGKILLed
run resumed all write bitwise-identical tables; inspect, verify and the refusal messages."""
import os
import signal
import subprocess
import sys
import time

import h5py
import pytest
import torch

from tests.cli_runs import SYNTHETIC
from tests.conftest import REPO_ROOT, requires_dassl, run_script
from tests.test_ril_precompute import assert_same_results

pytestmark = requires_dassl

REGIONS, TOPK, BATCH = 24, 3, 2  # one batch size everywhere: forwards of other sizes round differently
OPTS = ["INPUT.SIZE", "(32, 32)", "INPUT.INTERPOLATION", "bicubic", "DATASET.NUM_SHOTS", "4",
        "DATASET.SYNTHETIC.NUM_CLASSES", "4", "DATASET.SYNTHETIC.IMAGES_PER_CLASS", "8",
        "DATASET.SYNTHETIC.IMAGE_SIZE", "40"]
NUM_IMAGES = 16  # 4 shots x 4 classes
SINGLE_THREAD = {"OMP_NUM_THREADS": "1"}  # torchrun's default per rank; the reference matches it


def dataset_flags(root):
    return ["--root", str(root), "--seed", "1", "--dataset-config-file", SYNTHETIC]


def precompute_args(root, teacher, out):
    return ["precompute", *dataset_flags(root), "--teacher", teacher, "--regions", str(REGIONS),
            "--topk", str(TOPK), "--batch-size", str(BATCH), "--workers", "0", "--out", str(out), *OPTS]


def ril_main(args):
    from ril.__main__ import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main([str(arg) for arg in args])
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_teacher):
    """The table made by one process, plus its dataset root."""
    directory = tmp_path_factory.mktemp("ril_cli")
    out = directory / "one_process.h5"
    assert ril_main(precompute_args(directory / "data", tiny_teacher, out)) == 0
    return out, directory / "data"


def test_torchrun_shards_give_the_same_table(reference, tiny_teacher, tmp_path):
    out = tmp_path / "torchrun.h5"
    run_script("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ril",
               *precompute_args(reference[1], tiny_teacher, out), env=SINGLE_THREAD, timeout=300)
    assert_same_results(reference[0], out)
    assert not [name for name in os.listdir(tmp_path) if "rank" in name]  # shards merged and removed


def _done_count(path):
    try:
        with h5py.File(path, "r", locking=False) as handle:
            return int(handle["progress/done"][()].sum())
    except (OSError, KeyError):
        return 0


def test_a_killed_run_resumes_to_the_same_table(reference, tiny_teacher, tmp_path, caplog):
    out = tmp_path / "killed.h5"
    args = [sys.executable, "-m", "ril", *precompute_args(reference[1], tiny_teacher, out)]
    env = dict(os.environ, PYTHONWARNINGS="ignore", **SINGLE_THREAD)
    process = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while process.poll() is None and _done_count(out) < 3:
            time.sleep(0.005)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    done = _done_count(out)
    assert process.returncode == -signal.SIGKILL and 0 < done < NUM_IMAGES, "the run ended before it was killed"
    with caplog.at_level("INFO", logger="ril.precompute"):
        assert ril_main(precompute_args(reference[1], tiny_teacher, out)) == 0
    assert f"{done} of {NUM_IMAGES} images already done" in caplog.text
    assert_same_results(reference[0], out)


def test_inspect_and_verify(reference, capsys):
    table, root = reference
    assert ril_main(["inspect", "--table", table]) == 0
    report = capsys.readouterr().out
    assert f"N={NUM_IMAGES} images x M={REGIONS} regions, top-K={TOPK} of C=4 classes" in report
    assert "dataset=Synthetic" in report and "num_shots=4" in report and "complete" in report
    assert f"bytes per region: {16 + 1 + 2 * TOPK + 2 * TOPK + 4 + 4 + 2}" in report
    assert "teacher top-1 agrees with the ground-truth label on" in report and "entropy histogram" in report
    assert ril_main(["verify", "--table", table, *dataset_flags(root), *OPTS]) == 0
    checked = f"OK (structure, stored paths, completeness, rows of {NUM_IMAGES} of {NUM_IMAGES} images"
    assert f"{checked} and fingerprint)" in capsys.readouterr().out
    assert ril_main(["verify", "--table", table, "--deep"]) == 0
    assert f"{checked})" in capsys.readouterr().out
    assert ril_main(["verify", "--table", table, *dataset_flags(root), *OPTS, "DATASET.SUBSAMPLE_CLASSES", "base"]) == 1
    message = capsys.readouterr().out
    assert "was built for subsample=all but this run uses DATASET.SUBSAMPLE_CLASSES=base" in message


def test_an_ensemble_of_two_teachers_through_the_cli(reference, tiny_teacher, tiny_student, tmp_path, capsys):
    out = tmp_path / "ensemble.h5"
    args = precompute_args(reference[1], tiny_teacher, out)
    args[args.index("--teacher") + 2:args.index("--teacher") + 2] = ["--teacher", tiny_student, "--ensemble", "mean-logit"]
    assert ril_main(args) == 0
    assert ril_main(["inspect", "--table", out]) == 0
    report = capsys.readouterr().out
    assert "teachers: ensemble of 2 (mean-logit)" in report
    assert "teacher 1: file:teacher.pt" in report and "teacher 2: file:student.pt" in report
    assert f"bytes per region: {16 + 1 + 2 * TOPK + 2 * TOPK + 4 + 4 + 2 * 2}" in report


def test_an_existing_table_is_refused_with_a_message(reference, tiny_teacher, capsys):
    table, root = reference
    before = table.read_bytes()
    assert ril_main(precompute_args(root, tiny_teacher, table)) == 2
    assert "already complete; pass --overwrite" in capsys.readouterr().err
    assert table.read_bytes() == before


@pytest.mark.parametrize("command,flags", [
    ("precompute", ["--teacher", "--ensemble", "--regions", "--topk", "--crop-seed", "--batch-size", "--workers",
                    "--device", "--out", "--templates", "--scale", "--overwrite", "--root", "--dataset-config-file"]),
    ("merge", ["--out", "--overwrite"]),
    ("add-features", ["--table", "--model", "--root"]),
    ("inspect", ["--table"]),
    ("verify", ["--table", "--deep", "--dataset-config-file"]),
    ("plan", ["--teacher", "--ensemble", "--regions", "--topk", "--batch-size", "--device", "--measure-batches",
              "--root", "--dataset-config-file"]),
    ("show", ["--out", "--images", "--regions", "--panel", "--root"]),
])
def test_help_explains_every_flag(command, flags, capsys):
    with pytest.raises(SystemExit) as exit_code:
        ril_main([command, "--help"])
    assert exit_code.value.code == 0
    text = capsys.readouterr().out
    for flag in flags:
        assert flag in text, flag
