"""Resuming a run of the reference code whose Dassl checkpoint holds its whole model (MaPLe, IVLP, PromptSRC,
PromptKD): prompts, momentum and schedule, in this project's modules.

The references build one optimiser with Dassl's `build_optimizer(self.model)`: its state's integer keys number
the model's parameters in `named_parameters()` order, frozen CLIP weights included, and only the parameters that
received gradients hold a state (SGD's momentum buffer). The file's `state_dict` lists the same parameters in the
same order, among the buffers its layout names, so each state is named by its position there, placed through the
layout's key mapping (trainers/checkpoint_import.py) and given to the optimiser of the module it lands in, at that
parameter's position. Every optimiser takes the file's hyperparameters and its one schedule.
"""
import copy
import os.path as osp
import re

import torch

from . import dassl_compat
from .checkpoint_import import CLIP, REBUILT, ZERO_SHOT_TOWER, check_frozen_weights, reference_method
from .checkpoints import saved_epochs
from .dassl_pickle import scheduler_state
from .gpa import PromptAggregate, flat_parameters

# Optimiser group entries that tell no optimiser from another: its parameters, and flags torch versions add or drop.
NOT_THE_KIND = frozenset({"params", "maximize", "foreach", "differentiable", "fused", "capturable"})


def resume_reference_run(trainer, directory, layout, load_state):
    """Load the newest epoch file of the reference run in `directory` (saved in `layout`) into `trainer`'s modules,
    optimisers and schedules; returns its epoch. `load_state(trainer, name, state_dict, path)` loads the prompts of
    one module and names what does not fit (base.load_module_state)."""
    folder = osp.join(directory, layout.folder)
    epoch = max(saved_epochs(folder), default=None)
    if epoch is None:
        raise ValueError(f"{folder} holds no epoch file (model.pth.tar-N) to resume from: train anew")
    path = osp.join(folder, f"model.pth.tar-{epoch}")
    checkpoint = dassl_compat.load_checkpoint(path)
    check_method(type(trainer).__name__, layout, checkpoint["state_dict"], path)
    prompts, frozen = layout.sort(checkpoint["state_dict"], path)
    setting = f"MODEL.BACKBONE.NAME (--backbone) is {trainer.cfg.MODEL.BACKBONE.NAME!r}"
    check_frozen_weights(trainer.clip_model, frozen, path, setting)
    states, group = optimiser_states(layout, checkpoint, path)
    schedule = scheduler_state(checkpoint["scheduler"])
    absent = [name for name in trainer.get_model_names() if name not in prompts and name not in layout.unused]
    if absent:
        raise ValueError(f"{path} ({layout.method}'s layout) holds nothing for this run's {', '.join(absent)}")
    for name, state_dict in prompts.items():
        load_state(trainer, name, state_dict, path)
        load_optimiser(trainer._optims[name], trainer._models[name], states.get(name, {}), group, path)
        trainer._scheds[name].load_state_dict(copy.deepcopy(schedule))
    print(f"Resuming {path} ({layout.method}'s layout) in {', '.join(map(repr, prompts))}: prompts, momentum and "
          f"schedule of epoch {epoch}; frozen CLIP weights checked, not loaded. It holds no random states (the "
          "reference code saves none): the resumed epochs draw other batches than an uninterrupted run would")
    for name in set(layout.unused) & set(trainer.get_model_names()):  # IVLP shares the layout, not PromptSRC's GPA
        continue_prompt_average(trainer, name, epoch)
    return epoch


def check_method(trainer_name, layout, state_dict, path):
    """Refuse a file of another method than the trainer's: IVLP and PromptSRC share a folder, not their losses."""
    method = reference_method(layout, state_dict)
    if method != trainer_name:
        holds = "holds no" if method == "IVLP" else "holds"
        raise ValueError(
            f"{path} {holds} PromptSRC's zero-shot image tower ({ZERO_SHOT_TOWER}*): it is a run of {method}'s "
            f"reference code, which {trainer_name} would continue with other losses. Resume it with --trainer {method}"
        )


def parameter_keys(layout, state_dict):
    """The file's parameter keys in its model's `named_parameters()` order: its state dict without the buffers."""
    return [key for key in state_dict if not re.fullmatch(layout.buffers, key)]


