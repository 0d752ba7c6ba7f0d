"""Fixes for Dassl.pytorch (last release 2022) on current PyTorch and NumPy, applied at import.

Each fix is small and replaces one Dassl function or method in place; `tests/test_dassl_compat.py`
shows that each breakage is real without the fix and gone with it.

1. The warm-up schedulers pass `verbose` positionally to `LRScheduler.__init__`, which no longer
   takes it: every config with `OPTIM.WARMUP_EPOCH > 0` fails with a TypeError.
2. The warm-up schedulers' `state_dict` holds the successor scheduler object (and through it the
   optimizer), so a checkpoint cannot be read back with `torch.load(weights_only=True)`. The
   successor is now saved as its own state dict.
3. `load_checkpoint` calls `torch.load` without `weights_only`; it now loads weights-only, so opening a
   checkpoint never runs code from the file. Checkpoints of unpatched Dassl code (the reference
   repositories') pickle their optimiser and scheduler objects: those are read through the allow-list of
   `trainers/dassl_pickle.py`, which runs nothing from the file either.
4. `TrainerBase.load_model` formats `val_result`, which is None for last-epoch checkpoints.
5. `np.int` (removed in NumPy 1.24) in the AutoAugment and RandAugment transforms.
6. Importing Dassl's WILDS readers calls `logging.disable(logging.WARNING)`, which silences every
   library's warnings for the whole process; logging is enabled again.
7. `read_image` lets PIL's error through without the image's path ("image file is truncated"), from
   a loader worker with the worker's traceback; it now raises `UnreadableImageError` naming the file.
8. `Logger` opens log.txt in the locale's encoding, so under LC_ALL=C a unicode class name stops the
   run; log.txt is now always UTF-8.
9. `load_checkpoint` of a truncated file fails deep inside torch; a checkpoint is now checked to be
   a complete archive first and refused with `CheckpointError` naming it.
"""
import logging
import os.path as osp
import pickle
import re
import sys
import types
import zipfile

import numpy as np
import torch
from PIL import Image
from torch.optim.lr_scheduler import LRScheduler

import dassl.data.data_manager as dassl_data_manager
import dassl.engine.trainer as dassl_trainer
import dassl.utils as dassl_utils
import dassl.utils.logger as dassl_logger
import dassl.utils.tools as dassl_tools
import dassl.utils.torchtools as dassl_torchtools
from dassl.data.transforms import autoaugment, randaugment
from dassl.engine.trainer import TrainerBase
from dassl.optim import lr_scheduler as dassl_lr_scheduler

from . import dassl_pickle

_WarmupScheduler = dassl_lr_scheduler._BaseWarmupScheduler


def _warmup_init(self, optimizer, successor, warmup_epoch, last_epoch=-1, verbose=False):
    self.successor = successor
    self.warmup_epoch = warmup_epoch
    LRScheduler.__init__(self, optimizer, last_epoch)


def _warmup_state_dict(self):
    state = LRScheduler.state_dict(self)
    state["successor"] = self.successor.state_dict()
    return state


def _warmup_load_state_dict(self, state_dict):
    state = dict(state_dict)
    successor_state = state.pop("successor")
    LRScheduler.load_state_dict(self, state)
    self.successor.load_state_dict(successor_state)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be loaded: truncated, corrupt, or holding pickled objects."""


class UnreadableImageError(ValueError):
    """An image file that PIL cannot decode, named by path."""

    def __init__(self, message):
        # A loader worker's error comes back as this type built from "Caught ... Original Traceback ...
        # UnreadableImageError: <message>": keep only the message.
        super().__init__(message.rsplit(f"{type(self).__name__}: ", 1)[-1].strip())


# torch.save's format before PyTorch 1.6 is no zip archive: it opens with its magic number, pickled
# (protocol 2, a 10-byte LONG1).
_LEGACY_TORCH_HEADER = b"\x80\x02\x8a\x0a" + torch.serialization.MAGIC_NUMBER.to_bytes(10, "little")


def _damage(fpath):
    """Why `fpath` is not a complete checkpoint, or None: torch.save writes a zip archive, and a truncated
    or damaged copy fails the archive's directory or its CRC checks."""
    if not zipfile.is_zipfile(fpath):
        with open(fpath, "rb") as handle:
            legacy = handle.read(len(_LEGACY_TORCH_HEADER)) == _LEGACY_TORCH_HEADER
        return None if legacy else "it is not a complete zip archive as torch.save writes (truncated?)"
    try:
        with zipfile.ZipFile(fpath) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as error:
        return f"its archive cannot be read ({error})"
    return None if damaged is None else f"its member {damaged} fails its checksum"


