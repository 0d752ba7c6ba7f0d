"""The reference repositories' configs and command lines, run here unchanged (CoOp, MaPLe, PromptSRC, PromptKD, the
official FDBPL code): their keys as every merge takes them, their train.py commands replayed, and the
scripts/<method>/ wrappers end to end on the Synthetic dataset with tiny CLIPs."""
import argparse
import os
import subprocess
import sys

import pytest
import yaml

from tests.cli_runs import SYNTHETIC
from tests.conftest import REPO_ROOT, requires_dassl

pytestmark = requires_dassl

# The values PromptKD's configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml sets (its _cross_datasets
# twin: depths 3), keys of PromptKD's train.py included.
PROMPTKD_PUBLISHED = {
    "DATALOADER": {"TRAIN_X": {"BATCH_SIZE": 8}, "TEST": {"BATCH_SIZE": 100}, "NUM_WORKERS": 8},
    "INPUT": {"SIZE": "(224, 224)", "INTERPOLATION": "bicubic", "PIXEL_MEAN": [0.48145466, 0.4578275, 0.40821073],
              "PIXEL_STD": [0.26862954, 0.26130258, 0.27577711],
              "TRANSFORMS": ["random_resized_crop", "random_flip", "normalize"]},
    "OPTIM": {"NAME": "sgd", "LR": 0.005, "MAX_EPOCH": 20, "LR_SCHEDULER": "cosine", "WARMUP_EPOCH": 1,
              "WARMUP_TYPE": "constant", "WARMUP_CONS_LR": 1e-5},
    "TRAIN": {"PRINT_FREQ": 20},
    "MODEL": {"BACKBONE": {"NAME": "ViT-B/16"}},
    "TEST": {"FINAL_MODEL": "best_val", "NO_TEST": False},
    "TRAINER": {"PROMPTKD": {"N_CTX_VISION": 4, "N_CTX_TEXT": 4, "CTX_INIT": "a photo of a", "PREC": "fp16",
                             "PROMPT_DEPTH_VISION": 9, "PROMPT_DEPTH_TEXT": 9, "TEACHER_NAME": "ViT-L/14",
                             "PROJECT_LAYER": 2, "CE_WEIGHT": 0.0, "KD_WEIGHT": 1.0}},
}


def write_yaml(path, mapping):
    path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    return str(path)


def setup(*argv):
    from train import build_parser
    from trainers.config import setup_cfg

    return setup_cfg(build_parser().parse_args(list(argv)))


def setup_error(*argv):
    with pytest.raises(ValueError) as error:
        setup(*argv)
    return str(error.value)


def promptkd(config, *opts):
    return setup("--trainer", "PromptKD", "--dataset-config-file", SYNTHETIC, "--config-file", config, *opts)


@pytest.fixture
def promptkd_config(tmp_path):
    return write_yaml(tmp_path / "promptkd_published.yaml", PROMPTKD_PUBLISHED)


def test_promptkd_config_keys_are_renamed_or_ignored_as_its_code_reads_them(promptkd_config):
    from trainers.config import flat_keys

    cfg = promptkd(promptkd_config)
    node = cfg.TRAINER.PROMPTKD
    assert (node.TEACHER_BACKBONE, node.TEACHER_CTX_INIT) == ("ViT-L/14", "a photo of a")
    assert (node.N_CTX_VISION, node.PROMPT_DEPTH_VISION, node.PROJECT_LAYER, node.KD_WEIGHT) == (4, 9, 2, 1.0)
    assert (cfg.TEST.FINAL_MODEL, cfg.TEST.NO_TEST) == ("best_val", False)
    assert node.TEACHER_EPOCH == 0 and node.TEACHER_DIR == ""  # model-best.pth.tar, as a published teacher holds
    keys = flat_keys(cfg)
    for key in ("TRAINER.PROMPTKD.N_CTX_TEXT", "TRAINER.PROMPTKD.PROMPT_DEPTH_TEXT", "TRAINER.PROMPTKD.CE_WEIGHT",
                "TRAINER.PROMPTKD.TEACHER_NAME", "TRAINER.PROMPTKD.CTX_INIT", "TRAINER.MODAL"):
        assert key not in keys

    cfg = promptkd(promptkd_config, "TRAINER.PROMPTKD.TEACHER_NAME", "ViT-B/16", "TRAINER.PROMPTKD.CTX_INIT", "a_photo",
                   "TRAINER.PROMPTKD.N_CTX_TEXT", "8", "TRAINER.PROMPTKD.CE_WEIGHT", "1.0")
    assert (cfg.TRAINER.PROMPTKD.TEACHER_BACKBONE, cfg.TRAINER.PROMPTKD.TEACHER_CTX_INIT) == ("ViT-B/16", "a_photo")


