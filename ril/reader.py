"""Read an RIL table: random access to (image, region) rows, dense soft labels, information weights.

The table is opened through `probe.load_layout` (its HDF5 structure read first in a child
process). Rows are then read through a `numpy.memmap` of each dataset at its file offset (the
format keeps datasets contiguous), opened lazily in each process: a table object can be handed
to DataLoader workers (fork or spawn) and no file handle is ever shared across a fork.
`in_memory=True` loads every array once instead (any layout). `read_image` checks an image's
rows against its checksum before serving them; `read` serves any (image, region) pairs unchecked.
A lazy table is read as it fills: `read_regions` serves its filled regions, each checked against its
own checksum, and says which regions are not filled yet (their box and flip only).
"""
import os

import numpy as np
import torch

from .format import (
    CHECKSUM_DATASET, DONE_DATASET, FEATURES_CHECKSUM, FEATURES_DATASET, FEATURES_DONE, FILLED_DATASET,
    LAZY_DATASETS, REGION_CHECKSUM, REGION_DATASETS, RILTableError, damaged, check_fingerprint,
)
from .integrity import features_checksums, geometry_checksum, image_checksum, region_checksums, value_problems
from .probe import load_layout

DENSIFY_MODES = ("smooth", "renorm")
PROB_FLOOR = 1e-8  # smooth: smallest probability given to a class outside the top-K
FIELDS = {name.split("/")[1]: name for name in REGION_DATASETS}  # short name -> dataset
MAPPED = (*REGION_DATASETS, "images/size")


class TableView:
    """What every table object offers from `attrs`: sizes, classes and the fingerprint check (a one-file
    `RILTable`, or a `shards.ShardedTable` read as one)."""

    @property
    def num_images(self):
        return len(self.image_paths)

    @property
    def num_regions(self):
        return self.attrs["num_regions"]

    @property
    def topk(self):
        return self.attrs["topk"]

    @property
    def classnames(self):
        return self.attrs["classnames"]

    @property
    def num_classes(self):
        return len(self.attrs["classnames"])

    def check_fingerprint(self, expected):
        """Refuse a table built for another run (see `format.run_fingerprint`)."""
        check_fingerprint(self.attrs, expected, self.path)


