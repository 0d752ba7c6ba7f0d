"""Train or evaluate a prompt learner: the CoOp-style command line, for every trainer here.

    python train.py --root $DATA --seed 1 --trainer CoOp \\
        --dataset-config-file configs/datasets/oxford_pets.yaml \\
        --config-file configs/trainers/CoOp/vit_b16_ep50.yaml \\
        --output-dir output/coop/oxford_pets/seed1 DATASET.NUM_SHOTS 16

Trailing KEY VALUE pairs override any config key (see trainers/config.py for the project's keys);
they come after every flag.

Training into an --output-dir that holds checkpoints resumes that run, when its run_config.yaml
records the same settings; --fresh moves the old run aside instead. User errors (paths, names,
settings) end with one message and exit status 2 (FDBPL_DEBUG=1 shows the traceback).
"""
import argparse
import os
import re
import signal
import sys

import torch

import datasets
import trainers
from ril.format import RILTableError
from trainers import distributed
from trainers.base import TrainingSetupError
from trainers.config import check_registered, check_supervision, setup_cfg
from trainers.dassl_compat import UnreadableImageError
from trainers.plugins import load_plugins, plugin_names

EXIT_SETUP_ERROR = 2
FLAG_LIKE = re.compile(r"--[A-Za-z]")


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=str, default="", help="dataset root: the folder holding oxford_pets/, imagenet/, ... (DATASET.ROOT)")
    parser.add_argument("--output-dir", type=str, default="", help="where log.txt, checkpoints and tensorboard files go (OUTPUT_DIR)")
    parser.add_argument("--resume", type=str, default="", help="output folder of an interrupted run to resume from (RESUME); "
                        "its run_config.yaml must record this run's settings")
    parser.add_argument("--fresh", action="store_true", help="train anew in --output-dir: a previous run's checkpoints, "
                        "logs and records there are moved into a replaced-<time> subfolder first")
    parser.add_argument("--seed", type=int, default=-1, help="random seed; also selects the few-shot split file (SEED; negative = random)")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG datasets (DATASET.SOURCE_DOMAINS)")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG datasets (DATASET.TARGET_DOMAINS)")
    parser.add_argument("--transforms", type=str, nargs="+", help="training augmentations, e.g. random_resized_crop random_flip normalize (INPUT.TRANSFORMS)")
    parser.add_argument("--config-file", type=str, default="", help="method config, e.g. configs/trainers/CoOp/vit_b16_ep50.yaml")
    parser.add_argument("--dataset-config-file", type=str, default="", help="dataset config, e.g. configs/datasets/oxford_pets.yaml")
    parser.add_argument("--trainer", type=str, default="", help="trainer name: ZeroshotCLIP, CoOp, ... (TRAINER.NAME)")
    parser.add_argument("--backbone", type=str, default="", help="CLIP model name (ViT-B/16, ...) or checkpoint path (MODEL.BACKBONE.NAME)")
    parser.add_argument("--head", type=str, default="", help="Dassl classification head name (MODEL.HEAD.NAME); unused by CLIP trainers")
    parser.add_argument("--eval-only", action="store_true", help="only evaluate: load --model-dir (if given) and test")
    parser.add_argument("--model-dir", type=str, default="", help="output folder of a trained run, loaded by --eval-only")
    parser.add_argument("--load-epoch", type=int, help="checkpoint epoch to load with --eval-only (default: model-best)")
    parser.add_argument("--no-train", action="store_true", help="build everything but do not call trainer.train()")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE (a dotted name on the Python path, or a .py file) before the config is "
                        "built: it may register trainers and datasets and declare config keys in extend_cfg(cfg) "
                        "(trainers/plugins.py); repeatable; $FDBPL_PLUGINS (':'-separated) adds more")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs, e.g. DATASET.NUM_SHOTS 16")
    return parser


