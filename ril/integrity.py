"""Integrity of stored rows: CRC32 checksums, and the value checks applied when rows are written
and when a table is verified.

An image's checksum covers the bytes of its index, label, size and its block of every region
dataset, exactly as stored (52 KB per image at M=500, K=20: checked whole on every read). Student
features have one checksum per region instead: an image's features are M x D float16 (512 KB at
D=512), and a feature-cache read needs only R of its rows. CRC32 detects every error burst of at
most 32 bits, so every single changed byte is detected, not just most of them.
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


def features_checksums(index, regions, features):
    """CRC32 of each stored student feature row (R, D) float16 of image `index` at `regions` (R,): (R,) uint32."""
    return np.array([_crc([np.asarray([index, region], dtype="<u8"), row]) for region, row in zip(regions, features)],
                    dtype=np.uint32)


def _outside(values, low, high):
    """True where values are not within [low, high]; NaN is outside (comparisons with NaN are False)."""
    return ~((values >= low) & (values <= high))


def value_problems(rows, sizes, num_classes):
    """Names of the checks failed by the rows of n images: `rows` REGION_DATASETS name -> (n, M, ...),
    `sizes` (n, 2). NaN and Inf fail every check on floats."""
    index = rows["regions/topk_index"].astype(np.int64)
    logit = rows["regions/topk_logit"].astype(np.float32)
    logsumexp, entropy, box = rows["regions/logsumexp"], rows["regions/entropy"], rows["regions/box"]
    fp16_slack = 1e-2 * np.maximum(1.0, np.abs(logsumexp))  # stored logits are rounded to fp16
    sorted_index = np.sort(index, axis=-1)
    checks = {
        "topk_index >= number of classes": (index >= num_classes).any(),
        "topk_index repeats a class": (np.diff(sorted_index, axis=-1) == 0).any(),
        "non-finite top-K logits": not np.isfinite(logit).all(),
        "top-K logits not in descending order": (np.diff(logit, axis=-1) > 0).any(),
        "non-finite logsumexp": not np.isfinite(logsumexp).all(),
        "logsumexp below the top logit": not (logit[..., 0] <= logsumexp + fp16_slack).all(),
        "entropy not finite and within [0, log C]":
            _outside(entropy, -ENTROPY_SLACK, math.log(num_classes) + ENTROPY_SLACK).any(),
        "boxes not finite and inside the image":
            _outside(box, 0.0, 1.0).any() or (box[..., 2:] <= 0).any()
            or _outside(box[..., :2] + box[..., 2:], 0.0, 1.0 + BOX_SLACK).any(),
        "flip not 0 or 1": (rows["regions/flip"] > 1).any(),
        "non-positive image sizes": (np.asarray(sizes) <= 0).any(),
    }
    return [problem for problem, failed in checks.items() if failed]
