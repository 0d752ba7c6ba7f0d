"""Oxford-IIIT Pets: images/ + annotations/; a missing split comes from trainval.txt and test.txt."""
import os

from dassl.data.datasets import DATASET_REGISTRY

from .common import SplitDataset, make_datum, split_trainval


@DATASET_REGISTRY.register()
class OxfordPets(SplitDataset):
    dataset_dir = "oxford_pets"
    image_subdir = "images"

    def create_split(self):
        train, val = split_trainval(self._read_annotations("trainval.txt"))
        return train, val, self._read_annotations("test.txt")

    def _read_annotations(self, filename):
        """Lines "<Breed_Name>_<n> <class id> <species> <breed id>"; the breed is lower-cased."""
        path = self.require(os.path.join(self.dataset_dir, "annotations", filename), "annotation file")
        items = []
        with open(path, encoding="utf-8") as file:
            for line in file:
                imname, label, _, _ = line.strip().split(" ")
                breed = "_".join(imname.split("_")[:-1]).lower()
                impath = os.path.join(self.image_dir, imname + ".jpg")
                items.append(make_datum(impath, int(label) - 1, breed, path))
        return items
