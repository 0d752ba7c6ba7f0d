"""What every reader shares: split files, the few-shot cache, base/new subsampling, folder splits.

The results match CoOp's readers item for item, so an existing $DATA folder gives the same lists.
Random draws use the global `random` module, which the entry point seeds with SEED as CoOp does.
Every path read from a split file or a pickle is checked to lie under the dataset's image folder,
and files written into $DATA get the user's umask, so a shared $DATA stays readable by others.
"""
import builtins
import json
import math
import os
import pickle
import random
import tempfile
from collections import OrderedDict, defaultdict

from dassl.data.datasets import DatasetBase, Datum
from dassl.utils import listdir_nohidden

LAYOUT_DOC = "DATASETS.md of CoOp (https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md)"
SUBSAMPLE_CHOICES = ("all", "base", "new")
_DATUM_GLOBAL = ("dassl.data.datasets.base_dataset", "Datum")
_PLAIN_BUILTINS = frozenset(("dict", "list", "tuple", "set", "frozenset", "str", "int", "float", "bool"))


def missing(dataset, what, path):
    """The error for a missing part of the $DATA layout: what, where, and how to fix it."""
    return FileNotFoundError(
        f"{dataset}: {what} not found at {path}. Lay the data out as described in {LAYOUT_DOC} "
        "and set DATASET.ROOT (train.py --root) to the folder that holds the dataset folders."
    )


def require(path, dataset, what):
    """`path` if it exists, else the `missing` error."""
    if not os.path.exists(path):
        raise missing(dataset, what, path)
    return path


def make_datum(impath, label, classname, source):
    """A Dassl Datum; a missing image is named together with the file that listed it."""
    if not os.path.isfile(impath):
        raise FileNotFoundError(
            f"{impath} (from {source}) is missing or not a file: the images under DATASET.ROOT do "
            f"not match it. See {LAYOUT_DOC}."
        )
    return Datum(impath=impath, label=label, classname=classname)


def check_subsample(subsample):
    if subsample not in SUBSAMPLE_CHOICES:
        raise ValueError(
            f"DATASET.SUBSAMPLE_CLASSES is {subsample!r}; expected one of {', '.join(SUBSAMPLE_CHOICES)}"
        )


def read_split(split_path, path_prefix):
    """(train, val, test) from a split_zhou_<Name>.json; its paths are relative to `path_prefix`."""
    print(f"Reading split from {split_path}")
    with open(split_path, encoding="utf-8") as file:
        try:
            split = json.load(file)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{split_path} is not valid UTF-8 JSON ({error}); download it again") from error
    return tuple(_split_datums(split, key, split_path, path_prefix) for key in ("train", "val", "test"))


def _split_datums(split, key, split_path, path_prefix):
    entries = split.get(key) if isinstance(split, dict) else None
    if not isinstance(entries, list):
        raise ValueError(
            f'{split_path} has no "{key}" list; expected '
            '{"train"|"val"|"test": [[relpath, label, classname], ...]}'
        )
    items = []
    for position, entry in enumerate(entries):
        where = f'{split_path}: "{key}" entry {position}, {entry!r},'
        if not (isinstance(entry, list) and len(entry) == 3):
            raise ValueError(f"{where} is not [relpath, label, classname]")
        relpath, label, classname = entry
        if not isinstance(label, int) or isinstance(label, bool) or label < 0:
            raise ValueError(f"{where} has a label that is not a non-negative integer; download the split file again")
        if not isinstance(classname, str):
            raise ValueError(f"{where} has a class name that is not a string; download the split file again")
        items.append(make_datum(confined_path(path_prefix, relpath, where), label, classname, split_path))
    return items


def confined_path(path_prefix, relpath, where):
    """`path_prefix`/`relpath`, refused when `relpath` is absolute or climbs out with '..': a split file must
    not make a run read images outside the dataset's folder."""
    if not isinstance(relpath, str) or not relpath:
        raise ValueError(f"{where} has an image path that is not a non-empty string")
    if os.path.isabs(relpath) or os.path.normpath(relpath).split(os.sep)[0] == os.pardir:
        raise ValueError(
            f"{where} points outside the image folder {path_prefix}: split files list paths relative to it, "
            "without '..'; download the split file again"
        )
    return os.path.join(path_prefix, relpath)


def write_split(train, val, test, split_path, path_prefix):
    """Write a split file in CoOp's format (same JSON layout, paths relative to `path_prefix`)."""
    prefix = os.path.join(path_prefix, "")

    def rows(items):
        return [[_relative(item.impath, prefix), item.label, item.classname] for item in items]

    split = {"train": rows(train), "val": rows(val), "test": rows(test)}
    atomic_write(split_path, "w", lambda file: json.dump(split, file, indent=4, separators=(",", ": ")))
    print(f"Saved split to {split_path}")


