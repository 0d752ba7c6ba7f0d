"""SUN397: SUN397/<letter>/<scene>[/<kind>]/; a missing split comes from Training_01/Testing_01."""
import os

from dassl.data.datasets import DATASET_REGISTRY

from .common import SplitDataset, make_datum, split_trainval


@DATASET_REGISTRY.register()
class SUN397(SplitDataset):
    dataset_dir = "sun397"
    image_subdir = "SUN397"

    def create_split(self):
        classes_path = self.require(os.path.join(self.dataset_dir, "ClassName.txt"), "class list")
        with open(classes_path, encoding="utf-8") as file:
            label_of = {line.strip()[1:]: label for label, line in enumerate(file)}
        train, val = split_trainval(self._read_list("Training_01.txt", label_of))
        return train, val, self._read_list("Testing_01.txt", label_of)

    def _read_list(self, filename, label_of):
        """Line "/a/abbey/sun_x.jpg" is class "abbey"; "/b/bakery/shop/x.jpg" is "shop bakery"."""
        path = self.require(os.path.join(self.dataset_dir, filename), "partition file")
        items = []
        with open(path, encoding="utf-8") as file:
            for line in file:
                relpath = line.strip()[1:]
                class_dir = os.path.dirname(relpath)
                classname = " ".join(class_dir.split("/")[1:][::-1])
                impath = os.path.join(self.image_dir, relpath)
                items.append(make_datum(impath, label_of[class_dir], classname, path))
        return items
