"""RIL tables from the command line: plan, precompute, merge, add-features, inspect, verify, show.

    python -m ril precompute --root $DATA --seed 1 \\
        --dataset-config-file configs/datasets/oxford_pets.yaml \\
        --config-file configs/trainers/FDBPL/vit_b16_ep50.yaml \\
        --teacher ViT-L/14 --regions 500 --topk 20 --out $DATA/ril/oxford_pets_16shot_seed1.h5 \\
        DATASET.NUM_SHOTS 16 DATASET.SUBSAMPLE_CLASSES base
    torchrun --nproc_per_node=4 -m ril precompute ...     (sharded: one shard per rank, merged by rank 0)
    python -m ril precompute ... --shard 0/3   (and 1/3, 2/3 anywhere): shards read as one via OUT.shards.json
    python -m ril precompute ... --teacher ViT-L/14 --teacher open_clip:ViT-H-14-quickgelu/dfn5b   (an ensemble)
    python -m ril precompute ... --lazy       (boxes only; training with TRAINER.FDBPL.RIL_FILL True fills it)
    python -m ril plan --root $DATA --dataset-config-file configs/datasets/imagenet.yaml \\
        --teacher ViT-L/14 --regions 500 --topk 20 DATASET.NUM_SHOTS -1      (size, forwards, hours; no table)
    python -m ril inspect --table TABLE
    python -m ril show TABLE --images 4 --out regions.png [--root $DATA]
    python -m ril verify --table TABLE [--deep] [--root ... --dataset-config-file ... --config-file ... opts]
    python -m ril add-features --table TABLE --model ViT-B/16 --root $DATA
    python -m ril merge --out TABLE SHARD [SHARD ...]

The table covers exactly the training split train.py reads with the same --root, --seed,
--dataset-config-file, --config-file and opts (few-shot seed = SEED, DATASET.SUBSAMPLE_CLASSES).
Regions are cut at INPUT.SIZE with INPUT.INTERPOLATION.

Exit status: 0 done, 1 `verify` found problems, 2 an error (a bad flag or config key, a file that
cannot be read or written, a corrupt table), told in one message; FDBPL_DEBUG=1 adds the traceback.
"""
import os
import sys

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[0] != REPO_ROOT:  # our `datasets` package, not Hugging Face's
    sys.path.insert(0, REPO_ROOT)

import argparse  # noqa: E402
import logging  # noqa: E402
from dataclasses import replace  # noqa: E402
from datetime import timedelta  # noqa: E402

import torch  # noqa: E402

from ril.format import ENSEMBLE_MODES, RILTableError, path_dtype, run_fingerprint, training_images  # noqa: E402
from ril.templates import DEFAULT_HELP, TEMPLATE_SETS  # noqa: E402

EXIT_ERROR = 2
PROCESS_GROUP_TIMEOUT = timedelta(hours=24)  # ranks wait at the barrier until the slowest shard ends
DEFAULT_TEACHER = "ViT-L/14"


def add_dataset_flags(parser, required):
    parser.add_argument("--root", default="", required=required, help="dataset root (DATASET.ROOT), as for train.py")
    parser.add_argument("--seed", type=int, default=-1, help="SEED, which also selects the few-shot split, as for train.py")
    parser.add_argument("--dataset-config-file", default="", required=required, help="dataset config, e.g. configs/datasets/oxford_pets.yaml")
    parser.add_argument("--config-file", default="", help="method config (sets INPUT.SIZE, INPUT.INTERPOLATION, ...)")
    parser.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE (dotted name or .py file) first, as train.py --plugin does, so a config naming "
                        "its keys merges; repeatable; $FDBPL_PLUGINS (':'-separated) adds more")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides as KEY VALUE pairs, e.g. DATASET.NUM_SHOTS 16")


def add_run_flags(parser):
    parser.add_argument("--batch-size", type=int, default=256, help="regions per model forward; keep it when resuming, as forwards of another size round differently (default 256)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader processes decoding and cropping images (default 4)")
    parser.add_argument("--device", default="", help="cpu, cuda or cuda:N (default: cuda if available; cuda:LOCAL_RANK under torchrun)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing result instead of refusing")


