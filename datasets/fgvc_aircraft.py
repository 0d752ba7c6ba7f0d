"""FGVC Aircraft (variants): the fixed splits images_variant_{train,val,test}.txt; no split file."""
import os

from dassl.data.datasets import DATASET_REGISTRY

from .common import SplitDataset, make_datum, require


@DATASET_REGISTRY.register()
class FGVCAircraft(SplitDataset):
    dataset_dir = "fgvc_aircraft"
    image_subdir = "images"

    def read_splits(self):
        variants = require(os.path.join(self.dataset_dir, "variants.txt"), self.name, "variants.txt")
        with open(variants, encoding="utf-8") as file:
            label_of = {line.strip(): label for label, line in enumerate(file)}
        splits = ("train", "val", "test")
        return tuple(self._read_list(f"images_variant_{split}.txt", label_of) for split in splits)

    def _read_list(self, filename, label_of):
        """Lines "<image id> <variant name>"; the variant name may contain spaces."""
        path = require(os.path.join(self.dataset_dir, filename), self.name, filename)
        items = []
        with open(path, encoding="utf-8") as file:
            for line in file:
                image_id, *words = line.strip().split(" ")
                classname = " ".join(words)
                if classname not in label_of:
                    raise ValueError(f"{path}: variant {classname!r} of {image_id} is not in variants.txt")
                impath = os.path.join(self.image_dir, image_id + ".jpg")
                items.append(make_datum(impath, label_of[classname], classname, path))
        return items
