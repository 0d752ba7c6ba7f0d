"""What every prompt-learning trainer shares: CLIP loading, precision, optimiser, checkpoints, eval.

A method's trainer subclasses `PromptTrainer`, names its config node, builds its model in
`build_model` and writes `forward_backward`. Checkpoints are written after every epoch with the
backbone identity and the random states (trainers/checkpoints.py), so a resumed run ends with the
same prompts, bit for bit on CPU, as one that was never interrupted.
"""
import os.path as osp
from contextlib import nullcontext
from functools import cached_property

import torch
from dassl.engine import TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer
from torch.utils.data import DistributedSampler

from . import dassl_compat, distributed
from .checkpoint_import import check_frozen_weights, published_layout, reference_folders
from .checkpoints import (
    latest_common_epoch, prune_epochs, rng_state, set_rng_state, write_checkpoint, write_marker,
)
from .clip_loading import load_clip, resolve_precision
from .dassl_pickle import scheduler_state
from .reference_resume import resume_reference_run
from .run_record import backbone_identity, same_backbone
from .text_encoder import TextEncoder

# Buffers a checkpoint may carry that are rebuilt from class names (base and new classes differ).
CLASS_NAME_BUFFERS = ("token_prefix", "token_suffix", "tokenized_prompts", "order")


class TrainingSetupError(Exception):
    """What only training needs (an RIL table, a teacher, a stage-1 run) is missing or wrong."""