class RILTable(TableView):
    """A table opened for reading. `attrs` holds the root attributes (the fingerprint and settings).

    Args:
        in_memory: load all arrays now instead of mapping the file.
        require_complete: refuse an unfinished table (what training needs); False for inspection.
    """

    def __init__(self, path, in_memory=False, require_complete=True):
        self.path = os.fspath(path)
        layout = load_layout(self.path, in_memory)
        self.attrs, self.image_paths, self.labels = layout.attrs, layout.image_paths, layout.labels
        self.done, self.checksums, self.features_attrs = layout.done, layout.checksums, layout.features_attrs
        self.lazy = layout.lazy
        names = list(MAPPED)
        if self.features_attrs is not None:
            names += [FEATURES_DATASET, FEATURES_DONE, FEATURES_CHECKSUM]
        if self.lazy:  # filled while it is read: flags and checksums are read from the file, not from `layout`
            names += [*LAZY_DATASETS, DONE_DATASET, CHECKSUM_DATASET]
        self.locations = {name: layout.locations[name] for name in names}
        self._memory, self._maps, self._pid = None, None, None
        if require_complete:
            self.check_complete()
        if in_memory:
            self._memory = {name: layout.memory[name] if name in layout.memory else np.array(self._map(name))
                            for name in names}
        else:
            scattered = [name for name, (offset, _, _) in self.locations.items() if offset is None]
            if scattered:
                raise RILTableError(
                    f"RIL table {self.path}: dataset {scattered[0]} is not stored contiguously (repacked or written "
                    "by another tool), so it cannot be mapped; load the table in memory (TRAINER.FDBPL.IN_MEMORY "
                    "True) or rebuild it with python -m ril precompute"
                )

    def check_complete(self):
        if self.lazy and not self.attrs["complete"]:
            filled = self.array(FILLED_DATASET)
            raise RILTableError(
                f"RIL table {self.path} is a lazy table with {int(np.count_nonzero(filled))} of {filled.size} regions "
                "filled: train with TRAINER.FDBPL.RIL_FILL True and its teacher (TRAINER.FDBPL.TEACHER_BACKBONE), "
                "which scores the regions a run needs, or fill it all with the python -m ril precompute command "
                "that made it, without --lazy"
            )
        if not (self.attrs["complete"] and self.done.all()):
            raise RILTableError(
                f"RIL table {self.path} is unfinished: {int(self.done.sum())} of {len(self.done)} images done. "
                "Resume it by re-running the same python -m ril precompute command (it continues where it "
                "stopped); an unfinished table is never used for training"
            )

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_maps"], state["_pid"] = None, None
        return state

    def _map(self, name):
        offset, shape, dtype = self.locations[name]
        return np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=shape)

    def _arrays(self):
        if self._memory is not None:
            return self._memory
        if self._pid != os.getpid():
            self._maps = {name: self._map(name) for name in self.locations}
            self._pid = os.getpid()
        return self._maps

    def array(self, name):
        """A whole dataset (memmap or in-memory array), e.g. for statistics over all regions."""
        return self._arrays()[name]

    def read(self, images, regions):
        """Rows of (image, region) pairs as arrays, unchecked: box (B, 4), flip, topk_index (B, K),
        topk_logprob, logsumexp, entropy (B,), teacher_top1 (B, T)."""
        arrays = self._arrays()
        images, regions = np.asarray(images, dtype=np.int64), np.asarray(regions, dtype=np.int64)
        return {short: np.asarray(arrays[name][images, regions]) for short, name in FIELDS.items()}

    def _image_rows(self, index):
        """(rows, size, problem): all rows of image `index` (REGION_DATASETS name -> (M, ...)), its size,
        and what is wrong with their checksum (None when they match)."""
        arrays = self._arrays()
        rows = {name: np.asarray(arrays[name][index]) for name in REGION_DATASETS}
        size = np.asarray(arrays["images/size"][index])
        stored = int(arrays[CHECKSUM_DATASET][index] if self.lazy else self.checksums[index])
        found = image_checksum(index, self.labels[index], size, rows)
        problem = None if found == stored else (
            f"the rows of image {index} ({self.image_paths[index]}) do not match their checksum "
            f"({CHECKSUM_DATASET} {stored:#010x}, the rows give {found:#010x})"
        )
        return rows, size, problem

    def image_rows(self, index):
        """All rows of image `index` and its size, checked: raises RILTableError naming the table and
        the image when they do not match the image's checksum."""
        rows, size, problem = self._image_rows(index)
        if problem:
            raise damaged(self.path, problem)
        return rows, size

    def read_image(self, index, regions):
        """Checked rows of image `index` at `regions`, keyed like `read`."""
        rows, _ = self.image_rows(index)
        regions = np.asarray(regions, dtype=np.int64)
        return {short: rows[name][regions] for short, name in FIELDS.items()}

    def image_done(self, index):
        """Whether image `index` is done, read from the file for a lazy table (which fills while it is read)."""
        return bool(self._arrays()[DONE_DATASET][index]) if self.lazy else bool(self.done[index])

    def read_regions(self, index, regions):
        """(rows keyed like `read`, filled (R,) bool) of image `index` at `regions`. Rows of a done image are
        checked against its checksum; in a lazy table's unfinished image, filled regions are checked against
        their own checksums, and unfilled ones give their box and flip (checked with the image's geometry)
        and zeros."""
        regions = np.asarray(regions, dtype=np.int64)
        if self.image_done(index):
            return self.read_image(index, regions), np.ones(len(regions), dtype=bool)
        if not self.lazy:
            raise RILTableError(f"RIL table {self.path}: image {index} ({self.image_paths[index]}) is not done")
        rows, filled, problem = self.unfinished_rows(index, regions)
        if problem:
            raise damaged(self.path, problem)
        return {short: rows[name] for short, name in FIELDS.items()}, filled

    def unfinished_rows(self, index, regions):
        """(rows REGION_DATASETS name -> (R, ...), filled (R,) bool, problem or None) of a lazy table's image
        that is not done. The filled flags are read first: a region is marked only after its row is stored."""
        arrays = self._arrays()
        filled = np.asarray(arrays[FILLED_DATASET][index, regions]).astype(bool)
        rows = {name: np.asarray(arrays[name][index, regions]) for name in REGION_DATASETS}
        size = np.asarray(arrays["images/size"][index])
        where = f"image {index} ({self.image_paths[index]})"
        found = region_checksums(index, regions[filled], size, {name: value[filled] for name, value in rows.items()})
        bad = np.flatnonzero(found != arrays[REGION_CHECKSUM][index, regions[filled]])
        if len(bad):
            region = int(regions[filled][bad[0]])
            return rows, filled, f"the row of {where}, region {region}, does not match its checksum ({REGION_CHECKSUM})"
        if not filled.all():  # the image's checksum still covers its geometry (every region is not filled yet)
            geometry = geometry_checksum(index, size, arrays["regions/box"][index], arrays["regions/flip"][index])
            if geometry != int(arrays[CHECKSUM_DATASET][index]):
                return rows, filled, (f"the size, boxes and flips of {where} do not match its geometry checksum "
                                      f"({CHECKSUM_DATASET})")
        return rows, filled, None

    def filled(self, images, regions):
        """(R,) bool: whether the teacher values of (images[j], regions[j]) are stored, read from the file."""
        images, regions = np.asarray(images, dtype=np.int64), np.asarray(regions, dtype=np.int64)
        if not self.lazy:
            return self.done[images].copy()
        arrays = self._arrays()
        return np.asarray(arrays[FILLED_DATASET][images, regions]).astype(bool) | np.asarray(
            arrays[DONE_DATASET][images]).astype(bool)

    def filled_regions(self):
        """(N, M) bool: the regions whose teacher values are stored (all of them in a table that is not lazy)."""
        if not self.lazy:
            return np.broadcast_to(self.done[:, None], (self.num_images, self.num_regions))
        done = np.asarray(self.array(DONE_DATASET)).astype(bool)
        return np.asarray(self.array(FILLED_DATASET)).astype(bool) | done[:, None]

    def image_problems(self, index, features=False):
        """What is wrong with image `index`'s rows (checksum, then values) or its student features; of a lazy
        table's unfinished image, its filled regions and its geometry."""
        if features:
            features, problem = self._features(index, np.arange(self.num_regions))
            if problem is None and not np.isfinite(features).all():
                problem = f"image {index} ({self.image_paths[index]}): non-finite student features"
            return [problem] if problem else []
        if self.lazy and not self.image_done(index):
            rows, filled, problem = self.unfinished_rows(index, np.arange(self.num_regions))
            if problem:
                return [problem]
            rows = {name: value[filled] for name, value in rows.items()}
            size = np.asarray(self.array("images/size")[index])
        else:
            rows, size, problem = self._image_rows(index)
            if problem:
                return [problem]
        problems = value_problems({name: value[None] for name, value in rows.items()}, size[None], self.num_classes)
        return [f"image {index} ({self.image_paths[index]}): {problem}" for problem in problems]

    def has_features(self):
        return self.features_attrs is not None and bool(self._arrays()[FEATURES_DONE].all())

    def require_features(self):
        if not self.has_features():
            raise RILTableError(
                f"RIL table {self.path} has no complete student feature cache; add one with "
                f"python -m ril add-features --table {self.path} --model <student>"
            )

    def _features(self, index, regions):
        """(features (R, D) float16 of image `index` at `regions`, what is wrong with their checksums or None)."""
        arrays = self._arrays()
        features = np.asarray(arrays[FEATURES_DATASET][index, regions])
        bad = np.flatnonzero(features_checksums(index, regions, features) != arrays[FEATURES_CHECKSUM][index, regions])
        if not len(bad):
            return features, None
        return features, (f"the student features of image {index} ({self.image_paths[index]}), region "
                          f"{int(regions[bad[0]])}, do not match their checksum ({FEATURES_CHECKSUM})")

    def read_features(self, index, regions):
        """Checked student features (R, D) float16 of image `index` at `regions`."""
        self.require_features()
        features, problem = self._features(index, np.asarray(regions, dtype=np.int64))
        if problem:
            raise damaged(self.path, problem)
        return features