def _relative(impath, prefix):
    assert impath.startswith(prefix), (impath, prefix)
    return impath[len(prefix):]


def umask():
    """The process's umask (reading it means setting it, so it is set straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, mode, write):
    """Call `write(file)` on a temporary file in the same folder, then rename it to `path`: readers never
    see half a file, and a failure leaves nothing. Text is UTF-8 whatever the locale. The file gets the
    permissions `open` would give it (0666 minus the umask), not mkstemp's 0600."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, tmp_path = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(handle, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
            os.fchmod(file.fileno(), 0o666 & ~umask())
            write(file)
        os.replace(tmp_path, path)
    finally:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)


def split_trainval(trainval, p_val=0.2):
    """(train, val): per label (in order of first appearance), a shuffled `p_val` share goes to val."""
    indices_by_label = defaultdict(list)
    for index, item in enumerate(trainval):
        indices_by_label[item.label].append(index)
    train, val = [], []
    for label, indices in indices_by_label.items():
        n_val = round(len(indices) * p_val)
        if n_val == 0:
            raise ValueError(
                f"label {label} has {len(indices)} train+val images, too few to hold out "
                f"{p_val:.0%} for val; the annotation files look incomplete"
            )
        random.shuffle(indices)
        val.extend(trainval[index] for index in indices[:n_val])
        train.extend(trainval[index] for index in indices[n_val:])
    return train, val


def split_groups(groups, p_trn=0.5, p_val=0.2):
    """(train, val, test) from (label, classname, impaths) groups, each shuffled and cut 50/20/30."""
    train, val, test = [], [], []
    for label, classname, impaths in groups:
        random.shuffle(impaths)
        n_train = round(len(impaths) * p_trn)
        n_val = round(len(impaths) * p_val)
        if min(n_train, n_val, len(impaths) - n_train - n_val) <= 0:
            raise ValueError(
                f"class {classname!r} has {len(impaths)} images, too few to split into "
                f"{p_trn:.0%} train, {p_val:.0%} val and the rest test (4 or more are needed)"
            )
        items = [make_datum(impath, label, classname, "the image folder") for impath in impaths]
        train.extend(items[:n_train])
        val.extend(items[n_train:n_train + n_val])
        test.extend(items[n_train + n_val:])
    return train, val, test


def folder_groups(image_dir, ignored=(), new_cnames=None):
    """(label, classname, impaths) per class folder: labels follow sorted folder names."""
    categories = sorted(name for name in listdir_nohidden(image_dir) if name not in ignored)
    groups = []
    for label, category in enumerate(categories):
        folder = os.path.join(image_dir, category)
        impaths = [os.path.join(folder, name) for name in listdir_nohidden(folder)]
        groups.append((label, (new_cnames or {}).get(category, category), impaths))
    return groups


def folder_datums(image_dir, class_folders, source):
    """Datums of every image in each (folder, classname) of `class_folders`, labelled by position."""
    items = []
    for label, (folder, classname) in enumerate(class_folders):
        folder_path = require(os.path.join(image_dir, folder), source, f"class folder of {classname!r}")
        for name in listdir_nohidden(folder_path):
            items.append(make_datum(os.path.join(folder_path, name), label, classname, folder_path))
    return items


def read_classnames(path, dataset):
    """ImageNet's classnames.txt: {wordnet folder: class name}, in file order."""
    classnames = OrderedDict()
    with open(require(path, dataset, "classnames.txt (see the ImageNet section)"), encoding="utf-8") as file:
        for line in file:
            folder, *words = line.strip().split(" ")
            if folder:
                classnames[folder] = " ".join(words)
    return classnames


def lookup_classname(classnames, folder, path):
    if folder not in classnames:
        raise ValueError(f"class folder {folder!r} has no line in {path}; use the classnames.txt of CoOp")
    return classnames[folder]


def subsample_classes(*splits, subsample="all"):
    """Keep the base (first ceil(n/2) sorted labels of `splits[0]`) or new classes, relabelled 0..k-1."""
    check_subsample(subsample)
    if subsample == "all":
        return splits
    labels = sorted({item.label for item in splits[0]})
    half = math.ceil(len(labels) / 2)
    selected = labels[:half] if subsample == "base" else labels[half:]
    relabel = {label: new_label for new_label, label in enumerate(selected)}
    print(f"SUBSAMPLE {subsample.upper()} CLASSES!")
    return tuple(
        [
            Datum(impath=item.impath, label=relabel[item.label], classname=item.classname)
            for item in split
            if item.label in relabel
        ]
        for split in splits
    )