class PromptTrainer(TrainerX):
    """Dassl TrainerX with the CLIP prompt-learning plumbing; `CONFIG_NODE` names cfg.TRAINER.<node>."""

    CONFIG_NODE = None

    def __init__(self, cfg):
        self.saved_epoch = None  # the last epoch `save_model` wrote epoch files for
        self.resumed_state = None  # the training state of the checkpoint a resume loaded
        super().__init__(cfg)  # builds the model
        model = getattr(self, "model", None)  # zero-shot CLIP trains nothing and has none
        for module in model.modules() if isinstance(model, torch.nn.Module) else ():
            if isinstance(module, TextEncoder):
                module.checkpointing = cfg.MODEL.TEXT_CHECKPOINTING
        if distributed.world_size() > 1:  # torchrun: start from rank 0's prompts; log what every rank averages
            distributed.broadcast_parameters(self._models.values())
            own_step = self.forward_backward
            self.forward_backward = lambda batch: distributed.average_scalars(own_step(batch))

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

    @cached_property
    def backbone_identity(self):
        """MODEL.BACKBONE.NAME, or its checkpoint's path and sha256: stored in every checkpoint."""
        return backbone_identity(self.cfg.MODEL.BACKBONE.NAME)

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
        return register_trainable(self, name, module, params)

    def install_prompted_model(self, model, name="prompt_learner", learner=None):
        """`self.model` = `model` on the device with only its prompt learner trainable; that learner (or
        `learner`) registered as `name` with its optimiser and schedule; the grad scaler built."""
        self.model = freeze_all_but_prompts(model).to(self.device)
        self.register_trainable(name, model.prompt_learner if learner is None else learner)
        self.build_grad_scaler()

    def build_grad_scaler(self):
        self.scaler = torch.amp.GradScaler("cuda") if self.precision == "amp" else None

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.float16) if self.precision == "amp" else nullcontext()

    def backward_and_update(self, loss, names=None):
        backward_and_update(self, loss, names)

    def end_of_epoch_step(self):
        end_of_epoch_step(self)

    def prepare_training(self):
        """Build what only training needs (a region loader, a teacher): runs when training starts, so
        `--eval-only` never needs them. Subclasses extend it."""

    def before_train(self):
        try:
            self.prepare_training()
            super().before_train()  # resumes from OUTPUT_DIR or RESUME
        except (FileNotFoundError, ValueError) as error:
            raise TrainingSetupError(str(error)) from error
        if self.resumed_state is not None:  # last, so nothing draws from the generators after it
            self.best_result = self.resumed_state["best_result"]
            set_rng_state(self.resumed_state["rng"])

    def build_data_loader(self):
        """Dassl's loaders; under torchrun the training one reads each process's share of every global batch."""
        super().build_data_loader()
        if distributed.world_size() > 1:
            loader, cfg = self.train_loader_x, self.cfg
            batch_size = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
            self.train_loader_x = distributed.seeded_loader(
                loader.dataset, batch_size, "images", max(cfg.SEED, 0), drop_last=len(loader.dataset) >= batch_size,
                num_workers=loader.num_workers, pin_memory=loader.pin_memory,
            )

    def before_epoch(self):
        super().before_epoch()
        sampler = getattr(self.train_loader_x, "sampler", None)
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(self.epoch)

    def init_writer(self, log_dir):
        if distributed.is_main_process():  # only rank 0 writes
            super().init_writer(log_dir)

    def after_epoch(self):
        if distributed.is_main_process():  # only rank 0 evaluates and checkpoints; the others wait for it
            super().after_epoch()  # Dassl saves at TRAIN.CHECKPOINT_FREQ and after the last epoch only
            if self.saved_epoch != self.epoch:
                self.save_model(self.epoch, self.output_dir)
        distributed.barrier()

    def save_model(self, epoch, directory, is_best=False, val_result=None, model_name=""):
        """Dassl's save_model, written atomically, each checkpoint with the backbone identity and the training
        state (random generators, best validation result); older epoch files are pruned once all are written."""
        filename = model_name or f"model.pth.tar-{epoch + 1}"
        shared = {"backbone": self.backbone_identity,  # plain floats: numpy scalars fail weights-only loading
                  "training_state": {"rng": rng_state(), "best_result": float(self.best_result)}}
        for name in self.get_model_names():
            optim, sched = self._optims[name], self._scheds[name]
            checkpoint = {
                "state_dict": self._models[name].state_dict(), "epoch": epoch + 1,
                "optimizer": None if optim is None else optim.state_dict(),
                "scheduler": None if sched is None else sched.state_dict(),
                "val_result": None if val_result is None else float(val_result), **shared,
            }
            folder = osp.join(directory, name)
            write_checkpoint(folder, filename, checkpoint)
            if is_best:
                write_checkpoint(folder, "model-best.pth.tar", checkpoint)
            if not model_name:
                write_marker(folder, filename)
        print(f"Checkpoint saved: {osp.join(directory, '<model>', filename)}")
        if not model_name:
            self.saved_epoch = epoch
            freq = self.cfg.TRAIN.CHECKPOINT_FREQ
            prune_epochs(directory, self.get_model_names(), epoch + 1,
                         keep=lambda kept: kept == self.max_epoch or (freq > 0 and kept % freq == 0))

    def resume_model_if_exist(self, directory):
        """Load the newest epoch every model folder holds, with its optimiser and schedule; its training
        state is restored at the end of `before_train`. Returns the epoch to start from. Runs of the reference
        code resume too: CoOp's here (its pickled scheduler read as a state), whole-model ones through their layout
        (trainers/reference_resume.py)."""
        names = self.get_model_names()
        layout = published_layout(type(self).__name__, directory, names)
        if layout is not None:
            return resume_reference_run(self, directory, layout, load_module_state)
        epoch = latest_common_epoch(directory, names)
        if epoch is None:
            print("No checkpoint found, train from scratch")
            return 0
        print(f"Found checkpoints of epoch {epoch} in {directory}: resuming training after it")
        for name in names:
            path = osp.join(directory, name, f"model.pth.tar-{epoch}")
            checkpoint = dassl_compat.load_checkpoint(path)
            state_dict = {key: value for key, value in checkpoint["state_dict"].items()
                          if key.rsplit(".", 1)[-1] not in CLASS_NAME_BUFFERS}  # CoOp's saves them
            load_module_state(self, name, state_dict, path)
            for part, state in ((self._optims[name], "optimizer"), (self._scheds[name], "scheduler")):
                if part is not None and checkpoint[state] is not None:
                    part.load_state_dict(scheduler_state(checkpoint[state]) if state == "scheduler"
                                         else checkpoint[state])
        self.resumed_state = checkpoint.get("training_state")
        if self.resumed_state is None:
            print("The checkpoints hold no random states (an older version or the reference code wrote them): the "
                  "resumed epochs draw other batches than an uninterrupted run would")
        return epoch

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def load_model(self, directory, epoch=None):
        load_prompt_checkpoints(self, directory, epoch)

    @torch.no_grad()
    def test(self, split=None):
        """Dassl's test, with prompt-dependent text features computed once for the whole pass (on rank 0 only)."""
        if not distributed.is_main_process():
            return None
        model = getattr(self, "model", None)
        with model.frozen_text_features() if hasattr(model, "frozen_text_features") else nullcontext():
            return super().test(split)


def freeze_all_but_prompts(model):
    """Only the parameters under `model.prompt_learner` train; the CLIP stays frozen. Returns `model`."""
    for name, param in model.named_parameters():
        param.requires_grad_(name.startswith("prompt_learner"))
    return model


def register_trainable(trainer, name, module, params=None):
    """Build the optimiser and schedule for `module` (or explicit `params`) from OPTIM and register it with any
    Dassl trainer."""
    optim = build_optimizer(module if params is None else None, trainer.cfg.OPTIM, params)
    sched = build_lr_scheduler(optim, trainer.cfg.OPTIM)
    trainer.register_model(name, module, optim, sched)
    return optim, sched


