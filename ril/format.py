"""The RIL table on disk (HDF5): schema, root attributes, fingerprint and validation.

Layout: every dataset is **contiguous, uncompressed and allocated when the file is created**
(no chunking), `images/path` included (fixed-length UTF-8, NUL-padded). Reason: rows are
ordered (image, region), so the R regions of one image visited by the region dataset lie
inside that image's block and a random (image, region) read is a few small reads at
computable offsets; the reader maps the bytes directly (`numpy.memmap` at each dataset's file
offset), which is much faster than one HDF5 call per field. Early allocation also means that
writing results only overwrites raw bytes in place and never changes HDF5 metadata (see
`writer`). Integrity: `images/checksum` holds a CRC32 of each image's rows (`integrity`), the
root attribute `attributes_sha256` a digest of every other attribute but `complete`, and
`image_list_sha256` covers the stored paths and labels.

A lazy table (`precompute --lazy`) also has `regions/filled` and `regions/checksum`: its boxes and
flips are written at creation, its teacher values region by region as training (or a later
precompute) scores them. Until every region of an image is filled, the image's `images/checksum`
covers its geometry (size, boxes, flips); once all are, it becomes the usual checksum of the image's
rows and the image is marked done (see `lazy`).
"""
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone

import h5py
import numpy as np

from trainers import __version__

FORMAT_NAME = "fdbpl-ril"
FORMAT_VERSION = 2  # 1 stored top-K logits; 2 stores top-K log-probabilities (refused: V1_REFUSAL)
SPLIT = "train"
NO_FEW_SHOT_SEED = -1  # the recorded seed of a table over all training images

# What the run must match: (attribute, the run's name for it in error messages), checked in order.
FINGERPRINT_FIELDS = (
    ("dataset", "DATASET.NAME"),
    ("split", "split"),
    ("num_shots", "DATASET.NUM_SHOTS"),
    ("seed", "SEED"),
    ("subsample", "DATASET.SUBSAMPLE_CLASSES"),
    ("classnames", "class names"),
    ("num_images", "number of training images"),
    ("image_list_sha256", "training image list (sha256 of relative path + label)"),
)
# How the table was made; a resumed run or a merged shard must agree on all of them. `teacher`,
# `teacher_sha256` and `logit_scale` are lists, one entry per teacher of the ensemble (`ensemble`:
# "none" for one teacher, else how their distributions are combined, see `teachers.ensemble_logits`).
SETTING_FIELDS = (
    "teacher", "teacher_sha256", "ensemble", "templates", "logit_scale", "num_regions", "topk", "output_size",
    "crop_scale", "crop_ratio", "flip_prob", "interpolation", "crop_seed",
)
JSON_FIELDS = ("classnames", "templates", "teacher", "teacher_sha256")
ENSEMBLE_MODES = ("mean-prob", "mean-logit")  # `--ensemble`, see teachers.ensemble_logits
BOOKKEEPING_FIELDS = (
    "format", "version", "created", "package_version", "complete", "shard_rank", "shard_count", "attributes_sha256",
)
MUTABLE_ATTRS = ("complete",)  # set after creation, so outside attributes_sha256
REQUIRED_ATTRS = (
    tuple(name for name, _ in FINGERPRINT_FIELDS) + ("classnames_sha256",) + SETTING_FIELDS + BOOKKEEPING_FIELDS
)

