"""What `python -m ril inspect` and `verify` report: counts, sizes, teacher quality, sanity checks."""
import math
import os
from dataclasses import dataclass

import numpy as np

from .format import FEATURES_DATASET, FEATURES_DONE, FINGERPRINT_FIELDS, REGION_DATASETS, RILTableError
from .shards import open_table

HISTOGRAM_BINS = 10
HISTOGRAM_WIDTH = 40
BLOCK_IMAGES = 256  # images per step when scanning a whole table
VERIFY_SAMPLE = 64  # images whose rows a default verify checks (--deep: all)
MAX_LISTED = 20  # row problems listed one by one


def bytes_per_region(table):
    """Stored bytes of one region: every per-region dataset (and the feature cache, if any)."""
    arrays = [table.array(name) for name in REGION_DATASETS]
    if table.features_attrs is not None:
        arrays.append(table.array(FEATURES_DATASET))
    return sum(array.dtype.itemsize * int(np.prod(array.shape[2:])) for array in arrays)


def _blocks(table):
    """(start, stop, done mask) over the table in blocks of images."""
    for start in range(0, table.num_images, BLOCK_IMAGES):
        stop = min(start + BLOCK_IMAGES, table.num_images)
        yield start, stop, table.done[start:stop]


def teacher_statistics(table):
    """(top-1 agreement with ground truth, entropy histogram counts, mean information weight) over done images."""
    log_c = math.log(table.num_classes)
    agree, regions, weight_sum = 0, 0, 0.0
    histogram = np.zeros(HISTOGRAM_BINS, dtype=np.int64)
    for start, stop, done in _blocks(table):
        top1 = np.asarray(table.array("regions/topk_index")[start:stop, :, 0])[done].astype(np.int64)
        entropy = np.asarray(table.array("regions/entropy")[start:stop])[done]
        agree += int((top1 == table.labels[start:stop][done][:, None]).sum())
        regions += top1.size
        weight_sum += float(np.clip(1.0 - entropy / log_c, 0.0, 1.0).sum())
        histogram += np.histogram(np.clip(entropy, 0.0, log_c), bins=HISTOGRAM_BINS, range=(0.0, log_c))[0]
    if regions == 0:
        return float("nan"), histogram, float("nan")
    return agree / regions, histogram, weight_sum / regions


def teacher_agreement(table):
    """Per teacher of the table, (T,) fractions of done regions whose top-1 is the ground-truth label,
    and (T,) whose top-1 is the stored (ensemble) distribution's."""
    with_label = np.zeros(len(table.attrs["teacher"]))
    with_table = np.zeros_like(with_label)
    regions = 0
    for start, stop, done in _blocks(table):
        own = np.asarray(table.array("regions/teacher_top1")[start:stop])[done].astype(np.int64)
        top1 = np.asarray(table.array("regions/topk_index")[start:stop, :, 0])[done].astype(np.int64)
        with_label += (own == table.labels[start:stop][done][:, None, None]).sum(axis=(0, 1))
        with_table += (own == top1[..., None]).sum(axis=(0, 1))
        regions += top1.size
    return with_label / max(regions, 1), with_table / max(regions, 1)


def teacher_lines(table):
    """The teachers of a table: one line, or for an ensemble one line per member with its top-1 agreement."""
    attrs = table.attrs
    own = bool(attrs["templates"]) and not isinstance(attrs["templates"][0], str)  # one list per teacher

    def described(templates):
        return f"{len(templates)} template(s): {templates[:3]}"

    templates = "templates per teacher" if own else described(attrs["templates"])
    members = [f"{teacher}" + (f" (sha256 {sha256})" if sha256 else "") + f", logit scale {scale:.4g}"
               + (f", {described(attrs['templates'][position])}" if own else "")
               for position, (teacher, sha256, scale) in enumerate(
                   zip(attrs["teacher"], attrs["teacher_sha256"], attrs["logit_scale"]))]
    if len(members) == 1:
        return [f"teacher: {members[0]}, {templates}"]
    with_label, with_table = teacher_agreement(table)
    return [f"teachers: ensemble of {len(members)} ({attrs['ensemble']}), {templates}"] + [
        f"  teacher {number}: {member}; top-1 agrees with the ground-truth label on {100 * label:.2f}% of regions "
        f"and with the ensemble's top-1 on {100 * ensemble:.2f}%"
        for number, (member, label, ensemble) in enumerate(zip(members, with_label, with_table), start=1)
    ]