def fewshot_path(dataset_dir, num_shots, seed):
    return os.path.join(dataset_dir, "split_fewshot", f"shot_{num_shots}-seed_{seed}.pkl")


def fewshot_splits(cache_path, sample, train, val, num_shots, image_dir):
    """Few-shot (train, val), read from `cache_path` or drawn with `sample` and cached there.

    `sample` is Dassl's generate_fewshot_dataset; val gets min(num_shots, 4) shots. With val None
    (ImageNet, whose val is its test set) only train is drawn and cached. A cached item must be an
    item of this run's `train` or `val`, under `image_dir`, with the same label and class name.
    """
    pools = {"train": train} if val is None else {"train": train, "val": val}
    if os.path.exists(cache_path):
        print(f"Loading preprocessed few-shot data from {cache_path}")
        data = load_datum_pickle(cache_path, tuple(pools), image_dir)
        for key, pool in pools.items():
            _check_drawn_from(data[key], pool, key, cache_path)
        return data["train"], data.get("val")
    data = {"train": sample(train, num_shots=num_shots)}
    if val is not None:
        data["val"] = sample(val, num_shots=min(num_shots, 4))
    print(f"Saving preprocessed few-shot data to {cache_path}")
    save_datum_pickle(data, cache_path)
    return data["train"], data.get("val")


def _check_drawn_from(items, pool, key, cache_path):
    entries = {(os.path.normpath(item.impath), item.label, item.classname) for item in pool}
    for item in items:
        if (os.path.normpath(item.impath), item.label, item.classname) not in entries:
            raise ValueError(
                f"{cache_path} lists {item.impath} (label {item.label}, {item.classname!r}) under {key!r}, which "
                f"is not a {key} image of this run's split with that label: the cache was drawn from another "
                f"split. Delete {cache_path}; it is rebuilt on the next run (with the same SEED, identically)."
            )


class _DatumUnpickler(pickle.Unpickler):
    """Resolves only Dassl's Datum and plain builtin types, so a data folder cannot run code."""

    def find_class(self, module, name):
        if (module, name) == _DATUM_GLOBAL:
            return Datum
        if module == "builtins" and name in _PLAIN_BUILTINS:
            return getattr(builtins, name)
        raise pickle.UnpicklingError(
            f"it references {module}.{name}, which is neither Dassl's Datum nor a plain builtin"
        )


def load_datum_pickle(path, keys, image_dir, check_exists=True):
    """A dict of Datum lists under `keys`, as CoOp pickles them, read without running code; every path is
    under `image_dir` and, with `check_exists`, an existing file (see `under_image_dir`)."""
    advice = f"Delete {path}; it is rebuilt on the next run (with the same SEED, identically)."
    try:
        with open(path, "rb") as file:
            data = _DatumUnpickler(file).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
            AttributeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} could not be read safely: {error}. {advice}") from error
    for key in keys:
        items = data.get(key) if isinstance(data, dict) else None
        if not isinstance(items, list) or not all(_is_datum(item) for item in items):
            raise ValueError(
                f"{path}: expected a dict with a list of Dassl Datum under {key!r}. {advice}"
            )
    return {key: under_image_dir(data[key], image_dir, path, advice, check_exists) for key in keys}


def under_image_dir(items, image_dir, source, advice, check_exists=True):
    """`items` with every path under `image_dir` (and, with `check_exists`, an existing file there).

    Pickles hold absolute paths, so a cache copied or moved with its $DATA still names the old root,
    whose images may still exist: such a path is read at the same place under `image_dir` instead.
    """
    prefix = os.path.join(os.path.normpath(image_dir), "")
    located, moved = [], 0
    for item in items:
        path = os.path.normpath(item.impath)
        if path.startswith(prefix):
            if check_exists and not os.path.isfile(path):
                raise ValueError(f"{source} lists {path}, which does not exist. {advice}")
            located.append(item)  # as unpickled: Datum's constructor would stat the file once more
            continue
        path, moved = _same_file_under(path, image_dir), moved + 1
        if path is None:
            raise ValueError(
                f"{source} lists {item.impath}, which is not under this run's image folder {image_dir} and "
                f"matches no file there. {advice}"
            )
        located.append(Datum(impath=path, label=item.label, domain=item.domain, classname=item.classname))
    if moved:
        print(f"{source} names {moved} images outside {image_dir} (written under another DATASET.ROOT): "
              f"reading them from {image_dir}")
    return located


