"""What a table will cost, before any work: its size on disk, the teacher forwards, and the hours of
teacher compute from a throughput measured on the chosen device (`python -m ril plan`)."""
import math
import time
from dataclasses import dataclass

import numpy as np
import torch

from .crops import normalize_pixels
from .format import IMAGE_DATASETS, REGION_DATASETS

HDF5_METADATA_BYTES = 2**16  # object headers, root attributes (class names, templates): well under this


def bytes_per_region(topk, num_teachers):
    return sum(np.dtype(dtype).itemsize * math.prod(tail(topk, num_teachers))
               for dtype, tail in REGION_DATASETS.values())


def bytes_per_image(path_bytes):
    """Per-image datasets plus the fixed-length path (as long as the longest path, in UTF-8 bytes)."""
    return path_bytes + sum(np.dtype(dtype).itemsize * math.prod(tail) for dtype, tail in IMAGE_DATASETS.values())


def measure_teacher(teacher, class_features, batch_size, batches):
    """Regions per second of `teacher` (normalisation and forward) on random regions, after one warm-up batch."""
    pixels = torch.randint(0, 256, (batch_size, 3, *teacher.input_size), dtype=torch.uint8).to(teacher.device)

    def forward():
        teacher.logits(normalize_pixels(pixels, teacher.mean, teacher.std), class_features).cpu()

    forward()
    start = time.perf_counter()
    for _ in range(batches):
        forward()
    return batches * batch_size / (time.perf_counter() - start)


@dataclass
class TablePlan:
    """The cost of a table of N images x M regions, K of C classes, scored by T teachers."""

    num_images: int
    num_regions: int
    topk: int
    num_classes: int
    path_bytes: int
    batch_size: int
    regions_per_second: list  # measured, one per teacher

    @property
    def table_bytes(self):
        num_teachers = len(self.regions_per_second)
        return (self.num_images * (self.num_regions * bytes_per_region(self.topk, num_teachers)
                                   + bytes_per_image(self.path_bytes)) + HDF5_METADATA_BYTES)

    @property
    def forwards_per_teacher(self):
        return self.num_images * math.ceil(self.num_regions / self.batch_size)

    @property
    def hours(self):
        regions = self.num_images * self.num_regions
        return sum(regions / rate for rate in self.regions_per_second) / 3600


def human_bytes(count):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count} B"
        count /= 1024


def describe_plan(plan, teacher_ids, device, measured_batches):
    """The `plan` report, as text lines."""
    teachers = len(teacher_ids)
    regions = plan.num_images * plan.num_regions
    lines = [
        f"table: N={plan.num_images} images x M={plan.num_regions} regions, top-K={plan.topk} of "
        f"C={plan.num_classes} classes, {teachers} teacher(s)",
        f"size on disk: {human_bytes(plan.table_bytes)} ({plan.table_bytes} bytes: "
        f"{bytes_per_region(plan.topk, teachers)} bytes per region, "
        f"{plan.num_regions * bytes_per_region(plan.topk, teachers) + bytes_per_image(plan.path_bytes)} per image)",
        f"teacher forwards: {plan.forwards_per_teacher} per teacher ({plan.num_images} images x "
        f"ceil({plan.num_regions} / --batch-size {plan.batch_size})), {regions} regions per teacher, "
        f"{plan.num_images} image decodes",
    ]
    lines += [f"teacher {teacher} on {device}: {rate:.1f} regions/s (measured over {measured_batches} batches of "
              f"{plan.batch_size} after a warm-up batch)"
              for teacher, rate in zip(teacher_ids, plan.regions_per_second)]
    lines.append(f"estimate: {plan.hours:.2f} hours of teacher compute (images are decoded and cut by --workers "
                 "processes alongside; too few workers for the device make it longer)")
    return lines
