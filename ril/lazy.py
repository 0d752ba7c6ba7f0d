"""Lazy RIL tables: created with every region's box and flip, filled with teacher values on first use.

`create_lazy_table` writes the geometry of every region (cheap: image headers and the crop sampler,
deterministic as in a full precompute). `TableFiller` scores regions that are not filled yet, in the
process that needs them (training with TRAINER.FDBPL.RIL_FILL, or `precompute` continuing the table),
and writes them back. Crash safety: a region's row and checksum reach the disk before its filled flag
is written, and an image is marked done (its checksum then covering all its rows) only once all its
regions are filled, so a killed run leaves no flag on missing data and a rerun scores what is missing.
One process writes (the file is locked against others); DataLoader workers keep reading the file as
it fills. Once every image is done, the table is checked and marked complete like a precomputed one.
"""
import logging
import os
import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from .crops import image_size
from .format import ENSEMBLE_MODES, RILTableError, damaged, make_attrs
from .precompute import (
    RegionSpec, SampledRegions, check_teachers, class_features_of, score_regions, table_settings,
)
from .reader import RILTable
from .teachers import load_teacher, teacher_identity
from .writer import TableWriter, complete_table, create_table

logger = logging.getLogger(__name__)


class ImageGeometry(Dataset):
    """Item j: (image index, size (H, W) int32, boxes (M, 4), flips (M,)) of `indices[j]`, from its header."""

    def __init__(self, image_root, image_paths, region_source):
        self.image_root = image_root
        self.image_paths = image_paths
        self.region_source = region_source

    def __len__(self):
        return len(self.image_paths)

    def __getitem__(self, index):
        width, height = image_size(os.path.join(self.image_root, self.image_paths[index]))
        boxes, flips = self.region_source(index, width, height)
        return index, np.array([height, width], dtype=np.int32), boxes, flips


def create_lazy_table(out, image_root, image_paths, labels, fingerprint, teachers, spec, workers=4):
    """Create the lazy table `out`: the attributes a full precompute would write (`spec` as recorded, see
    `precompute.effective_spec`), every region's box and flip, no teacher value."""
    attrs = make_attrs(fingerprint, table_settings(teachers, spec))
    dataset = ImageGeometry(image_root, image_paths, SampledRegions(spec))
    loader = DataLoader(dataset, batch_size=None, shuffle=False, num_workers=workers)
    geometry = ((int(index), size, boxes, flips) for index, size, boxes, flips in loader)
    create_table(out, attrs, image_paths, labels,
                 geometry=tqdm(geometry, total=len(dataset), unit="img", desc="RIL lazy table: regions"))
    logger.info("Lazy RIL table created: %s (%d images x %d regions, none scored yet)", out, len(image_paths),
                spec.num_regions)


def table_spec(attrs):
    """The RegionSpec a table records (its templates resolved, K = min(K, C))."""
    ensemble = attrs["ensemble"] if attrs["ensemble"] in ENSEMBLE_MODES else ENSEMBLE_MODES[0]  # "none": one teacher
    return RegionSpec(
        num_regions=attrs["num_regions"], topk=attrs["topk"], output_size=tuple(attrs["output_size"]),
        interpolation=attrs["interpolation"], scale=tuple(attrs["crop_scale"]), ratio=tuple(attrs["crop_ratio"]),
        flip_prob=attrs["flip_prob"], crop_seed=attrs["crop_seed"],
        templates=tuple(item if isinstance(item, str) else tuple(item) for item in attrs["templates"]),
        ensemble=ensemble,
    )


def check_table_teachers(path, attrs, identities, given):
    """Refuse teachers other than those that scored the table. `identities`: (teacher_id, checkpoint_sha256)
    per teacher; `given`: how the user named them."""
    found = {"teacher": [teacher_id for teacher_id, _ in identities],
             "teacher_sha256": [sha256 for _, sha256 in identities]}
    for field, value in found.items():
        if value != attrs[field]:
            raise RILTableError(
                f"RIL table {path} is scored by teacher(s) {attrs['teacher']} ({field} {attrs[field]}), but "
                f"{given} gives {value}: its regions must all come from the same teacher, so give that one"
            )