# Per-region results, (N, M, *tail): name -> (dtype, tail shape as a function of K and of T teachers).
REGION_DATASETS = {
    "regions/box": ("float32", lambda k, t: (4,)),
    "regions/flip": ("uint8", lambda k, t: ()),
    "regions/topk_index": ("uint16", lambda k, t: (k,)),
    "regions/topk_logprob": ("float16", lambda k, t: (k,)),  # z - lse <= 0: exp() is exact to fp16 near 1
    "regions/logsumexp": ("float32", lambda k, t: ()),
    "regions/entropy": ("float32", lambda k, t: ()),
    "regions/teacher_top1": ("uint16", lambda k, t: (t,)),  # each teacher's own top class
}
IMAGE_DATASETS = {
    "images/label": ("int32", ()), "images/size": ("int32", (2,)), "images/checksum": ("uint32", ()),
    "progress/done": ("uint8", ()),
}
PATH_DATASET = "images/path"
CHECKSUM_DATASET = "images/checksum"  # CRC32 of the image's rows, see integrity.image_checksum
DONE_DATASET = "progress/done"
FEATURES_DATASET = "student/features"  # optional (N, M, D) float16 student image features
FEATURES_DONE = "student/done"  # (N,) uint8, like progress/done
FEATURES_CHECKSUM = "student/checksum"  # (N, M) uint32, CRC32 of each region's features
FEATURE_DATASETS = (FEATURES_DATASET, FEATURES_DONE, FEATURES_CHECKSUM)
# Lazy tables (`lazy`): every region's box and flip from creation on, teacher values only where filled.
FILLED_DATASET = "regions/filled"  # (N, M) uint8: the region's teacher values are stored
REGION_CHECKSUM = "regions/checksum"  # (N, M) uint32: CRC32 of a filled region's row, see integrity.region_checksums
LAZY_DATASETS = (FILLED_DATASET, REGION_CHECKSUM)
GEOMETRY_DATASETS = ("regions/box", "regions/flip")  # written at creation; the others when a region is scored
REBUILD = "rebuild it with python -m ril precompute --overwrite"
V1_REFUSAL = (
    "it stores top-K logits in float16 (regions/topk_logit), whose rounding costs up to ~1% of a probability at "
    "logit scale 100, so its residual mass can be negative; this code reads version 2, which stores top-K "
    "log-probabilities (regions/topk_logprob) exact to float16 near 1. A version-1 table is not converted, as "
    "that would label its rounded values version 2: rebuild it with the same python -m ril precompute command "
    "and --overwrite"
)


class RILTableError(ValueError):
    """A table that cannot be used as asked: corrupt, unfinished, or built for something else."""

    def __init__(self, message):
        # Raised in a loader worker, it comes back rebuilt from "Caught ... Original Traceback ...
        # RILTableError: <message>": keep only the message.
        super().__init__(message.rsplit(f"{type(self).__name__}: ", 1)[-1].strip())


def schema(num_images, num_regions, topk, num_teachers):
    """Every numeric dataset of a table (all but `images/path`): name -> (shape, dtype)."""
    shapes = {name: ((num_images, *tail), dtype) for name, (dtype, tail) in IMAGE_DATASETS.items()}
    for name, (dtype, tail) in REGION_DATASETS.items():
        shapes[name] = ((num_images, num_regions, *tail(topk, num_teachers)), dtype)
    return shapes


def table_schema(attrs):
    """`schema` of a table from its root attributes."""
    return schema(attrs["num_images"], attrs["num_regions"], attrs["topk"], len(attrs["teacher"]))


def path_dtype(image_paths):
    """Fixed-length UTF-8 strings as long as the longest encoded path (stored in place, not in a heap)."""
    return h5py.string_dtype("utf-8", max([1] + [len(path.encode("utf-8")) for path in image_paths]))


def classnames_sha256(classnames):
    return hashlib.sha256(json.dumps(list(classnames)).encode("utf-8")).hexdigest()


def image_list_sha256(image_paths, labels):
    digest = hashlib.sha256()
    for path, label in zip(image_paths, labels):
        digest.update(f"{path}\t{int(label)}\n".encode("utf-8"))
    return digest.hexdigest()


def attributes_sha256(attrs):
    """Digest of decoded attributes (see `read_attrs`), all but MUTABLE_ATTRS and the digest itself."""
    kept = {name: value for name, value in attrs.items() if name not in (*MUTABLE_ATTRS, "attributes_sha256")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True).encode("utf-8")).hexdigest()


def expected_fingerprint(dataset, num_shots, seed, subsample, classnames, image_paths, labels, split=SPLIT):
    """The fingerprint fields of a run, from plain values (image paths relative to the root).

    `seed` is the few-shot seed: without few-shot sampling (num_shots < 1) no seed picks the
    images, so it is recorded as -1 and one table serves every seed.
    """
    return {
        "dataset": dataset, "split": split, "num_shots": int(num_shots),
        "seed": int(seed) if int(num_shots) >= 1 else NO_FEW_SHOT_SEED,
        "subsample": subsample, "classnames": list(classnames), "num_images": len(image_paths),
        "image_list_sha256": image_list_sha256(image_paths, labels),
    }