def _histogram_lines(histogram, log_c):
    total, peak = max(1, int(histogram.sum())), max(1, int(histogram.max()))
    edges = np.linspace(0.0, log_c, HISTOGRAM_BINS + 1)
    return [
        f"  [{low:5.2f}, {high:5.2f})  {'#' * round(HISTOGRAM_WIDTH * count / peak):<{HISTOGRAM_WIDTH}} "
        f"{count} ({100 * count / total:.1f}%)"
        for low, high, count in zip(edges[:-1], edges[1:], histogram)
    ]


def describe(table):
    """The `inspect` report of a table, as text lines."""
    attrs = table.attrs
    per_region = bytes_per_region(table)
    agreement, histogram, mean_weight = teacher_statistics(table)
    fingerprint = ", ".join(
        f"{field}={len(attrs[field]) if field == 'classnames' else attrs[field]}" for field, _ in FINGERPRINT_FIELDS
    )
    features = table.features_attrs
    lines = [
        f"RIL table {table.path} ({os.path.getsize(table.path) / 2**20:.1f} MiB), format {attrs['format']} "
        f"v{attrs['version']}, package {attrs['package_version']}, created {attrs['created']}",
        f"fingerprint: {fingerprint}",
        *teacher_lines(table),
        f"regions: N={table.num_images} images x M={table.num_regions} regions, top-K={table.topk} of "
        f"C={table.num_classes} classes; crops {attrs['output_size']} px, scale {attrs['crop_scale']}, "
        f"ratio {[round(r, 4) for r in attrs['crop_ratio']]}, flip p={attrs['flip_prob']}, "
        f"{attrs['interpolation']}, crop seed {attrs['crop_seed']}",
        f"progress: {int(table.done.sum())} of {table.num_images} images done, "
        f"{'complete' if attrs['complete'] else 'UNFINISHED'}",
        *([f"lazy table: {int(table.filled_regions().sum())} of {table.num_images * table.num_regions} regions "
           "filled (training with TRAINER.FDBPL.RIL_FILL True fills the regions it draws)"] if table.lazy else []),
        f"bytes per region: {per_region}; per image: {per_region * table.num_regions}",
        "student features: " + (f"{features['student']} ({'complete' if table.has_features() else 'unfinished'})"
                                if features is not None else "none"),
        f"teacher top-1 agrees with the ground-truth label on {100 * agreement:.2f}% of regions; "
        f"mean information weight {mean_weight:.4f}",
        f"teacher entropy histogram (0 .. log C = {math.log(table.num_classes):.2f}):",
    ]
    return lines + _histogram_lines(histogram, math.log(table.num_classes))


def images_to_check(table, deep):
    """Images whose rows `verify` checks (done ones; in a lazy table all, for their filled regions and
    geometry): all with `deep`, else VERIFY_SAMPLE spread evenly from the first to the last."""
    done = np.arange(table.num_images) if table.lazy else np.flatnonzero(table.done)
    if deep or len(done) <= VERIFY_SAMPLE:
        return done
    return done[np.linspace(0, len(done) - 1, VERIFY_SAMPLE).round().astype(np.int64)]


def _listed(problems):
    if len(problems) <= MAX_LISTED:
        return problems
    return problems[:MAX_LISTED] + [f"... and {len(problems) - MAX_LISTED} more problems like these"]


@dataclass
class Verification:
    """What `verify` found: `problems` (empty = sound) and how many images' rows it checked."""

    problems: list
    images_checked: int
    num_images: int


def verify(path, expected_fingerprint=None, deep=False):
    """Check a table: structure (read in a child process), attributes, stored paths, completeness,
    the fingerprint (if given), and the checksums and values of a sample of images' rows (of every
    image with `deep`). Raises RILTableError / FileNotFoundError when the file cannot be opened as a
    table at all."""
    table = open_table(path, require_complete=False)
    problems = []
    checks = [table.check_complete]
    if expected_fingerprint is not None:
        checks.append(lambda: table.check_fingerprint(expected_fingerprint))
    for check in checks:
        try:
            check()
        except RILTableError as error:
            problems.append(str(error))
    if not ((table.labels >= 0) & (table.labels < table.num_classes)).all():
        problems.append("images/label holds labels outside [0, number of classes)")
    checked = images_to_check(table, deep)
    row_problems = [problem for index in checked for problem in table.image_problems(int(index))]
    if table.features_attrs is not None:
        feature_done = table.array(FEATURES_DONE).astype(bool)
        row_problems += [problem for index in checked if feature_done[index]
                         for problem in table.image_problems(int(index), features=True)]
    return Verification(problems + _listed(row_problems), len(checked), table.num_images)
