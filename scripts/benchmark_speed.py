"""Training speed of FDBPL against online-teacher distillation, measured side by side in one run.

Modes, timed for each student (one step = fetch a batch, as training does, + forward + backward +
prompt update; median and range over --steps steps after --warmup):
  online-teacher  the teacher's image encoder scores every batch; KL of the student's positive
                  branch to the teacher's logits (teacher class texts encoded once), PromptKD style
  fdbpl-online    KDPL: FDBPL's losses and dual prompts with soft labels from the teacher run on every batch
                  (TRAINER.FDBPL.TEACHER_SOURCE online): fdbpl-pixels with the teacher instead of the table
  fdbpl-pixels    FDBPL from an RIL table, each region re-cut from its image
  fdbpl-lazy      fdbpl-pixels from a lazy table (precompute --lazy) with TRAINER.FDBPL.RIL_FILL and the online
                  modes' teacher, timed twice: a 1st run on a table just created (the teacher scores every
                  region it draws) and a 2nd run, same seed and epoch, on the table the 1st run filled
  fdbpl-cache     FDBPL from the table's student feature cache: no decoding, no image encoder
  coop            CoOp on hard labels: the cost floor of prompt learning
  coop-fdbpl      CoOp_FDBPL: CoOp's prompts trained from RIL pixels (L_pos only): CoOp + the table's cost
  oracle          FDBPL with pixels and soft labels already in memory: the I/O limit
Then: where an fdbpl-pixels step's time goes, stage by stage; step time with text truncation on and
off for several class counts; evaluation of a many-class test set with the text encoder run per
batch against once per evaluation; and the epoch view (one-off precompute against the per-epoch saving, and when it has paid for itself).

A model is an architecture name (random weights in OpenAI's shapes: speed does not depend on the
weights, and nothing is downloaded) or a CLIP checkpoint path. Each measurement runs in a fresh
process, so peak memory is per mode (peak RSS on CPU, peak allocated memory on CUDA).

    python scripts/benchmark_speed.py --quick                            # tiny models, one process
    python scripts/benchmark_speed.py --json speed.json --markdown speed.md   # ViT-L/14 vs ViT-B/32, ViT-B/16
"""
import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import traceback
from contextlib import nullcontext
from itertools import cycle
from types import SimpleNamespace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tabulate import tabulate

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[0] != REPO_ROOT:
    sys.path.insert(0, REPO_ROOT)

import trainers.dassl_compat  # noqa: E402,F401  (before any Dassl import)
from clip.model import CLIP  # noqa: E402
from dassl.data.data_manager import build_data_loader  # noqa: E402
from dassl.data.datasets import Datum  # noqa: E402
from dassl.data.transforms import build_transform  # noqa: E402

from ril.features import add_student_features  # noqa: E402
from ril.format import FEATURES_DATASET, expected_fingerprint  # noqa: E402
from ril.precompute import RegionSpec, precompute  # noqa: E402
from ril.reader import FIELDS, RILTable  # noqa: E402
from ril.teachers import CLIP_MEAN, CLIP_STD, load_teacher  # noqa: E402
from scripts.make_tiny_clip import CONTEXT_LENGTH, HEAD_WIDTH, VOCAB_SIZE, save_checkpoint  # noqa: E402
from trainers.clip_loading import load_clip  # noqa: E402
from trainers.config import get_cfg  # noqa: E402
from trainers.coop import build_coop_model  # noqa: E402
from trainers.losses import distillation_kl  # noqa: E402
from trainers.online_teacher import load_online_teacher  # noqa: E402
from trainers.ril_supervision import RILSupervision  # noqa: E402

# OpenAI's released shapes: (embed dim, input size, vision layers, vision width, patch, text width, text layers).
ARCHITECTURES = {
    "RN50": (1024, 224, (3, 4, 6, 3), 64, None, 512, 12),
    "RN101": (512, 224, (3, 4, 23, 3), 64, None, 512, 12),
    "ViT-B/32": (512, 224, 12, 768, 32, 512, 12),
    "ViT-B/16": (512, 224, 12, 768, 16, 512, 12),
    "ViT-L/14": (768, 224, 24, 1024, 14, 768, 12),
    "ViT-L/14@336px": (768, 336, 24, 1024, 14, 768, 12),
    "tiny-teacher": (64, 32, 3, 128, 8, 128, 3),  # scripts/make_tiny_clip.py --width 128 --layers 3
    "tiny-student": (64, 32, 2, 64, 8, 64, 2),  # scripts/make_tiny_clip.py defaults
}
MODES = ("online-teacher", "fdbpl-online", "fdbpl-pixels", "fdbpl-lazy", "fdbpl-cache", "coop", "coop-fdbpl",
         "oracle")
PARTS = ("steps", "breakdown", "truncation", "eval", "epochs")
STAGES = ("data", "image encoder", "text encoder forward", "loss", "backward", "optimizer")
ONLINE = MODES[0]
LAZY = "fdbpl-lazy"
LAZY_RUNS = (f"{LAZY} 1st run", f"{LAZY} 2nd run")  # the rows of its two runs
BENCHMARK_DATASET = "Benchmark"  # DATASET.NAME in the tables' fingerprints
PAPER_TEST_IMAGES = 50000  # ImageNet's test set, for the evaluation extrapolation
# Settings that --quick changes: (full run, quick run).
SIZES = {
    "teacher": ("ViT-L/14", "tiny-teacher"), "students": ("ViT-B/32,ViT-B/16", "tiny-student"),
    "batch_size": (32, 4), "warmup": (3, 1), "steps": (5, 2), "classes": (50, 20),
    "truncation_classes": ("50,500", "20,60"), "truncation_steps": (2, 1), "eval_classes": (1000, 100),
    "eval_images": (300, 8), "eval_batch_size": (100, 4), "image_side": (500, 64), "precompute_images": (2, 1),
    "precompute_regions": (16, 4), "isolation": ("process", "none"),
}


