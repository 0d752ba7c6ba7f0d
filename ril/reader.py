"""Read an RIL table: random access to (image, region) rows, dense soft labels, information weights.

On disk, each dataset is read through a `numpy.memmap` at its file offset (the format keeps
datasets contiguous), opened lazily in each process: a table object can be handed to DataLoader
workers (fork or spawn) and no file handle is ever shared across a fork. `in_memory=True`
loads every array once instead (any layout).
"""
import os

import numpy as np
import torch

from .format import (
    FEATURES_DATASET, FEATURES_DONE, PATH_DATASET, REGION_DATASETS, RILTableError, check_fingerprint,
    open_table_file, validate_structure,
)

DENSIFY_MODES = ("smooth", "renorm")
PROB_FLOOR = 1e-8  # smooth: smallest probability given to a class outside the top-K
FIELDS = {name.split("/")[1]: name for name in REGION_DATASETS}  # short name -> dataset


def _location(dataset, path):
    offset = dataset.id.get_offset()
    if offset is None:
        raise RILTableError(
            f"RIL table {path}: dataset {dataset.name} is not stored contiguously (repacked or written by "
            "another tool), so it cannot be mapped; load the table in memory (TRAINER.FDBPL.IN_MEMORY True) "
            "or rebuild it with python -m ril precompute"
        )
    end = offset + dataset.dtype.itemsize * int(np.prod(dataset.shape))
    if end > os.path.getsize(path):
        raise RILTableError(f"RIL table {path} is truncated: dataset {dataset.name} ends past the end of the file")
    return offset, dataset.shape, dataset.dtype


class RILTable:
    """A table opened for reading. `attrs` holds the root attributes (the fingerprint and settings).

    Args:
        in_memory: load all arrays now instead of mapping the file.
        require_complete: refuse an unfinished table (what training needs); False for inspection.
    """

    def __init__(self, path, in_memory=False, require_complete=True):
        self.path = os.fspath(path)
        with open_table_file(self.path) as handle:
            self.attrs = validate_structure(handle, self.path)
            self.image_paths = handle[PATH_DATASET].asstr()[()].tolist()
            self.labels = handle["images/label"][()].astype(np.int64)
            self.done = handle["progress/done"][()].astype(bool)
            if require_complete:
                self.check_complete()
            names = list(REGION_DATASETS) + ["images/size"]
            self.features_attrs = None
            if FEATURES_DATASET in handle:
                self.features_attrs = dict(handle[FEATURES_DATASET].attrs)
                names += [FEATURES_DATASET, FEATURES_DONE]
            if in_memory:
                self._memory = {name: handle[name][()] for name in names}
            else:
                self._memory = None
                self._locations = {name: _location(handle[name], self.path) for name in names}
        self._maps, self._pid = None, None

    def check_complete(self):
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

    def _arrays(self):
        if self._memory is not None:
            return self._memory
        if self._pid != os.getpid():
            self._maps = {
                name: np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=shape)
                for name, (offset, shape, dtype) in self._locations.items()
            }
            self._pid = os.getpid()
        return self._maps

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

    def array(self, name):
        """A whole dataset (memmap or in-memory array), e.g. for statistics over all regions."""
        return self._arrays()[name]

    def read(self, images, regions):
        """Rows of (image, region) pairs as arrays: box (B, 4), flip, topk_index (B, K), topk_logit,
        logsumexp, entropy (B,)."""
        arrays = self._arrays()
        images, regions = np.asarray(images, dtype=np.int64), np.asarray(regions, dtype=np.int64)
        return {short: np.asarray(arrays[name][images, regions]) for short, name in FIELDS.items()}

    def has_features(self):
        return self.features_attrs is not None and bool(self._arrays()[FEATURES_DONE].all())

    def require_features(self):
        if not self.has_features():
            raise RILTableError(
                f"RIL table {self.path} has no complete student feature cache; add one with "
                f"python -m ril add-features --table {self.path} --model <student>"
            )

    def read_features(self, images, regions):
        """Stored student image features (B, D) float16 of (image, region) pairs."""
        self.require_features()
        return np.asarray(self._arrays()[FEATURES_DATASET][np.asarray(images), np.asarray(regions)])

    def check_fingerprint(self, expected):
        """Refuse a table built for another run (see `format.run_fingerprint`)."""
        check_fingerprint(self.attrs, expected, self.path)


def densify(topk_index, topk_logit, logsumexp, num_classes, mode="smooth"):
    """Dense teacher distributions (B, C) float32 from top-K rows (K <= C); finite, >= 0, rows sum to 1.

    smooth: top-K keep exp(z - lse), the teacher's exact full-softmax values, and the residual mass
    is spread evenly over the other classes (if it is below PROB_FLOOR per class, those get the
    floor and the row is renormalised); every entry is > 0. renorm: the top-K rescaled to sum to 1
    and exactly 0 elsewhere, so the teacher's support is its top-K, on which `losses.positive_kd_loss`
    computes both KL halves (a floor would make the reverse KL mostly log(1 / floor) of the student's
    mass outside the top-K).
    """
    if mode not in DENSIFY_MODES:
        raise ValueError(f"densify mode must be one of {DENSIFY_MODES}; got {mode!r}")
    index = torch.as_tensor(np.asarray(topk_index, dtype=np.int64))
    top_prob = torch.exp(torch.as_tensor(topk_logit).float() - torch.as_tensor(logsumexp).float()[:, None])
    others = num_classes - index.shape[1]
    if mode == "renorm":
        top_prob = top_prob / top_prob.sum(dim=1, keepdim=True)
        return torch.zeros(index.shape[0], num_classes).scatter(1, index, top_prob)
    if others == 0:
        top_prob = top_prob / top_prob.sum(dim=1, keepdim=True)
        rest = torch.full((index.shape[0],), PROB_FLOOR)
    else:
        rest = (1.0 - top_prob.sum(dim=1)) / others
    floored = rest < PROB_FLOOR
    dense = rest.clamp(min=PROB_FLOOR)[:, None].repeat(1, num_classes).scatter(1, index, top_prob)
    if floored.any():
        dense[floored] = dense[floored] / dense[floored].sum(dim=1, keepdim=True)
    return dense

