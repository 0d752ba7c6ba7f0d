"""What every prompt-learning trainer shares: CLIP loading, precision, optimiser, checkpoints, eval.

A method's trainer subclasses `PromptTrainer`, names its config node, builds its model in
`build_model` and writes `forward_backward`.
"""
import os.path as osp
from contextlib import nullcontext

import torch
from dassl.engine import TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer

from . import dassl_compat
from .clip_loading import load_clip, resolve_precision
from .text_encoder import TextEncoder

# Buffers a checkpoint may carry that are rebuilt from class names (base and new classes differ).
CLASS_NAME_BUFFERS = ("token_prefix", "token_suffix", "tokenized_prompts", "order")


class TrainingSetupError(Exception):
    """What only training needs (an RIL table, a teacher, a stage-1 run) is missing or wrong."""


class PromptTrainer(TrainerX):
    """Dassl TrainerX with the CLIP prompt-learning plumbing; `CONFIG_NODE` names cfg.TRAINER.<node>."""

    CONFIG_NODE = None

    def __init__(self, cfg):
        super().__init__(cfg)  # builds the model
        model = getattr(self, "model", None)  # zero-shot CLIP trains nothing and has none
        for module in model.modules() if isinstance(model, torch.nn.Module) else ():
            if isinstance(module, TextEncoder):
                module.checkpointing = cfg.MODEL.TEXT_CHECKPOINTING

    @property
    def method_cfg(self):
        return self.cfg.TRAINER[self.CONFIG_NODE]

    def check_cfg(self, cfg):
        prec = cfg.TRAINER[self.CONFIG_NODE].PREC
        if prec not in ("fp16", "fp32", "amp"):
            raise ValueError(f"TRAINER.{self.CONFIG_NODE}.PREC must be fp16, fp32 or amp; got {prec!r}")
        check_normalisation(cfg)

    @property
    def precision(self):
        return resolve_precision(self.method_cfg.PREC, self.device)

    def load_clip_model(self, name_or_path=None):
        """The run's CLIP (MODEL.BACKBONE.NAME unless given) on the trainer's device, input size checked."""
        name_or_path = name_or_path or self.cfg.MODEL.BACKBONE.NAME
        print(f"Loading CLIP (backbone: {name_or_path}, precision: {self.precision})")
        clip_model = load_clip(name_or_path, self.precision, self.device)
        check_input_size(self.cfg, clip_model, name_or_path)
        self.clip_model = clip_model  # kept to build more prompts later; never checkpointed
        return clip_model

    def input_normalisation(self):
        """(mean, std) of every image's pixels: INPUT.PIXEL_*, which `check_cfg` makes Dassl's transforms apply."""
        return tuple(self.cfg.INPUT.PIXEL_MEAN), tuple(self.cfg.INPUT.PIXEL_STD)

    def register_trainable(self, name, module, params=None):
        """Build the optimiser and schedule for `module` (or explicit `params`) and register it."""
        optim = build_optimizer(module if params is None else None, self.cfg.OPTIM, params)
        sched = build_lr_scheduler(optim, self.cfg.OPTIM)
        self.register_model(name, module, optim, sched)
        return optim, sched

    def build_grad_scaler(self):
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "amp" else None

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.precision == "amp" else nullcontext()

    def backward_and_update(self, loss, names=None):
        """One optimiser step; through the grad scaler under amp."""
        if getattr(self, "scaler", None) is None:
            self.model_backward_and_update(loss, names)
            return
        self.model_zero_grad(names)
        self.detect_anomaly(loss)
        self.scaler.scale(loss).backward()
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self.scaler.step(self._optims[name])
        self.scaler.update()

    def end_of_epoch_step(self):
        """Dassl schedules step per epoch: call at the end of `forward_backward`."""
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()

    def prepare_training(self):
        """Build what only training needs (a region loader, a teacher): runs when training starts, so
        `--eval-only` never needs them. Subclasses extend it."""

    def before_train(self):
        try:
            self.prepare_training()
        except (FileNotFoundError, ValueError) as error:
            raise TrainingSetupError(str(error)) from error
        super().before_train()

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def load_model(self, directory, epoch=None):
        load_prompt_checkpoints(self, directory, epoch)

    @torch.no_grad()
    def test(self, split=None):
        """Dassl's test, with prompt-dependent text features computed once for the whole pass."""
        model = getattr(self, "model", None)
        with model.frozen_text_features() if hasattr(model, "frozen_text_features") else nullcontext():
            return super().test(split)


def check_normalisation(cfg):
    """Dassl's test transform normalises only with "normalize" in INPUT.TRANSFORMS, while CLIP and the RIL
    region loader expect INPUT.PIXEL_MEAN/STD-normalised pixels: without it every evaluation is silently off."""
    transforms = list(cfg.INPUT.TRANSFORMS)
    if "normalize" not in transforms:
        raise ValueError(
            f'INPUT.TRANSFORMS is {transforms}, without "normalize": Dassl\'s test transform would give CLIP raw '
            "[0, 1] pixels, while CLIP and the training regions are normalised with INPUT.PIXEL_MEAN/PIXEL_STD. "
            'Add "normalize" to INPUT.TRANSFORMS in the --config-file (as every config under configs/trainers: '
            'TRANSFORMS: ["random_resized_crop", "random_flip", "normalize"]) or to --transforms'
        )


def check_input_size(cfg, clip_model, name):
    resolution = clip_model.visual.input_resolution
    if tuple(cfg.INPUT.SIZE) != (resolution, resolution):
        raise ValueError(
            f"INPUT.SIZE is {tuple(cfg.INPUT.SIZE)} but the CLIP backbone {name!r} takes "
            f"{resolution} x {resolution} images; set INPUT.SIZE ({resolution}, {resolution})"
        )


def checkpoint_path(directory, name, epoch):
    model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
    path = osp.join(directory, name, model_file)
    if not osp.exists(path):
        hint = "" if epoch is not None else " (no best-val checkpoint: pass --load-epoch N)"
        raise FileNotFoundError(f"No checkpoint for '{name}' at {path}{hint}")
    return path


def load_prompt_checkpoints(trainer, directory, epoch=None):
    """Load every registered module, dropping class-name buffers and naming any shape mismatch."""
    if not directory:
        print("No --model-dir given: evaluating the model as built (e.g. zero-shot CLIP)")
        return
    for name in trainer.get_model_names():
        path = checkpoint_path(directory, name, epoch)
        checkpoint = dassl_compat.load_checkpoint(path)
        state_dict = {
            key: value for key, value in checkpoint["state_dict"].items()
            if key.rsplit(".", 1)[-1] not in CLASS_NAME_BUFFERS
        }
        module = trainer._models[name]
        expected = module.state_dict()
        for key, value in state_dict.items():
            if key in expected and expected[key].shape != value.shape:
                raise ValueError(
                    f"{path}: '{key}' has shape {tuple(value.shape)} but this run's model expects "
                    f"{tuple(expected[key].shape)}. The checkpoint was trained with another backbone "
                    f"or prompt setting (this run: MODEL.BACKBONE.NAME={trainer.cfg.MODEL.BACKBONE.NAME!r}); "
                    "evaluate with the config it was trained with."
                )
        module.load_state_dict(state_dict)
        print(f"Loaded {path} into '{name}' (epoch {checkpoint['epoch']})")
