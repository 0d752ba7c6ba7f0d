"""Every shipped trainer config: loads, evaluates on the pixels CLIP and training expect, has its ViT-B/32 twin."""
import argparse
import glob
import os

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from tests.conftest import REPO_ROOT, requires_dassl

pytestmark = requires_dassl

TRAINER_CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "trainers", "**", "*.yaml"), recursive=True))
DATASET_CONFIGS = sorted(glob.glob(os.path.join(REPO_ROOT, "configs", "datasets", "*.yaml")))
SYNTHETIC = os.path.join(REPO_ROOT, "configs", "datasets", "synthetic.yaml")


def relative(path):
    return os.path.relpath(path, REPO_ROOT)


def read_yaml(path):
    with open(path) as handle:
        return yaml.safe_load(handle)


def merged_cfg(config_file, dataset_config_file):
    """The config train.py builds from these two files (yacs raises on any unknown key)."""
    from trainers.config import setup_cfg

    return setup_cfg(argparse.Namespace(dataset_config_file=dataset_config_file, config_file=config_file, opts=[]))


@pytest.fixture(scope="module")
def clip_normalisation(tiny_student):
    """(mean, std) of CLIP's own preprocessing, as clip.load returns it."""
    import clip
    from torchvision.transforms import Normalize

    _, preprocess = clip.load(tiny_student, device="cpu", jit=False)
    normalize = [step for step in preprocess.transforms if isinstance(step, Normalize)]
    assert len(normalize) == 1
    return tuple(normalize[0].mean), tuple(normalize[0].std)


@pytest.mark.parametrize("config_file", TRAINER_CONFIGS, ids=relative)
def test_test_transform_normalises_like_clip_and_like_training_regions(config_file, clip_normalisation, capsys):
    from dassl.data.transforms import build_transform
    from torchvision.transforms import Normalize

    from ril.crops import normalize_pixels

    for dataset_config_file in DATASET_CONFIGS:
        cfg = merged_cfg(config_file, dataset_config_file)
        last = build_transform(cfg, is_train=False).transforms[-1]
        assert isinstance(last, Normalize), (
            f"{relative(config_file)} with {relative(dataset_config_file)}: the test transform ends in "
            f"{type(last).__name__}, not Normalize: INPUT.TRANSFORMS {list(cfg.INPUT.TRANSFORMS)} lacks \"normalize\""
        )
        assert (tuple(last.mean), tuple(last.std)) == clip_normalisation
        assert (tuple(cfg.INPUT.PIXEL_MEAN), tuple(cfg.INPUT.PIXEL_STD)) == clip_normalisation

    # An image already at INPUT.SIZE: evaluation pixels equal the RIL region loader's training pixels.
    cfg = merged_cfg(config_file, SYNTHETIC)
    height, width = cfg.INPUT.SIZE
    rgb = np.random.default_rng(0).integers(0, 256, size=(height, width, 3), dtype=np.uint8)
    evaluated = build_transform(cfg, is_train=False)(Image.fromarray(rgb))
    trained = normalize_pixels(torch.from_numpy(rgb).permute(2, 0, 1)[None], cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)[0]
    torch.testing.assert_close(evaluated, trained, rtol=0, atol=1e-5)
    capsys.readouterr()  # Dassl prints every transform it builds


NOT_A_TWIN = "# Not the ViT-B/32 twin of "  # first line of a vit_b32 config a reference defines otherwise


def test_every_vit_b16_config_has_a_vit_b32_twin_differing_only_in_the_backbone():
    """Protocol scripts map `--backbone ViT-B/32` to a config by replacing vit_b16 with vit_b32 in its name; a
    vit_b32 config whose name a reference gave other values says so on its first line, and is no twin."""
    problems, pairs, not_twins = [], 0, []
    for path in TRAINER_CONFIGS:
        name = os.path.basename(path)
        if "vit_b16" not in name:
            continue
        twin = os.path.join(os.path.dirname(path), name.replace("vit_b16", "vit_b32"))
        if not os.path.isfile(twin):
            problems.append(f"{relative(path)} has no ViT-B/32 twin {relative(twin)}")
            continue
        with open(twin) as handle:
            if handle.readline().startswith(NOT_A_TWIN + name):
                not_twins.append(relative(twin))
                continue
        pairs += 1
        b16, b32 = read_yaml(path), read_yaml(twin)
        backbones = (b16["MODEL"]["BACKBONE"].pop("NAME"), b32["MODEL"]["BACKBONE"].pop("NAME"))
        if backbones != ("ViT-B/16", "ViT-B/32"):
            problems.append(f"{relative(path)} / {relative(twin)}: backbones {backbones}")
        if b16 != b32:
            problems.append(f"{relative(path)} and {relative(twin)} differ in more than MODEL.BACKBONE.NAME")
    assert pairs and not problems, "\n".join(problems)
    assert not_twins == ["configs/trainers/CoOp/vit_b32_ctxv1.yaml"]  # the official FDBPL code's CoOp config


def test_official_preset_sets_the_official_codes_training_and_names_its_table():
    path = os.path.join(REPO_ROOT, "configs", "trainers", "FDBPL", "official_vit_b32.yaml")
    cfg = merged_cfg(path, SYNTHETIC)
    node = cfg.TRAINER.FDBPL
    assert cfg.MODEL.BACKBONE.NAME == "ViT-B/32" and cfg.DATASET.NUM_SHOTS == 16
    assert (cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MOMENTUM, cfg.OPTIM.WEIGHT_DECAY) == ("sgd", 0.002, 0.9, 5e-4)
    assert (cfg.DATALOADER.TRAIN_X.BATCH_SIZE, cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.LR_SCHEDULER) == (32, 50, "cosine")
    assert (cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE, cfg.OPTIM.WARMUP_CONS_LR) == (1, "constant", 1e-5)
    assert (node.CTX_INIT, node.NEG_CTX_INIT) == ("a photo of a", "a photo of no")
    assert (node.ALPHA, node.LAMBDA_NEG, node.LAMBDA_DIFF1, node.LAMBDA_DIFF2) == (0.5, 1.0, 0.001, 0.0)
    assert node.DENSIFY == "smooth"
    with open(path) as handle:
        header = handle.read().split("\nDATALOADER:")[0]
    for flag in ("--config-file configs/trainers/FDBPL/official_vit_b32.yaml",
                 "--teacher open_clip:ViT-H-14-quickgelu/dfn5b", "--regions 500", "--topk 10", "--scale 0.08 0.936"):
        assert flag in header
