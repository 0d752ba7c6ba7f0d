"""Oxford Flowers 102: jpg/; a missing split is cut 50/20/30 per class from imagelabels.mat."""
import json
import os
from collections import defaultdict

from dassl.data.datasets import DATASET_REGISTRY

from .common import SplitDataset, split_groups


@DATASET_REGISTRY.register()
class OxfordFlowers(SplitDataset):
    dataset_dir = "oxford_flowers"
    image_subdir = "jpg"

    def create_split(self):
        """Image i (1-based) is jpg/image_0000i.jpg with 1-based label labels[i - 1]."""
        from scipy.io import loadmat

        labels_path = self.require(os.path.join(self.dataset_dir, "imagelabels.mat"), "label file")
        names_path = self.require(os.path.join(self.dataset_dir, "cat_to_name.json"), "class-name file")
        impaths_by_label = defaultdict(list)
        for index, label in enumerate(loadmat(labels_path)["labels"][0]):
            impath = os.path.join(self.image_dir, f"image_{index + 1:05d}.jpg")
            impaths_by_label[int(label)].append(impath)
        with open(names_path, encoding="utf-8") as file:
            label_to_name = json.load(file)
        return split_groups(
            [(label - 1, label_to_name[str(label)], paths) for label, paths in impaths_by_label.items()]
        )
