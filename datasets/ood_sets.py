"""The ImageNet-1k OOD benchmark's test sets, read in the folder layouts their users publish.

iNaturalist, SUN and Places are the subsets of Huang & Li (MOS, CVPR 2021) with ImageNet's concepts
removed, Textures is DTD; NINCO (Bitterwolf et al., ICML 2023) is read where present. An OOD root holds
them as MCM lays them out (ImageNet_OOD_dataset/{iNaturalist,SUN,Places,dtd/images}), as LoCoOp does
(iNaturalist, SUN, Places, Texture/images) or as CLIPN does (Textures); NINCO as its archive unpacks
(NINCO/NINCO_OOD_classes). Every image below a set's folder is read, in sorted order, with label -1:
the MOS archives hold one images/ folder, DTD and NINCO one folder per class.
"""
import os

from dassl.data.datasets import Datum

OOD_LABEL = -1  # no ImageNet class
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # ImageFolder's
MCM_FOLDER = "ImageNet_OOD_dataset"
# set name -> its folder in each published layout, looked for under OOD_ROOT/ImageNet_OOD_dataset, then OOD_ROOT
OOD_SETS = {
    "iNaturalist": ("iNaturalist",),
    "SUN": ("SUN",),
    "Places": ("Places",),
    "Textures": ("dtd/images", "Texture/images", "Textures"),
    "NINCO": ("NINCO/NINCO_OOD_classes",),
}


def check_set_name(name):
    if name not in OOD_SETS:
        raise ValueError(f"unknown OOD set {name!r}; the ImageNet OOD benchmark's sets are {', '.join(OOD_SETS)}")


def candidate_folders(root, name):
    """Where set `name` may lie under `root`, in the order they are tried."""
    check_set_name(name)
    root = os.path.abspath(os.path.expanduser(root))
    return [os.path.join(base, folder) for base in (os.path.join(root, MCM_FOLDER), root) for folder in OOD_SETS[name]]


def find_set(root, name):
    """The folder of set `name` under `root`, or None when no published layout of it is there."""
    return next((path for path in candidate_folders(root, name) if os.path.isdir(path)), None)


def read_ood_set(root, name):
    """Datums (label -1, classname: the image's folder) of every image of set `name` under `root`."""
    folder = find_set(root, name)
    if folder is None:
        tried = "\n  ".join(candidate_folders(root, name))
        raise FileNotFoundError(
            f"OOD set {name} not found under {root}; looked for\n  {tried}\nDownload it as MCM's README says "
            "(https://github.com/deeplearning-wisc/MCM#out-of-distribution-datasets) and pass its parent folder")
    items = []
    for directory, subdirs, files in os.walk(folder):
        subdirs[:] = sorted(entry for entry in subdirs if not entry.startswith("."))
        classname = os.path.relpath(directory, folder)
        items += [Datum(impath=os.path.join(directory, file), label=OOD_LABEL, classname=classname)
                  for file in sorted(files) if file.lower().endswith(IMAGE_EXTENSIONS) and not file.startswith(".")]
    if not items:
        raise FileNotFoundError(f"OOD set {name}: {folder} holds no image ({', '.join(IMAGE_EXTENSIONS)})")
    return items
