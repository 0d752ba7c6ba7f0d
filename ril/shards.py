"""Tables in shards, read as one table through a small manifest.

Shard I of S (`precompute --shard I/S`, one process each, on any machine; or rank I of a torchrun with
`--keep-shards`) holds images I, I+S, I+2S, ... of the request, in a file laid out like the whole
table (global image indices) whose other images' rows are never written: without preallocation the
file is sparse and takes about 1/S of the whole table on disk. Each shard resumes on its own.
The manifest `OUT.shards.json` names the S shard files (relative to itself). `open_table` reads a
manifest as a `ShardedTable`: every shard must exist, belong to the same request (fingerprint and
settings), be shard I of S at position I and, for training, be complete; image i is read from shard
i % S, checked against that shard's checksums as a one-file table is.
"""
import json
import os

import numpy as np

from .format import FINGERPRINT_FIELDS, SETTING_FIELDS, RILTableError, compare_settings, shard_path
from .reader import RILTable, TableView

MANIFEST_FORMAT = "fdbpl-ril-shards"
MANIFEST_SUFFIX = ".shards.json"


def manifest_path(out):
    return f"{out}{MANIFEST_SUFFIX}"


def is_manifest(path):
    return os.fspath(path).endswith(MANIFEST_SUFFIX)


def write_manifest(out, shard_count):
    """Write (atomically) the manifest of the S shards of `out`; every shard's process may write it."""
    path = manifest_path(out)
    names = [os.path.basename(shard_path(out, shard, shard_count)) for shard in range(shard_count)]
    temporary = f"{path}.writing-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump({"format": MANIFEST_FORMAT, "shard_count": shard_count, "shards": names}, handle, indent=1)
        handle.write("\n")
    os.replace(temporary, path)
    return path


def read_manifest(path):
    """Absolute paths of the shards a manifest lists, in order."""
    try:
        with open(path, encoding="utf-8") as handle:
            manifest = json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"RIL shard manifest {path} does not exist; python -m ril precompute --shard I/S "
                                "--out TABLE writes TABLE.shards.json") from None
    except (OSError, ValueError) as error:
        raise RILTableError(f"RIL shard manifest {path} cannot be read as JSON ({error})") from error
    shards = manifest.get("shards") if isinstance(manifest, dict) else None
    if manifest.get("format") != MANIFEST_FORMAT or not isinstance(shards, list) or not shards \
            or manifest.get("shard_count") != len(shards):
        raise RILTableError(f"{path} is not an RIL shard manifest (format {MANIFEST_FORMAT!r}, shard_count and "
                            "the list of shards)")
    folder = os.path.dirname(os.path.abspath(path))
    return [os.path.join(folder, name) for name in shards]


class ShardedTable(TableView):
    """The shards of a manifest read as one table: the reading side of `RILTable` (no feature cache, not lazy)."""

    def __init__(self, path, in_memory=False, require_complete=True):
        self.path = os.fspath(path)
        paths = read_manifest(self.path)
        for shard in paths:
            if not os.path.isfile(shard):
                raise FileNotFoundError(f"RIL shard {shard} (listed in {self.path}) does not exist: build it with "
                                        f"python -m ril precompute --shard {paths.index(shard)}/{len(paths)} ...")
        self.shards = [RILTable(shard, in_memory=in_memory, require_complete=False) for shard in paths]
        self._check_shards()
        first = self.shards[0]
        self.image_paths, self.labels = first.image_paths, first.labels
        count = len(self.shards)
        self.done = np.zeros(first.num_images, dtype=bool)
        for position, shard in enumerate(self.shards):
            self.done[position::count] = shard.done[position::count]
        complete = all(shard.attrs["complete"] for shard in self.shards) and bool(self.done.all())
        self.attrs = dict(first.attrs, complete=complete, shard_rank=0, shard_count=1)
        self.lazy, self.features_attrs = False, None
        if require_complete:
            self.check_complete()

    def _check_shards(self):
        fields = [name for name, _ in FINGERPRINT_FIELDS] + list(SETTING_FIELDS)
        first, count = self.shards[0], len(self.shards)
        for position, shard in enumerate(self.shards):
            compare_settings(first.attrs, shard.attrs, first.path, shard.path, fields)
            if (shard.attrs["shard_rank"], shard.attrs["shard_count"]) != (position, count):
                raise RILTableError(
                    f"{shard.path} is shard {shard.attrs['shard_rank']} of {shard.attrs['shard_count']}, but "
                    f"{self.path} lists it as shard {position} of {count}"
                )
            if shard.lazy:
                raise RILTableError(f"{shard.path} is a lazy table; shards are precomputed tables")

    def check_complete(self):
        unfinished = [f"{shard.path} ({int(shard.done[position::len(self.shards)].sum())} of "
                      f"{len(shard.done[position::len(self.shards)])} images)"
                      for position, shard in enumerate(self.shards) if not shard.attrs["complete"]]
        if unfinished:
            raise RILTableError(
                f"RIL table {self.path} has unfinished shards: {', '.join(unfinished)}. Resume each by re-running "
                "its python -m ril precompute --shard I/S command; an unfinished table is never used for training"
            )

    def shard_of(self, index):
        return self.shards[int(index) % len(self.shards)]

    def array(self, name):
        """A whole dataset assembled from the shards (each image's rows from its own shard), in memory."""
        count = len(self.shards)
        first = np.asarray(self.shards[0].array(name))
        whole = np.empty_like(first)
        for position, shard in enumerate(self.shards):
            whole[position::count] = np.asarray(shard.array(name)[position::count])
        return whole

    def read(self, images, regions):
        """Unchecked rows of (image, region) pairs, as `RILTable.read`."""
        images, regions = np.asarray(images, dtype=np.int64), np.asarray(regions, dtype=np.int64)
        rows = None
        for position, shard in enumerate(self.shards):
            mine = images % len(self.shards) == position
            if not mine.any():
                continue
            part = shard.read(images[mine], regions[mine])
            if rows is None:
                rows = {name: np.empty((len(images), *value.shape[1:]), dtype=value.dtype)
                        for name, value in part.items()}
            for name, value in part.items():
                rows[name][mine] = value
        return rows

    def image_rows(self, index):
        return self.shard_of(index).image_rows(index)

    def read_image(self, index, regions):
        return self.shard_of(index).read_image(index, regions)

    def read_regions(self, index, regions):
        return self.shard_of(index).read_regions(index, regions)

    def image_done(self, index):
        return bool(self.done[index])

    def image_problems(self, index, features=False):
        return self.shard_of(index).image_problems(index, features)

    def filled(self, images, regions):
        return self.done[np.asarray(images, dtype=np.int64)].copy()

    def filled_regions(self):
        return np.broadcast_to(self.done[:, None], (self.num_images, self.num_regions))

    def has_features(self):
        return False

    def require_features(self):
        raise RILTableError(f"RIL table {self.path} is sharded: a student feature cache needs a one-file table "
                            f"(python -m ril merge --out TABLE {' '.join(shard.path for shard in self.shards)})")


def open_table(path, in_memory=False, require_complete=True):
    """An `RILTable`, or a `ShardedTable` when `path` is a shard manifest (OUT.shards.json)."""
    kind = ShardedTable if is_manifest(path) else RILTable
    return kind(path, in_memory=in_memory, require_complete=require_complete)


def table_attrs(path):
    """Root attributes of a table or of the first shard of a manifest (the same request's), probed safely."""
    from .probe import load_layout

    return load_layout(read_manifest(path)[0] if is_manifest(path) else path).attrs
