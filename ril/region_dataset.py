"""Training data from an RIL table: each item is R regions of one image with their soft labels.

Regions are re-cut from the stored boxes with the same `crops.crop_region` the teacher saw, so
student and teacher see the same pixels. The regions of image i in an epoch come from a
generator seeded by (seed, epoch, i): deterministic and independent of DataLoader workers.
Call `set_epoch` before each epoch (workers must not be persistent, so they see it). Every item
checks its image's rows (and stored features) against their checksums (`RILTable.read_image`).

From a lazy table that is not complete, an item also says which regions are `filled`; unfilled ones
carry NaN soft labels and entropies, and their uint8 pixels (`raw`, the teacher's input) go to the
training process, which scores them (`ril.lazy.TableFiller`) and replaces the NaNs.
"""
import os

import numpy as np
import torch
from torch.utils.data import Dataset

from trainers.losses import information_weight

from .crops import cut_regions, generator_for, load_rgb, normalize_pixels
from .format import RILTableError
from .reader import TableView, densify
from .shards import open_table


class RegionDataset(Dataset):
    """len = images; item i = dict of R regions of image i (see `__getitem__`).

    Args:
        table: an `RILTable` or `ShardedTable` (check its fingerprint first), or a path (a table or a shard
            manifest).
        image_root: DATASET.ROOT, which the table's image paths are relative to.
        output_size: the student's input size (H, W); must equal the table's.
        mean, std: the student's pixel normalisation.
        repeat: R, regions per image per visit (at most the table's M).
        features: serve stored student features (`feature`, (R, D)) instead of pixels; no decoding.
        student_id: with `features`, the run's student as `trainers.clip_loading.backbone_id`
            gives it (a name, or path#sha256=...); checked against the cache when given.
    """

    def __init__(self, table, image_root, output_size, mean, std, repeat=1, seed=0, densify_mode="smooth",
                 features=False, student_id=None):
        self.table = table if isinstance(table, TableView) else open_table(table)
        self.image_root = os.path.expanduser(image_root)
        self.mean, self.std = tuple(mean), tuple(std)
        self.repeat, self.seed, self.epoch = int(repeat), int(seed), 0
        self.densify_mode = densify_mode
        self.features = features
        self.lazy = self.table.lazy and not self.table.attrs["complete"]
        self.output_size = self._check_output_size(output_size)
        if not 1 <= self.repeat <= self.table.num_regions:
            raise ValueError(f"repeat={repeat} must be between 1 and the table's {self.table.num_regions} regions")
        if features:
            self._check_features(student_id)

    def _check_output_size(self, output_size):
        size = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
        stored = tuple(self.table.attrs["output_size"])
        if size != stored:
            raise RILTableError(
                f"RIL table {self.table.path} holds regions scored at {stored} pixels but this run asks for "
                f"{size} (INPUT.SIZE): the teacher must have seen the student's pixels, so rebuild the table "
                "with this INPUT.SIZE or set INPUT.SIZE to the table's"
            )
        return size

    def _check_features(self, student_id):
        self.table.require_features()
        attrs = self.table.features_attrs
        _, _, sha256 = (student_id or "").partition("#sha256=")
        same = sha256 == attrs["student_sha256"] if sha256 else student_id == attrs["student"]
        if student_id is not None and not same:
            raise RILTableError(
                f"RIL table {self.table.path} caches features of student {attrs['student']!r} "
                f"(sha256 {attrs['student_sha256']!r}), not of this run's {student_id!r}; rerun "
                "python -m ril add-features --overwrite with this run's student"
            )

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.table.num_images

    def region_indices(self, index):
        """The R regions of image `index` in the current epoch, without repetition."""
        generator = generator_for(self.seed, self.epoch, index)
        return torch.randperm(self.table.num_regions, generator=generator)[: self.repeat].numpy()

    def __getitem__(self, index):
        """img (R, 3, H, W) or feature (R, D); soft_label (R, C); weight, entropy (R,); label, index, region (R,);
        from a lazy table also filled (R,) bool and raw (U, 3, H, W) uint8, the U unfilled regions."""
        regions = self.region_indices(index)
        images = np.full(self.repeat, index, dtype=np.int64)
        if self.lazy:
            rows, filled = self.table.read_regions(index, regions)
        else:
            rows, filled = self.table.read_image(index, regions), np.ones(self.repeat, dtype=bool)
        soft_label = densify(rows["topk_index"], rows["topk_logprob"], self.table.num_classes, self.densify_mode)
        entropy = torch.from_numpy(rows["entropy"].astype(np.float32))
        unfilled = torch.from_numpy(~filled)
        weight = torch.full_like(entropy, float("nan"))
        weight[~unfilled] = information_weight(entropy[~unfilled], self.table.num_classes)
        soft_label[unfilled], entropy[unfilled] = float("nan"), float("nan")
        item = {
            "soft_label": soft_label,
            "weight": weight,
            "entropy": entropy,
            "label": torch.from_numpy(self.table.labels[images]),
            "index": torch.from_numpy(images),
            "region": torch.from_numpy(regions.astype(np.int64)),
        }
        if self.features:
            item["feature"] = torch.from_numpy(self.table.read_features(index, regions).astype(np.float32))
        else:
            image = load_rgb(os.path.join(self.image_root, self.table.image_paths[index]))
            pixels = cut_regions(image, rows["box"], rows["flip"], self.output_size, self.table.attrs["interpolation"])
            item["img"] = normalize_pixels(pixels, self.mean, self.std)
            if self.lazy:
                item["filled"], item["raw"] = torch.from_numpy(filled), pixels[unfilled]
        return item


def collate_regions(batch):
    """Flatten a list of B items of R regions into one batch of B*R regions."""
    return {key: torch.cat([item[key] for item in batch]) for key in batch[0]}