def training_images(dataset, root):
    """(relative paths, labels) of a Dassl dataset's `train_x`, in order; paths are portable."""
    root = os.path.abspath(os.path.expanduser(root))
    paths, labels = [], []
    for datum in dataset.train_x:
        relative = os.path.relpath(os.path.abspath(datum.impath), root)
        if relative.startswith(os.pardir):
            raise RILTableError(
                f"training image {datum.impath} is not under DATASET.ROOT={root}; RIL tables store paths "
                "relative to the dataset root, so the dataset must live under it"
            )
        paths.append(relative.replace(os.sep, "/"))
        labels.append(int(datum.label))
    return paths, labels


def run_fingerprint(cfg, dataset):
    """The fingerprint a run expects, from its config and its built Dassl dataset (no Dassl import)."""
    paths, labels = training_images(dataset, cfg.DATASET.ROOT)
    return expected_fingerprint(
        cfg.DATASET.NAME, cfg.DATASET.NUM_SHOTS, cfg.SEED, cfg.DATASET.SUBSAMPLE_CLASSES,
        dataset.classnames, paths, labels,
    )


def _describe_classnames(table_names, run_names):
    for position, (ours, theirs) in enumerate(zip(table_names, run_names)):
        if ours != theirs:
            return f"class {position} = {ours!r}", f"class {position} = {theirs!r}"
    return f"{len(table_names)} classes", f"{len(run_names)} classes"


def check_fingerprint(attrs, expected, table_path):
    """Raise RILTableError naming the first fingerprint field where the table and the run differ."""
    for field, run_name in FINGERPRINT_FIELDS:
        if field not in expected:
            continue
        ours, theirs = attrs[field], expected[field]
        if ours == theirs:
            continue
        if field == "classnames":
            ours, theirs = _describe_classnames(ours, theirs)
        raise RILTableError(
            f"RIL table {table_path} was built for {field}={ours} but this run uses {run_name}={theirs}; "
            "rebuild it with python -m ril precompute (with this run's --root, --dataset-config-file, "
            "--config-file and opts) or point TRAINER.FDBPL.RIL_TABLE to the right table"
        )


def compare_settings(attrs_a, attrs_b, name_a, name_b, fields):
    """Raise RILTableError naming the first of `fields` where two tables (or a table and a request) differ."""
    for field in fields:
        if attrs_a.get(field) != attrs_b.get(field):
            raise RILTableError(
                f"{name_a} has {field}={attrs_a.get(field)!r} but {name_b} has {field}={attrs_b.get(field)!r}"
            )


def make_attrs(fingerprint, settings, shard_rank=0, shard_count=1):
    """All root attributes of a new table, unfinished."""
    attrs = dict(fingerprint)
    attrs.update(settings)
    attrs.update(
        format=FORMAT_NAME, version=FORMAT_VERSION, classnames_sha256=classnames_sha256(fingerprint["classnames"]),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"), package_version=__version__,
        complete=False, shard_rank=shard_rank, shard_count=shard_count,
    )
    return attrs


def stamped(attrs):
    """`attrs` as stored, with `attributes_sha256` set to their digest."""
    stored = as_stored({name: value for name, value in attrs.items() if name != "attributes_sha256"})
    return dict(stored, attributes_sha256=attributes_sha256(stored))


def encode_attr(name, value):
    """An attribute value as h5py stores it (JSON for the JSON_FIELDS, arrays for lists)."""
    if name in JSON_FIELDS:
        return json.dumps(list(value))
    if isinstance(value, (list, tuple)):
        return np.asarray(value)
    return value