def _same_file_under(path, image_dir):
    """The file under `image_dir` with the longest trailing part of `path`, or None."""
    parts = path.lstrip(os.sep).split(os.sep)
    for start in range(len(parts)):
        candidate = os.path.join(image_dir, *parts[start:])
        if os.path.isfile(candidate):
            return candidate
    return None


def _is_datum(item):
    return (
        isinstance(item, Datum)
        and isinstance(getattr(item, "_impath", None), str)
        and isinstance(getattr(item, "_label", None), int)
        and isinstance(getattr(item, "_classname", None), str)
    )


def save_datum_pickle(data, path):
    atomic_write(path, "wb", lambda file: pickle.dump(data, file, protocol=pickle.HIGHEST_PROTOCOL))


class SplitDataset(DatasetBase):
    """A dataset in CoOp's layout: splits, then the few-shot cache, then base/new subsampling.

    A reader sets `dataset_dir` (folder under DATASET.ROOT) and `image_subdir` (split paths are
    relative to it), and overrides `create_split` when CoOp can rebuild a missing split file.
    """

    dataset_dir = ""
    image_subdir = ""
    fewshot_val = True  # False for ImageNet: its val is the test set, never sampled

    def __init__(self, cfg):
        check_subsample(cfg.DATASET.SUBSAMPLE_CLASSES)
        self.name = type(self).__name__
        self.dataset_dir = locate(cfg.DATASET.ROOT, type(self).dataset_dir, self.name)
        self.image_dir = os.path.join(self.dataset_dir, self.image_subdir).rstrip(os.sep)
        self.split_path = os.path.join(self.dataset_dir, f"split_zhou_{self.name}.json")
        train, val, test = self.read_splits()
        num_shots = cfg.DATASET.NUM_SHOTS
        if num_shots >= 1:
            cache_path = fewshot_path(self.dataset_dir, num_shots, cfg.SEED)
            sample = self.generate_fewshot_dataset
            if self.fewshot_val:
                train, val = fewshot_splits(cache_path, sample, train, val, num_shots, self.image_dir)
            else:
                train, _ = fewshot_splits(cache_path, sample, train, None, num_shots, self.image_dir)
        train, val, test = subsample_classes(train, val, test, subsample=cfg.DATASET.SUBSAMPLE_CLASSES)
        super().__init__(train_x=train, val=val, test=test)

    def read_splits(self):
        """(train, val, test) from the split file, created by `create_split` when missing."""
        if os.path.exists(self.split_path):
            return read_split(self.split_path, self.image_dir)
        train, val, test = self.create_split()
        write_split(train, val, test, self.split_path, self.image_dir)
        return train, val, test

    def create_split(self):
        raise missing(self.name, "split file", self.split_path)

    def require(self, path, what):
        """`path`, or an error saying that neither it nor the split file exists."""
        if not os.path.exists(path):
            needed = f"{what} (needed because the split file {self.split_path} is absent)"
            raise missing(self.name, needed, path)
        return path


class TestOnlyDataset(DatasetBase):
    """An ImageNet variant used for testing only: train and test are the same list, no val.

    Like CoOp, it ignores NUM_SHOTS and SUBSAMPLE_CLASSES (domain generalization uses all classes).
    """

    dataset_dir = ""
    image_subdir = ""
    ignored = ()

    def __init__(self, cfg):
        check_subsample(cfg.DATASET.SUBSAMPLE_CLASSES)
        name = type(self).__name__
        self.dataset_dir = locate(cfg.DATASET.ROOT, type(self).dataset_dir, name)
        self.image_dir = require(os.path.join(self.dataset_dir, self.image_subdir), name, "image folder")
        classnames_path = os.path.join(self.dataset_dir, "classnames.txt")
        classnames = read_classnames(classnames_path, name)
        data = folder_datums(self.image_dir, self.class_folders(classnames, classnames_path), name)
        super().__init__(train_x=data, test=data)

    def class_folders(self, classnames, classnames_path):
        """(folder, classname) in label order: the sorted class folders, named by classnames.txt."""
        folders = listdir_nohidden(self.image_dir, sort=True)
        folders = [folder for folder in folders if folder not in self.ignored]
        return [(folder, lookup_classname(classnames, folder, classnames_path)) for folder in folders]


def locate(root, dataset_dir, dataset):
    """The absolute dataset folder under DATASET.ROOT, which must exist."""
    if not root:
        raise ValueError(f"{dataset}: DATASET.ROOT is empty; pass --root with the $DATA folder")
    path = os.path.join(os.path.abspath(os.path.expanduser(root)), dataset_dir)
    if not os.path.isdir(path):
        raise missing(dataset, f"dataset folder '{dataset_dir}/'", path)
    return path
