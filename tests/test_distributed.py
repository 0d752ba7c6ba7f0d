"""torchrun training on the CPU (gloo, 2 processes): the same prompts and losses as one process."""
import os
import re
import subprocess
import sys

import torch

from tests.cli_runs import BASE_OPTS, config_path, log_accuracy, train, train_args
from tests.conftest import REPO_ROOT, requires_dassl

pytestmark = requires_dassl

CONFIG = config_path("CoOp_FDBPL")
DUAL = ("TRAINER.FDBPL.DUAL_PROMPTS", "True")
STEP = re.compile(r"^epoch \[(\d+)/\d+\] batch \[(\d+)/\d+\].*$", re.MULTILINE)
TERM = re.compile(r" (loss|pos|neg|diff1|diff2) (-?[0-9.]+) \(")


def torchrun(*args, processes=2):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"),
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return result


def logged_steps(output_dir):
    """{(epoch, batch): {term: value}} of every step line in the run's log.txt."""
    text = open(os.path.join(output_dir, "log.txt")).read()
    return {(int(m.group(1)), int(m.group(2))): dict(TERM.findall(m.group(0))) for m in STEP.finditer(text)}


def prompts(output_dir, epoch=2):
    return {name: torch.load(os.path.join(output_dir, name, f"model.pth.tar-{epoch}"))["state_dict"]["ctx"]
            for name in ("prompt_learner", "prompt_learner_neg")}


def test_two_processes_train_as_one_with_the_same_global_batch(synthetic_root, ril_table, tiny_student, tmp_path):
    single, double = tmp_path / "single", tmp_path / "torchrun"
    opts = (*BASE_OPTS, *DUAL, "TRAINER.FDBPL.RIL_TABLE", ril_table, "OPTIM.LR", "0.05", "OPTIM.WARMUP_EPOCH", "0",
            "TRAIN.CHECKPOINT_FREQ", "1")
    train(synthetic_root, single, "CoOp_FDBPL", tiny_student, *opts, config=CONFIG)
    result = torchrun("train.py", *train_args(synthetic_root, double, "CoOp_FDBPL", tiny_student, CONFIG), *opts)
    steps_single, steps_double = logged_steps(single), logged_steps(double)
    assert sorted(steps_double) == sorted(steps_single) == [(1, 1), (1, 2), (2, 1), (2, 2)]
    for step, terms in steps_single.items():  # each logged term: the mean over both processes' shares
        assert set(steps_double[step]) == set(terms) == {"loss", "pos", "neg", "diff1", "diff2"}
        for term, value in terms.items():
            assert abs(float(steps_double[step][term]) - float(value)) <= 2e-4, (step, term)
    for name, ctx in prompts(single).items():  # an epoch moves the prompts by far more than the tolerance
        assert (ctx - prompts(single, epoch=1)[name]).abs().max() > 1e-3, name
        assert torch.allclose(prompts(double)[name], ctx, atol=1e-5), name
    assert result.stdout.count("epoch [1/2] batch [1/2]") == 1  # only rank 0 prints
    assert log_accuracy(double) == log_accuracy(single)


def test_hard_label_trainers_run_under_torchrun(synthetic_root, tiny_student, tmp_path):
    torchrun("train.py", *train_args(synthetic_root, tmp_path, "CoOp", tiny_student, config_path("CoOp")), *BASE_OPTS)
    assert (tmp_path / "prompt_learner" / "model.pth.tar-2").is_file()
    assert 0.0 <= log_accuracy(tmp_path) <= 100.0


def test_a_global_batch_the_processes_cannot_share_is_refused(synthetic_root, ril_table, tiny_student, tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
         *train_args(synthetic_root, tmp_path, "CoOp_FDBPL", tiny_student, CONFIG), *BASE_OPTS,
         "TRAINER.FDBPL.RIL_TABLE", ril_table, "DATALOADER.TRAIN_X.BATCH_SIZE", "7"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
        env=dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1"),
    )
    assert result.returncode != 0
    assert "which 2 processes cannot share equally" in result.stderr
