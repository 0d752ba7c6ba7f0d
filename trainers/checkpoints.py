"""Checkpoint files of the prompt trainers: atomic writes, the training state that makes a resume exact,
and which epoch files are kept.

A prompt trainer saves after every epoch (prompts are small). Once every model folder holds the new
epoch, older epoch files are deleted, except the last epoch's (`model.pth.tar-<MAX_EPOCH>`, which
--load-epoch loads) and multiples of TRAIN.CHECKPOINT_FREQ. A resume starts from the newest epoch that
every model folder holds, so a kill between two models' writes costs one epoch, never consistency.
"""
import os
import random
import re

import numpy as np
import torch

from datasets.common import atomic_write

EPOCH_FILE = re.compile(r"model\.pth\.tar-(\d+)")
MARKER = "checkpoint"  # Dassl's file naming the newest epoch file of a model folder
TEMPORARY_PREFIX = ".tmp-"  # atomic_write's temporary files, left behind only by a killed write


def rng_state():
    """Every random generator training draws from. DataLoaders draw their shuffling seed and their
    workers' base seed from torch's CPU generator when an epoch's iterator starts, so restoring these
    gives the same order and the same augmentations."""
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": numpy_state["state"]["pos"],
            "has_gauss": numpy_state["has_gauss"],
            "gauss": numpy_state["gauss"],
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state):
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    numpy_state = state["numpy"]
    np.random.set_state({
        "bit_generator": "MT19937",
        "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
        "has_gauss": numpy_state["has_gauss"],
        "gauss": numpy_state["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(folder, filename, checkpoint):
    """Save `checkpoint` as folder/filename through a temporary file, so a kill never leaves half a file."""
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        if name.startswith(TEMPORARY_PREFIX):  # from a write that was killed: one run writes here at a time
            os.remove(os.path.join(folder, name))
    atomic_write(os.path.join(folder, filename), "wb", lambda handle: torch.save(checkpoint, handle))


def write_marker(folder, filename):
    atomic_write(os.path.join(folder, MARKER), "w", lambda handle: handle.write(f"{filename}\n"))


def saved_epochs(folder):
    """The epochs whose `model.pth.tar-<epoch>` file exists in a model folder."""
    if not os.path.isdir(folder):
        return set()
    return {int(match[1]) for match in map(EPOCH_FILE.fullmatch, os.listdir(folder)) if match}


def latest_common_epoch(directory, names):
    """The newest epoch saved for every model in `names` under `directory`, or None."""
    common = set.intersection(*(saved_epochs(os.path.join(directory, name)) for name in names)) if names else set()
    return max(common, default=None)


def prune_epochs(directory, names, latest, keep):
    """Delete every model's epoch files older than `latest` unless `keep(epoch)`."""
    for name in names:
        folder = os.path.join(directory, name)
        for epoch in saved_epochs(folder):
            if epoch < latest and not keep(epoch):
                os.remove(os.path.join(folder, f"model.pth.tar-{epoch}"))
