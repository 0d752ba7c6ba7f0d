"""Student feature cache: the frozen student's image features of every region, stored in the table.

`student/features` (N, M, D) float16 holds the raw CLIP image-encoder output (after the
projection, before L2 normalisation) of each region, cut with the stored box and flip and
normalised with the student's mean/std; `student/checksum` (N,) holds a CRC32 of each image's
features and `student/done` (N,) marks finished images (resumable). Written like the rows (see
`writer`): NaN/Inf refused, synced before marked done, read back at the end. A trainer whose
image encoder is frozen can then skip decoding and the image tower entirely.
"""
import logging
import os

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from .crops import normalize_pixels
from .format import FEATURES_DONE, RILTableError
from .merge import copy_rows
from .precompute import ImageRegions, regions_of
from .reader import RILTable
from .teachers import load_openai_clip
from .writer import TableWriter, complete_table, create_table, read_back, replace_durably

logger = logging.getLogger(__name__)


class StoredRegions:
    """Region source for the cache: the boxes and flips already in the table."""

    def __init__(self, table):
        self.table = table

    def __call__(self, index, width, height):
        rows = self.table.read_image(index, np.arange(self.table.num_regions))
        return rows["box"], rows["flip"]


def _rebuild_with_feature_datasets(table, dim, attrs):
    """Rewrite `table`'s file with an empty cache for `attrs`'s student, dropping any old cache: rows
    are copied after their checksums, and the copy replaces the file once it has read back intact
    (the temporary copy is removed on failure). No HDF5 call touches the old file's structure beyond
    the probed reads (see `probe`)."""
    path = table.path
    temporary = f"{path}.features-{os.getpid()}"
    try:
        create_table(temporary, dict(table.attrs, complete=False), table.image_paths, table.labels, (dim, attrs))
        with TableWriter(temporary, sync_each_image=False) as writer:
            copy_rows([table], writer)
        complete_table(temporary)
        replace_durably(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _prepare(path, table, student, overwrite):
    """Make sure the table has a cache for `student`; returns False when it is already complete."""
    attrs = {"student": student.teacher_id, "student_sha256": student.checkpoint_sha256,
             "pixel_mean": list(student.mean), "pixel_std": list(student.std), "normalized": False}
    existing = table.features_attrs
    same = existing is not None and all(existing.get(key) == attrs[key] for key in ("student", "student_sha256"))
    if same and not overwrite:
        return not table.has_features()
    if existing is not None and not overwrite:
        raise RILTableError(
            f"RIL table {path} already caches features of {existing.get('student')!r}; pass --overwrite "
            f"to replace them with {student.teacher_id!r}"
        )
    _rebuild_with_feature_datasets(table, student.model.visual.output_dim, attrs)
    return True


def add_student_features(path, image_root, model, device="cpu", batch_size=256, workers=4, overwrite=False):
    """Compute (or resume) the student feature cache of a complete table; `model` is a CLIP name or path."""
    student = load_openai_clip(model, device)
    table = RILTable(path)
    if tuple(student.input_size) != tuple(table.attrs["output_size"]):
        raise ValueError(
            f"student {model} takes {student.input_size} inputs but table {path} holds "
            f"{tuple(table.attrs['output_size'])} regions"
        )
    if not _prepare(path, table, student, overwrite):
        logger.info("%s already caches features of %s", path, student.teacher_id)
        return
    table = RILTable(path)
    pending = np.flatnonzero(table.array(FEATURES_DONE) == 0)
    regions = ImageRegions(image_root, table.image_paths, pending, table.attrs["output_size"],
                           table.attrs["interpolation"], StoredRegions(table))
    batches = iter(DataLoader(regions, batch_size=None, shuffle=False, num_workers=workers))
    with TableWriter(path) as writer:  # opened after the workers start: no file handle crosses a fork
        for index, _, _, _, pixels in tqdm(regions_of(batches), total=len(regions), unit="img",
                                           desc="student features"):
            pixels = normalize_pixels(pixels.to(student.device), student.mean, student.std)
            features = torch.cat([student.image_features(chunk).cpu() for chunk in pixels.split(batch_size)])
            writer.write_features(int(index), features.numpy())
    read_back(path, features=True)
    logger.info("Cached %s features of %d images in %s", student.teacher_id, table.num_images, path)