def add_table_flags(parser):
    """What a table holds and how it is scored: shared by precompute and plan."""
    parser.add_argument("--teacher", action="append", metavar="SPEC",
                        help="OpenAI CLIP name or checkpoint path, or open_clip:MODEL/PRETRAINED (e.g. "
                        "open_clip:ViT-H-14-quickgelu/dfn5b, needs open_clip_torch); repeat the flag for an "
                        "ensemble, each teacher with its own pixel normalisation and text tower (default "
                        f"{DEFAULT_TEACHER})")
    parser.add_argument("--ensemble", choices=ENSEMBLE_MODES, default=ENSEMBLE_MODES[0],
                        help="how several --teacher distributions are combined: mean-prob, the mean of their "
                        "probabilities, or mean-logit, the softmax of their mean logits (default mean-prob)")
    parser.add_argument("--regions", type=int, default=500, help="M, regions per image (default 500)")
    parser.add_argument("--topk", type=int, default=20, help="K, teacher classes kept per region; a run with fewer "
                        "classes keeps all C of them, and the table records K = min(K, C) (default 20)")
    parser.add_argument("--crop-seed", type=int, default=0, help="seed of the region sampler, >= 0 (default 0)")
    parser.add_argument("--scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("MIN", "MAX"),
                        help="RandomResizedCrop area range (default 0.08 1.0; the official FDBPL code uses 0.08 0.936)")
    parser.add_argument("--templates", action="append", metavar="TEMPLATE",
                        help=f'a class-text template with "{{}}" or a set name ({", ".join(TEMPLATE_SETS)}); repeat '
                        f"the flag to ensemble several (default: {DEFAULT_HELP}, as the official FDBPL and PromptKD "
                        "code)")
    parser.add_argument("--teacher-templates", action="append", type=teacher_template, metavar="N=TEMPLATE",
                        help="templates of the N-th --teacher only (1-based, in their order), as --templates takes "
                        "them, e.g. 2=imagenet80; repeat for several. Teachers without any use --templates")


def add_command(commands, name, summary):
    return commands.add_parser(name, help=summary, description=summary)


def build_parser():
    parser = argparse.ArgumentParser(prog="python -m ril", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    plan = add_command(commands, "plan", "print a table's size on disk, its teacher forwards and an hour estimate "
                       "from the teacher's throughput measured on --device, before any work (no table is written)")
    add_dataset_flags(plan, required=True)
    add_table_flags(plan)
    plan.add_argument("--batch-size", type=int, default=256, help="regions per teacher forward, as precompute's "
                      "(default 256)")
    plan.add_argument("--device", default="", help="cpu, cuda or cuda:N to measure on (default: cuda if available)")
    plan.add_argument("--measure-batches", type=int, default=3, help="timed forwards of --batch-size random "
                      "regions per teacher, after one warm-up forward (default 3)")

    pre = add_command(commands, "precompute", "build (or resume) a table for a dataset config")
    add_dataset_flags(pre, required=True)
    add_table_flags(pre)
    pre.add_argument("--out", required=True, help="table file to write, e.g. ril/oxford_pets_16shot_seed1.h5")
    pre.add_argument("--lazy", action="store_true",
                     help="create a lazy table: every region's box and flip, no teacher value; training with "
                          "TRAINER.FDBPL.RIL_FILL True scores the regions it draws on first use, and this command "
                          "without --lazy scores the rest. One process only")
    pre.add_argument("--shard", type=shard_spec, metavar="I/S",
                     help="fill shard I of S alone (images I, I+S, ...) into OUT.rankI-of-S, e.g. one process per "
                          "machine; each resumes on its own, and OUT.shards.json (written when a shard completes) "
                          "lists them for training (TRAINER.FDBPL.RIL_TABLE OUT.shards.json) and the other commands")
    pre.add_argument("--keep-shards", action="store_true",
                     help="under torchrun (one node or several: --nnodes N --rdzv-backend c10d): keep each rank's "
                          "shard and write OUT.shards.json instead of merging the shards into OUT")
    add_run_flags(pre)

    merge = add_command(commands, "merge", "merge shard tables (e.g. of an interrupted torchrun) into one")
    merge.add_argument("shards", nargs="+", help="shard tables of the same request")
    merge.add_argument("--out", required=True, help="merged table to write")
    merge.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    feats = add_command(commands, "add-features", "cache the frozen student's image features of every region")
    feats.add_argument("--table", required=True, help="a complete RIL table")
    feats.add_argument("--model", required=True, help="student CLIP name (ViT-B/16, ...) or checkpoint path (MODEL.BACKBONE.NAME)")
    feats.add_argument("--root", required=True, help="dataset root (DATASET.ROOT) the table's image paths are relative to")
    add_run_flags(feats)

    inspect = add_command(commands, "inspect", "print fingerprint, counts, sizes and teacher statistics")
    inspect.add_argument("--table", required=True, help="an RIL table (finished or not)")

    verify = add_command(commands, "verify", "check structure, stored paths, completeness, the rows (checksums "
                         "and value ranges) of a sample of images or, with --deep, of every image, and (given a "
                         "dataset config) the fingerprint; exit status 1 on any problem, 2 if the file cannot be "
                         "read as a table")
    verify.add_argument("--table", required=True, help="an RIL table")
    verify.add_argument("--deep", action="store_true", help="check every image's rows, not a sample of them")
    add_dataset_flags(verify, required=False)

    show = add_command(commands, "show", "draw images with their regions, each box coloured by its information "
                       "weight (blue 0 .. red 1) and labelled with the teacher's top class, into a PNG")
    show.add_argument("table", help="an RIL table")
    show.add_argument("--out", required=True, help="PNG file to write, e.g. regions.png")
    show.add_argument("--images", type=int, default=4, help="images to draw, spread evenly over the table's "
                      "finished images, four per row (default 4)")
    show.add_argument("--regions", type=int, help="the first R regions of each image to draw (default 8, or the "
                      "table's M if fewer)")
    show.add_argument("--panel", type=int, default=256, help="side in pixels of each image's square panel "
                      "(default 256)")
    show.add_argument("--root", default="", help="dataset root the table's image paths are relative to; without "
                      "it the regions are drawn on grey panels of each image's shape")
    return parser


def teacher_template(text):
    """`--teacher-templates N=ITEM` as (N, ITEM)."""
    position, separator, item = text.partition("=")
    if not separator or not position.isdigit() or not item:
        raise argparse.ArgumentTypeError(f"--teacher-templates {text!r}: expected N=TEMPLATE, e.g. 2=imagenet80")
    return int(position), item


def shard_spec(text):
    """`--shard I/S` as (I, S)."""
    index, _, count = text.partition("/")
    try:
        index, count = int(index), int(count)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected I/S, e.g. 0/4 for the first of 4 shards") from None
    if count < 1 or not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"--shard {text}: needs S >= 1 and 0 <= I < S")
    return index, count


