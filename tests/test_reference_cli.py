"""The reference repositories' configs and command lines, run here unchanged (CoOp, MaPLe, PromptSRC, PromptKD, the
official FDBPL code): their keys as every merge takes them, their train.py commands replayed, and the
scripts/<method>/ wrappers end to end on the Synthetic dataset with tiny CLIPs."""
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
    os.makedirs("teacher_model/ImageNet-xd/VLPromptLearner_large")  # as published: read as is
    cfg = promptkd(promptkd_config, "TRAINER.MODAL", "cross")
    assert cfg.TRAINER.PROMPTKD.TEACHER_DIR == "teacher_model/ImageNet-xd"


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

    missing = str(tmp_path / "configs" / "trainers" / "CoCoOp_KDPL" / "vit_b32_c4_ep10_batch1_ctxv1.yaml")
    assert setup_error("--trainer", "CoCoOp_KDPL", "--config-file", missing) == (
        "--trainer CoCoOp_KDPL: CoCoOp_KDPL is KDPL, the official FDBPL code's online-distillation baseline; here it "
        "is --trainer CoCoOp_FDBPL with TRAINER.FDBPL.TEACHER_SOURCE online and the teacher in "
        "TRAINER.FDBPL.TEACHER_BACKBONE (KDPL's class-agnostic variant, TRAINER.KDPL.CLASS_AGNOSTIC, is not "
        "implemented)"
    )
    assert setup_error("--trainer", "CoOp_OFF").startswith(
        "--trainer CoOp_OFF: CoOp_OFF is the official FDBPL code's FDBPL trainer; here it is --trainer FDBPL")
    assert "here it is --trainer PromptSRC_FDBPL with" in setup_error("--trainer", "PromptSRC_KDPL")
    assert setup_error("TRAINER.KDPL.CLASS_AGNOSTIC", "False") == (
        "the override TRAINER.KDPL.CLASS_AGNOSTIC False: TRAINER.KDPL.CLASS_AGNOSTIC configures CoOp_KDPL, which is "
        "KDPL, the official FDBPL code's online-distillation baseline; here it is --trainer CoOp_FDBPL with "
        "TRAINER.FDBPL.TEACHER_SOURCE online and the teacher in TRAINER.FDBPL.TEACHER_BACKBONE (KDPL's "
        "class-agnostic variant, TRAINER.KDPL.CLASS_AGNOSTIC, is not implemented)"
    )
    kdpl = write_yaml(tmp_path / "kdpl.yaml", {"TRAINER": {"KDPL": {"CLASS_AGNOSTIC": False}}})
    assert setup_error("--config-file", kdpl).startswith(
        f"{kdpl} (--config-file): TRAINER.KDPL configures CoOp_KDPL, which is KDPL, the official FDBPL code's")
    cfg = get_cfg()
    cfg.TRAINER.NAME = "VPT_KDPL"
    with pytest.raises(ValueError, match=r"^TRAINER.NAME VPT_KDPL: VPT_KDPL is KDPL, .* --trainer VPT_FDBPL with"):
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
    result = run("scripts/lib/config_values.py", promptkd_config, "--", "TRAINER.KDPL.TEACHER", "ViT-L/14")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(
        "config_values.py: the override TRAINER.KDPL.TEACHER ViT-L/14: TRAINER.KDPL.TEACHER configures CoOp_KDPL, "
        "which is KDPL, the official FDBPL code's online-distillation baseline; here it is --trainer CoOp_FDBPL")


def test_train_py_ends_a_reference_trainer_it_lacks_with_one_message(tmp_path):
    result = run("train.py", "--root", str(tmp_path), "--seed", "1", "--trainer", "CoCoOp_KDPL",
                 "--dataset-config-file", "configs/datasets/caltech101.yaml", "--config-file",
                 "configs/trainers/CoCoOp_KDPL/vit_b32_c4_ep10_batch1_ctxv1.yaml", "--output-dir",
                 str(tmp_path / "out"), "DATASET.NUM_SHOTS", "16", "DATASET.SUBSAMPLE_CLASSES", "base")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("error: --trainer CoCoOp_KDPL: CoCoOp_KDPL is KDPL, the official FDBPL code's")
    assert not (tmp_path / "out").exists()


# --- The references' train.py command lines, as their scripts write them (each script's variables below). ---
TRAIN = ("python train.py --root ${DATA} --seed ${SEED} --trainer ${TRAINER} "
         "--dataset-config-file configs/datasets/${DATASET}.yaml --config-file configs/trainers/${TRAINER}/${CFG}.yaml "
         "--output-dir ${DIR}")
