"""Build an RIL table: decode each image once, cut its M regions, score them all with the teacher
(or with every teacher of an ensemble, see `teachers.ensemble_logits`).

Resumable (images marked in `progress/done` are skipped; each image's rows reach the disk before
it is marked, see `writer`), and shardable: under torchrun, rank r takes images r, r+W, ... into
its own shard file and rank 0 merges the shards after a barrier. The teacher never sees two images in one forward
and an image's regions always go through it in the same chunks of `batch_size`, so the table is
bitwise identical however it was split or interrupted (on the same hardware and software, with
the same --batch-size: a forward of another size may round differently).
"""
import logging
import os
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .crops import INTERPOLATIONS, cut_regions, load_rgb, normalize_pixels, sample_regions
from .format import (
    ENSEMBLE_MODES, FINGERPRINT_FIELDS, SETTING_FIELDS, RILTableError, as_stored, compare_settings, make_attrs,
    shard_path,
)
from .merge import merge_tables
from .probe import load_layout
from .teachers import FrozenCLIP, ensemble_logits
from .templates import teacher_templates, templates_of_teacher
from .writer import TableWriter, check_output_path, complete_table, create_table

logger = logging.getLogger(__name__)
MAX_CLASSES = np.iinfo(np.uint16).max + 1  # topk_index is uint16


@dataclass(frozen=True)
class RegionSpec:
    """How regions are sampled and scored; all of it is stored in the table's attributes.

    `topk` is the K asked for: the table keeps min(topk, C). `templates` are `--templates` items
    (literals or set names); empty = the dataset's CoOp template. `teacher_templates`: (1-based teacher
    position, item) pairs giving a teacher of an ensemble its own. `precompute` records them as used
    (`templates` then holds the resolved ones: shared, or one tuple per teacher).
    `ensemble`: how several teachers' distributions are combined (one of ENSEMBLE_MODES).
    """

    num_regions: int = 500
    topk: int = 20
    output_size: tuple = (224, 224)
    interpolation: str = "bicubic"
    scale: tuple = (0.08, 1.0)
    ratio: tuple = (3 / 4, 4 / 3)
    flip_prob: float = 0.5
    crop_seed: int = 0
    templates: tuple = ()
    teacher_templates: tuple = ()
    ensemble: str = "mean-prob"

    def __post_init__(self):
        """Refuse values the sampler or the table cannot take, before anything is built."""
        low, high = self.scale
        ratio_low, ratio_high = self.ratio
        checks = (
            (self.num_regions >= 1, f"--regions {self.num_regions}: M, the regions per image, must be at least 1"),
            (self.topk >= 1, f"--topk {self.topk}: K, the teacher classes kept per region, must be at least 1"),
            (self.crop_seed >= 0, f"--crop-seed {self.crop_seed} must be >= 0"),
            (0 < low <= high <= 1, f"--scale {low} {high}: the crop area range MIN MAX needs 0 < MIN <= MAX <= 1"),
            (0 < ratio_low <= ratio_high, f"crop ratio {self.ratio}: needs 0 < MIN <= MAX"),
            (0 <= self.flip_prob <= 1, f"flip probability {self.flip_prob} must be within [0, 1]"),
            (len(self.output_size) == 2 and min(self.output_size) >= 1,
             f"output size {self.output_size} (INPUT.SIZE) must be two positive integers"),
            (self.interpolation in INTERPOLATIONS,
             f"interpolation {self.interpolation!r} (INPUT.INTERPOLATION) must be one of {sorted(INTERPOLATIONS)}"),
            (self.ensemble in ENSEMBLE_MODES,
             f"--ensemble {self.ensemble!r} must be one of {', '.join(ENSEMBLE_MODES)}"),
        )
        for valid, message in checks:
            if not valid:  # NaN fails every comparison above, so it lands here too
                raise ValueError(message)


class SampledRegions:
    """Region source for precompute: boxes and flips drawn from (crop seed, image index)."""

    def __init__(self, spec):
        self.spec = spec

    def __call__(self, index, width, height):
        spec = self.spec
        return sample_regions(
            width, height, spec.num_regions, spec.crop_seed, index, spec.scale, spec.ratio, spec.flip_prob
        )


