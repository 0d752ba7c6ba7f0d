"""Integrity of stored rows: CRC32 checksums, and the value checks applied when rows are written
and when a table is verified.

An image's checksum covers the bytes of its index, label, size and its block of every region
dataset, exactly as stored (54 KB per image at M=500, K=20, one teacher: checked whole on every read). Student
features have one checksum per region instead: an image's features are M x D float16 (512 KB at
D=512), and a feature-cache read needs only R of its rows. CRC32 detects every error burst of at
most 32 bits, so every single changed byte is detected, not just most of them. A lazy table's
regions are filled one by one, so each filled region has its own checksum (`region_checksums`), and
an image with unfilled regions has a checksum of its geometry (`geometry_checksum`).
"""
import math
import zlib

import numpy as np

from .format import REGION_DATASETS

ENTROPY_SLACK = 1e-4  # entropy is computed in float32
BOX_SLACK = 1e-6  # normalized boxes are float32 ratios of integers


def _crc(arrays, crc=0):
    for array in arrays:
        crc = zlib.crc32(np.ascontiguousarray(array).view(np.uint8).reshape(-1), crc)
    return crc


def image_checksum(index, label, size, rows):
    """CRC32 of one image's stored rows. `rows`: REGION_DATASETS name -> its (M, ...) block in the
    stored dtype; `label` and `size` as stored (int32)."""
    head = [np.asarray([index], dtype="<u8"), np.asarray([label], dtype="<i4"), np.asarray(size, dtype="<i4")]
    return _crc(head + [rows[name] for name in REGION_DATASETS])


def geometry_checksum(index, size, boxes, flips):
    """CRC32 of a lazy table image's geometry: its size (2,) int32, boxes (M, 4) float32 and flips (M,) uint8."""
    head = [np.asarray([index], dtype="<u8"), np.asarray(size, dtype="<i4")]
    return _crc(head + [np.asarray(boxes, dtype="<f4"), np.asarray(flips, dtype=np.uint8)])


def region_checksums(index, regions, size, rows):
    """CRC32 of each region's stored row in a lazy table: (R,) uint32. `rows`: REGION_DATASETS name ->
    (R, ...) of image `index` at `regions` (R,), in the stored dtype; `size` (2,) int32."""
    head = np.asarray(size, dtype="<i4")
    return np.array([
        _crc([np.asarray([index, region], dtype="<u8"), head] + [rows[name][position] for name in REGION_DATASETS])
        for position, region in enumerate(regions)
    ], dtype=np.uint32)


def features_checksums(index, regions, features):
    """CRC32 of each stored student feature row (R, D) float16 of image `index` at `regions` (R,): (R,) uint32."""
    return np.array([_crc([np.asarray([index, region], dtype="<u8"), row]) for region, row in zip(regions, features)],
                    dtype=np.uint32)


def top_mass_slack(num_classes):
    """How far above 1 the top-K probabilities may sum by fp16 rounding alone: each log-probability
    l_k is within |l_k| 2^-11 of the teacher's, so the sum within sum_k p_k |l_k| 2^-11 <= log(C) 2^-11
    (doubled for the float32 arithmetic around it)."""
    return 2.0 ** -10 * max(1.0, math.log(num_classes))


def _outside(values, low, high):
    """True where values are not within [low, high]; NaN is outside (comparisons with NaN are False)."""
    return ~((values >= low) & (values <= high))


def value_problems(rows, sizes, num_classes):
    """Names of the checks failed by the rows of n images: `rows` REGION_DATASETS name -> (n, M, ...),
    `sizes` (n, 2). NaN and Inf fail every check on floats."""
    index = rows["regions/topk_index"].astype(np.int64)
    log_prob = rows["regions/topk_logprob"].astype(np.float64)
    logsumexp, entropy, box = rows["regions/logsumexp"], rows["regions/entropy"], rows["regions/box"]
    sorted_index = np.sort(index, axis=-1)
    with np.errstate(invalid="ignore", over="ignore"):  # such log-probabilities fail their own check
        top_mass = np.exp(log_prob).sum(axis=-1)
    checks = {
        "topk_index >= number of classes": (index >= num_classes).any(),
        "topk_index repeats a class": (np.diff(sorted_index, axis=-1) == 0).any(),
        "teacher_top1 >= number of classes": (rows["regions/teacher_top1"] >= num_classes).any(),
        "top-K log-probabilities not finite and <= 0": not (np.isfinite(log_prob) & (log_prob <= 0)).all(),
        "top-K log-probabilities not in descending order": (np.diff(log_prob, axis=-1) > 0).any(),
        "top-K probabilities sum above 1": (top_mass > 1.0 + top_mass_slack(num_classes)).any(),
        "non-finite logsumexp": not np.isfinite(logsumexp).all(),
        "entropy not finite and within [0, log C]":
            _outside(entropy, -ENTROPY_SLACK, math.log(num_classes) + ENTROPY_SLACK).any(),
        "boxes not finite and inside the image":
            _outside(box, 0.0, 1.0).any() or (box[..., 2:] <= 0).any()
            or _outside(box[..., :2] + box[..., 2:], 0.0, 1.0 + BOX_SLACK).any(),
        "flip not 0 or 1": (rows["regions/flip"] > 1).any(),
        "non-positive image sizes": (np.asarray(sizes) <= 0).any(),
    }
    return [problem for problem, failed in checks.items() if failed]