EVAL = TRAIN + " --model-dir ${MODEL_DIR} --load-epoch ${LOADEP} --eval-only"
B2N_TRAIN_DIR = "output/base2new/train_base/${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed${SEED}"
B2N_TEST = ("output/base2new/test_${SUB}/${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed${SEED}", B2N_TRAIN_DIR)
XD_TRAIN_DIR = "output/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}"
XD_TEST_DIR = "output/evaluation/${TRAINER}/${CFG}_${SHOTS}shots/${DATASET}/seed${SEED}"
COOP_VARIANT = "nctx${NCTX}_csc${CSC}_ctp${CTP}"
COOP_OPTS = " TRAINER.COOP.N_CTX ${NCTX} TRAINER.COOP.CSC ${CSC} TRAINER.COOP.CLASS_TOKEN_POSITION ${CTP}"
MAPLE = {"TRAINER": "MaPLe", "CFG": "vit_b16_c2_ep5_batch4_2ctx", "SHOTS": "16", "SEED": "1"}
MAPLE_XD = {**MAPLE, "CFG": "vit_b16_c2_ep5_batch4_2ctx_cross_datasets"}
PROMPTSRC = {"TRAINER": "PromptSRC", "CFG": "vit_b16_c2_ep20_batch4_4+4ctx", "SHOTS": "16", "SEED": "1"}
# PromptSRC's xd_train.sh and xd_test.sh name vit_b16_c2_ep5_batch4_4+4ctx_cross_datasets, which its repository does
# not have (see test_promptsrc_xd_scripts_name_a_config_their_repository_lacks); its reproduce_xd.sh and the epoch 20
# its xd_test.sh loads are this config's.
PROMPTSRC_XD = {**PROMPTSRC, "CFG": "vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets"}
PROMPTKD = {"TRAINER": "PromptKD", "CFG": "vit_b16_c2_ep20_batch8_4+4ctx", "SHOTS": "0", "SEED": "1"}
# MaPLe's baselines by script folder and suffix: IVLP, its language-only prompting (IVLP with another config), VPT.
# They have no cross-dataset config: xd_train_* train with the base-to-new one, 5 epochs, and xd_test_* pass
# --load-epoch 2, which that run never saves (Dassl keeps the last epoch); recorded here with the epoch that exists.
IVLP = {"TRAINER": "IVLP", "CFG": "vit_b16_c2_ep5_batch4_2+2ctx", "SHOTS": "16", "SEED": "1"}
MAPLE_BASELINES = {("independent-vlp", "ivlp"): IVLP,
                   ("language-prompting", "lp"): {**IVLP, "CFG": "vit_b16_c2_ep5_batch4_4ctx_language_only"},
                   ("vpt", "vpt"): {"TRAINER": "VPT", "CFG": "vit_b16_c2_ep5_batch4_4", "SHOTS": "16", "SEED": "1"}}
COCOOP = {"TRAINER": "CoCoOp", "CFG": "vit_b16_c4_ep10_batch1_ctxv1", "SHOTS": "16", "SEED": "1"}
COOP_MAIN = {"TRAINER": "CoOp", "CFG": "rn50_ep50", "CTP": "end", "NCTX": "16", "SHOTS": "16", "CSC": "False",
             "SEED": "1"}
FDBPL_COOP = {"TRAINER": "CoOp", "CFG": "vit_b32_ctxv1", "CTP": "end", "NCTX": "4", "CSC": "False", "SHOTS": "16",
              "SEED": "1", "DATASET": "stanford_cars"}

