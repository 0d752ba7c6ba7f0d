"""train.py end to end, as a user runs it: train on base classes, evaluate on new, errors."""
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT, requires_dassl, run_script
from tests.cli_runs import SYNTHETIC, log_accuracy

pytestmark = requires_dassl


def train_args(synthetic_root, output_dir, backbone, *extra, trainer="CoOp", config="configs/trainers/CoOp/tiny_ep2.yaml"):
    return [
        "train.py", "--root", synthetic_root, "--seed", "1", "--trainer", trainer,
        "--dataset-config-file", SYNTHETIC, "--config-file", os.path.join(REPO_ROOT, config),
        "--output-dir", str(output_dir), "--backbone", backbone, *extra,
    ]


@pytest.fixture(scope="module")
def coop_base_run(synthetic_root, tiny_student, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("coop_base")
    run_script(*train_args(synthetic_root, output_dir, tiny_student, "DATASET.NUM_SHOTS", "4",
                           "DATASET.SUBSAMPLE_CLASSES", "base"))
    return output_dir


def test_coop_trains_on_base_and_evaluates_on_new(coop_base_run, synthetic_root, tiny_student, tmp_path):
    checkpoint = coop_base_run / "prompt_learner" / "model.pth.tar-2"
    assert checkpoint.is_file()
    log = (coop_base_run / "log.txt").read_text()
    assert "Finish training" in log and "# classes  5" in log
    assert 0.0 <= log_accuracy(coop_base_run) <= 100.0

    eval_dir = tmp_path / "test_new"
    result = run_script(*train_args(
        synthetic_root, eval_dir, tiny_student, "--eval-only", "--model-dir", str(coop_base_run),
        "--load-epoch", "2", "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "new",
    ))
    assert f"Loaded {checkpoint}" in result.stdout
    log = (eval_dir / "log.txt").read_text()
    assert "# classes  5" in log and "Finish training" not in log
    assert 0.0 <= log_accuracy(eval_dir) <= 100.0


def test_zero_shot_clip_evaluates_without_a_model_dir(synthetic_root, tiny_student, tmp_path):
    run_script(*train_args(synthetic_root, tmp_path, tiny_student, "--eval-only", trainer="ZeroshotCLIP",
                           config="configs/trainers/ZeroshotCLIP/tiny.yaml"))
    assert 0.0 <= log_accuracy(tmp_path) <= 100.0


def test_huggingface_datasets_package_does_not_shadow_ours(synthetic_root, tiny_student, tmp_path):
    """A `datasets` package ahead of ours on the path (as HuggingFace's in site-packages) is not used."""
    fake = tmp_path / "site" / "datasets"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('HuggingFace datasets was imported')\n")
    env = {"PYTHONPATH": str(tmp_path / "site")}
    output_dir = tmp_path / "out"
    run_script(os.path.join(REPO_ROOT, "train.py"), *train_args(
        synthetic_root, output_dir, tiny_student, "--eval-only", trainer="ZeroshotCLIP",
        config="configs/trainers/ZeroshotCLIP/tiny.yaml",
    )[1:], cwd=str(tmp_path), env=env)
    assert 0.0 <= log_accuracy(output_dir) <= 100.0


def run_failing(*args):
    result = subprocess.run(
        [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return result.stderr


def test_unknown_trainer_is_named_with_a_suggestion(synthetic_root, tiny_student, tmp_path):
    stderr = run_failing(*train_args(synthetic_root, tmp_path, tiny_student, trainer="Coop"))
    assert 'TRAINER.NAME (--trainer) is "Coop"' in stderr and 'Did you mean "CoOp"' in stderr


def test_missing_dataset_folder_names_the_path(tmp_path, tiny_student):
    stderr = run_failing(
        "train.py", "--root", str(tmp_path), "--trainer", "CoOp",
        "--dataset-config-file", "configs/datasets/oxford_pets.yaml",
        "--config-file", "configs/trainers/CoOp/tiny_ep2.yaml", "--output-dir", str(tmp_path / "out"),
        "--backbone", tiny_student,
    )
    assert os.path.join(str(tmp_path), "oxford_pets") in stderr


@pytest.fixture(scope="module")
def twin_student(tmp_path_factory):
    """A tiny student of the same width as `tiny_student` (its prompts have the same shapes), other weights."""
    path = tmp_path_factory.mktemp("twin") / "twin.pt"
    run_script("scripts/make_tiny_clip.py", "--out", str(path), "--seed", "7")
    return str(path)


def test_checkpoint_of_another_backbone_is_refused_clearly(coop_base_run, synthetic_root, tiny_student, tiny_teacher,
                                                          tmp_path):
    stderr = run_failing(*train_args(
        synthetic_root, tmp_path, tiny_teacher, "--eval-only", "--model-dir", str(coop_base_run),
        "--load-epoch", "2", "DATASET.SUBSAMPLE_CLASSES", "new",
    ))
    assert f"--model-dir {coop_base_run} was trained with other settings" in stderr
    assert f"backbone (MODEL.BACKBONE.NAME): recorded {tiny_student}#sha256=" in stderr
    assert f", now {tiny_teacher}#sha256=" in stderr


def test_checkpoint_of_a_same_width_backbone_is_refused(coop_base_run, synthetic_root, tiny_student, twin_student,
                                                       tmp_path):
    """ViT-B/32 and ViT-B/16 prompts have the same shapes: only the backbone identity tells them apart, from
    the run record or, without one, from the checkpoint itself."""
    args = ("--eval-only", "--load-epoch", "2", "DATASET.SUBSAMPLE_CLASSES", "new")
    stderr = run_failing(*train_args(synthetic_root, tmp_path / "a", twin_student, "--model-dir", str(coop_base_run),
                                     *args))
    assert f"backbone (MODEL.BACKBONE.NAME): recorded {tiny_student}#sha256=" in stderr

    without_record = shutil.copytree(coop_base_run, tmp_path / "copied_run")
    os.remove(without_record / "run_config.yaml")
    stderr = run_failing(*train_args(synthetic_root, tmp_path / "b", twin_student, "--model-dir", str(without_record),
                                     *args))
    checkpoint = without_record / "prompt_learner" / "model.pth.tar-2"
    assert f"{checkpoint} was trained with the backbone {tiny_student}#sha256=" in stderr
    assert f"but this run's MODEL.BACKBONE.NAME is {twin_student}#sha256=" in stderr


def test_shape_mismatch_without_backbone_identity_is_refused_clearly(coop_base_run, synthetic_root, tiny_teacher,
                                                                    tmp_path):
    """Checkpoints of older versions or other code name no backbone: a shape mismatch is still named."""
    import torch

    legacy = shutil.copytree(coop_base_run, tmp_path / "legacy_run")
    os.remove(legacy / "run_config.yaml")
    checkpoint_file = legacy / "prompt_learner" / "model.pth.tar-2"
    checkpoint = torch.load(checkpoint_file, weights_only=True)
    del checkpoint["backbone"], checkpoint["training_state"]
    torch.save(checkpoint, checkpoint_file)
    stderr = run_failing(*train_args(
        synthetic_root, tmp_path / "out", tiny_teacher, "--eval-only", "--model-dir", str(legacy),
        "--load-epoch", "2", "DATASET.SUBSAMPLE_CLASSES", "new",
    ))
    assert "'ctx' has shape (4, 64)" in stderr and "expects (4, 128)" in stderr
    assert "another backbone" in stderr


def test_missing_checkpoint_epoch_names_the_file(coop_base_run, synthetic_root, tiny_student, tmp_path):
    stderr = run_failing(*train_args(
        synthetic_root, tmp_path, tiny_student, "--eval-only", "--model-dir", str(coop_base_run), "--load-epoch", "7",
    ))
    assert os.path.join(str(coop_base_run), "prompt_learner", "model.pth.tar-7") in stderr


def test_help_explains_every_flag():
    result = run_script("train.py", "--help")
    for flag in ("--root", "--seed", "--trainer", "--dataset-config-file", "--config-file", "--output-dir",
                 "--resume", "--fresh", "--eval-only", "--model-dir", "--load-epoch", "--no-train", "--backbone"):
        assert flag in result.stdout


def parsed(*argv):
    from train import build_parser

    return build_parser().parse_args(list(argv))


def config_error(*argv):
    from trainers.config import setup_cfg

    with pytest.raises(ValueError) as error:
        setup_cfg(parsed(*argv))
    return str(error.value)


def test_config_key_typos_are_named_with_their_source_and_a_suggestion(tmp_path):
    assert config_error("TRAINER.FDBPL.RIL_PATH", "t.h5").startswith(
        "the override TRAINER.FDBPL.RIL_PATH t.h5: unknown config key TRAINER.FDBPL.RIL_PATH. "
        "Did you mean TRAINER.FDBPL.RIL_TABLE"
    )
    assert "Did you mean TRAINER.FDBPL.RIL_TABLE" in config_error("TRAINER.FDBLP.RIL_TABLE", "t.h5")
    config = tmp_path / "typo.yaml"
    config.write_text("OPTIM:\n  LR: 0.01\n  MAX_EPOCHS: 3\n", encoding="utf-8")
    assert config_error("--config-file", str(config)).startswith(
        f"{config} (--config-file): unknown config key OPTIM.MAX_EPOCHS. Did you mean OPTIM.MAX_EPOCH"
    )
    assert config_error("--dataset-config-file", str(config), "--config-file", str(tmp_path / "none.yaml")).startswith(
        f"{config} (--dataset-config-file): unknown config key OPTIM.MAX_EPOCHS"
    )
    assert config_error("NO.SUCH.THING", "1") == (
        "the override NO.SUCH.THING 1: unknown config key NO.SUCH.THING. trainers/config.py declares every key "
        "of the project."
    )


def test_config_values_and_files_that_cannot_be_merged_are_named(tmp_path):
    assert config_error("DATASET.NUM_SHOTS", "sixteen").startswith(
        "the override DATASET.NUM_SHOTS sixteen: Type mismatch"
    )
    assert config_error("DATASET.NUM_SHOTS", "16", "SEED") == (
        "config overrides come in KEY VALUE pairs, but 3 words were given (DATASET.NUM_SHOTS 16 SEED); the last "
        "one, SEED, has no value"
    )
    missing = tmp_path / "missing.yaml"
    assert config_error("--config-file", str(missing)).startswith(f"{missing} (--config-file) cannot be read: ")
    broken = tmp_path / "broken.yaml"
    broken.write_text("OPTIM: [LR\n", encoding="utf-8")
    assert config_error("--config-file", str(broken)).startswith(f"{broken} (--config-file) is not valid UTF-8 YAML")
    wrong_type = tmp_path / "wrong_type.yaml"
    wrong_type.write_text("OPTIM:\n  MAX_EPOCH: many\n", encoding="utf-8")
    assert config_error("--config-file", str(wrong_type)).startswith(f"{wrong_type} (--config-file): Type mismatch")


def test_typo_and_flags_after_overrides_end_with_one_message(synthetic_root, tiny_student, tmp_path):
    stderr = run_failing(*train_args(synthetic_root, tmp_path, tiny_student, "DATASET.NUM_SHOT", "4"))
    assert stderr.startswith("error: the override DATASET.NUM_SHOT 4: unknown config key DATASET.NUM_SHOT. "
                             "Did you mean DATASET.NUM_SHOTS")
    stderr = run_failing("train.py", "DATASET.NUM_SHOTS", "16", *train_args(synthetic_root, tmp_path, tiny_student)[1:])
    assert stderr.startswith("error: --root comes after the config override DATASET.NUM_SHOTS, so it was read as an "
                             "override, not a flag: put every flag first")
    assert not os.listdir(tmp_path), "a refused command must not write into its output folder"


def test_config_without_normalize_is_refused_instead_of_evaluating_raw_pixels(synthetic_root, tiny_student, tmp_path):
    """A user's config without "normalize" would evaluate CLIP on raw [0, 1] pixels: one message, exit 2."""
    with open(os.path.join(REPO_ROOT, "configs/trainers/FDBPL/tiny_ep2.yaml")) as handle:
        shipped = handle.read().splitlines()
    config = tmp_path / "no_normalize.yaml"
    config.write_text("\n".join(line for line in shipped if "TRANSFORMS" not in line) + "\n")
    stderr = run_failing(*train_args(synthetic_root, tmp_path / "out", tiny_student, "--eval-only",
                                     trainer="FDBPL", config=str(config)))
    assert stderr.startswith('error: INPUT.TRANSFORMS is [], without "normalize"')
    assert 'Add "normalize" to INPUT.TRANSFORMS in the --config-file' in stderr