def test_a_file_setting_both_names_of_a_key_is_refused(tmp_path):
    both = write_yaml(tmp_path / "both.yaml", {"TRAINER": {"PROMPTKD": {
        "TEACHER_NAME": "ViT-L/14", "TEACHER_BACKBONE": "ViT-B/16"}}})
    assert setup_error("--config-file", both) == (
        f"{both} (--config-file) sets both TRAINER.PROMPTKD.TEACHER_NAME (PromptKD's name) and "
        "TRAINER.PROMPTKD.TEACHER_BACKBONE, the same setting: keep one"
    )


def test_modal_base2novel_reads_the_published_teacher_and_runs_on_the_base_classes(promptkd_config, tmp_path,
                                                                                   monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("teacher_model/Synthetic/VLPromptLearner")
    cfg = promptkd(promptkd_config, "DATASET.NUM_SHOTS", "0", "TRAINER.MODAL", "base2novel")
    node = cfg.TRAINER.PROMPTKD
    assert (node.TEACHER_DIR, node.TEACHER_EPOCH, node.TRANSDUCTIVE) == ("teacher_model/Synthetic", 0, True)
    assert cfg.DATASET.SUBSAMPLE_CLASSES == "base"
    # A teacher or classes given explicitly win; the switch is PromptKD's only.
    cfg = promptkd(promptkd_config, "TRAINER.MODAL", "base2novel", "TRAINER.PROMPTKD.TEACHER_DIR", "mine",
                   "TRAINER.PROMPTKD.TEACHER_EPOCH", "7", "DATASET.SUBSAMPLE_CLASSES", "new")
    assert (cfg.TRAINER.PROMPTKD.TEACHER_DIR, cfg.TRAINER.PROMPTKD.TEACHER_EPOCH) == ("mine", 7)
    assert cfg.DATASET.SUBSAMPLE_CLASSES == "new"
    cfg = setup("--trainer", "CoOp", "--dataset-config-file", SYNTHETIC, "TRAINER.MODAL", "base2novel")
    assert (cfg.DATASET.SUBSAMPLE_CLASSES, cfg.TRAINER.PROMPTKD.TEACHER_DIR) == ("all", "")


def test_modal_cross_reads_the_published_imagenet_teacher_at_epoch_20(promptkd_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("teacher_model/ImageNet-xd")
    cfg = promptkd(promptkd_config, "TRAINER.MODAL", "cross")
    assert (cfg.TRAINER.PROMPTKD.TEACHER_DIR, cfg.TRAINER.PROMPTKD.TEACHER_EPOCH) == ("teacher_model/ImageNet-xd", 20)
    assert cfg.DATASET.SUBSAMPLE_CLASSES == "all"


def test_modal_errors_name_the_setting_and_the_way_out(promptkd_config, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    message = setup_error("--trainer", "PromptKD", "--config-file", promptkd_config, "--dataset-config-file", SYNTHETIC,
                          "TRAINER.MODAL", "base2novel")
    assert message.startswith("the override TRAINER.MODAL base2novel: PromptKD's code reads its published base2novel "
                              "teacher from teacher_model/Synthetic/ under the working directory")
    assert f"{tmp_path}/teacher_model/Synthetic does not exist" in message
    assert message.endswith("or leave out TRAINER.MODAL for a zero-shot teacher")
    assert setup_error("TRAINER.MODAL", "base2new") == (
        "the override TRAINER.MODAL base2new: TRAINER.MODAL is 'base2new'; PromptKD's settings are base2novel and cross"
    )
    os.makedirs("teacher_model/Synthetic")
    assert "TRAINER.PROMPTKD.TRANSDUCTIVE is False: leave out one of the two" in setup_error(
        "--trainer", "PromptKD", "--dataset-config-file", SYNTHETIC, "TRAINER.PROMPTKD.TRANSDUCTIVE", "False",
        "TRAINER.MODAL", "base2novel")


def test_trainers_the_references_have_and_this_project_lacks_are_named(tmp_path):
    from trainers.config import check_registered, get_cfg

    missing = str(tmp_path / "configs" / "trainers" / "CoCoOp" / "vit_b16_c4_ep10_batch1_ctxv1.yaml")
    assert setup_error("--trainer", "CoCoOp", "--config-file", missing) == (
        "--trainer CoCoOp: CoCoOp is not implemented in this project yet (issue 16 adds CoCoOp, IVLP and VPT)"
    )
    assert setup_error("--trainer", "CoOp_OFF").startswith(
        "--trainer CoOp_OFF: CoOp_OFF is the official FDBPL code's FDBPL trainer; here it is --trainer FDBPL")
    assert setup_error("--trainer", "PromptSRC_KDPL").endswith("is not implemented in this project")
    assert setup_error("TRAINER.KDPL.CLASS_AGNOSTIC", "False") == (
        "the override TRAINER.KDPL.CLASS_AGNOSTIC False: TRAINER.KDPL.CLASS_AGNOSTIC configures CoOp_KDPL, which "
        "(KDPL, the official FDBPL code's online-distillation baseline) is not implemented in this project"
    )
    vpt = write_yaml(tmp_path / "vpt.yaml", {"TRAINER": {"VPT": {"N_CTX_VISION": 4}}})
    assert setup_error("--config-file", vpt).startswith(
        f"{vpt} (--config-file): TRAINER.VPT configures VPT, which is not implemented in this project yet")
    cfg = get_cfg()
    cfg.TRAINER.NAME = "IVLP"
    with pytest.raises(ValueError, match="^TRAINER.NAME IVLP: IVLP is not implemented in this project yet"):
        check_registered(cfg)


def test_yacs_merge_failures_name_their_source(tmp_path):
    leaf_for_node = write_yaml(tmp_path / "leaf.yaml", {"TRAINER": {"COOP": 5}})
    assert setup_error("--config-file", leaf_for_node).startswith(f"{leaf_for_node} (--config-file): ")
    assert setup_error("TRAINER.COOP", "5").startswith("the override TRAINER.COOP 5: ")


def run(*args, cwd=REPO_ROOT, env=None):
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS="ignore", **(env or {})))


def test_config_values_reads_reference_configs_as_train_py_does(promptkd_config):
    result = run("scripts/lib/config_values.py", promptkd_config, "configs/trainers/CoOp/vit_b32_ctxv1.yaml", "--",
                 "TRAINER.MODAL", "cross", "TRAINER.PROMPTKD.CE_WEIGHT", "0.0")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["20 224 224 bicubic", "50 224 224 bicubic"]
    result = run("scripts/lib/config_values.py", promptkd_config, "--", "TRAINER.COCOOP.N_CTX", "4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == ("config_values.py: the override TRAINER.COCOOP.N_CTX 4: TRAINER.COCOOP.N_CTX "
                                     "configures CoCoOp, which is not implemented in this project yet (issue 16 adds "
                                     "CoCoOp, IVLP and VPT)")


def test_train_py_ends_a_reference_trainer_it_lacks_with_one_message(tmp_path):
    result = run("train.py", "--root", str(tmp_path), "--seed", "1", "--trainer", "CoCoOp", "--dataset-config-file",
                 "configs/datasets/caltech101.yaml", "--config-file",
                 "configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", "--output-dir", str(tmp_path / "out"),
                 "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --trainer CoCoOp: CoCoOp is not implemented in this project yet")
    assert not (tmp_path / "out").exists()