class TableFiller:
    """Scores and stores the unfilled regions of the lazy table `path`; a context manager.

    `teachers`: loaded FrozenCLIPs, or their specs (checked against the table at once, loaded on `device` by
    the first `fill`, so a run that finds every region it draws filled never loads them). Counts what it
    did: `scored_regions`, and `teacher_forwards` (one per teacher per forward of at most `batch_size` regions).
    """

    def __init__(self, path, teachers, batch_size=256, given="--teacher", device="cpu"):
        self.path = path
        self.table = RILTable(path, require_complete=False)
        if not self.table.lazy:
            raise RILTableError(f"RIL table {path} is not a lazy table (made by python -m ril precompute --lazy)")
        identities = [teacher_identity(teacher) if isinstance(teacher, str)
                      else (teacher.teacher_id, teacher.checkpoint_sha256) for teacher in teachers]
        check_table_teachers(path, self.table.attrs, identities, given)
        self.spec = table_spec(self.table.attrs)
        self.batch_size, self.device = batch_size, device
        self._teachers, self._class_features = list(teachers), None
        self.scored_regions = self.teacher_forwards = 0
        self.writer = TableWriter(path)

    @property
    def teachers_loaded(self):
        return self._class_features is not None

    def scoring_teachers(self):
        """(teachers, their class features), loaded and checked on first use."""
        if not self.teachers_loaded:
            self._teachers = [load_teacher(teacher, self.device) if isinstance(teacher, str) else teacher
                              for teacher in self._teachers]
            # the files may have changed since the check at start: the loaded teachers must still match
            check_table_teachers(self.path, self.table.attrs, [(teacher.teacher_id, teacher.checkpoint_sha256)
                                                               for teacher in self._teachers], "the loaded teacher")
            check_teachers(self._teachers, self.spec, self.table.num_classes)
            self._class_features = class_features_of(self._teachers, self.table.classnames, self.spec.templates)
        return self._teachers, self._class_features

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        self.close(finish=error_type is None)

    def close(self, finish=True):
        """Release the file; with `finish`, mark the table complete if every image is done."""
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        writer.__exit__(None, None, None)
        if finish and self.table.array("progress/done").all() and not self.table.attrs["complete"]:
            complete_table(self.path)
            logger.info("Lazy RIL table %s is now complete: every region is scored", self.path)

    def fill(self, images, regions, pixels):
        """Teacher values (REGION_DATASETS name -> (U, ...), boxes and flips as stored) of the regions
        (images[j], regions[j]), scored from their uint8 pixels (U, 3, H, W); those still unfilled are stored."""
        images, regions = np.asarray(images, dtype=np.int64), np.asarray(regions, dtype=np.int64)
        geometry = self.table.read(images, regions)
        teachers, class_features = self.scoring_teachers()
        rows = score_regions(teachers, class_features, pixels, self.spec, self.batch_size)
        rows.update({"regions/box": geometry["box"], "regions/flip": geometry["flip"]})
        self.scored_regions += len(images)
        self.teacher_forwards += len(teachers) * -(-len(images) // self.batch_size)
        missing = ~self.table.filled(images, regions)
        if missing.any():
            self._store(images[missing], regions[missing], {name: value[missing] for name, value in rows.items()})
        return rows

    def _store(self, images, regions, rows):
        """Write the rows, sync, mark the regions filled, then finish the images they completed."""
        sizes = self.table.array("images/size")
        touched = np.unique(images)
        for index in touched:
            mine = images == index
            self.writer.write_regions(int(index), regions[mine], sizes[index],
                                      {name: value[mine] for name, value in rows.items()})
        self.writer.sync()
        for index in touched:
            self.writer.mark_filled(int(index), regions[images == index])
        self.finish_images(touched)

    def finish_images(self, indices):
        """Mark done the images of `indices` whose regions are all filled (their rows checked first)."""
        every = np.arange(self.spec.num_regions)
        for index in indices:
            index = int(index)
            if self.table.image_done(index) or not self.table.filled(np.full(len(every), index), every).all():
                continue  # the flags first: checking every region's row on each batch would cost M checksums
            rows, filled, problem = self.table.unfinished_rows(index, every)
            if problem:
                raise damaged(self.path, problem)
            if filled.all():
                self.writer.finish_image(index, self.table.array("images/size")[index], rows)


def continue_lazy_table(filler, batches, total, show_progress=True):
    """Score every unfilled region of the images of `batches` (precompute's ImageRegions items: index,
    size, boxes, flips, uint8 pixels), whose boxes and flips must be those stored."""
    table = filler.table
    with tqdm(total=total, unit="img", disable=not show_progress, desc="RIL precompute (lazy table)") as bar:
        for index, _, boxes, flips, pixels in batches:
            index, all_regions = int(index), np.arange(len(boxes))
            stored = table.read(np.full(len(boxes), index), all_regions)
            if not (np.array_equal(stored["box"], boxes) and np.array_equal(stored["flip"], flips)):
                raise damaged(table.path, f"the stored boxes or flips of image {index} ({table.image_paths[index]}) "
                                          "are not those its crop seed gives")
            unfilled = all_regions[~table.filled(np.full(len(boxes), index), all_regions)]
            if len(unfilled):
                filler.fill(np.full(len(unfilled), index), unfilled, pixels[unfilled])
            filler.finish_images([index])
            bar.update()