def sized(parser, flag, help_text, **options):
    """A flag whose default depends on --quick; the help names both defaults."""
    full, quick = SIZES[flag[2:].replace("-", "_")]
    parser.add_argument(flag, default=None, help=f"{help_text} (default {full}; --quick: {quick})", **options)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--quick", action="store_true", help="tiny models and sizes, all in one process: a smoke run")
    sized(parser, "--teacher", f"teacher: an architecture ({', '.join(ARCHITECTURES)}) or a CLIP checkpoint path")
    sized(parser, "--students", "comma-separated students, as --teacher")
    sized(parser, "--batch-size", "regions (images) per step; the paper's is 32", type=int)
    sized(parser, "--warmup", "untimed steps first", type=int)
    sized(parser, "--steps", "timed steps", type=int)
    sized(parser, "--classes", "C of the mode comparison; 50 is about the median base-class count", type=int)
    add("--text-checkpointing", action="store_true", help="MODEL.TEXT_CHECKPOINTING in every mode: text blocks "
        "recomputed in backward (less memory, one more text forward)")
    add("--workers", type=int, default=2, help="DataLoader workers of every loader (default 2)")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda[:N] (CUDA: autocast)")
    add("--parts", default=",".join(PARTS), help=f"comma-separated subset of {', '.join(PARTS)} (epochs needs steps)")
    add("--modes", default=",".join(MODES), help="comma-separated subset of the modes")
    sized(parser, "--truncation-classes", "class counts of the truncation on/off part")
    sized(parser, "--truncation-steps", "timed fdbpl-pixels steps per truncation run, after one warm-up", type=int)
    sized(parser, "--eval-classes", "classes of the evaluation part", type=int)
    sized(parser, "--eval-images", "test images evaluated each way", type=int)
    sized(parser, "--eval-batch-size", "test batch size; Dassl's is 100", type=int)
    add("--regions", type=int, default=2, help="M of the benchmark tables; step time does not depend on it (default 2)")
    add("--topk", type=int, default=20, help="K of the benchmark tables (default 20)")
    sized(parser, "--image-side", "long side of the generated JPEGs in pixels", type=int)
    sized(parser, "--precompute-images", "images the real teacher precomputes for the epoch view", type=int)
    sized(parser, "--precompute-regions", "regions per image (and teacher batch) there", type=int)
    add("--paper-regions", type=int, default=500, help="M of the epoch view (default 500, the paper's)")
    add("--paper-epochs", type=int, default=50, help="epochs of the epoch view (default 50, the paper's)")
    sized(parser, "--isolation", "process: each measurement in a fresh process (per-mode peak memory); none: all "
          "in this one", choices=("process", "none"))
    add("--workdir", default="", help="keep images, checkpoints and tables here for later runs (default: a temporary "
        "folder)")
    add("--json", default="", help="write all results as JSON here")
    add("--markdown", default="", help="write the tables as Markdown here")
    args = parser.parse_args(argv)
    for key, (full, quick) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return check_args(parser, args)


def split_list(text):
    return [item.strip() for item in text.split(",") if item.strip()]


def check_args(parser, args):
    args.students, args.parts, args.modes = split_list(args.students), split_list(args.parts), split_list(args.modes)
    args.truncation_classes = [int(value) for value in split_list(args.truncation_classes)]
    for name, values, allowed in (("--parts", args.parts, PARTS), ("--modes", args.modes, MODES)):
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    if "epochs" in args.parts and ("steps" not in args.parts or not {ONLINE, "fdbpl-pixels"} <= set(args.modes)):
        parser.error("--parts epochs needs the steps part with the online-teacher and fdbpl-pixels modes")
    for spec in [args.teacher, *args.students]:
        if spec not in ARCHITECTURES and not os.path.isfile(os.path.expanduser(spec)):
            parser.error(f"model {spec!r} is neither an architecture ({', '.join(ARCHITECTURES)}) "
                         "nor a checkpoint file")
    if min(args.classes, *args.truncation_classes, args.eval_classes) < args.topk:
        parser.error(f"every class count must be at least --topk ({args.topk})")
    return args


# ----- inputs: models, images, tables -----------------------------------------------------------