class ImageRegions(Dataset):
    """Item j: (image index, (H, W), boxes (M, 4), flips (M,), uint8 pixels (M, 3, h, w)); one decode.

    An image that cannot be read gives (index, OSError) instead: raised by `regions_of` in the
    main process, its message stays one line (a DataLoader worker would wrap it in a traceback).
    """

    def __init__(self, image_root, image_paths, indices, output_size, interpolation, region_source):
        self.image_root = image_root
        self.image_paths = image_paths
        self.indices = list(indices)
        self.output_size = tuple(output_size)
        self.interpolation = interpolation
        self.region_source = region_source

    def __len__(self):
        return len(self.indices)

    def __getitem__(self, position):
        index = self.indices[position]
        try:
            image = load_rgb(os.path.join(self.image_root, self.image_paths[index]))
        except OSError as error:
            return index, error
        boxes, flips = self.region_source(index, image.width, image.height)
        pixels = cut_regions(image, boxes, flips, self.output_size, self.interpolation)
        return index, np.array([image.height, image.width], dtype=np.int32), boxes, flips, pixels


def regions_of(batches):
    """The items of an ImageRegions loader, raising the error of an image that could not be read."""
    for item in batches:
        if isinstance(item[1], OSError):
            raise item[1]
        yield item


def region_statistics(logits, topk):
    """Stored rows from fp32 logits (M, C): top-K classes and log-probabilities, full log-sum-exp and entropy.

    The log-probabilities z - lse are taken in float64 (a float32 lse near 30 is off by up to 2e-6) and
    rounded to fp16 last, so exp() of the top classes is exact to fp16 precision near 1 at any logit scale.
    """
    logits = logits.cpu().double()
    logsumexp = torch.logsumexp(logits, dim=1)
    log_prob = logits - logsumexp[:, None]
    top_log_prob, top_index = log_prob.topk(topk, dim=1)
    entropy = -(log_prob.exp() * log_prob).sum(dim=1)
    return {
        "regions/topk_index": top_index.numpy().astype(np.uint16),
        "regions/topk_logprob": top_log_prob.clamp(max=0).numpy().astype(np.float16),
        "regions/logsumexp": logsumexp.numpy().astype(np.float32),
        "regions/entropy": entropy.numpy().astype(np.float32),
    }


def teacher_logits(teacher, pixels, class_features, batch_size):
    """(M, C) fp32 logits of one image's uint8 regions, in forwards of at most `batch_size`."""
    chunks = pixels.to(teacher.device).split(batch_size)
    return torch.cat([
        teacher.logits(normalize_pixels(chunk, teacher.mean, teacher.std), class_features) for chunk in chunks
    ])


def score_regions(teachers, class_features, pixels, spec, batch_size):
    """Stored rows of one image's uint8 regions (M, 3, H, W) but its boxes: the ensemble's statistics
    and each teacher's top-1 (M, T)."""
    logits = torch.stack([teacher_logits(teacher, pixels, features, batch_size).cpu()
                          for teacher, features in zip(teachers, class_features)])
    rows = region_statistics(ensemble_logits(logits, spec.ensemble), spec.topk)
    rows["regions/teacher_top1"] = logits.argmax(dim=2).t().numpy().astype(np.uint16)
    return rows


def table_settings(teachers, spec):
    return {
        "teacher": [teacher.teacher_id for teacher in teachers],
        "teacher_sha256": [teacher.checkpoint_sha256 for teacher in teachers],
        "ensemble": spec.ensemble if len(teachers) > 1 else "none",
        "templates": [item if isinstance(item, str) else list(item) for item in spec.templates],
        "logit_scale": [teacher.logit_scale for teacher in teachers],
        "num_regions": spec.num_regions, "topk": spec.topk, "output_size": list(spec.output_size),
        "crop_scale": list(spec.scale), "crop_ratio": list(spec.ratio), "flip_prob": spec.flip_prob,
        "interpolation": spec.interpolation, "crop_seed": spec.crop_seed,
    }


def effective_spec(spec, fingerprint, num_teachers=1):
    """`spec` as the table records it: K = min(topk, C), templates resolved for the run's dataset."""
    num_classes = len(fingerprint["classnames"])
    topk = min(spec.topk, num_classes)
    logger.info("Top-K: --topk %d requested, the run has %d classes, so the table keeps K = %d classes per region",
                spec.topk, num_classes, topk)
    templates = teacher_templates(spec.templates, spec.teacher_templates, num_teachers, fingerprint["dataset"])
    if not templates or isinstance(templates[0], str):
        logger.info("Teacher class texts: %d template(s) %s", len(templates), list(templates[:3]))
    for position in range(num_teachers) if templates and not isinstance(templates[0], str) else ():
        own = templates_of_teacher(templates, position)
        logger.info("Teacher %d class texts: %d template(s) %s", position + 1, len(own), list(own[:3]))
    return replace(spec, topk=topk, templates=templates, teacher_templates=())


