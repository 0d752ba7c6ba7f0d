"""Helpers for end-to-end tests: run train.py and python -m ril on the Synthetic dataset, or build a
trainer in-process from the same flags."""
import os
import re
import signal
import subprocess
import sys
import time

from tests.conftest import REPO_ROOT, run_script

SYNTHETIC = os.path.join(REPO_ROOT, "tests", "configs", "synthetic_small.yaml")  # smaller than the shipped one
ACCURACY = re.compile(r"^\* accuracy: ([0-9.]+)%$", re.MULTILINE)
BASE_OPTS = ("DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base")


def config_path(trainer, name="tiny_ep2.yaml"):
    return os.path.join(REPO_ROOT, "configs", "trainers", trainer, name)


def precompute_table(data_root, teacher, out, config, *opts, regions=12, topk=3):
    """`python -m ril precompute` for the base classes of the Synthetic dataset, 4 shots, seed 1."""
    run_script(
        "-m", "ril", "precompute", "--root", data_root, "--seed", "1", "--dataset-config-file", SYNTHETIC,
        "--config-file", config, "--teacher", teacher, "--regions", str(regions), "--topk", str(topk),
        "--out", str(out), "--workers", "0", "--device", "cpu", *(opts or BASE_OPTS),
    )
    return str(out)


def train(data_root, output_dir, trainer, student, *opts, config=None, eval_only_from=None, load_epoch=2):
    """Run train.py; with `eval_only_from`, evaluate that run's checkpoint instead of training."""
    args = ["train.py", *train_args(data_root, output_dir, trainer, student, config)]
    if eval_only_from:
        args += ["--eval-only", "--model-dir", str(eval_only_from), "--load-epoch", str(load_epoch)]
    return run_script(*args, *opts)


def log_accuracies(output_dir):
    """Every `* accuracy:` value Dassl wrote to the run's log.txt, in order."""
    return [float(value) for value in ACCURACY.findall(open(os.path.join(output_dir, "log.txt")).read())]


def log_accuracy(output_dir):
    accuracies = log_accuracies(output_dir)
    assert accuracies, f"no '* accuracy:' line in {output_dir}/log.txt"
    return accuracies[-1]


def train_args(synthetic_root, output_dir, trainer, student, config=None):
    """train.py's flags for a run on the Synthetic dataset, seed 1."""
    return [
        "--root", synthetic_root, "--seed", "1", "--trainer", trainer, "--dataset-config-file", SYNTHETIC,
        "--config-file", config or config_path(trainer), "--output-dir", str(output_dir), "--backbone", student,
    ]


def build_trainer(synthetic_root, trainer, student, output_dir, config=None, opts=()):
    """A Dassl trainer built in this process from the flags train.py takes, as train.py builds it (no log file)."""
    import datasets
    import trainers
    from dassl.engine import build_trainer as dassl_build_trainer
    from dassl.utils import set_random_seed

    from train import build_parser
    from trainers.config import setup_cfg

    trainers.register_all()
    datasets.register_all()
    args = build_parser().parse_args([*train_args(synthetic_root, output_dir, trainer, student, config), *opts])
    cfg = setup_cfg(args)
    set_random_seed(cfg.SEED)
    return dassl_build_trainer(cfg)


def kill_after_first_checkpoint(args, output_dir, folders):
    """Start train.py and SIGKILL it as soon as every model folder holds epoch 1 (so inside epoch 2)."""
    process = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    first = [output_dir / name / "model.pth.tar-1" for name in folders]
    deadline = time.monotonic() + 600
    while not all(path.exists() for path in first) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert all(path.exists() for path in first), "the run never wrote its first checkpoints"
    assert not (output_dir / folders[0] / "model.pth.tar-12").exists(), "the kill came after the last epoch"
