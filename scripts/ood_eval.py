"""Out-of-distribution detection of a trained (or zero-shot) model: one evaluation pass, every score.

    python scripts/ood_eval.py --root $DATA --seed 1 --trainer FDBPL \\
        --dataset-config-file configs/datasets/oxford_pets.yaml \\
        --config-file configs/trainers/FDBPL/vit_b32_ep50.yaml \\
        --output-dir OUT/ood/openset/oxford_pets/... --model-dir OUT/base2new/train_base/... --load-epoch 50 \\
        --ood-set new DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base

Takes train.py's flags (the model is built and loaded as `train.py --eval-only` does). The ID images are the
test split the dataset config and DATASET.SUBSAMPLE_CLASSES give; each --ood-set name is either `new` (the
test images of the dataset's new classes: the open-set base-to-new protocol, with SUBSAMPLE_CLASSES base) or
a set of the ImageNet OOD benchmark (datasets/ood_sets.py) under --ood-root. Writes ood_scores.npz (every
image's scores, the ID labels and predictions) and log.txt lines `* ood <set> <score>: auroc ... fpr95 ...
aupr ...`, which scripts/parse_results.py --protocol ood reads. The scores and metrics: trainers/ood.py.
"""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

import torch  # noqa: E402

from train import build, build_parser, exit_on_sigterm, setup_error  # noqa: E402
from trainers.base import TrainingSetupError  # noqa: E402
from trainers.dassl_compat import UnreadableImageError  # noqa: E402

OPEN_SET = "new"
SCORES_FILE = "ood_scores.npz"


def build_ood_parser():
    parser = build_parser()
    parser.description = __doc__
    parser.add_argument("--ood-set", action="append", default=[], metavar="NAME", dest="ood_sets",
                        help=f"an OOD test set, repeatable: '{OPEN_SET}' (the dataset's new classes) or an ImageNet "
                             "OOD set (iNaturalist, SUN, Places, Textures, NINCO)")
    parser.add_argument("--if-present", action="append", default=[], metavar="NAME",
                        help="an ImageNet OOD set scored only when found under --ood-root (e.g. NINCO), repeatable")
    parser.add_argument("--ood-root", default="", help="folder holding the ImageNet OOD sets (default: --root)")
    parser.add_argument("--mcm-temperature", type=float, default=1.0,
                        help="temperature T of MCM's softmax(cosine / T) (default: 1, as MCM)")
    return parser


def test_loader(trainer, data_source):
    """A Dassl loader of `data_source` with the run's test transform and batch size."""
    from dassl.data.data_manager import build_data_loader
    from dassl.data.transforms import build_transform

    cfg = trainer.cfg
    return build_data_loader(cfg, sampler_type="SequentialSampler", data_source=data_source,
                             batch_size=cfg.DATALOADER.TEST.BATCH_SIZE, tfm=build_transform(cfg, is_train=False),
                             is_train=False)


def new_class_images(cfg):
    """The test images of the dataset's new classes (the open-set protocol's OOD set)."""
    from dassl.data.datasets import build_dataset

    if cfg.DATASET.SUBSAMPLE_CLASSES != "base":
        raise ValueError(f"--ood-set {OPEN_SET} scores the new classes against the base classes, but "
                         f"DATASET.SUBSAMPLE_CLASSES is {cfg.DATASET.SUBSAMPLE_CLASSES!r}; set it to base")
    new_cfg = cfg.clone()
    new_cfg.defrost()
    new_cfg.DATASET.SUBSAMPLE_CLASSES = "new"
    return build_dataset(new_cfg).test


def ood_sources(args, cfg):
    """{set name: data source} of every OOD set asked for (optional ones only when present)."""
    from datasets.ood_sets import check_set_name, find_set, read_ood_set

    root = args.ood_root or args.root
    sources = {}
    for name in args.ood_sets:
        sources[name] = new_class_images(cfg) if name == OPEN_SET else read_ood_set(root, name)
    for name in args.if_present:
        check_set_name(name)
        if find_set(root, name) is None:
            print(f"OOD set {name}: not under {root}, not scored")
        else:
            sources[name] = read_ood_set(root, name)
    if not sources:
        raise ValueError("no OOD set to score: give --ood-set (new, or an ImageNet OOD set with --ood-root)")
    return sources


def evaluate(trainer, args):
    from trainers.ood import (
        NEGATIVE_SCORES, metric_lines, negative_prompts, save_scores, score_loader,
    )

    sources = ood_sources(args, trainer.cfg)
    if negative_prompts(trainer) is None:
        print(f"CLIPN-style scores ({', '.join(NEGATIVE_SCORES)}): absent, {type(trainer).__name__} has no "
              "negative prompts")
    id_set = score_loader(trainer, trainer.test_loader, args.mcm_temperature)
    ood_sets = {}
    for name, source in sources.items():
        print(f"Scoring OOD set {name} ({len(source)} images)")
        ood_sets[name] = score_loader(trainer, test_loader(trainer, source), args.mcm_temperature)
    path = os.path.join(trainer.cfg.OUTPUT_DIR, SCORES_FILE)
    save_scores(path, id_set, ood_sets)
    print(f"Scores saved: {path}")
    print("\n".join(metric_lines(id_set, ood_sets)))


def main(argv=None):
    exit_on_sigterm()
    args = build_ood_parser().parse_args(argv)
    args.eval_only = True
    try:
        trainer = build(args)
        with torch.no_grad():
            evaluate(trainer, args)
    except (FileNotFoundError, ValueError, TrainingSetupError, UnreadableImageError) as error:
        return setup_error(error)
    return 0


if __name__ == "__main__":
    sys.exit(main())