def class_features_of(teachers, classnames, templates):
    """Each teacher's (C, D) class features from its recorded templates."""
    return [teacher.class_features(classnames, templates_of_teacher(templates, position))
            for position, teacher in enumerate(teachers)]


def check_teachers(teachers, spec, num_classes):
    """Refuse teachers that cannot score these regions (another input size), or too many classes."""
    for teacher in teachers:
        if tuple(teacher.input_size) != tuple(spec.output_size):
            raise ValueError(
                f"teacher {teacher.teacher_id} takes {tuple(teacher.input_size)} inputs but the regions are "
                f"{tuple(spec.output_size)} (INPUT.SIZE): the teacher must see the student's pixels, so set "
                "INPUT.SIZE to the teacher's resolution or pick a teacher with the student's resolution"
            )
    if num_classes > MAX_CLASSES:
        raise ValueError(f"{num_classes} classes do not fit the uint16 topk_index (at most {MAX_CLASSES})")


def check_run_options(batch_size, workers):
    if batch_size < 1 or workers < 0:
        raise ValueError(f"--batch-size {batch_size} must be >= 1 and --workers {workers} >= 0")


def _refuse_existing_output(out, overwrite, world_size):
    """Stop before any work if `out` holds a finished table (or, for torchrun, an unfinished one)."""
    if overwrite or not os.path.exists(out):
        return
    attrs = load_layout(out).attrs
    if attrs["complete"]:
        raise FileExistsError(f"RIL table {out} is already complete; pass --overwrite to rebuild it")
    if world_size > 1:
        raise RILTableError(
            f"{out} is an unfinished single-process table; resume it with the same command without "
            "torchrun, or pass --overwrite to rebuild it in shards"
        )


def _prepare_target(target, attrs, image_paths, labels, overwrite):
    """Create, rebuild (--overwrite) or check for resuming the file to write; returns its layout."""
    if overwrite and os.path.exists(target):
        os.remove(target)
    if not os.path.exists(target):  # a shard's file is sparse: it holds only its own images' rows
        create_table(target, attrs, image_paths, labels, sparse=attrs["shard_count"] > 1)
    layout = load_layout(target)
    fields = [name for name, _ in FINGERPRINT_FIELDS] + list(SETTING_FIELDS) + ["shard_rank", "shard_count"]
    try:
        compare_settings(layout.attrs, as_stored(attrs), f"unfinished table {target}", "this request", fields)
    except RILTableError as error:
        raise RILTableError(f"{error}; pass --overwrite to start over, or choose another --out") from error
    return layout


def _fill(writer, batches, total, teachers, class_features, spec, batch_size, show_progress):
    """Score every image of `batches` and store it; the workers behind `batches` were started
    before `writer` opened the file, so no file handle crosses a fork."""
    start = time.perf_counter()
    with tqdm(total=total, unit="img", disable=not show_progress, desc="RIL precompute") as bar:
        for done, (index, size, boxes, flips, pixels) in enumerate(regions_of(batches), start=1):
            rows = score_regions(teachers, class_features, pixels, spec, batch_size)
            rows["regions/box"], rows["regions/flip"] = np.asarray(boxes), np.asarray(flips)
            writer.write_image(int(index), np.asarray(size), rows)
            bar.update()
            bar.set_postfix(crops_per_s=f"{done * spec.num_regions / (time.perf_counter() - start):.0f}")


