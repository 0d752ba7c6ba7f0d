"""Writing RIL tables: creation, rows and completion. Every write error raises, and nothing is marked
done or complete before it is on disk.

HDF5 buffers small dataset writes, and when their flush fails (a full disk) while a dataset is
closed, h5py can only print "Exception ignored": the table then claimed to be complete with rows
of zeros. So HDF5 writes only the structure (at creation) and the `complete` flag, where its
errors do raise; every row goes to its dataset's offset with `os.pwrite`. The file is
preallocated at creation (a full disk fails then, before any teacher work); an image's rows and
checksum reach the disk (fdatasync) before its done flag is written; a table is marked complete
only after every row, read back from the disk, matches its checksum and passes the value checks.
"""
import contextlib
import errno
import fcntl
import os
import re

import h5py
import numpy as np

from .format import (
    CHECKSUM_DATASET, DONE_DATASET, FEATURES_CHECKSUM, FEATURES_DATASET, FEATURES_DONE, FILLED_DATASET,
    GEOMETRY_DATASETS, LAZY_DATASETS, PATH_DATASET, REGION_CHECKSUM, REGION_DATASETS, RILTableError, encode_attr,
    open_table_file, path_dtype, read_layout, stamped, table_schema,
)
from .integrity import features_checksums, geometry_checksum, image_checksum, region_checksums, value_problems
from .probe import load_layout

HDF5_ERRNO = re.compile(r"errno = (\d+)")  # h5py puts the C errno in its message text
ANOTHER_OUT = "or choose another --out"
ADVICE = {
    errno.ENOSPC: f"free space on that disk, {ANOTHER_OUT}",
    errno.EDQUOT: f"free space within your disk quota, {ANOTHER_OUT}",
    errno.EFBIG: f"the table is larger than the file size limit (ulimit -f) or the file system allows; {ANOTHER_OUT}",
    errno.EROFS: f"that file system is read-only; {ANOTHER_OUT}",
    errno.EACCES: f"you may not write there; {ANOTHER_OUT}",
    errno.EPERM: f"you may not write there; {ANOTHER_OUT}",
    errno.EEXIST: f"a part of the path is a file, not a folder; {ANOTHER_OUT}",
    errno.ENOTDIR: f"a part of the path is a file, not a folder; {ANOTHER_OUT}",
    errno.EISDIR: f"that path is a folder; give --out a file name such as table.h5, {ANOTHER_OUT}",
}
RESUMABLE = "the images already done are kept, so rerunning the same command resumes"


class TableWriteError(OSError):
    """A table file that could not be written; the message names the file, the reason and what to do."""


def write_failure(path, action, error, note=""):
    """TableWriteError for an error while doing `action` to `path` (an OSError, or an h5py error
    whose text carries the errno)."""
    code = error.errno if isinstance(error, OSError) and error.errno else None
    if code is None:
        match = HDF5_ERRNO.search(str(error))
        code = int(match.group(1)) if match else None
    reason = os.strerror(code) if code else str(error)
    advice = ADVICE.get(code, "check the disk and the path, then rerun the same command")
    return TableWriteError(f"cannot {action} RIL table {path}: {reason}; {advice}" + (f"; {note}" if note else ""))


