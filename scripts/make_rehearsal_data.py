"""Write a miniature $DATA tree: every benchmark in its real layout, at its real class count.

Each dataset gets the files its reader in datasets/ needs, laid out as CoOp's DATASETS.md says
(split_zhou_<Name>.json, ImageNet's images/{train,val}/<wnid>/ and classnames.txt, the variants'
own folders), with N tiny JPEGs per class in each of train, val and test where the layout has them.
The protocol scripts then run on it with their defaults: few-shot sampling, base/new subsampling
(first ceil(n/2) labels) and evaluation meet 1000, 397 or 37 classes, not a toy 10.

ImageNet's class names come from open_clip (IMAGENET_CLASSNAMES) and its WordNet ids, with the
200-class subsets of ImageNet-A and ImageNet-R, from timm (installed with open_clip_torch). The
other datasets get generated names of realistic shape: spaces, hyphens, apostrophes, underscores,
and one name of ten words in each of the base and new halves, so long prompts meet truncation.

    python scripts/make_rehearsal_data.py --out /tmp/rehearsal_data
    python scripts/make_rehearsal_data.py --out /tmp/data --datasets imagenet oxford_pets eurosat

The output depends only on the flags. Each dataset is written under a hidden temporary folder and
renamed into place when complete; a dataset folder that already exists is skipped.
"""
import argparse
import hashlib
import importlib
import json
import os
import pkgutil
import re
import shutil
import sys
import tempfile
import time
from collections import namedtuple

import numpy as np
from PIL import Image
from tqdm import tqdm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[0] != REPO_ROOT:
    sys.path.insert(0, REPO_ROOT)

SPLITS = ("train", "val", "test")
MARKER = ".rehearsal.json"
LONG_NAME_WORDS = 10
WORDS = (
    "amber", "northern", "striped", "royal", "little", "river", "mountain", "spotted", "silver",
    "giant", "common", "western", "golden", "crested", "dwarf", "marsh", "desert", "black",
    "painted", "coastal", "eastern", "woolly", "scarlet", "alpine", "hooded", "meadow", "twin",
    "copper", "island", "forest", "pale", "great",
)
HYPHENATED = ("long-tailed", "red-billed", "two-door", "hand-held", "cross-country", "low-wing")
POSSESSIVE = ("sailor's", "bishop's", "farmer's", "king's", "colt's", "queen's")
CAR_BODIES = ("Sedan", "Coupe", "SUV", "Convertible", "Hatchback", "Wagon", "Cab", "Van")

# reader: DATASET.NAME; folder: under $DATA; classes: the real count;
# build(writer, spec, images_per_class) writes the files and returns the number of classes written.
Spec = namedtuple("Spec", "reader folder classes build")