def _cut_short(fpath, damage):
    return CheckpointError(
        f'"{fpath}" is not a usable checkpoint: {damage}. It was cut short or damaged (an interrupted copy, '
        "a full disk); copy it again, or train again"
    )


def load_checkpoint(fpath):
    """Dassl's `load_checkpoint`, weights-only: tensors and plain containers, never code. A checkpoint of
    unpatched Dassl code goes through the allow-list of `dassl_pickle`, storages mapped to the CPU."""
    if not fpath:
        raise ValueError("Checkpoint path is empty")
    if not osp.exists(fpath):
        raise FileNotFoundError(f'No checkpoint file at "{fpath}"')
    damage = _damage(fpath)
    if damage:
        raise _cut_short(fpath, damage)
    map_location = None if torch.cuda.is_available() else "cpu"
    try:
        if dassl_pickle.written_by_unpatched_dassl(fpath):
            return dassl_pickle.load_checkpoint(fpath)
        return torch.load(fpath, map_location=map_location, weights_only=True)
    except EOFError as error:  # only a legacy-format file gets here truncated
        raise _cut_short(fpath, "it ends early") from error
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f'"{fpath}" contains pickled Python objects, which are not loaded because that could '
            "run code from the file. Checkpoints written by this project hold only tensors and "
            "plain values, and those of unpatched Dassl code (CoOp, MaPLe, PromptSRC, PromptKD) also "
            f"their optimiser and scheduler objects; this one holds another{_refused_global(error)}. If you "
            "trust the file, re-save its 'state_dict' entry with torch.save and load that."
        ) from error


def _refused_global(error):
    """' (module.name)' of the global an unpickler refused, as torch's and dassl_pickle's errors name it."""
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    return f" ({match[1]})" if match else ""


def _load_model(self, directory, epoch=None):
    if not directory:
        print("Note that load_model() is skipped as no pretrained model is given")
        return
    model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
    for name in self.get_model_names():
        model_path = osp.join(directory, name, model_file)
        if not osp.exists(model_path):
            raise FileNotFoundError(f"No model at {model_path}")
        checkpoint = load_checkpoint(model_path)
        val_result = checkpoint["val_result"]
        shown = "n/a" if val_result is None else f"{val_result:.1f}"
        print(f"Load {model_path} to {name} (epoch={checkpoint['epoch']}, val_result={shown})")
        self._models[name].load_state_dict(checkpoint["state_dict"])


def read_image(path):
    """Dassl's `read_image`, with the path in the error of a file PIL cannot decode."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, SyntaxError) as error:  # PIL reports some corrupt files as SyntaxError
        raise UnreadableImageError(
            f"cannot read the image {path}: {error}. Replace the file (copy it again), or remove it and its "
            "entry from the split file"
        ) from error


def _logger_init(self, fpath=None):
    self.console = sys.stdout
    self.file = None
    if fpath is not None:
        dassl_tools.mkdir_if_missing(osp.dirname(fpath))
        self.file = open(fpath, "w", encoding="utf-8")


class _NumpyWithInt(types.ModuleType):
    """NumPy as one Dassl module sees it: plus the `np.int` alias that NumPy 1.24 removed."""

    int = int

    def __getattr__(self, name):
        return getattr(np, name)


def apply():
    """Install every fix; safe to call more than once."""
    _WarmupScheduler.__init__ = _warmup_init
    _WarmupScheduler.state_dict = _warmup_state_dict
    _WarmupScheduler.load_state_dict = _warmup_load_state_dict
    for module in (dassl_torchtools, dassl_utils, dassl_trainer):
        module.load_checkpoint = load_checkpoint
    TrainerBase.load_model = _load_model
    for module in (dassl_data_manager, dassl_utils, dassl_tools):
        module.read_image = read_image
    dassl_logger.Logger.__init__ = _logger_init
    for module in (autoaugment, randaugment):
        if not isinstance(module.np, _NumpyWithInt):
            module.np = _NumpyWithInt("numpy")
    logging.disable(logging.NOTSET)


apply()