def precompute(out, image_root, image_paths, labels, fingerprint, teacher, spec, batch_size=256, workers=4,
               overwrite=False, rank=0, world_size=1, lazy=False, shard=None, keep_shards=False):
    """Build (or resume) the table `out` for the given images; returns the path to read it from.

    `image_paths` are relative to `image_root`, in the order of `fingerprint` (see
    `format.run_fingerprint`). `teacher`: a FrozenCLIP, or a list of them (an ensemble combined as
    `spec.ensemble` says). With world_size > 1 (an initialised torch.distributed group),
    this rank fills its shard and rank 0 merges all shards into `out`, or with `keep_shards` writes
    their manifest (`shards`). `shard` = (I, S): this process fills shard I of S alone and writes the
    manifest. The table records `effective_spec(spec, fingerprint)`; it (or a shard) is marked complete
    only after every row read back. `lazy`: create a lazy table instead (boxes and flips only, see
    `lazy`); an existing lazy table is continued: its unfilled regions are scored.
    """
    from .lazy import create_lazy_table
    from .shards import manifest_path, write_manifest

    classnames = fingerprint["classnames"]
    teachers = [teacher] if isinstance(teacher, FrozenCLIP) else list(teacher)
    check_run_options(batch_size, workers)
    spec = effective_spec(spec, fingerprint, len(teachers))
    check_teachers(teachers, spec, len(classnames))
    check_output_path(out)
    if lazy:
        _refuse_lazy_request(out, overwrite, world_size, shard)
        create_lazy_table(out, image_root, image_paths, labels, fingerprint, teachers, spec, workers)
        return out
    shard_rank, shard_count = _shard_of(rank, world_size, shard)
    target = out if shard_count == 1 else shard_path(out, shard_rank, shard_count)
    kept = shard is not None or keep_shards
    _refuse_existing_output(target if kept else out, overwrite, 1 if kept else world_size)
    attrs = make_attrs(fingerprint, table_settings(teachers, spec), shard_rank, shard_count)
    layout = _prepare_target(target, attrs, image_paths, labels, overwrite)
    mine = np.arange(shard_rank, len(image_paths), shard_count)
    pending = mine[~layout.done[mine]]
    if len(pending) < len(mine):
        logger.info("Resuming %s: %d of %d images already done", target, len(mine) - len(pending), len(mine))
    dataset = ImageRegions(image_root, image_paths, pending, spec.output_size, spec.interpolation, SampledRegions(spec))
    batches = iter(DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers))
    if layout.lazy:
        return _continue_lazy(out, teachers, batches, len(dataset), batch_size)
    class_features = class_features_of(teachers, classnames, spec.templates)
    with TableWriter(target, layout) as writer:
        _fill(writer, batches, len(dataset), teachers, class_features, spec, batch_size, show_progress=rank == 0)
    complete_table(target, mine)
    if shard_count == 1:
        logger.info("RIL table complete: %s", out)
        return out
    if world_size > 1:
        torch.distributed.barrier()
    if kept:
        if rank == 0:
            logger.info("Shard %s complete; manifest of the %d shards: %s", target, shard_count,
                        write_manifest(out, shard_count))
        return manifest_path(out)
    if rank == 0:
        shards = [shard_path(out, position, world_size) for position in range(world_size)]
        if merge_tables(shards, out, overwrite=True):
            for path in shards:
                os.remove(path)
        logger.info("Merged %d shards into %s", world_size, out)
    return out


def _shard_of(rank, world_size, shard):
    """(shard index, shard count) this process fills: its torchrun rank, or `shard` = (I, S) in one process."""
    if shard is None:
        return rank, world_size
    index, count = shard
    if world_size > 1:
        raise ValueError("--shard I/S fills one shard in one process; under torchrun each rank fills its own "
                         "shard (use --keep-shards there instead)")
    if not 0 <= index < count:
        raise ValueError(f"--shard {index}/{count}: I must be within 0 .. S-1")
    return index, count


def _refuse_lazy_request(out, overwrite, world_size, shard):
    if world_size > 1 or shard is not None:
        raise RILTableError("--lazy creates a table in one process (it scores nothing); run it without torchrun "
                            "or --shard")
    if os.path.exists(out) and not overwrite:
        raise FileExistsError(
            f"RIL table {out} exists: a lazy table is filled by training (TRAINER.FDBPL.RIL_FILL True) or by this "
            "command without --lazy; pass --overwrite to create it anew"
        )
    if overwrite and os.path.exists(out):
        os.remove(out)


def _continue_lazy(out, teachers, batches, total, batch_size):
    """Score the unfilled regions of the lazy table `out` (the images of `batches`), then complete it."""
    from .lazy import TableFiller, continue_lazy_table

    logger.info("Continuing lazy table %s: scoring its unfilled regions", out)
    with TableFiller(out, teachers, batch_size) as filler:
        continue_lazy_table(filler, regions_of(batches), total)
    logger.info("RIL table complete: %s (%d regions scored now)", out, filler.scored_regions)
    return out