def class_words(stem, index, count):
    """Words of generated class `index`: stem, number, a word, and a hazard on some classes.

    Classes 1 and count - 1 have ten words: one long name among the base and one among the new.
    """
    words = [stem, f"{index:03d}", WORDS[index * 7 % len(WORDS)]]
    if index % 10 == 3:
        words.append(HYPHENATED[index // 10 % len(HYPHENATED)])
    if index % 10 == 7:
        words.append(POSSESSIVE[index // 10 % len(POSSESSIVE)])
    if index in (1, count - 1):
        words += [WORDS[(index + step) % len(WORDS)] for step in range(LONG_NAME_WORDS - len(words))]
    return words


def spaced_names(stem, count):
    return [" ".join(class_words(stem, index, count)) for index in range(count)]


def folder_names(stem, count):
    """Names usable as folder names (as Food101's and DTD's): underscores, no apostrophes."""
    return ["_".join(class_words(stem, index, count)).replace("'", "") for index in range(count)]


def imagenet_classes():
    """(wnid, name) of ImageNet's 1000 classes in label order, i.e. CoOp's classnames.txt."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    from timm.data import ImageNetInfo

    return list(zip(ImageNetInfo("imagenet-1k").label_names(), IMAGENET_CLASSNAMES, strict=True))


def reader_module(name):
    """A reader module of datasets/, for the real folder names and renames it holds."""
    import trainers.dassl_compat  # noqa: F401  (before any Dassl import)

    return importlib.import_module(f"datasets.{name}")


def timm_synsets(filename):
    return pkgutil.get_data("timm.data", f"_info/{filename}").decode().split()


class TreeWriter:
    """Writes one dataset's files under `root`, counting images and advancing `bar`."""

    def __init__(self, root, image_size, bar):
        self.root = root
        self.image_size = image_size
        self.bar = bar
        self.images = 0

    def _path(self, relpath):
        path = os.path.join(self.root, relpath)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path

    def image(self, relpath, label, number):
        """A flat colour per class (`label`) crossed by a band whose place depends on `number`."""
        size = self.image_size
        colour = np.frombuffer(hashlib.sha256(f"{label}".encode()).digest()[:3], dtype=np.uint8)
        pixels = np.empty((size, size, 3), dtype=np.uint8)
        pixels[:] = colour
        start, width = number * 5 % size, max(1, size // 8)
        band = pixels[start:start + width] if label % 2 else pixels[:, start:start + width]
        band[:] = 255 - colour
        Image.fromarray(pixels).save(self._path(relpath), format="JPEG", quality=90)
        self.images += 1
        self.bar.update()

    def lines(self, relpath, lines):
        with open(self._path(relpath), "w", encoding="utf-8") as file:
            file.write("".join(f"{line}\n" for line in lines))

    def json(self, relpath, data):
        with open(self._path(relpath), "w", encoding="utf-8") as file:
            json.dump(data, file, indent=4, separators=(",", ": "))


def write_split(writer, split_name, image_subdir, classnames, relpath, per_class):
    """Images and split_zhou_<split_name>.json, `per_class` images per class in each split.

    `relpath(label, split, number)` is an image path relative to `image_subdir`; `number` counts
    the images of one class over train, val and test.
    """
    split = {key: [] for key in SPLITS}
    for label, classname in enumerate(classnames):
        for split_index, key in enumerate(SPLITS):
            for number in range(split_index * per_class, (split_index + 1) * per_class):
                path = relpath(label, key, number)
                writer.image(os.path.join(image_subdir, path), label, number)
                split[key].append([path, label, classname])
    writer.json(f"split_zhou_{split_name}.json", split)
    return len(classnames)


def write_class_folders(writer, split_name, image_subdir, folders, renames, per_class):
    """A class-folder dataset (Caltech101, Food101, DTD, EuroSAT): labels follow sorted folders."""
    folders = sorted(folders)

    def relpath(label, split, number):
        return f"{folders[label]}/{folders[label]}_{number + 1:04d}.jpg"

    classnames = [renames.get(folder, folder) for folder in folders]
    return write_split(writer, split_name, image_subdir, classnames, relpath, per_class)


def build_imagenet(writer, spec, per_class):
    classes = imagenet_classes()
    for label, (wnid, _) in enumerate(classes):
        for number in range(per_class):
            writer.image(f"images/train/{wnid}/{wnid}_{number + 1}.JPEG", label, number)
            val_id = label * per_class + number + 1
            writer.image(f"images/val/{wnid}/ILSVRC2012_val_{val_id:08d}.JPEG", label, per_class + number)
    writer.lines("classnames.txt", [f"{wnid} {name}" for wnid, name in classes])
    return len(classes)


def build_caltech101(writer, spec, per_class):
    """The renamed real folders (Faces -> face, ...) and generated ones; the ignored folders have
    images but no split entries, as in the real archive."""
    reader = reader_module("caltech101")
    generated = folder_names("object", spec.classes - len(reader.NEW_CNAMES))
    count = write_class_folders(writer, spec.reader, "101_ObjectCategories", [*reader.NEW_CNAMES, *generated],
                                reader.NEW_CNAMES, per_class)
    for folder in reader.IGNORED:
        for number in range(per_class):
            writer.image(f"101_ObjectCategories/{folder}/image_{number + 1:04d}.jpg", -1, number)
    return count


def build_folder_dataset(image_subdir, stem):
    def build(writer, spec, per_class):
        folders = folder_names(stem, spec.classes)
        return write_class_folders(writer, spec.reader, image_subdir, folders, {}, per_class)

    return build


def build_eurosat(writer, spec, per_class):
    names = reader_module("eurosat").NEW_CNAMES
    return write_class_folders(writer, spec.reader, "2750", list(names), names, per_class)


def build_oxford_pets(writer, spec, per_class):
    """images/<Breed>_<n>.jpg: cat breeds are capitalised (every third here); the class is lower case."""
    breeds = [name.capitalize() if index % 3 == 0 else name
              for index, name in enumerate(folder_names("breed", spec.classes))]

    def relpath(label, split, number):
        return f"{breeds[label]}_{number + 1}.jpg"

    return write_split(writer, spec.reader, "images", [breed.lower() for breed in breeds], relpath, per_class)


def build_stanford_cars(writer, spec, per_class):
    """cars_train/ holds train and val, cars_test/ holds test; names read "<year> <make> ... <body>"."""
    names = [f"{1998 + index % 15} {name} {CAR_BODIES[index % len(CAR_BODIES)]}"
             for index, name in enumerate(spaced_names("Make", spec.classes))]

    def relpath(label, split, number):
        if split == "test":
            return f"cars_test/{label * per_class + number - 2 * per_class + 1:05d}.jpg"
        return f"cars_train/{label * 2 * per_class + number + 1:05d}.jpg"

    return write_split(writer, spec.reader, "", names, relpath, per_class)


def build_oxford_flowers(writer, spec, per_class):
    def relpath(label, split, number):
        return f"image_{label * 3 * per_class + number + 1:05d}.jpg"

    return write_split(writer, spec.reader, "jpg", spaced_names("flower", spec.classes), relpath, per_class)


def build_fgvc_aircraft(writer, spec, per_class):
    """variants.txt and images_variant_<split>.txt ("<id> <variant>"); some variants have a slash."""
    variants = [f"{name} F/A-{index}" if index % 10 == 5 else name
                for index, name in enumerate(spaced_names("variant", spec.classes))]
    lists = {key: [] for key in SPLITS}
    for label, variant in enumerate(variants):
        for split_index, key in enumerate(SPLITS):
            for number in range(split_index * per_class, (split_index + 1) * per_class):
                image_id = f"{1000000 + label * 3 * per_class + number:07d}"
                writer.image(f"images/{image_id}.jpg", label, number)
                lists[key].append(f"{image_id} {variant}")
    writer.lines("variants.txt", variants)
    for key, lines in lists.items():
        writer.lines(f"images_variant_{key}.txt", lines)
    return len(variants)


def build_sun397(writer, spec, per_class):
    """SUN397/<letter>/<scene>[/<indoor|outdoor>]/: the class reads "<kind> <scene>", as the reader
    derives it; labels follow the sorted class folders (ClassName.txt's order)."""
    class_dirs = []
    for index in range(spec.classes):
        scene = "_".join(class_words(WORDS[index % len(WORDS)], index, spec.classes)).replace("'", "")
        kind = {1: "/indoor", 2: "/outdoor"}.get(index % 4, "")
        class_dirs.append(f"{scene[0]}/{scene}{kind}")
    class_dirs.sort()

    def relpath(label, split, number):
        return f"{class_dirs[label]}/sun_{label:03d}{number:04d}.jpg"

    classnames = [" ".join(class_dir.split("/")[1:][::-1]) for class_dir in class_dirs]
    return write_split(writer, spec.reader, "SUN397", classnames, relpath, per_class)


def build_ucf101(writer, spec, per_class):
    """UCF-101-midframes/<Action_Name>/v_<ActionName>_gNN_c01.jpg, one frame per video."""
    actions = sorted("".join(word.capitalize() for word in class_words("action", index, spec.classes))
                     .replace("'", "") for index in range(spec.classes))
    classnames = ["_".join(re.findall("[A-Z][^A-Z]*", action)) for action in actions]

    def relpath(label, split, number):
        return f"{classnames[label]}/v_{actions[label]}_g{number + 1:02d}_c01.jpg"

    return write_split(writer, spec.reader, "UCF-101-midframes", classnames, relpath, per_class)


def build_imagenet_variant(image_subdir, file_name, synsets_file=None, readme=False, numbered=False):
    """A test-only ImageNet variant: ImageNet's classnames.txt and a folder per class, named by wnid
    (or by label with `numbered`, as ImageNetV2's), for all 1000 classes or those of `synsets_file`."""
    def build(writer, spec, per_class):
        classes = imagenet_classes()
        kept = set(timm_synsets(synsets_file)) if synsets_file else None
        labels = [label for label, (wnid, _) in enumerate(classes) if kept is None or wnid in kept]
        for label in labels:
            wnid, name = classes[label]
            folder = str(label) if numbered else wnid
            for number in range(per_class):
                relpath = f"{image_subdir}/{folder}/{file_name(label, number, name.replace('/', '-'))}"
                writer.image(relpath, label, number)
        if readme:
            writer.lines(f"{image_subdir}/README.txt", ["The class folders are WordNet ids."])
        writer.lines("classnames.txt", [f"{wnid} {name}" for wnid, name in classes])
        return len(labels)

    return build


def v2_file(label, number, name):
    return hashlib.sha1(f"{label}/{number}".encode()).hexdigest() + ".jpeg"


def sketch_file(label, number, name):
    return f"sketch_{number}.JPEG"


def adversarial_file(label, number, name):
    """ImageNet-A's file names hold the class name twice, with spaces."""
    return f"0.{label:03d}{number:03d}_{name} _ {name}_0.{number % 10}base.jpg"


def rendition_file(label, number, name):
    return f"{('art', 'cartoon', 'sketch', 'toy')[number % 4]}_{number}.jpg"


DATASETS = {
    "imagenet": Spec("ImageNet", "imagenet", 1000, build_imagenet),
    "caltech101": Spec("Caltech101", "caltech-101", 100, build_caltech101),
    "oxford_pets": Spec("OxfordPets", "oxford_pets", 37, build_oxford_pets),
    "stanford_cars": Spec("StanfordCars", "stanford_cars", 196, build_stanford_cars),
    "oxford_flowers": Spec("OxfordFlowers", "oxford_flowers", 102, build_oxford_flowers),
    "food101": Spec("Food101", "food-101", 101, build_folder_dataset("images", "dish")),
    "fgvc_aircraft": Spec("FGVCAircraft", "fgvc_aircraft", 100, build_fgvc_aircraft),
    "sun397": Spec("SUN397", "sun397", 397, build_sun397),
    "dtd": Spec("DescribableTextures", "dtd", 47, build_folder_dataset("images", "texture")),
    "eurosat": Spec("EuroSAT", "eurosat", 10, build_eurosat),
    "ucf101": Spec("UCF101", "ucf101", 101, build_ucf101),
    "imagenetv2": Spec("ImageNetV2", "imagenetv2", 1000,
                       build_imagenet_variant("imagenetv2-matched-frequency-format-val", v2_file, numbered=True)),
    "imagenet_sketch": Spec("ImageNetSketch", "imagenet-sketch", 1000,
                            build_imagenet_variant("images", sketch_file)),
    "imagenet_a": Spec("ImageNetA", "imagenet-adversarial", 200,
                       build_imagenet_variant("imagenet-a", adversarial_file, "imagenet_a_synsets.txt", True)),
    "imagenet_r": Spec("ImageNetR", "imagenet-rendition", 200,
                       build_imagenet_variant("imagenet-r", rendition_file, "imagenet_r_synsets.txt", True)),
}


def build_one(out, name, per_class, image_size):
    """Build dataset `name` under `out` unless present; returns (classes, images, status)."""
    spec = DATASETS[name]
    target = os.path.join(out, spec.folder)
    settings = {"images_per_class": per_class, "image_size": image_size}
    if os.path.exists(target):
        return read_marker(target, settings)
    partial = tempfile.mkdtemp(prefix=f".{spec.folder}.partial-", dir=out)
    try:
        with tqdm(desc=name, unit="img", leave=False) as bar:
            writer = TreeWriter(partial, image_size, bar)
            classes = spec.build(writer, spec, per_class)
        assert classes == spec.classes, f"{name}: wrote {classes} classes, expected {spec.classes}"
        marker = {**settings, "classes": classes, "images": writer.images}
        writer.json(MARKER, marker)
        os.rename(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return classes, writer.images, "built"


def read_marker(target, settings):
    """(classes, images, status) of an existing dataset folder; an error if built with other flags."""
    marker_path = os.path.join(target, MARKER)
    if not os.path.exists(marker_path):
        return None, None, "skipped: the folder exists and was not made by this script (left as is)"
    with open(marker_path, encoding="utf-8") as file:
        marker = json.load(file)
    for key, value in settings.items():
        if marker[key] != value:
            flag = "--" + key.replace("_", "-")
            raise SystemExit(
                f"error: {target} was built with {flag} {marker[key]}, not {value}; delete it or choose "
                "another --out"
            )
    return marker["classes"], marker["images"], "skipped: already built"


def positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="the $DATA folder to write (DATASET.ROOT, train.py --root); created if absent")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS), metavar="NAME",
                        help="datasets to write, named as configs/datasets/<NAME>.yaml (default: all 15: "
                             f"{' '.join(DATASETS)})")
    parser.add_argument("--images-per-class", type=positive, default=1, metavar="N",
                        help="images per class in each of train, val and test (ImageNet: train and val; "
                             "the test-only ImageNet variants: their one folder) (default 1)")
    parser.add_argument("--image-size", type=positive, default=32, metavar="PX",
                        help="side of the square JPEG images in pixels (default 32)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for name in dict.fromkeys(args.datasets):
        start = time.perf_counter()
        classes, images, status = build_one(args.out, name, args.images_per_class, args.image_size)
        counts = f"{classes} classes, {images} images" if classes is not None else "contents unknown"
        print(f"{name}: {counts}, {time.perf_counter() - start:.1f} s, {status} "
              f"({os.path.join(args.out, DATASETS[name].folder)})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