def optimiser_states(layout, checkpoint, source):
    """({module: {key: per-parameter state}}, hyperparameters) of the file's optimiser, each state named by its
    position among the file's parameters and placed through the layout."""
    optimizer, state_dict = checkpoint["optimizer"], checkpoint["state_dict"]
    keys = parameter_keys(layout, state_dict)
    groups = optimizer["param_groups"] if optimizer else []
    indices = [index for group in groups for index in group["params"]]
    if len(groups) != 1 or len(indices) != len(keys):
        raise ValueError(
            f"{source}: its optimiser numbers {len(indices)} parameters in {len(groups)} groups, and its model has "
            f"{len(keys)}; {layout.method}'s code builds one group over the whole model (Dassl's build_optimizer "
            "without OPTIM.STAGED_LR), which names each momentum buffer by position. This file was written "
            "otherwise: evaluate it with --eval-only, or train anew"
        )
    placed = {}
    for key, index in zip(keys, indices):
        state = optimizer["state"].get(index)
        if not state:
            continue
        target, our_key, convert = layout.place(key, source)
        if target in (CLIP, REBUILT):
            raise ValueError(
                f"{source}: its optimiser holds a state for '{key}', a weight {layout.method}'s code keeps frozen "
                "and this project never trains: the run trained more than the prompts. Train anew"
            )
        what = f"{source}: the optimiser state of parameter {index} ('{key}')"
        placed.setdefault(target, {})[our_key] = {
            name: fitted(value, state_dict[key], convert, what) for name, value in state.items()
        }
    return placed, {name: value for name, value in groups[0].items() if name != "params"}


def fitted(value, param, convert, what):
    """A per-parameter optimiser state tensor in the form of this project's parameter (scalars, as Adam's step,
    as they are); refused when its shape is not that of the parameter at its position (`what`)."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return value
    if value.shape != param.shape:
        raise ValueError(
            f"{what} has shape {tuple(value.shape)}, but that parameter has {tuple(param.shape)}: the file's model "
            "is not the one its optimiser was built over. Train anew"
        )
    return convert(value) if convert else value


def load_optimiser(optim, module, states, group, source):
    """Load `states` ({key: state} of `module`'s parameters) and the file's hyperparameters `group` into `optim`,
    which Dassl built over `module`: its state's keys number the parameters of its one group."""
    assert len(optim.param_groups) == 1, "register_trainable builds one group"
    names = {id(param): name for name, param in module.named_parameters()}
    order = [names[id(param)] for param in optim.param_groups[0]["params"]]
    assert states.keys() <= set(order), "a state for a parameter the module's optimiser does not hold"
    found, ours = set(group) - NOT_THE_KIND, set(optim.param_groups[0]) - NOT_THE_KIND
    if found != ours:
        raise ValueError(
            f"{source} was trained with another optimiser (settings {', '.join(sorted(found))}) than this run's "
            f"(settings {', '.join(sorted(ours))}): resume it with the OPTIM.NAME it was trained with"
        )
    optim.load_state_dict({
        "state": {index: states[name] for index, name in enumerate(order) if name in states},
        "param_groups": [{**group, "params": list(range(len(order)))}],
    })


def continue_prompt_average(trainer, name, epoch):
    """PromptSRC's Gaussian prompt average (GPA) of epochs 1..`epoch` is not in its file: the file's prompts, those
    of `epoch`, stand in for each of them, with the weights of those epochs."""
    aggregate = trainer._models[name]
    assert isinstance(aggregate, PromptAggregate), f"'{name}' is not a prompt average"
    share = sum(aggregate.weights[:epoch])
    with torch.no_grad():
        aggregate.total.copy_(flat_parameters(trainer._models["prompt_learner"]) * share)
    if epoch < trainer.max_epoch:
        print(f"PromptSRC's checkpoint holds no running Gaussian prompt average (GPA): epochs 1-{epoch}, {share:.3g} "
              f"of its weight, enter it with the prompts of epoch {epoch} instead of their own, so the final prompts "
              "differ from those of an uninterrupted run by that share")
