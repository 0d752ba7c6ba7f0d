"""UCF101 middle frames: UCF-101-midframes/<Action_Name>/<clip>.jpg, one frame per video."""
import os
import re

from dassl.data.datasets import DATASET_REGISTRY

from .common import SplitDataset, make_datum, split_trainval


@DATASET_REGISTRY.register()
class UCF101(SplitDataset):
    dataset_dir = "ucf101"
    image_subdir = "UCF-101-midframes"

    def create_split(self):
        """From ucfTrainTestlist/ (split 1): classInd.txt, trainlist01.txt and testlist01.txt."""
        class_list = os.path.join(self.dataset_dir, "ucfTrainTestlist", "classInd.txt")
        classes_path = self.require(class_list, "class list")
        label_of = {}
        with open(classes_path, encoding="utf-8") as file:
            for line in file:
                label, action = line.strip().split(" ")
                label_of[action] = int(label) - 1
        train, val = split_trainval(self._read_list("trainlist01.txt", label_of))
        return train, val, self._read_list("testlist01.txt", label_of)

    def _read_list(self, filename, label_of):
        """Line "ApplyEyeMakeup/v_x.avi [label]" is frame Apply_Eye_Makeup/v_x.jpg of that class."""
        path = self.require(os.path.join(self.dataset_dir, "ucfTrainTestlist", filename), "split list")
        items = []
        with open(path, encoding="utf-8") as file:
            for line in file:
                action, video = line.strip().split(" ")[0].split("/")
                classname = "_".join(re.findall("[A-Z][^A-Z]*", action))
                impath = os.path.join(self.image_dir, classname, video.replace(".avi", ".jpg"))
                items.append(make_datum(impath, label_of[action], classname, path))
        return items