@contextlib.contextmanager
def hdf5_writes(path, action):
    """h5py's errors while writing `path` (OSError, or RuntimeError from a failed close) as TableWriteError."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        raise write_failure(path, action, error) from error


class RawFile:
    """An existing file opened for in-place writes, locked against other writers (as HDF5 locks)."""

    def __init__(self, path):
        self.path = path
        self.fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as error:
            os.close(self.fd)
            raise RILTableError(
                f"RIL table {path} is open for writing by another process (is a precompute still running?)"
            ) from error

    def write(self, offset, array):
        data = memoryview(np.ascontiguousarray(array)).cast("B")
        while len(data):  # pwrite may write less than asked
            written = os.pwrite(self.fd, data, offset)
            data, offset = data[written:], offset + written

    def sync(self):
        (getattr(os, "fdatasync", None) or os.fsync)(self.fd)  # fdatasync: the file size never changes

    def preallocate(self):
        """Reserve the blocks of the whole (sparse) file now, so a full disk fails here."""
        try:
            os.posix_fallocate(self.fd, 0, os.fstat(self.fd).st_size)
        except OSError as error:
            if error.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # no preallocation there; writes still raise
                raise

    def close(self, sync=True):
        try:
            if sync:
                self.sync()
        finally:
            os.close(self.fd)


def sync_directory(path):
    """fsync the folder holding `path`, so a rename into it survives a crash."""
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(temporary, path):
    """Rename `temporary` to `path` and sync the folder, so the new name survives a crash."""
    try:
        os.replace(temporary, path)
        sync_directory(path)
    except OSError as error:
        raise write_failure(path, "rename a finished file to", error) from error


def check_output_path(path):
    """Create `path`'s folder if missing and check that a table can be written there (before any work)."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as error:
        raise write_failure(path, "create the folder of", error) from error
    if os.path.isdir(path):
        raise write_failure(path, "create", OSError(errno.EISDIR, os.strerror(errno.EISDIR)))
    if not os.access(directory, os.W_OK | os.X_OK):
        raise write_failure(path, "create", OSError(errno.EACCES, os.strerror(errno.EACCES)))


