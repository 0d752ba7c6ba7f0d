"""ImageNet: images/{train,val}/<wnid>/ and classnames.txt, parsed once into preprocessed.pkl."""
import os

from dassl.data.datasets import DATASET_REGISTRY

from .common import (
    SplitDataset,
    folder_datums,
    load_datum_pickle,
    lookup_classname,
    read_classnames,
    require,
    save_datum_pickle,
)


@DATASET_REGISTRY.register()
class ImageNet(SplitDataset):
    """The val images are the test set (and the val set, as in CoOp); only train is few-shot sampled."""

    dataset_dir = "imagenet"
    image_subdir = "images"
    fewshot_val = False

    def read_splits(self):
        preprocessed = os.path.join(self.dataset_dir, "preprocessed.pkl")
        if os.path.exists(preprocessed):
            # 1.3 M images: no stat per file at every start (slow on network file systems); an image
            # that is missing is named by the loader when it is read.
            data = load_datum_pickle(preprocessed, ("train", "test"), self.image_dir, check_exists=False)
        else:
            classnames_path = os.path.join(self.dataset_dir, "classnames.txt")
            classnames = read_classnames(classnames_path, self.name)
            data = {
                "train": self._read_folder("train", classnames, classnames_path),
                "test": self._read_folder("val", classnames, classnames_path),
            }
            save_datum_pickle(data, preprocessed)
        return data["train"], data["test"], data["test"]

    def _read_folder(self, split, classnames, classnames_path):
        split_dir = os.path.join(self.image_dir, split)
        require(split_dir, self.name, f"image folder of the {split} split (to build preprocessed.pkl)")
        folders = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
        names = [lookup_classname(classnames, folder, classnames_path) for folder in folders]
        return folder_datums(split_dir, list(zip(folders, names)), self.name)