def _decode_attr(name, value):
    if name in JSON_FIELDS:
        return json.loads(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def read_attrs(attribute_set):
    """Attributes (of the root, or of any HDF5 object) as plain Python values (lists, ints, floats, str, bool)."""
    return {name: _decode_attr(name, value) for name, value in attribute_set.items()}


def as_stored(attrs):
    """`attrs` as they read back from a file (tuples become lists), for comparison with a file's."""
    return {name: _decode_attr(name, encode_attr(name, value)) for name, value in attrs.items()}


def open_table_file(path):
    """An h5py handle reading an existing table file, with errors that say what is wrong and what to do.

    Opening a file from elsewhere should go through `probe.load_layout`, which first reads its
    structure in a child process (damaged HDF5 metadata can crash or hang the reading process).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"RIL table {path} does not exist; build it with python -m ril precompute --out {path}")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        if "unable to lock file" in str(error).lower():
            raise RILTableError(
                f"RIL table {path} is open for writing by another process (is a precompute still running?): {error}"
            ) from error
        raise RILTableError(
            f"RIL table {path} cannot be read as HDF5 ({error}): the file is truncated or corrupt, e.g. an "
            f"interrupted copy. Copy it again, or {REBUILD}"
        ) from error


def damaged(path, what):
    """The error for a table whose bytes changed after they were written."""
    return RILTableError(
        f"RIL table {path} is damaged: {what}. A byte of the file changed after it was written (a failing disk "
        f"or an interrupted copy); copy it again from a good source, or {REBUILD}"
    )


def _checked_attrs(handle, path):
    try:
        attrs = read_attrs(handle.attrs)
    except (ValueError, TypeError) as error:  # e.g. a JSON attribute that no longer parses
        raise damaged(path, f"its root attributes cannot be decoded ({error})") from error
    if attrs.get("format") != FORMAT_NAME:
        raise RILTableError(
            f"{path} is not an RIL table (root attribute format={attrs.get('format')!r}, expected {FORMAT_NAME!r})"
        )
    if attrs.get("version") == 1:
        raise RILTableError(f"RIL table {path} has format version 1: {V1_REFUSAL}")
    if attrs.get("version") != FORMAT_VERSION:
        raise RILTableError(
            f"RIL table {path} has format version {attrs.get('version')}, this code reads version {FORMAT_VERSION}; "
            f"{REBUILD}"
        )
    if CHECKSUM_DATASET not in handle or "attributes_sha256" not in attrs:
        raise RILTableError(
            f"RIL table {path} was written before tables carried checksums (no {CHECKSUM_DATASET}), so its rows "
            f"cannot be checked; {REBUILD}"
        )
    missing = [name for name in REQUIRED_ATTRS if name not in attrs]
    if missing:
        raise damaged(path, f"it lacks root attributes {missing}")
    try:
        digest = attributes_sha256(attrs)
    except TypeError as error:  # a value json cannot encode: not one this code wrote
        raise damaged(path, f"a root attribute has an unexpected type ({error})") from error
    if digest != attrs["attributes_sha256"]:
        raise damaged(path, "its root attributes do not match their attributes_sha256")
    if not isinstance(attrs["complete"], bool):  # outside the digest; h5py reads a damaged bool type as an int
        raise damaged(path, f"its root attribute complete is {attrs['complete']!r}, not true or false")
    return attrs


def _check_dataset(handle, path, name, shape, dtype):
    if name not in handle:
        raise RILTableError(f"RIL table {path} lacks dataset {name}; {REBUILD}")
    found = handle[name]
    if found.shape != shape or found.dtype != np.dtype(dtype):
        raise RILTableError(
            f"RIL table {path}: dataset {name} has shape {found.shape} dtype {found.dtype}, "
            f"expected {shape} {dtype}; {REBUILD}"
        )


def validate_structure(handle, path):
    """Check format, version, attributes (and their digest), every dataset's shape and dtype; return the attributes."""
    attrs = _checked_attrs(handle, path)
    num_images = attrs["num_images"]
    if PATH_DATASET not in handle:
        raise RILTableError(f"RIL table {path} lacks dataset {PATH_DATASET}; {REBUILD}")
    paths = handle[PATH_DATASET]
    info = h5py.check_string_dtype(paths.dtype)
    if paths.shape != (num_images,) or info is None or info.encoding != "utf-8" or info.length is None:
        raise RILTableError(
            f"RIL table {path}: dataset {PATH_DATASET} has shape {paths.shape} dtype {paths.dtype}, expected "
            f"({num_images},) fixed-length UTF-8 strings; {REBUILD}"
        )
    for name, (shape, dtype) in table_schema(attrs).items():
        _check_dataset(handle, path, name, shape, dtype)
    return attrs


@dataclass
class TableLayout:
    """What readers and writers take from a table's HDF5 structure; `locations`: dataset name ->
    (file offset, or None when not contiguous, shape, dtype); `memory`: non-contiguous datasets, read
    when asked for in memory."""

    attrs: dict
    image_paths: list
    labels: np.ndarray
    done: np.ndarray
    checksums: np.ndarray
    features_attrs: dict
    locations: dict
    memory: dict
    lazy: bool = False


def dataset_location(dataset, path):
    offset = dataset.id.get_offset()
    end = (offset or 0) + dataset.dtype.itemsize * int(np.prod(dataset.shape))
    if offset is not None and end > os.path.getsize(path):
        raise RILTableError(
            f"RIL table {path} is truncated: dataset {dataset.name} ends past the end of the file. Copy it "
            f"again, or {REBUILD}"
        )
    return offset, dataset.shape, dataset.dtype


def _features_attrs(handle, path, shape_prefix):
    """The student feature cache's attributes (checked like the root's), or None without a cache."""
    if FEATURES_DATASET not in handle:
        return None
    features = handle[FEATURES_DATASET]
    attrs = read_attrs(features.attrs)
    fix = f"rebuild the cache with python -m ril add-features --table {path} --overwrite"
    if FEATURES_CHECKSUM not in handle or "attributes_sha256" not in attrs:
        raise RILTableError(f"RIL table {path} has a student feature cache without checksums; {fix}")
    if attributes_sha256(attrs) != attrs["attributes_sha256"]:
        raise damaged(path, f"the attributes of {FEATURES_DATASET} do not match their attributes_sha256")
    if features.ndim != 3 or features.shape[:2] != shape_prefix or features.dtype != np.float16:
        raise RILTableError(f"RIL table {path}: {FEATURES_DATASET} has shape {features.shape} dtype "
                            f"{features.dtype}, expected {shape_prefix + ('D',)} float16; {fix}")
    _check_dataset(handle, path, FEATURES_DONE, shape_prefix[:1], "uint8")
    _check_dataset(handle, path, FEATURES_CHECKSUM, shape_prefix, "uint32")
    return attrs


def read_layout(handle, path, in_memory=False):
    """Validate a table and read its layout; raises RILTableError naming what is wrong.

    The stored paths and labels are re-hashed against `image_list_sha256` (a changed path byte
    would pair one image's soft labels with another image's pixels), and flags must be 0 or 1.
    """
    attrs = validate_structure(handle, path)
    try:
        image_paths = handle[PATH_DATASET].asstr()[()].tolist()
    except UnicodeDecodeError as error:
        raise damaged(path, f"dataset {PATH_DATASET} holds bytes that are not UTF-8 ({error})") from error
    labels = handle["images/label"][()].astype(np.int64)
    if image_list_sha256(image_paths, labels) != attrs["image_list_sha256"]:
        raise damaged(path, f"the stored image paths and labels ({PATH_DATASET}, images/label) do not match "
                            "image_list_sha256, so soft labels could be paired with the wrong images")
    names = [PATH_DATASET, *schema(1, 1, 1, 1)]
    features_attrs = _features_attrs(handle, path, (attrs["num_images"], attrs["num_regions"]))
    if features_attrs is not None:
        names += FEATURE_DATASETS
    lazy = FILLED_DATASET in handle
    if lazy:
        for name, dtype in zip(LAZY_DATASETS, ("uint8", "uint32")):
            _check_dataset(handle, path, name, (attrs["num_images"], attrs["num_regions"]), dtype)
        names += LAZY_DATASETS
    flags = {name: handle[name][()] for name in (DONE_DATASET, FEATURES_DONE, FILLED_DATASET) if name in names}
    for name, values in flags.items():
        if not np.isin(values, (0, 1)).all():
            raise damaged(path, f"dataset {name} holds values other than 0 and 1")
    locations = {name: dataset_location(handle[name], path) for name in names}
    memory = {name: handle[name][()] for name in names if in_memory and locations[name][0] is None}
    return TableLayout(attrs, image_paths, labels, flags[DONE_DATASET].astype(bool),
                       handle[CHECKSUM_DATASET][()], features_attrs, locations, memory, lazy)


def shard_path(out, rank, world_size):
    """Where rank `rank` of `world_size` writes its part of the table `out`."""
    return f"{out}.rank{rank}-of-{world_size}"