def top_probabilities(topk_logprob):
    """(top-K probabilities p_k = exp(logprob_k) (B, K), residual mass r = 1 - sum_k p_k (B,)) float32;
    r is clamped at 0, which it can only cross by fp16 rounding."""
    top_prob = torch.exp(torch.as_tensor(topk_logprob).float())
    return top_prob, (1.0 - top_prob.sum(dim=1)).clamp(min=0.0)


def densify(topk_index, topk_logprob, num_classes, mode="smooth"):
    """Dense teacher distributions (B, C) float32 from top-K rows (K <= C); finite, >= 0, rows sum to 1.

    smooth: top-K keep exp(logprob), the teacher's full-softmax values, and the residual mass is
    spread evenly over the other classes (if it is below PROB_FLOOR per class, those get the floor
    and the row is renormalised); every entry is > 0. renorm: the top-K rescaled to sum to 1 and
    exactly 0 elsewhere, so the teacher's support is its top-K, on which `losses.positive_kd_loss`
    computes both KL halves (a floor would make the reverse KL mostly log(1 / floor) of the student's
    mass outside the top-K).
    """
    if mode not in DENSIFY_MODES:
        raise ValueError(f"densify mode must be one of {DENSIFY_MODES}; got {mode!r}")
    index = torch.as_tensor(np.asarray(topk_index, dtype=np.int64))
    top_prob, residual = top_probabilities(topk_logprob)
    others = num_classes - index.shape[1]
    if mode == "renorm":
        top_prob = top_prob / top_prob.sum(dim=1, keepdim=True)
        return torch.zeros(index.shape[0], num_classes).scatter(1, index, top_prob)
    if others == 0:
        top_prob = top_prob / top_prob.sum(dim=1, keepdim=True)
        rest = torch.full((index.shape[0],), PROB_FLOOR)
    else:
        rest = residual / others
    floored = rest < PROB_FLOOR
    dense = rest.clamp(min=PROB_FLOOR)[:, None].repeat(1, num_classes).scatter(1, index, top_prob)
    if floored.any():
        dense[floored] = dense[floored] / dense[floored].sum(dim=1, keepdim=True)
    return dense