# name: (variables, command). Trainings here run for real (eval-only commands load them) unless --no-train is added.
TRAININGS = {
    "CoOp scripts/coop/main.sh imagenet rn50_ep50 end 16 16 False": (
        {**COOP_MAIN, "DATASET": "imagenet", "DIR": "output/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/"
                                                   + COOP_VARIANT + "/seed${SEED}"},
        TRAIN + COOP_OPTS + " DATASET.NUM_SHOTS ${SHOTS}"),
    "CoOp scripts/cocoop/base2new_train.sh caltech101 1": (
        {**COCOOP, "DATASET": "caltech101", "DIR": B2N_TRAIN_DIR},
        TRAIN + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES base"),
    "CoOp scripts/cocoop/xd_train.sh 1": (
        {**COCOOP, "DATASET": "imagenet", "DIR": XD_TRAIN_DIR}, TRAIN + " DATASET.NUM_SHOTS ${SHOTS}"),
    "MaPLe scripts/maple/base2new_train_maple.sh caltech101 1": (
        {**MAPLE, "DATASET": "caltech101", "DIR": B2N_TRAIN_DIR},
        TRAIN + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES base"),
    "MaPLe scripts/maple/xd_train_maple.sh imagenet 1": (
        {**MAPLE_XD, "DATASET": "imagenet", "DIR": XD_TRAIN_DIR}, TRAIN + " DATASET.NUM_SHOTS ${SHOTS}"),
    "PromptSRC scripts/promptsrc/base2new_train.sh caltech101 1": (
        {**PROMPTSRC, "DATASET": "caltech101", "DIR": B2N_TRAIN_DIR},
        TRAIN + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES base"),
    "PromptSRC scripts/promptsrc/xd_train.sh imagenet 1": (
        {**PROMPTSRC_XD, "DATASET": "imagenet", "DIR": XD_TRAIN_DIR}, TRAIN + " DATASET.NUM_SHOTS ${SHOTS}"),
    **{f"MaPLe scripts/{folder}/base2new_train_{suffix}.sh caltech101 1": (
        {**method, "DATASET": "caltech101", "DIR": B2N_TRAIN_DIR},
        TRAIN + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES base")
       for (folder, suffix), method in MAPLE_BASELINES.items()},
    **{f"MaPLe scripts/{folder}/xd_train_{suffix}.sh imagenet 1": (
        {**method, "DATASET": "imagenet", "DIR": XD_TRAIN_DIR}, TRAIN + " DATASET.NUM_SHOTS ${SHOTS}")
       for (folder, suffix), method in MAPLE_BASELINES.items()},
}
BUILDS = {
    "PromptSRC scripts/promptsrc/few_shot.sh caltech101 4": (
        {**PROMPTSRC, "CFG": "vit_b16_c2_ep50_batch4_4+4ctx_few_shot", "DATASET": "caltech101", "SHOTS": "4",
         "DIR": XD_TRAIN_DIR}, TRAIN + " DATASET.NUM_SHOTS ${SHOTS}"),
    "PromptKD scripts/promptkd/base2new_train.sh caltech101 1": (
        {**PROMPTKD, "DATASET": "caltech101",
         "DIR": "output/base2new/train_base/${DATASET}/shots_${SHOTS}/${TRAINER}/${CFG}/seed_${SEED}"},
        TRAIN + " DATASET.NUM_SHOTS ${SHOTS} TRAINER.MODAL base2novel TRAINER.PROMPTKD.TEMPERATURE 1.0 "
                "TRAINER.PROMPTKD.KD_WEIGHT 1000.0"),
    "PromptKD scripts/promptkd/xd_train.sh caltech101 1": (
        {**PROMPTKD, "CFG": "vit_b16_c2_ep20_batch8_4+4ctx_cross_datasets", "DATASET": "caltech101",
         "DIR": XD_TRAIN_DIR},
        TRAIN + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES all TRAINER.PROMPTKD.TEMPERATURE 1.0 "
                "TRAINER.PROMPTKD.KD_WEIGHT 1000.0 TRAINER.MODAL cross"),
    "FDBPL scripts/coop/reproduce_base2new_train.sh": (
        {**FDBPL_COOP, "DIR": B2N_TRAIN_DIR},
        TRAIN + COOP_OPTS + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES base"),
    "FDBPL scripts/cocoop/reproduce_base2new_train.sh": (
        {**COCOOP, "CFG": "vit_b32_c4_ep10_batch1_ctxv1", "DATASET": "oxford_pets", "DIR": B2N_TRAIN_DIR},
        TRAIN + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES base"),
    "FDBPL scripts/maple/reproduce_base2new_train.sh": (
        {**MAPLE, "CFG": "vit_b32_c2_ep5_batch4_2ctx", "DATASET": "oxford_pets", "DIR": B2N_TRAIN_DIR},
        TRAIN + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES base"),
    "FDBPL scripts/promptsrc/reproduce_cross_d_train.sh": (
        {**PROMPTSRC, "CFG": "vit_b32_c2_ep20_batch4_4+4ctx_cross_datasets", "DATASET": "imagenet",
         "DIR": XD_TRAIN_DIR}, TRAIN + " DATASET.NUM_SHOTS ${SHOTS}"),
}
EVALUATIONS = {
    "CoOp scripts/coop/eval.sh caltech101 rn50_ep50": (
        {**COOP_MAIN, "DATASET": "caltech101", "LOADEP": "50",
         "DIR": "output/evaluation/${TRAINER}/${CFG}_${SHOTS}shots/" + COOP_VARIANT + "/${DATASET}/seed${SEED}",
         "MODEL_DIR": "output/imagenet/${TRAINER}/${CFG}_${SHOTS}shots/" + COOP_VARIANT + "/seed${SEED}"},
        EVAL + COOP_OPTS),
    "CoOp scripts/coop/zeroshot.sh caltech101 rn50": (
        {"TRAINER": "ZeroshotCLIP", "DATASET": "caltech101", "CFG": "rn50",
         "DIR": "output/${TRAINER}/${CFG}/${DATASET}"},
        "python train.py --root ${DATA} --trainer ${TRAINER} --dataset-config-file configs/datasets/${DATASET}.yaml "
        "--config-file configs/trainers/CoOp/${CFG}.yaml --output-dir output/${TRAINER}/${CFG}/${DATASET} --eval-only"),
    "CoOp scripts/cocoop/base2new_test.sh caltech101 1": (
        {**COCOOP, "DATASET": "caltech101", "LOADEP": "10", "SUB": "new", "DIR": B2N_TEST[0],
         "MODEL_DIR": B2N_TEST[1]}, EVAL + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES ${SUB}"),
    "CoOp scripts/cocoop/xd_test.sh caltech101 1": (
        {**COCOOP, "DATASET": "caltech101", "LOADEP": "10", "DIR": XD_TEST_DIR,
         "MODEL_DIR": "output/imagenet/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}"}, EVAL),
    "MaPLe scripts/maple/base2new_test_maple.sh caltech101 1": (
        {**MAPLE, "DATASET": "caltech101", "LOADEP": "5", "SUB": "new", "DIR": B2N_TEST[0], "MODEL_DIR": B2N_TEST[1]},
        EVAL + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES ${SUB}"),
    "MaPLe scripts/maple/xd_test_maple.sh caltech101 1": (
        {**MAPLE_XD, "DATASET": "caltech101", "LOADEP": "2", "DIR": XD_TEST_DIR,
         "MODEL_DIR": "output/imagenet/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}"}, EVAL),
    "MaPLe scripts/maple/reproduce_maple.sh caltech101 1 weights/maple": (
        {**MAPLE, "DATASET": "caltech101", "LOADEP": "5", "SUB": "base", "DIR": B2N_TEST[0],
         "MODEL_DIR": "weights/maple/base/seed${SEED}"},
        EVAL + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES ${SUB}"),
    "PromptSRC scripts/promptsrc/base2new_test.sh caltech101 1": (
        {**PROMPTSRC, "DATASET": "caltech101", "LOADEP": "20", "SUB": "new", "DIR": B2N_TEST[0],
         "MODEL_DIR": B2N_TEST[1]}, EVAL + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES ${SUB}"),
    "PromptSRC scripts/promptsrc/xd_test.sh caltech101 1": (
        {**PROMPTSRC_XD, "DATASET": "caltech101", "LOADEP": "20", "DIR": XD_TEST_DIR,
         "MODEL_DIR": "output/imagenet/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}"}, EVAL),
    "PromptSRC scripts/promptsrc/reproduce_xd.sh oxford_pets 1 "
    "output/imagenet/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx_cross_datasets_16shots": (
        {**PROMPTSRC_XD, "DATASET": "oxford_pets", "LOADEP": "20", "DIR": XD_TEST_DIR,
         "MODEL_DIR": "output/imagenet/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}"},
        EVAL + " DATASET.NUM_SHOTS ${SHOTS}"),
    **{f"MaPLe scripts/{folder}/base2new_test_{suffix}.sh caltech101 1": (
        {**method, "DATASET": "caltech101", "LOADEP": "5", "SUB": "new", "DIR": B2N_TEST[0], "MODEL_DIR": B2N_TEST[1]},
        EVAL + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES ${SUB}")
       for (folder, suffix), method in MAPLE_BASELINES.items()},
    **{f"MaPLe scripts/{folder}/xd_test_{suffix}.sh caltech101 1": (
        {**method, "DATASET": "caltech101", "LOADEP": "5", "DIR": XD_TEST_DIR,
         "MODEL_DIR": "output/imagenet/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}"}, EVAL)
       for (folder, suffix), method in MAPLE_BASELINES.items()},
}
REFUSED = {  # the trainer this project lacks, and what train.py says instead of looking for its files
    "FDBPL scripts/coop_kdpl/reproduce_base2new_train_off.sh": (
        {**FDBPL_COOP, "TRAINER": "CoOp_OFF", "CLASS_AGNOSTIC": "False", "DIR": B2N_TRAIN_DIR},
        TRAIN + " TRAINER.KDPL.CLASS_AGNOSTIC ${CLASS_AGNOSTIC}" + COOP_OPTS
        + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES base",
        "CoOp_OFF is the official FDBPL code's FDBPL trainer; here it is --trainer FDBPL"),
}


def expand(template, variables):
    """The command with the script's ${VAR}s filled in (a variable may hold others, as DIR does)."""
    import re

    text = template
    while "${" in text:
        text = re.sub(r"\$\{(\w+)\}", lambda m: variables[m.group(1)], text)
    return text


def reference_argv(table, name, data, *test_flags, extra_opts=(), **values):
    """(train.py arguments, output folder) of a recorded command, with flags for the test (--backbone, --no-train)
    put before its overrides, `extra_opts` appended and its variables set to `values` where given."""
    import shlex

    variables, template = table[name][:2]
    variables = {"DATA": data, **variables, **values}
    words = shlex.split(expand(template, variables))
    assert words[:2] == ["python", "train.py"]
    return [*test_flags, *words[2:], *extra_opts], expand(variables.get("DIR", ""), variables)


# Runs train.py's main on each command in turn in one interpreter, from the workspace as from a repository root
# (one Dassl import for them all): exit status and stderr of each, in order.
DRIVER = """
import contextlib, io, json, os, sys
import train
results = []
for argv in json.load(open(sys.argv[1])):
    sys.stdout = open(os.devnull, "w")  # each run's own: Dassl's logger wraps it (its log.txt), then closes it
    stderr = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")
    with contextlib.redirect_stderr(stderr):
        code = train.main(argv)
    stderr.flush()
    results.append({"code": code, "stderr": stderr.buffer.getvalue().decode()})
json.dump(results, open(sys.argv[2], "w"))
"""


def run_train_commands(commands, cwd):
    """[{"code", "stderr"}] of `python train.py <argv>` for each argv, run from `cwd` by DRIVER."""
    import json

    listing, results = os.path.join(cwd, "commands.json"), os.path.join(cwd, "results.json")
    with open(listing, "w") as handle:
        json.dump(commands, handle)
    result = subprocess.run([sys.executable, "-c", DRIVER, listing, results], cwd=cwd, capture_output=True, text=True,
                            timeout=3600, env=dict(os.environ, PYTHONWARNINGS="ignore", PYTHONPATH=REPO_ROOT))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    with open(results) as handle:
        return json.load(handle)


def make_clip(path, width):
    """A ViT-shaped tiny CLIP (224 px, 12 layers, patch 32), so the published configs' sizes and depths fit."""
    import importlib.util

    script = os.path.join(REPO_ROOT, "scripts", "make_tiny_clip.py")
    spec = importlib.util.spec_from_file_location("make_tiny_clip", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.save_checkpoint(module.build_tiny_clip(64, width, 12, 32, 224, seed=3), str(path))
    return str(path)


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    """Every recorded command run from a folder laid out as a reference repository: configs/trainers is this
    project's, except PromptKD's two configs, which hold PromptKD's values; every dataset config is the test suite's
    Synthetic; teacher_model/ holds PromptKD's two published teachers (a tiny PromptSRC run, made first). Trainings
    run for real on one image per class (DATASET.NUM_SHOTS 1, appended), before the evaluations that load them;
    BUILDS only build their trainer (--no-train). For speed, trainings run 2 epochs (OPTIM.MAX_EPOCH 2, appended) and evaluations load epoch 2 (their LOADEP; the epochs the references
    fix are the configs' last, test_eval_only_wrappers_load_the_epoch_the_references_fix), and every command gets
    DATALOADER.NUM_WORKERS 0 (the configs' 8 loader processes per epoch would cost more than the tiny epochs)."""
    root = tmp_path_factory.mktemp("reference_repo")
    trainers_dir = root / "configs" / "trainers"
    trainers_dir.mkdir(parents=True)
    for folder in os.listdir(os.path.join(REPO_ROOT, "configs", "trainers")):
        if folder != "PromptKD":
            os.symlink(os.path.join(REPO_ROOT, "configs", "trainers", folder), trainers_dir / folder)
    (trainers_dir / "PromptKD").mkdir()
    write_yaml(trainers_dir / "PromptKD" / "vit_b16_c2_ep20_batch8_4+4ctx.yaml", PROMPTKD_PUBLISHED)
    cross = yaml.safe_load(yaml.safe_dump(PROMPTKD_PUBLISHED))
    cross["TRAINER"]["PROMPTKD"].update(PROMPT_DEPTH_VISION=3, PROMPT_DEPTH_TEXT=3)
    write_yaml(trainers_dir / "PromptKD" / "vit_b16_c2_ep20_batch8_4+4ctx_cross_datasets.yaml", cross)
    (root / "configs" / "datasets").mkdir()
    for name in ("imagenet", "caltech101", "oxford_pets", "stanford_cars"):
        (root / "configs" / "datasets" / f"{name}.yaml").write_text(open(SYNTHETIC).read())
    (root / "clip").mkdir()
    student, teacher = make_clip(root / "clip" / "student.pt", 64), make_clip(root / "clip" / "teacher.pt", 128)
    data = str(tmp_path_factory.mktemp("data"))
    published = "teacher_model/Synthetic"
    commands = [["--root", data, "--seed", "1", "--trainer", "PromptSRC", "--dataset-config-file",
                 "configs/datasets/caltech101.yaml", "--config-file",
                 "configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml", "--output-dir", published,
                 "--backbone", teacher, "DATASET.NUM_SHOTS", "1", "DATASET.SUBSAMPLE_CLASSES", "base",
                 "OPTIM.MAX_EPOCH", "1", "TEST.FINAL_MODEL", "best_val", "DATALOADER.NUM_WORKERS", "0"]]
    names, dirs = ["teacher"], [published]
    short = ("DATASET.NUM_SHOTS", "1", "OPTIM.MAX_EPOCH", "2")
    for table, flags, opts, values in ((BUILDS, ("--no-train",), (), {}), (REFUSED, (), (), {}),
                                       (TRAININGS, (), short, {}), (EVALUATIONS, (), (), {"LOADEP": "2"})):
        for name in sorted(table):
            argv, run_dir = reference_argv(table, name, data, "--backbone", student, *flags,
                                           extra_opts=(*opts, "DATALOADER.NUM_WORKERS", "0"), **values)
            commands.append(argv)
            names.append(name)
            dirs.append(os.path.join(root, run_dir))
    # The published cross-dataset teacher holds epoch 20 only (here: the teacher's prompts under that name);
    # MaPLe's reproduce_maple.sh reads WEIGHTSPATH/base/seed<S> (here: the base2new training run).
    (root / "teacher_model" / "ImageNet-xd" / "prompt_learner").mkdir(parents=True)
    os.symlink(root / published / "prompt_learner" / "model-best.pth.tar",
               root / "teacher_model" / "ImageNet-xd" / "prompt_learner" / "model.pth.tar-20")
    (root / "weights" / "maple" / "base").mkdir(parents=True)
    os.symlink(root / "output/base2new/train_base/caltech101/shots_16/MaPLe/vit_b16_c2_ep5_batch4_2ctx/seed1",
               root / "weights" / "maple" / "base" / "seed1")
    outcomes = run_train_commands(commands, str(root))
    results = {name: dict(result, dir=run_dir) for name, run_dir, result in zip(names, dirs, outcomes)}
    assert results["teacher"]["code"] == 0, results["teacher"]["stderr"]
    return {"results": results, "student": student}


def recorded(run_dir):
    from trainers.config import flat_keys

    with open(os.path.join(run_dir, "run_config.yaml")) as handle:
        return flat_keys(yaml.safe_load(handle)["config"])


def outcome(replayed, name):
    result = replayed["results"][name]
    return result, f"{name} exited with {result['code']}:\n{result['stderr'][-3000:]}"


@pytest.mark.parametrize("name", sorted(BUILDS))
def test_reference_training_commands_build_their_trainer(replayed, name):
    result, why = outcome(replayed, name)
    assert result["code"] == 0, why
    config = recorded(result["dir"])
    assert config["TRAINER.NAME"] == BUILDS[name][0]["TRAINER"]
    if name.startswith("PromptKD"):
        base2novel = "base2new" in name
        assert config["TRAINER.PROMPTKD.TEACHER_DIR"].endswith("teacher_model/Synthetic" if base2novel
                                                               else "teacher_model/ImageNet-xd")
        assert config["TRAINER.PROMPTKD.TEACHER_EPOCH"] == (0 if base2novel else 20)
        assert config["DATASET.SUBSAMPLE_CLASSES"] == ("base" if base2novel else "all")
        assert (config["TRAINER.PROMPTKD.TEACHER_BACKBONE"], config["TEST.FINAL_MODEL"]) == ("ViT-L/14", "best_val")
        assert config["TRAINER.PROMPTKD.KD_WEIGHT"] == 1000.0
    if name == "FDBPL scripts/coop/reproduce_base2new_train.sh":  # the official FDBPL code's CoOp baseline
        assert (config["OPTIM.MAX_EPOCH"], config["TRAINER.COOP.N_CTX"]) == (50, 4)


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_reference_commands_of_trainers_this_project_lacks_say_so(replayed, name):
    result, why = outcome(replayed, name)
    assert result["code"] == 2 and "Traceback" not in result["stderr"], why
    assert REFUSED[name][2] in result["stderr"]
    assert not os.path.exists(result["dir"])


@pytest.mark.parametrize("name", sorted(TRAININGS))
def test_reference_training_commands_train(replayed, name):
    from tests.cli_runs import log_accuracy

    result, why = outcome(replayed, name)
    assert result["code"] == 0, why
    assert 0.0 <= log_accuracy(result["dir"]) <= 100.0


@pytest.mark.parametrize("name", sorted(EVALUATIONS))
def test_reference_evaluation_commands_load_and_evaluate(replayed, name):
    from tests.cli_runs import log_accuracy

    result, why = outcome(replayed, name)
    assert result["code"] == 0, why
    assert 0.0 <= log_accuracy(result["dir"]) <= 100.0


def test_promptsrc_xd_scripts_name_a_config_their_repository_lacks(tmp_path):
    """Its xd_train.sh fails in its own repository too; here with the project's one message."""
    table = {"xd_train.sh": ({**PROMPTSRC, "CFG": "vit_b16_c2_ep5_batch4_4+4ctx_cross_datasets", "DATASET": "imagenet",
                              "DIR": XD_TRAIN_DIR}, TRAIN + " DATASET.NUM_SHOTS ${SHOTS}")}
    argv, _ = reference_argv(table, "xd_train.sh", str(tmp_path))
    message = setup_error(*argv)
    assert message.startswith("configs/trainers/PromptSRC/vit_b16_c2_ep5_batch4_4+4ctx_cross_datasets.yaml "
                              "(--config-file) cannot be read")


# --- The scripts/<method>/ wrappers: the references' scripts by name, arguments, commands and folders. ---
REPRODUCTIONS = {  # the reference scripts that evaluate published weights (WEIGHTSPATH)
    "MaPLe scripts/maple/reproduce_maple_xd.sh food101 1 weights/maple_xd": (
        {**MAPLE_XD, "DATASET": "food101", "LOADEP": "2", "DIR": XD_TEST_DIR, "MODEL_DIR": "weights/maple_xd/seed${SEED}"},
        EVAL + " DATASET.NUM_SHOTS ${SHOTS}"),
    "PromptSRC scripts/promptsrc/reproduce_base2novel_setting.sh caltech101 1 weights/promptsrc": (
        {**PROMPTSRC, "DATASET": "caltech101", "LOADEP": "20", "SUB": "base", "DIR": B2N_TEST[0],
         "MODEL_DIR": "weights/promptsrc/base/seed${SEED}"},
        EVAL + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES ${SUB}"),
    "PromptSRC scripts/promptsrc/reproduce_few_shot.sh caltech101 4 weights/promptsrc_fs": (
        {**PROMPTSRC, "CFG": "vit_b16_c2_ep50_batch4_4+4ctx_few_shot", "DATASET": "caltech101", "SHOTS": "4",
         "LOADEP": "50", "DIR": "output/few_shot/${DATASET}/${TRAINER}/${CFG}_${SHOTS}shots/seed${SEED}",
         "MODEL_DIR": "weights/promptsrc_fs/${SHOTS}shot/seed${SEED}"}, EVAL + " DATASET.NUM_SHOTS ${SHOTS}"),
    **{f"MaPLe scripts/{folder}/reproduce_{suffix}.sh caltech101 1 weights/{suffix}": (
        {**method, "DATASET": "caltech101", "LOADEP": "5", "SUB": "base", "DIR": B2N_TEST[0],
         "MODEL_DIR": f"weights/{suffix}/base/seed${{SEED}}"},
        EVAL + " DATASET.NUM_SHOTS ${SHOTS} DATASET.SUBSAMPLE_CLASSES ${SUB}")
       for (folder, suffix), method in MAPLE_BASELINES.items()},
}
RECORDED = {**TRAININGS, **BUILDS, **EVALUATIONS, **REPRODUCTIONS}
# wrapper command (scripts/<wrapper> ARGS) -> the recorded reference command its first train.py command must equal
WRAPPERS = {
    "coop/main.sh imagenet rn50_ep50 end 16 16 False": "CoOp scripts/coop/main.sh imagenet rn50_ep50 end 16 16 False",
    "coop/eval.sh caltech101 rn50_ep50": "CoOp scripts/coop/eval.sh caltech101 rn50_ep50",
    "coop/zeroshot.sh caltech101 rn50": "CoOp scripts/coop/zeroshot.sh caltech101 rn50",
    "zsclip/zeroshot.sh caltech101 rn50": "CoOp scripts/coop/zeroshot.sh caltech101 rn50",
    **{f"{name.split(' ', 2)[1][len('scripts/'):]} {name.split(' ', 2)[2]}": name for name in RECORDED
       if name.split()[0] in ("MaPLe", "PromptSRC", "PromptKD") or name.startswith("CoOp scripts/cocoop/")},
}


def test_eval_only_wrappers_load_the_epoch_the_references_fix():
    """LOAD_EPOCH defaults to the config's OPTIM.MAX_EPOCH: the epoch each reference script loads for its config."""
    from trainers.config import get_cfg, merge_file

    for name, (variables, _) in {**EVALUATIONS, **REPRODUCTIONS}.items():
        if "LOADEP" in variables:
            cfg = get_cfg()
            merge_file(cfg, os.path.join(REPO_ROOT, "configs", "trainers", variables["TRAINER"],
                                         f"{variables['CFG']}.yaml"), "--config-file")
            assert cfg.OPTIM.MAX_EPOCH == int(variables["LOADEP"]), name


def wrapper(script, *args, cwd, env=None, check=True):
    full_env = {key: value for key, value in os.environ.items()
                if key not in ("DATA", "OUT", "CFG", "BACKBONE", "SEEDS", "LOAD_EPOCH", "DEVICE", "DRY_RUN", "VERBOSE")}
    full_env.update(PYTHON=sys.executable, PYTHONWARNINGS="ignore", **(env or {}))
    result = subprocess.run(["bash", os.path.join(REPO_ROOT, "scripts", script), *args], cwd=cwd, env=full_env,
                            capture_output=True, text=True, timeout=1800)
    if check:
        assert result.returncode == 0, f"{script} {' '.join(args)}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def parsed_command(argv):
    """train.py's parsed flags and overrides, paths relative to the repository or the working directory."""
    from train import build_parser

    def relative(value):
        return os.path.relpath(value, REPO_ROOT) if isinstance(value, str) and value.startswith(REPO_ROOT) else value

    args = build_parser().parse_args(argv)
    return {key: relative(value) for key, value in vars(args).items() if key != "opts"}, [relative(v) for v in args.opts]


@pytest.mark.parametrize("command", sorted(WRAPPERS))
def test_wrapper_runs_the_references_train_py_command(command, tmp_path):
    import shlex

    script, *args = command.split()
    variables = RECORDED[WRAPPERS[command]][0]
    env = {"DATA": str(tmp_path), "DRY_RUN": "1", "SEEDS": "1"}
    if "LOADEP" in variables:
        env["LOAD_EPOCH"] = variables["LOADEP"]  # its default is checked above
    result = wrapper(script, *args, cwd=tmp_path, env=env)
    printed = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert printed and printed[0][:2] == [sys.executable, os.path.join(REPO_ROOT, "train.py")]
    expected, _ = reference_argv(RECORDED, WRAPPERS[command], str(tmp_path))
    assert parsed_command(printed[0][2:]) == parsed_command(expected)


def test_wrapper_usage_errors_and_help(tmp_path):
    result = wrapper("maple/base2new_train_maple.sh", "imagenet", cwd=tmp_path, env={"DATA": str(tmp_path)},
                     check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("maple/base2new_train_maple.sh: needs 2 arguments: DATASET SEED")
    result = wrapper("maple/base2new_train_maple.sh", "imagenet", "1", cwd=tmp_path, check=False)
    assert result.returncode == 2 and "no dataset root: pass --data DIR or set DATA" in result.stderr
    result = wrapper("promptkd/base2new_train.sh", "--help", cwd=tmp_path)
    assert result.stdout.startswith("Usage: DATA=DIR bash scripts/promptkd/base2new_train.sh DATASET SEED")
    assert "DATA        dataset root" in result.stdout and "LOAD_EPOCH" in result.stdout


@pytest.fixture(scope="module")
def wrapped(tiny_student, tiny_teacher, tmp_path_factory):
    """The wrappers on the test suite's Synthetic (its .yaml; imagenet.yaml: the same, for the scripts that read
    the ImageNet run by name) with the tiny CLIPs, their tiny_ep2 configs and 1 epoch, from a working directory
    holding PromptKD's published teachers (a 2-epoch PromptSRC run on the tiny teacher). One wrapper of each kind
    runs (training, eval-only, CoOp's seed loop and level, zero-shot, PromptKD's teacher); every wrapper's
    commands are checked against the references' by test_wrapper_runs_the_references_train_py_command."""
    from tests.conftest import run_script

    cwd = tmp_path_factory.mktemp("wrappers")
    data = str(tmp_path_factory.mktemp("data"))
    (cwd / "imagenet.yaml").write_text(open(SYNTHETIC).read())
    run_script("train.py", "--root", data, "--seed", "1", "--trainer", "PromptSRC", "--dataset-config-file",
               SYNTHETIC, "--config-file", "configs/trainers/PromptSRC/tiny_ep2.yaml", "--output-dir",
               str(cwd / "teacher_model" / "Synthetic"), "--backbone", tiny_teacher, "DATASET.NUM_SHOTS", "4",
               "DATASET.SUBSAMPLE_CLASSES", "base", "TEST.FINAL_MODEL", "best_val")
    os.symlink(cwd / "teacher_model" / "Synthetic", cwd / "teacher_model" / "ImageNet-xd")
    env = {"DATA": data, "CFG": "tiny_ep2", "BACKBONE": tiny_student, "DEVICE": "cpu", "SEEDS": "1"}
    one_epoch = ("--", "OPTIM.MAX_EPOCH", "1")
    teacher = ("TRAINER.PROMPTKD.TEACHER_NAME", tiny_teacher)
    for script, *args in (
        ("maple/base2new_train_maple.sh", SYNTHETIC, "1", *one_epoch),
        ("maple/base2new_test_maple.sh", SYNTHETIC, "1", *one_epoch),
        ("coop/main.sh", str(cwd / "imagenet.yaml"), "tiny_ep2", "end", "16", "16", "False", *one_epoch),
        ("coop/eval.sh", SYNTHETIC, "tiny_ep2", *one_epoch),
        ("zsclip/zeroshot.sh", SYNTHETIC, "tiny_ep2"),
        ("promptkd/base2new_train.sh", SYNTHETIC, "1", *one_epoch, *teacher, "TRAINER.PROMPTKD.TEACHER_EPOCH", "0"),
        ("promptkd/xd_train.sh", SYNTHETIC, "1", *one_epoch, *teacher),
    ):
        wrapper(script, *args, cwd=cwd, env=env)
    return {"cwd": cwd, "student": checkpoint_tag(tiny_student)}


def checkpoint_tag(path):
    """lib/common.sh's folder tag of a --backbone checkpoint: its file name and the cksum of its absolute path."""
    crc = subprocess.run(["cksum"], input=os.path.abspath(path), capture_output=True, text=True, check=True)
    return f"{os.path.splitext(os.path.basename(path))[0]}-{crc.stdout.split()[0]}"


def parse(*args):
    result = run("scripts/parse_results.py", *args, cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    return result.stdout


def row(text, dataset):
    import re

    lines = [line for line in text.splitlines() if line.startswith(dataset + "  ")]
    assert len(lines) == 1, text
    return re.split(r"\s{2,}", lines[0].strip())[1:]


def run_dirs(wrapped, pattern):
    import glob

    found = sorted(glob.glob(os.path.join(str(wrapped["cwd"]), pattern)))
    assert found, pattern
    return found


def test_maple_base_to_new_wrappers_end_to_end(wrapped):
    from tests.cli_runs import log_accuracy

    cfg = f"tiny_ep2_{wrapped['student']}"
    common = f"synthetic_small/shots_16/MaPLe/{cfg}/seed1"
    base, new = (log_accuracy(run_dirs(wrapped, f"output/base2new/{split}/{common}")[0])
                 for split in ("train_base", "test_new"))
    table = parse(str(wrapped["cwd"] / "output"), "--trainers", "MaPLe")
    assert row(table, "synthetic_small")[:2] == [f"{base:.2f} ± 0.00", f"{new:.2f} ± 0.00"]


def test_coop_wrappers_end_to_end_and_their_folders_parse(wrapped):
    """main.sh on ImageNet (by name) with eval.sh's fixed settings, eval.sh on Synthetic, zeroshot.sh."""
    from tests.cli_runs import log_accuracy

    group = f"CoOp/tiny_ep2_{wrapped['student']}_16shots/nctx16_cscFalse_ctpend"
    trained = log_accuracy(run_dirs(wrapped, f"output/imagenet/{group}/seed1")[0])
    evaluated = log_accuracy(run_dirs(wrapped, f"output/evaluation/{group}/synthetic_small/seed1")[0])
    output = str(wrapped["cwd"] / "output")
    few_shot = parse(output, "--protocol", "few_shot", "--trainers", "CoOp")
    assert row(few_shot, "ImageNet")[0] == f"{trained:.2f} ± 0.00"
    cross = parse(output, "--protocol", "cross_dataset", "--trainers", "CoOp")
    assert row(cross, "ImageNet (source)") == [f"{trained:.2f} ± 0.00"]
    assert row(cross, "synthetic_small") == [f"{evaluated:.2f} ± 0.00"]
    zero_shot = run_dirs(wrapped, f"output/ZeroshotCLIP/tiny_ep2_{wrapped['student']}/synthetic_small")[0]
    assert 0.0 <= log_accuracy(zero_shot) <= 100.0
    assert "CoOp's zeroshot.sh layout" in few_shot


def test_promptkd_wrappers_end_to_end_and_their_folders_parse(wrapped):
    from tests.cli_runs import log_accuracy

    cfg = f"tiny_ep2_{wrapped['student']}"
    common = f"synthetic_small/shots_0/PromptKD/{cfg}/seed_1"
    with open(run_dirs(wrapped, f"output/base2new/train_base/{common}")[0] + "/run_config.yaml") as handle:
        config = yaml.safe_load(handle)["config"]
    assert config["TRAINER"]["PROMPTKD"]["TEACHER_DIR"].endswith("teacher_model/Synthetic")
    assert config["DATASET"]["SUBSAMPLE_CLASSES"] == "base" and config["DATASET"]["NUM_SHOTS"] == 0
    base, new = (log_accuracy(run_dirs(wrapped, f"output/base2new/{split}/{common}")[0])
                 for split in ("test_base", "test_new"))
    table = parse(str(wrapped["cwd"] / "output"), "--trainers", "PromptKD", "--shots", "0")
    assert row(table, "synthetic_small")[:2] == [f"{base:.2f} ± 0.00", f"{new:.2f} ± 0.00"]
    xd = log_accuracy(run_dirs(wrapped, f"output/synthetic_small/PromptKD/{cfg}_0shots/seed1")[0])
    table = parse(str(wrapped["cwd"] / "output"), "--protocol", "cross_dataset", "--trainers",
                  "PromptKD", "--shots", "0", "--datasets", "synthetic_small")
    assert row(table, "synthetic_small")[0] == f"{xd:.2f} ± 0.00"
    assert "PromptKD: no evaluation/ runs, so each dataset's accuracy is that of its run trained on that dataset" \
        in table