def build_run(args):
    """Config and Dassl dataset exactly as train.py builds them."""
    import trainers.dassl_compat  # noqa: F401  (Dassl fixes, before Dassl is used)
    import datasets
    from dassl.data.datasets import build_dataset
    from dassl.utils import set_random_seed

    import trainers
    from trainers.config import setup_cfg
    from trainers.plugins import load_plugins, plugin_names

    trainers.register_all()  # first, so a plugin's trainer that clashes with a built-in one is named as such
    datasets.register_all()
    load_plugins(plugin_names(args.plugin))
    cfg = setup_cfg(args)
    if cfg.SEED >= 0:  # as train.py: the split and few-shot draws depend on the global seed
        set_random_seed(cfg.SEED)
    return cfg, build_dataset(cfg)


def init_distributed(device):
    """(rank, world size, device); joins the torchrun process group when there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if not device:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world_size == 1:
        return 0, 1, device
    use_cuda = device.startswith("cuda")
    if use_cuda:
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if use_cuda else "gloo", timeout=PROCESS_GROUP_TIMEOUT)
    return torch.distributed.get_rank(), world_size, device


def region_spec(args):
    """RegionSpec of the table flags (it checks them before anything is loaded)."""
    from ril.precompute import RegionSpec

    return RegionSpec(num_regions=args.regions, topk=args.topk, scale=tuple(args.scale), crop_seed=args.crop_seed,
                      templates=tuple(args.templates or ()), teacher_templates=tuple(args.teacher_templates or ()),
                      ensemble=args.ensemble)


def load_inputs(args, rank, world_size, device):
    """Config, dataset and teacher; rank 0 goes first, so dataset generation, few-shot caches and
    weight downloads happen once, and the other ranks then read them."""
    from ril.teachers import load_teacher

    if rank > 0:
        torch.distributed.barrier()
    cfg, dataset = build_run(args)
    teachers = [load_teacher(spec, device) for spec in args.teacher or [DEFAULT_TEACHER]]
    if rank == 0 and world_size > 1:
        torch.distributed.barrier()
    return cfg, dataset, teachers


def run_plan(args):
    from ril.plan import TablePlan, describe_plan, measure_teacher
    from ril.precompute import check_run_options, check_teachers, class_features_of, effective_spec

    spec = region_spec(args)
    check_run_options(args.batch_size, 0)
    if args.measure_batches < 1:
        raise ValueError(f"--measure-batches {args.measure_batches} must be at least 1")
    _, _, device = init_distributed(args.device)
    cfg, dataset, teachers = load_inputs(args, 0, 1, device)
    paths, _ = training_images(dataset, cfg.DATASET.ROOT)
    fingerprint = run_fingerprint(cfg, dataset)
    spec = effective_spec(replace(spec, output_size=tuple(cfg.INPUT.SIZE), interpolation=cfg.INPUT.INTERPOLATION),
                          fingerprint, len(teachers))
    classnames = fingerprint["classnames"]
    check_teachers(teachers, spec, len(classnames))
    rates = [measure_teacher(teacher, features, args.batch_size, args.measure_batches)
             for teacher, features in zip(teachers, class_features_of(teachers, classnames, spec.templates))]
    plan = TablePlan(len(paths), spec.num_regions, spec.topk, len(classnames), path_dtype(paths).itemsize,
                     args.batch_size, rates)
    fields = ", ".join(f"{field}={value}" for field, value in fingerprint.items()
                       if field not in ("classnames", "image_list_sha256"))
    print(f"RIL table plan: {fields}")
    print("\n".join(describe_plan(plan, [teacher.teacher_id for teacher in teachers], device, args.measure_batches)))
    return 0


def run_precompute(args):
    from ril.precompute import check_run_options, precompute
    from ril.writer import check_output_path

    spec = region_spec(args)
    check_run_options(args.batch_size, args.workers)
    check_output_path(args.out)
    rank, world_size, device = init_distributed(args.device)
    if rank > 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        cfg, dataset, teachers = load_inputs(args, rank, world_size, device)
        spec = replace(spec, output_size=tuple(cfg.INPUT.SIZE), interpolation=cfg.INPUT.INTERPOLATION)
        paths, labels = training_images(dataset, cfg.DATASET.ROOT)
        written = precompute(
            args.out, os.path.abspath(os.path.expanduser(cfg.DATASET.ROOT)), paths, labels,
            run_fingerprint(cfg, dataset), teachers, spec, batch_size=args.batch_size,
            workers=args.workers, overwrite=args.overwrite, rank=rank, world_size=world_size, lazy=args.lazy,
            shard=args.shard, keep_shards=args.keep_shards,
        )
    finally:
        if world_size > 1:
            torch.distributed.destroy_process_group()
    if rank == 0:
        print(f"RIL table written: {written}" + (" (lazy: no region scored yet)" if args.lazy else ""))
    return 0


def run_merge(args):
    from ril.merge import merge_tables

    complete = merge_tables(args.shards, args.out, overwrite=args.overwrite)
    print(f"Merged {len(args.shards)} table(s) into {args.out}: {'complete' if complete else 'UNFINISHED'}")
    return 0


def run_add_features(args):
    from ril.features import add_student_features

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    add_student_features(args.table, os.path.abspath(os.path.expanduser(args.root)), args.model, device=device,
                         batch_size=args.batch_size, workers=args.workers, overwrite=args.overwrite)
    return 0


def run_inspect(args):
    from ril.shards import open_table
    from ril.summary import describe

    print("\n".join(describe(open_table(args.table, require_complete=False))))
    return 0


def run_show(args):
    from ril.shards import open_table
    from ril.show import draw_table

    root = os.path.abspath(os.path.expanduser(args.root)) if args.root else ""
    picture = draw_table(open_table(args.table, require_complete=False), root, args.images, args.regions, args.panel)
    try:
        picture.save(args.out, format="PNG")
    except OSError as error:
        raise OSError(f"cannot write the picture {args.out}: {error}") from error
    print(f"Drew the regions of {args.table} into {args.out} ({picture.width}x{picture.height} px)")
    return 0


def run_verify(args):
    from ril.summary import verify

    expected = None
    if args.dataset_config_file:
        expected = run_fingerprint(*build_run(args))
    result = verify(args.table, expected, deep=args.deep)
    for problem in result.problems:
        print(f"PROBLEM: {problem}")
    checked = (f"structure, stored paths, completeness, rows of {result.images_checked} of {result.num_images} "
               "images" + (" and fingerprint" if expected else ""))
    print(f"{args.table}: {'FAILED' if result.problems else 'OK'} ({checked})")
    return 1 if result.problems else 0


COMMANDS = {"plan": run_plan, "precompute": run_precompute, "merge": run_merge, "add-features": run_add_features,
            "inspect": run_inspect, "verify": run_verify, "show": run_show}


def main(argv=None):
    for stream in (sys.stdout, sys.stderr):  # an ASCII locale (LC_ALL=C) must not fail on an image path
        stream.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s")
    try:
        return COMMANDS[args.command](args)
    except (RILTableError, OSError, ValueError, ImportError) as error:
        if os.environ.get("FDBPL_DEBUG"):
            raise
        print(f"error: {error}\n(set FDBPL_DEBUG=1 for the full traceback)", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