def backward_and_update(trainer, loss, names=None):
    """One optimiser step of any Dassl trainer, as Dassl's model_backward_and_update; through its grad scaler
    (`trainer.scaler`, as the CoOp family keeps it under amp) when it has one; gradients averaged over the
    processes under torchrun."""
    scaler = getattr(trainer, "scaler", None)
    trainer.model_zero_grad(names)
    trainer.detect_anomaly(loss)
    (loss if scaler is None else scaler.scale(loss)).backward()
    optimisers = [trainer._optims[name] for name in trainer.get_model_names(names) if trainer._optims[name] is not None]
    distributed.average_gradients(param for optim in optimisers for group in optim.param_groups
                                  for param in group["params"])
    for optim in optimisers:
        if scaler is None:
            optim.step()
        else:
            scaler.step(optim)
    if scaler is not None:
        scaler.update()


def end_of_epoch_step(trainer):
    """Dassl schedules step per epoch: call at the end of `forward_backward`."""
    if (trainer.batch_idx + 1) == trainer.num_batches:
        trainer.update_lr()


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


def check_backbone(trainer, checkpoint, path):
    """A checkpoint naming another backbone is refused, even one of the same width (ViT-B/32 and ViT-B/16
    prompts have the same shapes). Checkpoints of older versions and of other code name none."""
    recorded = checkpoint.get("backbone")
    if recorded is not None and not same_backbone(recorded, trainer.backbone_identity):
        raise ValueError(
            f"{path} was trained with the backbone {recorded}, but this run's MODEL.BACKBONE.NAME is "
            f"{trainer.backbone_identity}; evaluate it with the backbone it was trained with (--backbone)"
        )


def checkpoint_path(directory, name, epoch):
    model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
    path = osp.join(directory, name, model_file)
    if not osp.exists(path):
        hint = "" if epoch is not None else " (no best-val checkpoint: pass --load-epoch N)"
        raise FileNotFoundError(f"No checkpoint for '{name}' at {path}{hint}")
    return path


def load_prompt_checkpoints(trainer, directory, epoch=None):
    """Load every registered module from this project's model folders, or from the folder of the reference
    code's whole-model checkpoint (trainers/checkpoint_import.py); class-name buffers are dropped."""
    if not directory:
        print("No --model-dir given: evaluating the model as built (e.g. zero-shot CLIP)")
        return
    layout = published_layout(type(trainer).__name__, directory, trainer.get_model_names())
    if layout is not None:
        load_published_checkpoint(trainer, directory, epoch, layout)
        return
    others = reference_folders(directory)
    for name in trainer.get_model_names():
        if others and not osp.isdir(osp.join(directory, name)):
            raise FileNotFoundError(
                f"No '{name}' folder in {directory}, which holds {' and '.join(others)} of the reference code: "
                f"{type(trainer).__name__} does not read it; evaluate it with the --trainer named there"
            )
        path = checkpoint_path(directory, name, epoch)
        checkpoint = dassl_compat.load_checkpoint(path)
        check_backbone(trainer, checkpoint, path)
        state_dict = {
            key: value for key, value in checkpoint["state_dict"].items()
            if key.rsplit(".", 1)[-1] not in CLASS_NAME_BUFFERS
        }
        load_module_state(trainer, name, state_dict, path)
        print(f"Loaded {path} into '{name}' (epoch {checkpoint['epoch']})")


def load_published_checkpoint(trainer, directory, epoch, layout):
    """The prompts of a reference checkpoint into their modules, after its frozen weights are checked against
    the run's CLIP. Registered modules the layout has no counterpart of (`layout.unused`) stay as built."""
    path = checkpoint_path(directory, layout.folder, epoch)
    checkpoint = dassl_compat.load_checkpoint(path)
    prompts, frozen = layout.sort(checkpoint["state_dict"], path)
    setting = f"MODEL.BACKBONE.NAME (--backbone) is {trainer.cfg.MODEL.BACKBONE.NAME!r}"
    check_frozen_weights(trainer.clip_model, frozen, path, setting)
    absent = [name for name in trainer.get_model_names() if name not in prompts and name not in layout.unused]
    if absent:
        raise ValueError(f"{path} ({layout.method}'s layout) holds nothing for this run's {', '.join(absent)}")
    for name, state_dict in prompts.items():
        load_module_state(trainer, name, state_dict, path)
    print(f"Loaded {path} ({layout.method}'s layout) into {', '.join(map(repr, prompts))} "
          f"(epoch {checkpoint['epoch']}; frozen CLIP weights checked, not loaded)")


def load_module_state(trainer, name, state_dict, path):
    """Load `state_dict` into the registered module `name`, naming any key or shape that does not fit."""
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
    extra, missing = sorted(state_dict.keys() - expected.keys()), sorted(expected.keys() - state_dict.keys())
    if extra or missing:
        found = [f"{kind} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
                 for kind, keys in (("holds", extra), ("lacks", missing)) if keys]
        raise ValueError(
            f"{path}: for this run's '{name}' it {' and '.join(found)}. It was trained with another method or "
            f"prompt setting (depth, tokens, projector) than this run's {type(trainer).__name__} config; evaluate "
            "it with the trainer and config it was trained with."
        )
    module.load_state_dict(state_dict)
