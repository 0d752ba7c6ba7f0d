"""Runs as a hostile user makes them: folders holding another run, killed training, bad inputs, an ASCII
locale, and two planted faults (a few-shot cache that ignores the seed, a region loader never told the
epoch). train.py runs on the Synthetic dataset with tiny CLIPs, as a user runs it; every user error ends
with one message and exit status 2."""
import fnmatch
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from tests import dataset_trees
from tests.cli_runs import (
    BASE_OPTS, build_trainer, config_path, kill_after_first_checkpoint, precompute_table, train_args,
)
from tests.conftest import REPO_ROOT, requires_dassl
from tests.dataset_trees import read

pytestmark = requires_dassl

LONG = ("OPTIM.MAX_EPOCH", "12")  # long enough to be killed after its first checkpoint
EPOCH_FILES = "model.pth.tar-*"


def command(data_root, output_dir, trainer, student, *opts, flags=(), config=None):
    """train.py on the Synthetic dataset, seed 1: flags first, then KEY VALUE overrides."""
    return ["train.py", *train_args(data_root, output_dir, trainer, student, config), *flags, *opts]


def run(args, env=None):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, PYTHONWARNINGS="ignore", **(env or {})))


def succeeds(args, env=None):
    result = run(args, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def fails(args, env=None):
    """stderr of a run that must stop with one message and exit status 2."""
    result = run(args, env)
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr, result.stderr[-3000:]
    return result.stderr


def model_folders(output_dir):
    return sorted(path.name for path in output_dir.iterdir() if (path / "checkpoint").is_file())


@pytest.fixture(scope="module")
def coop_run(synthetic_root, tiny_student, tmp_path_factory):
    """A finished CoOp run (2 epochs, base classes, 4 shots), copied by tests that change it."""
    output_dir = tmp_path_factory.mktemp("coop_run") / "run"
    succeeds(command(synthetic_root, output_dir, "CoOp", tiny_student, *BASE_OPTS))
    return output_dir


def copy_of(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


def test_key_groups_name_declared_keys():
    """A misspelt pattern in the comparison rules would silently compare (or skip) nothing."""
    from trainers.config import IDENTITY_KEYS, MODEL_KEYS, RUN_ONLY_KEYS, TRAINING_ONLY_KEYS, flat_keys, get_cfg

    declared = list(flat_keys(get_cfg()))
    for pattern in IDENTITY_KEYS + RUN_ONLY_KEYS + MODEL_KEYS + TRAINING_ONLY_KEYS:
        assert fnmatch.filter(declared, pattern), f"{pattern} matches no config key"


def test_a_folder_holding_a_run_with_other_settings_is_refused_and_replaced_with_fresh(coop_run, synthetic_root,
                                                                                       tiny_student, tmp_path):
    """Another OPTIM.LR into a finished run's folder used to resume it and report its accuracy, exit 0."""
    output_dir = copy_of(coop_run, tmp_path)
    stderr = fails(command(synthetic_root, output_dir, "CoOp", tiny_student, *BASE_OPTS, "OPTIM.LR", "0.01"))
    assert stderr.startswith(f"error: {output_dir} holds a run trained with other settings "
                             f"({output_dir / 'run_config.yaml'}):\n  OPTIM.LR: recorded 0.002, now 0.01\n")
    assert "pass --fresh to move the old run aside" in stderr
    assert not glob.glob(str(output_dir / "log.txt-*")), "a refused run must not write into the folder"

    stdout = succeeds(command(synthetic_root, output_dir, "CoOp", tiny_student, *BASE_OPTS, "TRAIN.PRINT_FREQ", "1"))
    assert f"Found checkpoints of epoch 2 in {output_dir}" in stdout  # logging keys do not bind

    succeeds(command(synthetic_root, output_dir, "CoOp", tiny_student, *BASE_OPTS, "OPTIM.LR", "0.01",
                     flags=("--fresh",)))
    replaced = glob.glob(str(output_dir / "replaced-*"))
    assert len(replaced) == 1 and os.path.isfile(os.path.join(replaced[0], "prompt_learner", "model.pth.tar-2"))
    moved = {name for name in os.listdir(replaced[0]) if not name.startswith("log.txt-")}
    assert moved == {"log.txt", "prompt_learner", "run_config.yaml", "tensorboard"}
    record = yaml.safe_load((output_dir / "run_config.yaml").read_text(encoding="utf-8"))
    assert record["config"]["OPTIM"]["LR"] == 0.01 and record["mode"] == "train"
    old_record = yaml.safe_load(open(os.path.join(replaced[0], "run_config.yaml"), encoding="utf-8"))
    assert old_record["config"]["OPTIM"]["LR"] == 0.002
    assert "Found checkpoints" not in (output_dir / "log.txt").read_text(encoding="utf-8")


def test_resume_needs_a_folder_with_checkpoints_and_their_record(coop_run, synthetic_root, tiny_student, tmp_path):
    """--resume of a missing folder used to train from scratch without a word."""
    missing = tmp_path / "no_such_run"
    stderr = fails(command(synthetic_root, tmp_path / "out", "CoOp", tiny_student, *BASE_OPTS,
                           flags=("--resume", str(missing))))
    assert stderr.startswith(f"error: --resume {missing} does not exist, so there is nothing to resume")
    (tmp_path / "empty").mkdir()
    stderr = fails(command(synthetic_root, tmp_path / "out", "CoOp", tiny_student, *BASE_OPTS,
                           flags=("--resume", str(tmp_path / "empty"))))
    assert "empty holds no checkpoint (<model>/model.pth.tar-N)" in stderr

    unrecorded = copy_of(coop_run, tmp_path)
    os.remove(unrecorded / "run_config.yaml")
    stderr = fails(command(synthetic_root, tmp_path / "out", "CoOp", tiny_student, *BASE_OPTS,
                           flags=("--resume", str(unrecorded))))
    assert stderr.startswith(f"error: {unrecorded} holds checkpoints (prompt_learner) but no run_config.yaml, "
                             "so the settings they were trained with cannot be checked")


def test_eval_only_may_change_data_and_training_keys_but_not_the_model(coop_run, synthetic_root, tiny_student,
                                                                      tmp_path):
    evaluated = ("--eval-only", "--model-dir", str(coop_run), "--load-epoch", "2")
    allowed = ("DATASET.NUM_SHOTS", "-1", "DATASET.SUBSAMPLE_CLASSES", "new", "OPTIM.LR", "0.5", "SEED", "3",
               "DATALOADER.TEST.BATCH_SIZE", "7", "TRAINER.COOP.PREC", "fp16", "TRAIN.PRINT_FREQ", "1")
    succeeds(command(synthetic_root, tmp_path / "new", "CoOp", tiny_student, *allowed, flags=evaluated))
    record = yaml.safe_load((tmp_path / "new" / "eval_config.yaml").read_text(encoding="utf-8"))
    assert (record["mode"], record["model_dir"], record["load_epoch"]) == ("eval", str(coop_run), 2)
    assert record["config"]["DATASET"]["SUBSAMPLE_CLASSES"] == "new"

    stderr = fails(command(synthetic_root, tmp_path / "middle", "CoOp", tiny_student, *BASE_OPTS,
                           "TRAINER.COOP.CLASS_TOKEN_POSITION", "middle", "MODEL.TEXT_TRUNCATION", "False",
                           flags=evaluated))
    assert stderr.startswith(  # MODEL.TEXT_TRUNCATION changes no result: only the token position is named
        f"error: --model-dir {coop_run} was trained with other settings ({coop_run / 'run_config.yaml'}):\n"
        "  TRAINER.COOP.CLASS_TOKEN_POSITION: recorded 'end', now 'middle'\n--eval-only must build"
    )


@pytest.fixture(scope="module")
def other_table(synthetic_root, tiny_teacher, tmp_path_factory):
    """A table for the same images as `ril_table`, with 8 regions per image instead of 12."""
    directory = tmp_path_factory.mktemp("other_table")
    return precompute_table(synthetic_root, tiny_teacher, directory / "m8.h5", config_path("FDBPL"), regions=8)


def test_another_ril_table_is_refused_and_a_moved_copy_is_not(synthetic_root, ril_table, other_table, tiny_student,
                                                             tmp_path):
    """A table is compared by its fingerprint, not its path: a copy elsewhere is the same table."""
    output_dir = tmp_path / "run"
    opts = (*BASE_OPTS, "OPTIM.MAX_EPOCH", "1")
    succeeds(command(synthetic_root, output_dir, "FDBPL", tiny_student, *opts, "TRAINER.FDBPL.RIL_TABLE", ril_table))
    copied = shutil.copy(ril_table, tmp_path / "moved.h5")
    stdout = succeeds(command(synthetic_root, output_dir, "FDBPL", tiny_student, *opts,
                              "TRAINER.FDBPL.RIL_TABLE", copied))
    assert f"Found checkpoints of epoch 1 in {output_dir}" in stdout
    stderr = fails(command(synthetic_root, output_dir, "FDBPL", tiny_student, *opts,
                           "TRAINER.FDBPL.RIL_TABLE", other_table))
    assert "\n  RIL table (TRAINER.FDBPL.RIL_TABLE) num_regions: recorded 12, now 8\n" in stderr


@pytest.mark.parametrize("trainer", ["CoOp", "FDBPL"])
def test_a_killed_run_resumes_to_the_prompts_of_an_uninterrupted_one(trainer, synthetic_root, ril_table,
                                                                     tiny_student, tmp_path):
    """Killed with SIGKILL inside an epoch and rerun, training ends with bitwise the prompts of a run that was
    never interrupted: every epoch is saved with the random states that order its batches, pick the loader
    workers' seeds and augmentations. Only the last epoch's files stay, and a killed write's leftovers go."""
    opts = (*BASE_OPTS, *LONG, "DATALOADER.NUM_WORKERS", "1")
    folders = ["prompt_learner"]
    if trainer == "FDBPL":
        opts += ("TRAINER.FDBPL.RIL_TABLE", ril_table)
        folders.append("prompt_learner_neg")
    succeeds(command(synthetic_root, tmp_path / "whole", trainer, tiny_student, *opts))
    assert model_folders(tmp_path / "whole") == folders
    interrupted = tmp_path / "interrupted"
    kill_after_first_checkpoint(command(synthetic_root, interrupted, trainer, tiny_student, *opts), interrupted,
                                folders)
    (interrupted / "prompt_learner" / ".tmp-killed-write").write_bytes(b"half a checkpoint")

    stdout = succeeds(command(synthetic_root, interrupted, trainer, tiny_student, *opts))
    resumed_from = int(stdout.split("Found checkpoints of epoch ")[1].split(" ")[0])
    assert 1 <= resumed_from < 12
    assert model_folders(interrupted) == folders
    for name in folders:
        assert sorted(os.listdir(interrupted / name)) == ["checkpoint", "model.pth.tar-12"]
        whole = torch.load(tmp_path / "whole" / name / "model.pth.tar-12", weights_only=True)
        resumed = torch.load(interrupted / name / "model.pth.tar-12", weights_only=True)
        assert whole["state_dict"].keys() == resumed["state_dict"].keys()
        for key, value in whole["state_dict"].items():
            assert torch.equal(value, resumed["state_dict"][key]), f"{name}.{key} differs after the resume"


def test_checkpoint_freq_keeps_its_epochs_and_the_last(synthetic_root, tiny_student, tmp_path):
    succeeds(command(synthetic_root, tmp_path, "CoOp", tiny_student, *BASE_OPTS, "OPTIM.MAX_EPOCH", "5",
                     "TRAIN.CHECKPOINT_FREQ", "2"))
    assert sorted(os.listdir(tmp_path / "prompt_learner")) == [
        "checkpoint", "model.pth.tar-2", "model.pth.tar-4", "model.pth.tar-5"]
    assert (tmp_path / "prompt_learner" / "checkpoint").read_text(encoding="utf-8") == "model.pth.tar-5\n"


def test_truncated_checkpoint_ends_with_its_name(coop_run, synthetic_root, tiny_student, tmp_path):
    output_dir = copy_of(coop_run, tmp_path)
    checkpoint = output_dir / "prompt_learner" / "model.pth.tar-2"
    whole = checkpoint.read_bytes()
    checkpoint.write_bytes(whole[: len(whole) // 2])
    stderr = fails(command(synthetic_root, tmp_path / "eval", "CoOp", tiny_student, *BASE_OPTS,
                           flags=("--eval-only", "--model-dir", str(output_dir), "--load-epoch", "2")))
    assert stderr.startswith(f'error: "{checkpoint}" is not a usable checkpoint: ')
    stderr = fails(command(synthetic_root, output_dir, "CoOp", tiny_student, *BASE_OPTS))
    assert stderr.startswith(f'error: "{checkpoint}" is not a usable checkpoint: ')


def test_truncated_image_ends_with_its_path(tiny_student, tmp_path):
    """Dassl's loader (CoOp, MaPLe, PromptSRC, every evaluation) let PIL's error through without the file,
    from a loader worker with the worker's traceback."""
    from datasets.synthetic import check_settings, ensure_generated

    dataset_dir = ensure_generated(str(tmp_path / "data"), check_settings(10, 24, 64))
    images = sorted(glob.glob(os.path.join(dataset_dir, "images", "*", "*.png")))
    for image in images:
        with open(image, "r+b") as handle:
            handle.truncate(os.path.getsize(image) // 2)
    stderr = fails(command(str(tmp_path / "data"), tmp_path / "out", "CoOp", tiny_student, *BASE_OPTS,
                           "DATALOADER.NUM_WORKERS", "1"))
    assert stderr.startswith("error: cannot read the image ")
    named = stderr[len("error: cannot read the image "):].split(": ")[0]
    assert named in images


def test_unwritable_output_dir_ends_with_one_message(synthetic_root, tiny_student, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder", encoding="utf-8")
    stderr = fails(command(synthetic_root, blocker / "run", "CoOp", tiny_student, *BASE_OPTS))
    assert stderr.startswith(f"error: OUTPUT_DIR (--output-dir) {blocker / 'run'} cannot be written (")


def test_unicode_class_names_under_an_ascii_locale(tiny_student, tmp_path):
    """LC_ALL=C without UTF-8 mode makes every open() and print() ASCII; class names are not."""
    dataset_dir = dataset_trees.build("DescribableTextures", tmp_path / "data")
    names = {"banded": "bandé", "blotchy": "crème brûlée", "braided": "日本", "bubbly": "ÿ", "bumpy": "bumpy"}
    split_path = os.path.join(dataset_dir, "split_zhou_DescribableTextures.json")
    with open(split_path, encoding="utf-8") as handle:
        split = json.load(handle)
    for entries in split.values():
        for entry in entries:
            entry[2] = names[entry[2]]
    with open(split_path, "w", encoding="utf-8") as handle:
        json.dump(split, handle, ensure_ascii=False)
    env = {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"}
    args = ["train.py", "--root", str(tmp_path / "data"), "--trainer", "ZeroshotCLIP",
            "--dataset-config-file", os.path.join(REPO_ROOT, "configs", "datasets", "dtd.yaml"),
            "--config-file", config_path("ZeroshotCLIP", "tiny.yaml"), "--output-dir", str(tmp_path / "out"),
            "--backbone", tiny_student, "--eval-only", "TEST.PER_CLASS_RESULT", "True"]
    result = subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, timeout=900,
                            env={**{key: value for key, value in os.environ.items() if key != "PYTHONIOENCODING"},
                                 "PYTHONWARNINGS": "ignore", **env})
    assert result.returncode == 0, result.stderr.decode("ascii", "replace")[-3000:]
    log = (tmp_path / "out" / "log.txt").read_text(encoding="utf-8")
    assert all(f"({name})" in log for name in names.values())


def test_each_seed_draws_and_caches_its_own_few_shot_split(tmp_path):
    """Planted fault: a cache path without the seed makes every seed train on seed 1's images."""
    dataset_dir = dataset_trees.build("DescribableTextures", tmp_path)

    def draw(seed):
        dataset = read("DescribableTextures", tmp_path, shots=2, seed=seed, global_seed=seed)
        return [item.impath for item in dataset.train_x], [item.impath for item in dataset.val]

    first, second = draw(1), draw(2)
    assert first != second
    assert sorted(os.listdir(os.path.join(dataset_dir, "split_fewshot"))) == ["shot_2-seed_1.pkl", "shot_2-seed_2.pkl"]
    assert draw(2) == second and draw(1) == first  # now read back from each seed's cache


def test_every_epoch_draws_new_regions(synthetic_root, ril_table, tiny_student, tmp_path):
    """Planted fault: a region loader never told the epoch serves every epoch the same regions. Training runs
    with a loader worker, which must see each epoch too."""
    trainer = build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path, opts=(
        *BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE", ril_table, "OPTIM.MAX_EPOCH", "2", "DATALOADER.NUM_WORKERS", "1",
        "TEST.NO_TEST", "True"))
    served = {0: set(), 1: set()}
    forward_backward = trainer.forward_backward

    def record(batch):
        served[trainer.epoch].update(zip(batch["index"].tolist(), batch["region"].tolist()))
        return forward_backward(batch)

    trainer.forward_backward = record
    trainer.train()
    first, second = dict(served[0]), dict(served[1])  # one region per image and visit (REPEAT 1)
    both = first.keys() & second.keys()
    same = [index for index in both if first[index] == second[index]]
    assert len(both) >= 8 and len(same) < len(both) / 2, f"{len(same)} of {len(both)} images got the same region"


def test_sigterm_while_generating_data_leaves_no_temporary_folder(tiny_student, tmp_path):
    """A scheduler's SIGTERM used to end the process without cleanup, leaving a half-written folder."""
    root = tmp_path / "data"
    args = command(str(root), tmp_path / "out", "CoOp", tiny_student, *BASE_OPTS,
                   "DATASET.SYNTHETIC.IMAGES_PER_CLASS", "100", "DATASET.SYNTHETIC.IMAGE_SIZE", "128")
    process = subprocess.Popen([sys.executable, *args], cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    deadline = time.monotonic() + 300
    while not glob.glob(str(root / ".synthetic-*")) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, stderr.decode()[-3000:]
    assert not (root / "synthetic").exists(), "the signal came after the generation finished"
    assert os.listdir(root) == []


def test_a_table_damaged_after_it_was_checked_stops_training_with_one_message(synthetic_root, ril_table, tiny_student,
                                                                               tmp_path):
    """A row byte that changes on disk is found by the loader's checksum (in a loader worker too): exit 2."""
    import h5py
    import numpy as np

    damaged = shutil.copy(ril_table, tmp_path / "damaged.h5")
    with h5py.File(damaged, "r") as handle:
        offset = handle["regions/entropy"].id.get_offset()
    with open(damaged, "r+b") as handle:
        handle.seek(offset)
        handle.write(np.float32(0.5).tobytes())  # a plausible value: only the checksum tells
    stderr = fails(command(synthetic_root, tmp_path / "run", "FDBPL", tiny_student, *BASE_OPTS, "OPTIM.MAX_EPOCH", "1",
                           "DATALOADER.NUM_WORKERS", "1", "TRAINER.FDBPL.RIL_TABLE", damaged))
    assert stderr.startswith(f"error: RIL table {damaged} is damaged: the rows of image 0 ")