def create_contiguous(group, name, shape, dtype):
    """A contiguous dataset whose storage is allocated now, at an offset that never changes."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return group.create_dataset(name, shape=shape, dtype=dtype, dcpl=dcpl, fill_time="never")


def _write_structure(temporary, path, attrs, image_paths, features, lazy):
    """The HDF5 structure of an empty table `path`, written to `temporary`; returns {name: (offset, dtype)}
    of its datasets."""
    num_images, num_regions = len(image_paths), attrs["num_regions"]
    with hdf5_writes(path, "create"), h5py.File(temporary, "w") as handle:
        for name, value in stamped(attrs).items():
            handle.attrs[name] = encode_attr(name, value)
        create_contiguous(handle, PATH_DATASET, (num_images,), path_dtype(image_paths))
        for name, (shape, dtype) in table_schema(attrs).items():
            create_contiguous(handle, name, shape, dtype)
        if lazy:
            for name, dtype in zip(LAZY_DATASETS, ("uint8", "uint32")):
                create_contiguous(handle, name, (num_images, num_regions), dtype)
        if features is not None:
            dim, feature_attrs = features
            cache = create_contiguous(handle, FEATURES_DATASET, (num_images, num_regions, dim), "float16")
            for name, value in stamped(feature_attrs).items():
                cache.attrs[name] = encode_attr(name, value)
            create_contiguous(handle, FEATURES_DONE, (num_images,), "uint8")
            create_contiguous(handle, FEATURES_CHECKSUM, (num_images, num_regions), "uint32")
        return {name: (dataset.id.get_offset(), dataset.dtype) for name, dataset in _datasets(handle)}


def _datasets(handle):
    """(name, dataset) of every dataset in an open file, by full path without the leading slash."""
    found = []
    handle.visititems(lambda name, item: found.append((name, item)) if isinstance(item, h5py.Dataset) else None)
    return found


def fill_new_file(temporary, path, write_data, preallocate=True):
    """Preallocate a freshly built (sparse) file, unless told not to, let `write_data(raw)` write into it,
    and sync it.

    Fresh storage reads as zeros, so done flags start at 0 without being written.
    """
    try:
        raw = RawFile(temporary)
        try:
            if preallocate:
                raw.preallocate()
            write_data(raw)
        finally:
            raw.close()
    except OSError as error:
        size = os.path.getsize(temporary) if os.path.exists(temporary) else 0
        raise write_failure(path, "create", error, f"it needs {size / 2**20:.1f} MiB") from error


def create_table(path, attrs, image_paths, labels, features=None, geometry=None, sparse=False):
    """Write an empty, unfinished table at `path`; built under a temporary name (removed on failure)
    and renamed once its paths and labels read back correctly. `features`: (D, attributes) of an
    empty student feature cache to include. `geometry`: makes a lazy table; an iterable of
    (index, size (2,), boxes (M, 4), flips (M,)) covering every image, written with the image's
    geometry checksum (integrity.geometry_checksum). `sparse`: no preallocation (a shard writes only
    its own images' rows, so its file takes only their blocks)."""
    check_output_path(path)
    temporary = f"{path}.creating-{os.getpid()}"
    try:
        locations = _write_structure(temporary, path, attrs, image_paths, features, lazy=geometry is not None)

        def put(raw, name, index, values):
            offset, dtype = locations[name]
            stored = np.ascontiguousarray(values, dtype=dtype)
            raw.write(offset + index * stored.nbytes, stored)

        def write_data(raw):
            put(raw, PATH_DATASET, 0, [image.encode("utf-8") for image in image_paths])
            put(raw, "images/label", 0, labels)
            for index, size, boxes, flips in geometry or ():
                for name, values in (("images/size", size), ("regions/box", boxes), ("regions/flip", flips),
                                     (CHECKSUM_DATASET, geometry_checksum(index, size, boxes, flips))):
                    put(raw, name, index, values)

        fill_new_file(temporary, path, write_data, preallocate=not sparse)
        with open_table_file(temporary) as handle:  # read back: paths and labels must match their hash
            read_layout(handle, temporary)
        replace_durably(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


class TableWriter:
    """Writes finished images into a table's preallocated storage; a context manager.

    `sync_each_image`: sync an image's rows and checksum to disk before writing its done flag, so
    a crash never leaves a done image with rows that did not reach the disk (precompute,
    add-features); a merge builds a temporary file and syncs once at the end instead.
    """

    def __init__(self, path, layout=None, sync_each_image=True):
        self.path = path
        self.layout = layout or load_layout(path)
        scattered = [name for name, (offset, _, _) in self.layout.locations.items() if offset is None]
        if scattered:
            raise RILTableError(
                f"RIL table {path}: datasets {scattered} are not stored contiguously (repacked by another tool), "
                "so rows cannot be written in place; rebuild it with python -m ril precompute --overwrite"
            )
        self.sync_each_image = sync_each_image
        self.num_classes = len(self.layout.attrs["classnames"])
        self.raw = RawFile(path)

    def __enter__(self):
        return self

    def __exit__(self, error_type, error, traceback):
        try:
            self.raw.close(sync=error_type is None)  # after a failed write a sync would only fail again
        except OSError as failure:
            raise write_failure(self.path, "sync", failure, RESUMABLE) from failure

    def _stored(self, name, array):
        offset, shape, dtype = self.layout.locations[name]
        stored = np.asarray(array, dtype=dtype, order="C")
        if stored.shape != shape[1:]:
            raise ValueError(f"{name}: rows of shape {stored.shape}, the table stores {shape[1:]}")
        return stored

    def _put(self, name, index, stored):
        self.raw.write(self.layout.locations[name][0] + index * stored.nbytes, stored)

    def _write_then_mark(self, index, data, done_name):
        """Write `data` (name -> stored rows), sync, then set the done flag `done_name`."""
        try:
            for name, stored in data.items():
                self._put(name, index, stored)
            if self.sync_each_image:
                self.raw.sync()
            self._put(done_name, index, np.uint8(1))
        except OSError as error:
            what = f"write image {index} ({self.layout.image_paths[index]}) to"
            raise write_failure(self.path, what, error, RESUMABLE) from error

    def _refuse(self, index, problems):
        return RILTableError(
            f"refusing to write image {index} ({self.layout.image_paths[index]}) to RIL table {self.path}: "
            f"{'; '.join(problems)}; nothing of this image was written. NaN or Inf usually mean fp16 overflow "
            "in the model on its device (try --device cpu)"
        )

    def _check_values(self, index, size, data):
        """Refuse rows (REGION_DATASETS name -> (n, ...) stored) that fail the value checks."""
        problems = value_problems({name: value[None] for name, value in data.items()}, size[None], self.num_classes)
        if problems:
            raise self._refuse(index, problems)

    def write_image(self, index, size, rows):
        """Store one image's rows (REGION_DATASETS name -> (M, ...)) and its checksum, then mark it done."""
        data = {name: self._stored(name, rows[name]) for name in REGION_DATASETS}
        size = self._stored("images/size", size)
        self._check_values(index, size, data)
        checksum = image_checksum(index, self.layout.labels[index], size, data)
        data.update({"images/size": size, CHECKSUM_DATASET: self._stored(CHECKSUM_DATASET, checksum)})
        self._write_then_mark(index, data, DONE_DATASET)

    def write_regions(self, index, regions, size, rows):
        """Store the teacher values of some regions of a lazy table's image and their checksums, unmarked.

        `rows`: REGION_DATASETS name -> (R, ...) at `regions` (R,), the box and flip being the stored ones
        (they are not rewritten). The caller syncs (`sync`) before `mark_filled`, so a region is never
        marked with rows that did not reach the disk.
        """
        data = {name: np.asarray(rows[name], dtype=self.layout.locations[name][2]) for name in REGION_DATASETS}
        size = self._stored("images/size", size)
        self._check_values(index, size, data)
        checksums = region_checksums(index, regions, size, data)
        num_regions = self.layout.attrs["num_regions"]
        try:
            for position, region in enumerate(regions):
                slot = index * num_regions + int(region)
                for name, stored in data.items():
                    if name not in GEOMETRY_DATASETS:
                        self._put(name, slot, stored[position])
                self._put(REGION_CHECKSUM, slot, checksums[position])
        except OSError as error:
            raise write_failure(self.path, f"write regions of image {index} to", error, RESUMABLE) from error

    def mark_filled(self, index, regions):
        num_regions = self.layout.attrs["num_regions"]
        try:
            for region in regions:
                self._put(FILLED_DATASET, index * num_regions + int(region), np.uint8(1))
        except OSError as error:
            raise write_failure(self.path, f"mark regions of image {index} in", error, RESUMABLE) from error

    def finish_image(self, index, size, rows):
        """Mark done a lazy table's image whose regions are all filled: its checksum becomes that of its
        rows (REGION_DATASETS name -> (M, ...), read back and checked region by region by the caller)."""
        checksum = image_checksum(index, self.layout.labels[index], self._stored("images/size", size), rows)
        self._write_then_mark(index, {CHECKSUM_DATASET: self._stored(CHECKSUM_DATASET, checksum)}, DONE_DATASET)

    def sync(self):
        try:
            self.raw.sync()
        except OSError as error:
            raise write_failure(self.path, "sync", error, RESUMABLE) from error

    def write_features(self, index, features):
        """Store one image's student features (M, D) and their checksum, then mark them done."""
        stored = self._stored(FEATURES_DATASET, features)
        if not np.isfinite(stored).all():
            raise self._refuse(index, ["non-finite student features"])
        checksum = self._stored(FEATURES_CHECKSUM, features_checksums(index, np.arange(len(stored)), stored))
        self._write_then_mark(index, {FEATURES_DATASET: stored, FEATURES_CHECKSUM: checksum}, FEATURES_DONE)


def _drop_cached_pages(path):
    """Ask the kernel to forget the file's cached pages, so a read-back reads the disk."""
    if hasattr(os, "posix_fadvise"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def read_back(path, images=None, features=False):
    """Re-read rows of `path` from disk (of `images`, default all); raise RILTableError unless each of
    those images is done and matches its checksum and the value checks (or its feature checksum)."""
    from .reader import RILTable  # the reader builds on this module's neighbours, not the reverse

    _drop_cached_pages(path)
    table = RILTable(path, require_complete=False)
    images = np.arange(table.num_images) if images is None else np.asarray(images)
    done = table.array(FEATURES_DONE).astype(bool) if features else table.done
    problems = [f"{int((~done[images]).sum())} images are not done"] if not done[images].all() else []
    for index in images:
        problems += table.image_problems(int(index), features=features)
        if len(problems) >= 5:
            break
    if problems:
        raise RILTableError(
            f"RIL table {path} failed its read-back check, so it was not finished: {'; '.join(problems)}. "
            "The disk or file system lost or changed writes; delete the file and rebuild it on a healthy disk"
        )


def complete_table(path, images=None):
    """Mark a table complete once `images` (default all) read back from disk passed their checks
    (a torchrun shard: its own images)."""
    read_back(path, images)
    with hdf5_writes(path, "mark complete"):
        with h5py.File(path, "r+") as handle:
            handle.attrs["complete"] = True
            handle.flush()
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if not load_layout(path).attrs["complete"]:
        raise RILTableError(f"RIL table {path} did not keep its complete flag; the disk lost a write, rebuild it")