def build_architecture(name, seed=0):
    """A randomly initialised `clip.model.CLIP` with the named architecture's shapes."""
    embed_dim, resolution, vision_layers, vision_width, patch, text_width, text_layers = ARCHITECTURES[name]
    torch.manual_seed(seed)
    return CLIP(embed_dim, resolution, vision_layers, vision_width, patch, CONTEXT_LENGTH, VOCAB_SIZE,
                text_width, text_width // HEAD_WIDTH, text_layers)


def model_checkpoint(spec, directory):
    """A checkpoint path for a model spec: the file itself, or random weights of an architecture, saved once."""
    if spec not in ARCHITECTURES:
        return os.path.expanduser(spec)
    path = os.path.join(directory, spec.replace("/", "-").replace("@", "-") + ".pt")
    return path if os.path.exists(path) else save_checkpoint(build_architecture(spec), path)


def filler_checkpoint(resolution, directory):
    """A one-layer CLIP at the students' input size that fills the timing tables (their content is
    irrelevant to step time; the real teacher's precompute cost is measured separately)."""
    path = os.path.join(directory, f"filler-{resolution}.pt")
    if os.path.exists(path):
        return path
    torch.manual_seed(0)
    model = CLIP(64, resolution, 1, 64, resolution // 4, CONTEXT_LENGTH, VOCAB_SIZE, 64, 1, 1)
    return save_checkpoint(model, path)


def make_images(root, count, long_side):
    """Landscape JPEGs of smooth colour fields plus noise (photo-like decode cost); paths relative to root."""
    rng = np.random.default_rng(0)
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    paths = []
    for index in range(count):
        relative = f"images/{index:05d}.jpg"
        paths.append(relative)
        if os.path.exists(os.path.join(root, relative)):
            continue
        size = (long_side, int(long_side * rng.uniform(0.66, 0.9)))
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(size, Image.Resampling.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.float32) + rng.normal(0, 12, (size[1], size[0], 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(os.path.join(root, relative), quality=90)
    return paths


def class_names(count):
    """Names of 5 to 6 tokens, a typical CoOp class-name length."""
    return [f"synthetic class number {index}" for index in range(count)]


def build_table(directory, image_root, paths, num_classes, filler, args):
    """An RIL table over `paths` for `num_classes` classes, filled by the filler teacher; cached by name."""
    out = os.path.join(directory, f"table-C{num_classes}.h5")
    if os.path.exists(out):
        return out
    classnames = class_names(num_classes)
    labels = [index % num_classes for index in range(len(paths))]
    fingerprint = expected_fingerprint(BENCHMARK_DATASET, -1, 0, "all", classnames, paths, labels)
    teacher = load_teacher(filler, args.device)
    spec = RegionSpec(num_regions=args.regions, topk=args.topk, output_size=teacher.input_size)
    precompute(f"{out}.partial", image_root, paths, labels, fingerprint, teacher, spec, 256, args.workers,
               overwrite=True)
    os.replace(f"{out}.partial", out)
    return out


def add_feature_cache(table, image_root, student_checkpoint, args):
    """A copy of `table` with `student_checkpoint`'s feature cache; returns (path, seconds per region)."""
    name = os.path.splitext(os.path.basename(student_checkpoint))[0]
    out = table.replace(".h5", f"-{name}.h5")
    shutil.copyfile(table, out)
    start = time.perf_counter()
    add_student_features(out, image_root, student_checkpoint, args.device, 256, args.workers, overwrite=True)
    reader = RILTable(out)
    return out, (time.perf_counter() - start) / (reader.num_images * reader.num_regions)


# ----- one measurement (run in a fresh process) ------------------------------------------------

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device):
    return torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else nullcontext()


def reset_peak_memory(device):
    """Start a new peak: CUDA's allocator statistics, or the process's RSS high-water mark (Linux)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


def peak_memory(device):
    """Bytes: peak CUDA memory allocated, or peak resident set size of this process."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    try:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def benchmark_cfg(job, device):
    """The Dassl config of a CoOp-family run over the benchmark's images (loader, input, FDBPL keys)."""
    mode = job.get("mode", "")
    cfg = get_cfg()
    cfg.DATASET.NAME, cfg.DATASET.ROOT = BENCHMARK_DATASET, job["image_root"]
    cfg.MODEL.BACKBONE.NAME, cfg.MODEL.TEXT_TRUNCATION = job["student"], job["truncate"]
    cfg.MODEL.TEXT_CHECKPOINTING = job["text_checkpointing"]
    cfg.INPUT.SIZE = (job["resolution"], job["resolution"])
    cfg.INPUT.INTERPOLATION = "bicubic"
    cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD = list(CLIP_MEAN), list(CLIP_STD)
    cfg.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
    cfg.DATALOADER.NUM_WORKERS = job["workers"]
    cfg.DATALOADER.TRAIN_X.BATCH_SIZE = job["batch_size"]
    cfg.USE_CUDA = device.type == "cuda"
    cfg.TRAINER.FDBPL.RIL_TABLE = job.get("table", "")
    cfg.TRAINER.FDBPL.DUAL_PROMPTS = mode in ("fdbpl-online", "fdbpl-pixels", LAZY, "fdbpl-cache", "oracle")
    if mode == "fdbpl-online":
        cfg.TRAINER.FDBPL.TEACHER_SOURCE, cfg.TRAINER.FDBPL.TEACHER_BACKBONE = "online", job["teacher"]
    if mode == LAZY:
        cfg.TRAINER.FDBPL.RIL_FILL, cfg.TRAINER.FDBPL.TEACHER_BACKBONE = True, job["teacher"]
    cfg.TRAINER.FDBPL.FEATURE_CACHE = mode == "fdbpl-cache"
    return cfg


class StepHarness(RILSupervision):
    """What the FDBPL trainer runs per step (`build_coop_model`, `add_negative_prompts`,
    `build_region_loader`, `ril_forward`), given only the trainer attributes they read: the
    benchmark times the trainers' own code, without Dassl's engine loop."""

    def __init__(self, cfg, clip_model, classnames, train_x, device):
        self.cfg, self.clip_model, self.device = cfg, clip_model, device
        self.dm = SimpleNamespace(dataset=SimpleNamespace(classnames=classnames, train_x=train_x))
        self.model = build_coop_model(self, cfg.TRAINER.FDBPL)
        self.model.text_encoder.checkpointing = cfg.MODEL.TEXT_CHECKPOINTING
        if self.dual_prompts:
            self.add_negative_prompts()

    def load_clip_model(self):
        return self.clip_model

    def register_trainable(self, name, module, params=None):
        """No Dassl optimiser registry here: `time_steps` steps one SGD over every trainable prompt."""

    def image_loader(self):
        """Dassl's training loader (decode, random resized crop, flip, normalise), as CoOp's runs build it."""
        cfg = self.cfg
        return build_data_loader(cfg, "RandomSampler", self.dm.dataset.train_x, cfg.DATALOADER.TRAIN_X.BATCH_SIZE,
                                 tfm=build_transform(cfg, is_train=True), is_train=True)


def training_data(table, image_root):
    return [Datum(os.path.join(image_root, path), int(label), 0, table.classnames[label])
            for path, label in zip(table.image_paths, table.labels)]


def endless(loader):
    """Batches across epoch boundaries; a region dataset and its sampler learn each new epoch, as in training."""
    epoch = 0
    while True:
        for part in (loader.dataset, loader.sampler):
            if hasattr(part, "set_epoch"):
                part.set_epoch(epoch)
        yield from loader
        epoch += 1


def to_device(batch, device):
    return {key: value.to(device, non_blocking=True) for key, value in batch.items() if torch.is_tensor(value)}


def online_teacher_loss(job, model, classnames, device):
    """The project's online teacher (PromptKD, CasPL online) scoring every batch, KL as PromptKD's."""
    teacher = load_online_teacher(job["teacher"], classnames, CLIP_MEAN, CLIP_STD, device)
    return lambda batch: distillation_kl(model(batch["img"]), teacher.logits(batch["img"]))


def mode_setup(job, cfg, clip_model, table, device):
    """(harness, batch source, loss of a device batch) for `job["mode"]`; the harness holds the model."""
    mode = job["mode"]
    harness = StepHarness(cfg, clip_model, table.classnames, training_data(table, job["image_root"]), device)
    model = harness.model
    if mode == ONLINE:
        return harness, endless(harness.image_loader()), online_teacher_loss(job, model, table.classnames, device)
    if mode == "fdbpl-online":
        harness.ril_teacher = load_online_teacher(job["teacher"], table.classnames, CLIP_MEAN, CLIP_STD, device)
        return harness, endless(harness.image_loader()), lambda batch: harness.ril_forward(
            *harness.parse_ril_batch(batch)).loss
    if mode == "coop":
        return harness, endless(harness.image_loader()), lambda batch: F.cross_entropy(model(batch["img"]),
                                                                                        batch["label"])
    batches = endless(harness.build_region_loader())
    if mode == "oracle":
        batches = cycle([to_device(next(batches), device) for _ in range(job["warmup"] + job["steps"])])
    return harness, batches, lambda batch: harness.ril_forward(*harness.parse_ril_batch(batch)).loss


def counting_fills(loss_fn, filler, steps):
    """`loss_fn` that appends to `steps`, per call, the (image, region) pairs of the batch and the regions
    scored and teacher forwards run by the lazy table's `filler` (None: a complete table) during it."""
    def loss(batch):
        before = (filler.scored_regions, filler.teacher_forwards) if filler else (0, 0)
        value = loss_fn(batch)
        after = (filler.scored_regions, filler.teacher_forwards) if filler else (0, 0)
        pairs = torch.stack([batch["index"], batch["region"]], dim=1).tolist()
        steps.append({"pairs": pairs, "scored": after[0] - before[0], "forwards": after[1] - before[1]})
        return value
    return loss


def fill_counts(steps, warmup):
    """What the teacher did in a lazy run (`counting_fills` records): in the run, and in its timed steps."""
    timed = steps[warmup:]
    return {"teacher_forwards": sum(step["forwards"] for step in steps),
            "scored_regions": sum(step["scored"] for step in steps),
            "timed_teacher_forwards": sum(step["forwards"] for step in timed),
            "timed_scored_regions": sum(step["scored"] for step in timed),
            "timed_pairs": sorted(pair for step in timed for pair in step["pairs"])}


def time_steps(model, batches, loss_fn, device, warmup, steps):
    """Per timed step, lists of: wall ms, of which waiting for the batch, and this process's CPU ms (all
    threads; robust to other load). SGD as in FDBPL's configs; amp (autocast + grad scaler) on CUDA."""
    params = [param for param in model.parameters() if param.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.002, momentum=0.9, weight_decay=5e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda")
    timings = {"step_ms": [], "data_ms": [], "cpu_ms": []}
    for step in range(warmup + steps):
        synchronize(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        batch = to_device(next(batches), device)
        fetched = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            loss = loss_fn(batch)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        loss.item()
        synchronize(device)
        if step >= warmup:
            timings["step_ms"].append(1000 * (time.perf_counter() - start))
            timings["data_ms"].append(1000 * (fetched - start))
            timings["cpu_ms"].append(1000 * (time.process_time() - cpu_start))
    return timings


def breakdown_job(job):
    """Seconds per stage of fdbpl-pixels steps (the step of `time_steps`, with a clock between stages)."""
    device = torch.device(job["device"])
    cfg = benchmark_cfg(dict(job, mode="fdbpl-pixels"), device)
    table = RILTable(job["table"])
    harness = StepHarness(cfg, load_clip(job["student"], "fp32", device), table.classnames,
                          training_data(table, job["image_root"]), device)
    model, batches = harness.model, endless(harness.build_region_loader())
    optimizer = torch.optim.SGD([param for param in model.parameters() if param.requires_grad], lr=0.002, momentum=0.9)
    stages = {stage: [] for stage in STAGES}
    for step in range(job["warmup"] + job["steps"]):
        clock = [time.perf_counter()]

        def lap():
            synchronize(device)
            clock.append(time.perf_counter())
        inputs, targets = harness.parse_ril_batch(next(batches))
        lap()
        optimizer.zero_grad(set_to_none=True)
        with autocast(device):
            image_features = model.encode_image(inputs)
            lap()
            text_pos, text_neg = model.encode_text_pair()
            lap()
            dual = (model.logits(image_features, text_neg), text_pos, text_neg)
            loss, _ = harness.ril_loss(model.logits(image_features, text_pos), targets, dual)
            lap()
        loss.backward()
        lap()
        optimizer.step()
        lap()
        if step >= job["warmup"]:
            for stage, start, end in zip(STAGES, clock, clock[1:]):
                stages[stage].append(end - start)
    return {"stage_ms": {stage: 1000 * float(np.median(times)) for stage, times in stages.items()},
            "text_sequences": 2 * len(table.classnames), "text_length": text_length(model)}


def text_length(model):
    tokens = model.prompt_learner.tokenized_prompts
    return int(tokens.argmax(dim=-1).max()) + 1 if model.text_encoder.truncate else tokens.shape[1]


def train_job(job):
    device = torch.device(job["device"])
    cfg = benchmark_cfg(job, device)
    table = RILTable(job["table"], require_complete=not cfg.TRAINER.FDBPL.RIL_FILL)
    clip_model = load_clip(job["student"], "fp32", device)  # amp keeps fp32 weights, as the trainers
    harness, batches, loss_fn = mode_setup(job, cfg, clip_model, table, device)
    filler, fills = getattr(harness, "ril_filler", None), []
    if cfg.TRAINER.FDBPL.RIL_FILL:
        loss_fn = counting_fills(loss_fn, filler, fills)
    reset_peak_memory(device)
    try:
        timings = time_steps(harness.model, batches, loss_fn, device, job["warmup"], job["steps"])
    finally:
        if filler is not None:
            filler.close()  # the next run may fill the table (in this process with --isolation none)
    result = {**timings, "peak_memory": peak_memory(device), "text_length": text_length(harness.model),
              "loadavg": os.getloadavg()[0]}
    return dict(result, **fill_counts(fills, job["warmup"])) if cfg.TRAINER.FDBPL.RIL_FILL else result


def eval_job(job):
    """Test-set seconds with the text encoder run per batch ("before") and once per evaluation ("after")."""
    device = torch.device(job["device"])
    cfg = benchmark_cfg(job, device)
    model = StepHarness(cfg, load_clip(job["student"], "fp32", device), class_names(job["classes"]), [], device).model
    images = torch.randn(job["batch_size"], 3, *cfg.INPUT.SIZE, device=device)  # a test batch in memory
    num_batches = -(-job["images"] // job["batch_size"])

    def evaluate(text_once):
        """Seconds (the one text pass included) and predictions of an evaluation."""
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad(), autocast(device), model.frozen_text_features() if text_once else nullcontext():
            synchronize(device)
            text_done = time.perf_counter()
            predictions = [model(images).argmax(dim=1) for _ in range(num_batches)]
        synchronize(device)
        return time.perf_counter() - start, text_done - start, torch.cat(predictions)

    evaluate(text_once=False)  # warm-up
    before, _, predicted_before = evaluate(text_once=False)
    after, text_s, predicted_after = evaluate(text_once=True)
    agreement = (predicted_before == predicted_after).float().mean().item()
    return {"batches": num_batches, "before_s": before, "after_s": after, "text_s": text_s, "agreement": agreement,
            "text_length": text_length(model)}


def precompute_job(job):
    """Seconds per region of `ril.precompute` with the real teacher (decode, crop, teacher, write), and of
    the teacher's bare forward on a batch of the same size."""
    device = torch.device(job["device"])
    teacher = load_teacher(job["teacher"], device)
    source = RILTable(job["table"])
    paths, labels = source.image_paths[: job["images"]], source.labels[: job["images"]].tolist()
    fingerprint = expected_fingerprint(BENCHMARK_DATASET, -1, 0, "all", source.classnames, paths, labels)
    spec = RegionSpec(num_regions=job["regions"], topk=source.topk, output_size=teacher.input_size)
    images = torch.randn(job["regions"], 3, *teacher.input_size)
    class_features = F.normalize(torch.randn(len(source.classnames), teacher.model.visual.output_dim), dim=-1)
    teacher.logits(images, class_features)  # warm-up
    start = time.perf_counter()
    teacher.logits(images, class_features)
    synchronize(device)
    forward = (time.perf_counter() - start) / job["regions"]
    start = time.perf_counter()
    precompute(job["out"], job["image_root"], paths, labels, fingerprint, teacher, spec, job["regions"], 0,
               overwrite=True)
    return {"seconds_per_region": (time.perf_counter() - start) / (job["images"] * job["regions"]),
            "forward_seconds_per_region": forward}


def lazy_table_job(job):
    """Create the lazy table `out` (python -m ril precompute --lazy: boxes and flips, no teacher value) for the
    teacher over the images and settings of the table `source`; returns its seconds per image, read in this
    process (loader workers' start-up, seconds in a spawned process, would swamp a few hundred images)."""
    teacher = load_teacher(job["teacher"], torch.device(job["device"]))
    source = RILTable(job["source"])
    paths, labels = source.image_paths, source.labels.tolist()
    fingerprint = expected_fingerprint(BENCHMARK_DATASET, -1, 0, "all", source.classnames, paths, labels)
    spec = RegionSpec(num_regions=source.num_regions, topk=source.topk, output_size=teacher.input_size)
    start = time.perf_counter()
    precompute(job["out"], job["image_root"], paths, labels, fingerprint, teacher, spec, workers=0, overwrite=True,
               lazy=True)
    return {"seconds_per_image": (time.perf_counter() - start) / len(paths), "images": len(paths),
            "regions": source.num_regions}


JOBS = {"train": train_job, "breakdown": breakdown_job, "eval": eval_job, "precompute": precompute_job,
        "lazy-table": lazy_table_job}


def child(job, result_path):
    """Run one job in a fresh process; the first one the kernel kills if memory runs out."""
    try:
        with open("/proc/self/oom_score_adj", "w") as handle:
            handle.write("1000")
    except OSError:
        pass
    try:
        result = {"ok": JOBS[job["kind"]](job)}
    except Exception:  # reported to the parent, which names the job
        result = {"error": traceback.format_exc()}
    with open(result_path, "w", encoding="utf-8") as handle:
        json.dump(result, handle)


def run_job(job, args, workdir):
    """The job's result dict, or {"error": ...} when it failed or its process died."""
    if args.isolation == "none":
        try:
            return JOBS[job["kind"]](job)
        except torch.OutOfMemoryError as error:
            return {"error": f"out of memory: {error}"}
    result_path = os.path.join(workdir, "job-result.json")
    if os.path.exists(result_path):
        os.remove(result_path)
    process = multiprocessing.get_context("spawn").Process(target=child, args=(job, result_path))
    process.start()
    process.join()
    if not os.path.exists(result_path):
        return {"error": f"process died with exit code {process.exitcode} (killed for lack of memory?)"}
    with open(result_path, encoding="utf-8") as handle:
        result = json.load(handle)
    return result.get("ok", result)


# ----- the run: inputs, parts, report ----------------------------------------------------------

def input_resolution(spec, checkpoint):
    return ARCHITECTURES[spec][1] if spec in ARCHITECTURES else load_clip(checkpoint).visual.input_resolution


def prepare(args, workdir):
    """Checkpoints, images and tables every part needs; returns them as a namespace."""
    models = os.path.join(workdir, "models")
    os.makedirs(models, exist_ok=True)
    setup = SimpleNamespace(image_root=os.path.join(workdir, "data"), teacher=model_checkpoint(args.teacher, models),
                            students={name: model_checkpoint(name, models) for name in args.students})
    checkpoints = [(args.teacher, setup.teacher), *setup.students.items()]
    sizes = {spec: input_resolution(spec, path) for spec, path in checkpoints}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"teacher and students must take the same input size (the teacher scores the students' "
                         f"pixels); got {sizes}")
    setup.resolution = sizes[args.teacher]
    count = args.batch_size * max(args.warmup + args.steps, 1 + args.truncation_steps, 1)
    paths = make_images(setup.image_root, max(count, args.precompute_images), args.image_side)
    filler = filler_checkpoint(setup.resolution, models)
    class_counts = {args.classes, *(args.truncation_classes if "truncation" in args.parts else ())}
    print(f"Preparing {len(paths)} images and RIL tables for C = {sorted(class_counts)} ...", flush=True)
    setup.tables = {number: build_table(workdir, setup.image_root, paths, number, filler, args)
                    for number in class_counts}
    setup.caches, setup.cache_seconds = {}, {}
    if "steps" in args.parts and "fdbpl-cache" in args.modes:
        for name, checkpoint in setup.students.items():
            print(f"Adding the {name} feature cache ...", flush=True)
            setup.caches[name], setup.cache_seconds[name] = add_feature_cache(
                setup.tables[args.classes], setup.image_root, checkpoint, args)
    return setup


def base_job(args, setup, student):
    return {"device": args.device, "image_root": setup.image_root, "resolution": setup.resolution,
            "workers": args.workers, "teacher": setup.teacher, "student": setup.students[student],
            "batch_size": args.batch_size, "truncate": True, "text_checkpointing": args.text_checkpointing}


def summarise(step_ms):
    return {"median_ms": float(np.median(step_ms)), "min_ms": float(min(step_ms)), "max_ms": float(max(step_ms))}


def step_record(student, mode, result):
    return dict(student=student, mode=mode, **summarise(result["step_ms"]), **result,
                data_median_ms=float(np.median(result["data_ms"])), cpu_median_ms=float(np.median(result["cpu_ms"])))


def measure_steps(args, setup, workdir):
    runs = []
    for student in args.students:
        for mode in args.modes:
            if mode == LAZY:
                runs += measure_lazy(args, setup, workdir, student)
                continue
            print(f"Timing {mode} with student {student} ...", flush=True)
            table = setup.caches[student] if mode == "fdbpl-cache" else setup.tables[args.classes]
            job = dict(base_job(args, setup, student), kind="train", mode=mode, table=table,
                       warmup=args.warmup, steps=args.steps)
            result = run_job(job, args, workdir)
            if "error" in result:
                raise RuntimeError(f"{mode} with student {student} failed:\n{result['error']}")
            runs.append(step_record(student, mode, result))
    return runs


def measure_lazy(args, setup, workdir, student):
    """The two fdbpl-lazy runs: on a lazy table created anew, then (same seed, epoch 0) on what the 1st filled.
    The steps stay within epoch 0, which draws each image once: warm-up steps fill other regions than timed ones."""
    table = os.path.join(workdir, "table-lazy.h5")
    print(f"Creating a lazy RIL table for {LAZY} with student {student} ...", flush=True)
    job = {"kind": "lazy-table", "device": args.device, "teacher": setup.teacher, "image_root": setup.image_root,
           "source": setup.tables[args.classes], "out": table}
    created = run_job(job, args, workdir)
    if "error" in created:
        raise RuntimeError(f"creating the lazy table failed:\n{created['error']}")
    records = []
    for label in LAZY_RUNS:
        print(f"Timing {label} with student {student} ...", flush=True)
        job = dict(base_job(args, setup, student), kind="train", mode=LAZY, table=table,
                   warmup=args.warmup, steps=args.steps)
        result = run_job(job, args, workdir)
        if "error" in result:
            raise RuntimeError(f"{label} with student {student} failed:\n{result['error']}")
        records.append(step_record(student, label, dict(result, lazy_table=created)))
    first, second = records
    second["same_timed_regions"] = first["timed_pairs"] == second["timed_pairs"]
    return records


def measure_breakdown(args, setup, workdir):
    results = []
    for student in args.students:
        print(f"Timing the stages of fdbpl-pixels steps with student {student} ...", flush=True)
        job = dict(base_job(args, setup, student), kind="breakdown", table=setup.tables[args.classes],
                   warmup=args.warmup, steps=args.steps)
        result = run_job(job, args, workdir)
        if "error" in result:
            raise RuntimeError(f"the step breakdown with student {student} failed:\n{result['error']}")
        results.append(dict(student=student, **result))
    return results


def measure_truncation(args, setup, workdir):
    student, runs = args.students[0], []
    for num_classes in args.truncation_classes:
        for truncate in (True, False):
            print(f"Timing fdbpl-pixels, C = {num_classes}, truncation {'on' if truncate else 'off'} ...", flush=True)
            job = dict(base_job(args, setup, student), kind="train", mode="fdbpl-pixels", truncate=truncate,
                       table=setup.tables[num_classes], warmup=1, steps=args.truncation_steps)
            result = run_job(job, args, workdir)
            summary = summarise(result["step_ms"]) if "error" not in result else {}
            runs.append(dict(student=student, classes=num_classes, truncate=truncate, **summary, **result))
    return runs


def measure_eval(args, setup, workdir):
    print(f"Timing evaluation over {args.eval_classes} classes ...", flush=True)
    job = dict(base_job(args, setup, args.students[0]), kind="eval", classes=args.eval_classes,
               images=args.eval_images, batch_size=args.eval_batch_size)
    result = run_job(job, args, workdir)
    if "error" in result:
        raise RuntimeError(f"evaluation failed:\n{result['error']}")
    return dict(student=args.students[0], classes=args.eval_classes, images=args.eval_images,
                batch_size=args.eval_batch_size, **result)


def measure_precompute(args, setup, workdir):
    print(f"Timing ril precompute with teacher {args.teacher} ...", flush=True)
    job = {"kind": "precompute", "device": args.device, "teacher": setup.teacher, "image_root": setup.image_root,
           "table": setup.tables[args.classes], "images": args.precompute_images, "regions": args.precompute_regions,
           "out": os.path.join(workdir, "precompute-teacher.h5")}
    result = run_job(job, args, workdir)
    if "error" in result:
        raise RuntimeError(f"precompute with the teacher failed:\n{result['error']}")
    return result


def epoch_view(args, steps, precompute_seconds, cache_seconds):
    """Per student and FDBPL mode: one-off cost, per-epoch cost per image, and when it has paid off."""
    rows = []
    for student in args.students:
        by_mode = {run["mode"]: run for run in steps if run["student"] == student}
        online = by_mode[ONLINE]["median_ms"] / 1000 / args.batch_size
        for mode in ("fdbpl-pixels", "fdbpl-cache"):
            if mode not in by_mode:
                continue
            per_region = precompute_seconds + (cache_seconds[student] if mode == "fdbpl-cache" else 0.0)
            one_off = args.paper_regions * per_region
            per_epoch = by_mode[mode]["median_ms"] / 1000 / args.batch_size
            saving = online - per_epoch
            rows.append({
                "student": student, "mode": mode, "precompute_s_per_region": per_region,
                "one_off_s_per_image": one_off, "online_epoch_s_per_image": online, "epoch_s_per_image": per_epoch,
                "payback_epochs": one_off / saving if saving > 0 else float("inf"),
                "online_total_s_per_image": args.paper_epochs * online,
                "fdbpl_total_s_per_image": one_off + args.paper_epochs * per_epoch,
                "break_even_regions": args.paper_epochs * saving / per_region if saving > 0 else 0.0,
            })
        if set(LAZY_RUNS) <= set(by_mode):
            rows.append(lazy_epoch_row(args, student, online, *(by_mode[label] for label in LAZY_RUNS)))
    return rows


def lazy_epoch_row(args, student, online, first, second):
    """fdbpl-lazy in the epoch view's terms: its one-off is the lazy table's creation plus what its 1st run
    spends more than a rerun (the teacher on the regions it draws, one per image and epoch), whatever M is;
    each rerun with the same seed costs the 2nd run's step. So FDBPL h (50 ep) is the 1st run's whole cost."""
    per_region = max(first["median_ms"] - second["median_ms"], 0.0) / 1000 / args.batch_size
    one_off = first["lazy_table"]["seconds_per_image"] + args.paper_epochs * per_region
    per_epoch = second["median_ms"] / 1000 / args.batch_size
    saving = online - per_epoch
    return {
        "student": student, "mode": LAZY, "precompute_s_per_region": per_region, "one_off_s_per_image": one_off,
        "online_epoch_s_per_image": online, "epoch_s_per_image": per_epoch,
        "payback_epochs": one_off / saving if saving > 0 else float("inf"),
        "online_total_s_per_image": args.paper_epochs * online,
        "fdbpl_total_s_per_image": one_off + args.paper_epochs * per_epoch, "break_even_regions": None,
    }


def machine():
    model = ""
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")), "")
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else ""}


def table_bytes(path):
    """In-memory size of a table's region arrays (and feature cache): what IN_MEMORY would load."""
    table = RILTable(path)
    names = list(FIELDS.values()) + ([FEATURES_DATASET] if table.features_attrs else [])
    return sum(table.array(name).nbytes for name in names)


def megabytes(value):
    return f"{value / 2 ** 20:,.0f}"


def steps_section(args, runs):
    rows = []
    for run in runs:
        online = next((other for other in runs if other["student"] == run["student"] and other["mode"] == ONLINE), None)
        speed_up = f"{online['median_ms'] / run['median_ms']:.2f}x" if online else ""
        rows.append([run["student"], run["mode"], f"{run['median_ms']:,.0f}",
                     f"{run['min_ms']:,.0f}-{run['max_ms']:,.0f}", f"{run['cpu_median_ms']:,.0f}",
                     f"{run['data_median_ms']:,.0f}", speed_up,
                     megabytes(run["peak_memory"]), f"{run['loadavg']:.1f}"])
    memory = "peak MB (CUDA allocated)" if args.device.startswith("cuda") else "peak RSS MB"
    headers = ["student", "mode", "ms/iter (median)", "range", "CPU ms/iter", "waiting for data", "speed-up vs online",
               memory, "load avg"]
    return ("Training step time", headers, rows,
            f"teacher {args.teacher}, batch {args.batch_size}, C = {args.classes}, {args.warmup} warm-up + "
            f"{args.steps} timed steps, {args.workers} loader workers, device {args.device}"
            + (", text activation checkpointing" if args.text_checkpointing else ""))


def target_rows(args, runs, setup):
    """The issue's targets, checked on the measured medians and peaks."""
    rows = []
    for student in args.students:
        by_mode = {run["mode"]: run for run in runs if run["student"] == student}

        def ratio(a, b):
            return by_mode[a]["median_ms"] / by_mode[b]["median_ms"] if {a, b} <= set(by_mode) else None

        checks = [("fdbpl-pixels speed-up vs online >= 2.2", ratio(ONLINE, "fdbpl-pixels"), lambda x: x >= 2.2),
                  ("fdbpl-cache speed-up vs online >= 10", ratio(ONLINE, "fdbpl-cache"), lambda x: x >= 10),
                  ("fdbpl-pixels speed-up vs fdbpl-online (KDPL, same losses) >= 2.2",
                   ratio("fdbpl-online", "fdbpl-pixels"), lambda x: x >= 2.2),
                  ("fdbpl-pixels / oracle <= 1.10", ratio("fdbpl-pixels", "oracle"), lambda x: x <= 1.10),
                  (f"{LAZY_RUNS[0]} / online <= 1.10", ratio(LAZY_RUNS[0], ONLINE), lambda x: x <= 1.10),
                  (f"{LAZY_RUNS[1]} / fdbpl-pixels <= 1.05", ratio(LAZY_RUNS[1], "fdbpl-pixels"),
                   lambda x: x <= 1.05)]
        if LAZY_RUNS[1] in by_mode:
            checks.append((f"{LAZY_RUNS[1]}: teacher forwards = 0", by_mode[LAZY_RUNS[1]]["teacher_forwards"],
                           lambda x: x == 0))
        tables = {"coop-fdbpl": setup.tables[args.classes], "fdbpl-pixels": setup.tables[args.classes],
                  "fdbpl-cache": setup.caches.get(student)}
        for mode, table in tables.items():
            if {mode, "coop"} <= set(by_mode):
                excess = by_mode[mode]["peak_memory"] - by_mode["coop"]["peak_memory"]
                limit = table_bytes(table)
                checks.append((f"{mode} peak - coop peak <= table in memory ({megabytes(limit)} MB)",
                               excess / 2 ** 20, lambda x, limit=limit: x * 2 ** 20 <= limit))
        rows += [[student, name, f"{value:.2f}" if isinstance(value, float) else str(value),
                  "yes" if test(value) else "NO"] for name, value, test in checks if value is not None]
    return ("Targets", ["student", "target", "measured", "met"], rows, "peak differences in MB")


def lazy_section(args, runs):
    """Per student, both fdbpl-lazy runs: step time against the other modes, and what the teacher did."""
    rows = []
    for student in args.students:
        by_mode = {run["mode"]: run for run in runs if run["student"] == student}
        for label in LAZY_RUNS:
            run = by_mode[label]
            ratios = [f"{run['median_ms'] / by_mode[mode]['median_ms']:.2f}x" if mode in by_mode else ""
                      for mode in (ONLINE, "fdbpl-online", "fdbpl-pixels")]
            same = "" if label == LAZY_RUNS[0] else "yes" if run["same_timed_regions"] else "NO"
            rows.append([student, label, f"{run['median_ms']:,.0f}", *ratios, run["teacher_forwards"],
                         f"{run['timed_scored_regions']} of {len(run['timed_pairs'])}", same])
    created = next(run["lazy_table"] for run in runs if run["mode"] == LAZY_RUNS[0])
    headers = ["student", "run", "ms/iter (median)", "/ online-teacher", "/ fdbpl-online", "/ fdbpl-pixels",
               "teacher forwards (run)", "timed regions scored", "timed regions = 1st run's"]
    return (f"Lazy RIL table ({LAZY})", headers, rows,
            f"teacher {args.teacher} (the online modes'), forwards of at most {args.batch_size} regions; 1st run on a "
            f"lazy table just created ({created['images']} images x {created['regions']} regions, "
            f"{1000 * created['seconds_per_image']:,.1f} ms/image), 2nd run with the same seed on the table the 1st "
            f"filled; {args.warmup} warm-up + {args.steps} timed steps within epoch 0, which draws each image "
            "once, so the warm-up fills other images' regions than the timed steps, and the 2nd run's timed steps "
            "draw exactly the regions the 1st run's timed steps scored")


def breakdown_section(args, results):
    rows = []
    for result in results:
        total = sum(result["stage_ms"].values())
        rows += [[result["student"], stage, f"{milliseconds:,.0f}", f"{100 * milliseconds / total:.0f}%"]
                 for stage, milliseconds in result["stage_ms"].items()]
    return ("Where an fdbpl-pixels step's time goes", ["student", "stage", "ms (median)", "share"], rows,
            f"batch {args.batch_size}, C = {args.classes} ({2 * args.classes} text sequences of "
            f"{results[0]['text_length']} tokens), {args.workers} loader workers; data = waiting for the loader; "
            "the image encoder is frozen, so backward runs through the text encoder only")


def truncation_section(runs):
    rows = []
    for run in runs:
        twin = next(other for other in runs if other["classes"] == run["classes"] and other["truncate"])
        failure = f"did not run: {run['error'].splitlines()[-1]}" if "error" in run else ""
        time_cell = f"{run['median_ms']:,.0f}" if "median_ms" in run else failure
        speed = f"{run['median_ms'] / twin['median_ms']:.2f}x" if "median_ms" in run and "median_ms" in twin else ""
        rows.append([run["classes"], "on" if run["truncate"] else "off", run.get("text_length", ""), time_cell,
                     speed, megabytes(run["peak_memory"]) if "peak_memory" in run else ""])
    return ("Text truncation (fdbpl-pixels step)", ["C", "truncation", "text tokens", "ms/iter (median)",
                                                    "off / on", "peak MB"], rows,
            f"student {runs[0]['student']}; one 2C-sequence text pass per step")


def eval_section(result):
    """Measured seconds, and the same two evaluations extrapolated to a test set of PAPER_TEST_IMAGES."""
    batches, paper_batches = result["batches"], -(-PAPER_TEST_IMAGES // result["batch_size"])
    image_s = (result["after_s"] - result["text_s"]) / batches  # one test batch through the image side
    extrapolated = [result["before_s"] / batches * paper_batches, result["text_s"] + image_s * paper_batches]
    rows = [["text features per test batch (before)", batches, f"{result['before_s']:.1f}",
             f"{1000 * result['before_s'] / batches:,.0f}", f"{extrapolated[0] / 60:,.1f}"],
            ["text features once per evaluation (after)", 1, f"{result['after_s']:.1f}",
             f"{1000 * image_s:,.0f} (+ {result['text_s']:.1f} s once)", f"{extrapolated[1] / 60:,.1f}"]]
    return (f"Evaluation, {result['classes']} classes", ["", "text passes", f"s for {result['images']} images",
                                                         "ms per batch", f"min for {PAPER_TEST_IMAGES:,} images"], rows,
            f"student {result['student']}, test batch {result['batch_size']}, truncation on; predictions agree on "
            f"{100 * result['agreement']:.1f}% of images")


def epochs_section(args, rows, precompute_result):
    table_rows = [[row["student"], row["mode"], f"{1000 * row['precompute_s_per_region']:,.0f}",
                   f"{row['one_off_s_per_image'] / 3.6:,.1f}", f"{row['online_epoch_s_per_image'] / 3.6:,.2f}",
                   f"{row['epoch_s_per_image'] / 3.6:,.2f}", f"{row['payback_epochs']:,.0f}", f"{row['payback_epochs'] / args.paper_epochs:,.1f}",
                   f"{row['online_total_s_per_image'] / 3.6:,.1f}", f"{row['fdbpl_total_s_per_image'] / 3.6:,.1f}",
                   "any" if row["break_even_regions"] is None else f"{row['break_even_regions']:,.0f}"]
                  for row in rows]
    headers = ["student", "mode", "precompute ms/region", f"one-off h (M={args.paper_regions})", "online h/epoch",
               "FDBPL h/epoch", "payback epochs", f"payback runs ({args.paper_epochs} ep)", f"online h ({args.paper_epochs} ep)",
               f"FDBPL h ({args.paper_epochs} ep)",
               f"break-even M ({args.paper_epochs} ep)"]
    return ("Epoch view, per 1,000 training images", headers, table_rows,
            f"teacher {args.teacher}; precompute = ril.precompute measured on {args.precompute_images} images x "
            f"{args.precompute_regions} regions (the teacher's bare forward: "
            f"{1000 * precompute_result['forward_seconds_per_region']:,.0f} ms/region); fdbpl-cache adds the "
            "student feature cache's one-off cost; one table serves every run (seeds, students, methods) on "
            f"its training images. {LAZY}: no precompute; precompute ms/region = what its 1st run's step costs "
            "more than the 2nd's, per region; one-off = the lazy table's creation + the teacher on the regions the "
            f"1st run draws ({args.paper_epochs} per image, any M), so FDBPL h = the 1st run; reruns with the same "
            "seed cost FDBPL h/epoch")


def sections(args, results, setup):
    found = []
    if "steps" in results:
        found += [steps_section(args, results["steps"]), target_rows(args, results["steps"], setup)]
        if any(run["mode"] == LAZY_RUNS[0] for run in results["steps"]):
            found.append(lazy_section(args, results["steps"]))
    if "breakdown" in results:
        found.append(breakdown_section(args, results["breakdown"]))
    if "truncation" in results:
        found.append(truncation_section(results["truncation"]))
    if "eval" in results:
        found.append(eval_section(results["eval"]))
    if "epochs" in results:
        found.append(epochs_section(args, results["epochs"], results["precompute"]))
    return found


def render(found, markdown):
    parts = []
    for title, headers, rows, note in found:
        table = tabulate(rows, headers=headers, tablefmt="github" if markdown else "simple", disable_numparse=True)
        parts.append(f"### {title}\n\n{note}\n\n{table}\n" if markdown else f"{title} ({note})\n{table}\n")
    return "\n".join(parts)


def run(args, workdir):
    setup = prepare(args, workdir)
    results = {"machine": machine(), "settings": {key: value for key, value in vars(args).items()}}
    if "steps" in args.parts:
        results["steps"] = measure_steps(args, setup, workdir)
    if "breakdown" in args.parts:
        results["breakdown"] = measure_breakdown(args, setup, workdir)
    if "truncation" in args.parts:
        results["truncation"] = measure_truncation(args, setup, workdir)
    if "eval" in args.parts:
        results["eval"] = measure_eval(args, setup, workdir)
    if "epochs" in args.parts:
        results["precompute"] = measure_precompute(args, setup, workdir)
        results["cache_s_per_region"] = setup.cache_seconds
        results["epochs"] = epoch_view(args, results["steps"], results["precompute"]["seconds_per_region"],
                                       setup.cache_seconds)
    return results, sections(args, results, setup)


def main(argv=None):
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="speed-benchmark-") as temporary:
        workdir = args.workdir or temporary
        os.makedirs(workdir, exist_ok=True)
        results, found = run(args, workdir)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=1)
    print()
    print(render(found, markdown=False))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(render(found, markdown=True))


if __name__ == "__main__":
    main()