def print_args(args, cfg):
    print("***************\n** Arguments **\n***************")
    for key in sorted(vars(args)):
        print(f"{key}: {getattr(args, key)}")
    print("************\n** Config **\n************")
    print(cfg)


def check_opts(opts):
    """argparse.REMAINDER takes everything after the first KEY, flags included: name a flag found there."""
    flags = [word for word in opts if FLAG_LIKE.match(word)]
    if flags:
        raise ValueError(
            f"{flags[0]} comes after the config override {opts[0]}, so it was read as an override, not a flag: "
            "put every flag first and the KEY VALUE overrides at the end of the command"
        )


def build(args):
    """Config, run folder, logger and trainer; user errors (paths, names, shapes) surface as one message."""
    from dassl.engine import build_trainer
    from dassl.utils import collect_env_info, set_random_seed, setup_logger

    from trainers.run_record import open_evaluation_folder, open_training_folder

    check_opts(args.opts or [])
    trainers.register_all()
    datasets.register_all()
    load_plugins(plugin_names(args.plugin))
    cfg = setup_cfg(args)
    check_registered(cfg)
    if not args.eval_only:
        check_supervision(cfg)
    if distributed.launched_by_torchrun():
        check_distributed(cfg, args)
        distributed.init_from_environment(cfg.USE_CUDA)
        distributed.silence_other_ranks()
    if args.eval_only:
        open_evaluation_folder(cfg, args.model_dir, args.load_epoch, fresh=args.fresh)
    elif distributed.is_main_process():
        open_training_folder(cfg, fresh=args.fresh)
    distributed.barrier()  # the other ranks read the folder once rank 0 has checked and recorded it
    if cfg.SEED >= 0:
        print(f"Setting fixed seed: {cfg.SEED}")
        set_random_seed(cfg.SEED)
    if distributed.is_main_process():
        setup_logger(cfg.OUTPUT_DIR)
    if torch.cuda.is_available() and cfg.USE_CUDA:
        torch.backends.cudnn.benchmark = True
    print_args(args, cfg)
    print("Collecting env info ...")
    print(f"** System info **\n{collect_env_info()}\n")
    trainer = build_trainer(cfg)
    if args.eval_only:
        trainer.load_model(args.model_dir, epoch=args.load_epoch)
    return trainer


def check_distributed(cfg, args):
    """torchrun trains this project's trainers (PromptTrainer); evaluation runs in one process."""
    from dassl.engine import TRAINER_REGISTRY

    from trainers.base import PromptTrainer

    if args.eval_only:
        raise ValueError("--eval-only runs in one process: start it with python, not torchrun")
    if not issubclass(TRAINER_REGISTRY.get(cfg.TRAINER.NAME), PromptTrainer):
        raise ValueError(
            f"torchrun trains this project's trainers (PromptTrainer subclasses); {cfg.TRAINER.NAME} is not one: "
            "train it in one process"
        )


def setup_error(error):
    if os.environ.get("FDBPL_DEBUG"):
        raise error
    print(f"error: {error}\n(set FDBPL_DEBUG=1 for the full traceback)", file=sys.stderr)
    return EXIT_SETUP_ERROR


def exit_on_sigterm():
    """SIGTERM (`kill`, a scheduler's time limit) ends the run through Python's cleanup as Ctrl-C does, so
    half-written files and folders are removed; loader workers keep the default action."""
    main_pid = os.getpid()

    def handler(signum, frame):
        if os.getpid() != main_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def main(argv=None):
    exit_on_sigterm()
    for stream in (sys.stdout, sys.stderr):  # an ASCII locale (LC_ALL=C) must not stop a run on a class name
        stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        trainer = build(args)
    except (FileNotFoundError, ValueError) as error:
        return setup_error(error)
    try:
        if args.eval_only:
            trainer.test()
        elif not args.no_train:
            trainer.train()
    except (TrainingSetupError, UnreadableImageError, RILTableError) as error:  # tables, teachers, checkpoints, images
        return setup_error(error)
    finally:
        distributed.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
