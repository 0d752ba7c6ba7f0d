"""Checkpoints written by unpatched Dassl code (CoOp, MaPLe, PromptSRC, PromptKD), read through an allow-list.

Dassl's `save_checkpoint` stores `scheduler.state_dict()`; a warm-up scheduler's state holds its successor
scheduler as an object, and that holds the optimiser as an object, whose momentum buffers sit in a
`defaultdict` keyed by parameters. torch's weights-only loader refuses all three, even with the classes
added as safe globals. This unpickler admits exact (module, name) pairs only: torch's tensor rebuilding,
a few containers, and the optimiser and scheduler classes that Dassl's `build_optimizer` and
`build_lr_scheduler` make. Those classes are never imported nor instantiated: each becomes a
`PickledObject` that keeps its pickled state as data, so nothing in the file runs. Any other global is
refused with `pickle.UnpicklingError`, before anything of it is called.

This module is also the `pickle_module` handed to `torch.load`, which reads storages (of any device:
`cuda:0` from GPU runs) and maps them to the CPU.
"""
import pickle
import pickletools
import sys
import zipfile

import torch

# Tensors and parameters, as every torch version since 1.6 pickles them (storages are torch's own).
TENSOR_REBUILDS = frozenset({
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
})
CONTAINERS = frozenset({
    ("collections", "OrderedDict"),
    ("collections", "defaultdict"),  # an optimiser's state
    ("collections", "Counter"),  # MultiStepLR's milestones
    ("builtins", "dict"),  # the defaultdict's factory
})
# The optimisers and schedulers of Dassl's build_optimizer and build_lr_scheduler.
DASSL_CLASSES = frozenset({
    ("torch.optim.sgd", "SGD"),
    ("torch.optim.adam", "Adam"),
    ("torch.optim.adamw", "AdamW"),
    ("torch.optim.rmsprop", "RMSprop"),
    ("dassl.optim.radam", "RAdam"),
    ("dassl.optim.radam", "PlainRAdam"),
    ("dassl.optim.radam", "AdamW"),
    ("torch.optim.lr_scheduler", "StepLR"),
    ("torch.optim.lr_scheduler", "MultiStepLR"),
    ("torch.optim.lr_scheduler", "CosineAnnealingLR"),
    ("dassl.optim.lr_scheduler", "ConstantWarmupScheduler"),
    ("dassl.optim.lr_scheduler", "LinearWarmupScheduler"),
})
# What marks a file as unpatched Dassl's: globals that torch's weights-only loader refuses.
DASSL_MARKERS = DASSL_CLASSES | {("collections", "defaultdict"), ("collections", "Counter")}
_PYTHON2_MODULES = {"__builtin__": "builtins"}  # protocol 2, which torch.save writes, names builtins so


class PickledObject:
    """An allow-listed optimiser or scheduler object of a checkpoint, kept as data: `pickled_class`
    ("module.Name") and `state`, the dict it was pickled with."""

    pickled_class = ""

    def __setstate__(self, state):
        self.state = state

    def __repr__(self):
        return f"PickledObject({self.pickled_class})"


_STAND_INS = {
    pair: type(pair[1], (PickledObject,), {"pickled_class": ".".join(pair)}) for pair in sorted(DASSL_CLASSES)
}


class Unpickler(pickle.Unpickler):
    """pickle's Unpickler, admitting only the exact (module, name) pairs above."""

    def find_class(self, module, name):
        pair = (_PYTHON2_MODULES.get(module, module), name)
        if pair in _STAND_INS:
            return _STAND_INS[pair]
        if pair in TENSOR_REBUILDS:
            return getattr(torch._utils, name)
        if pair in CONTAINERS:
            return super().find_class(*pair)
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not allowed in a Dassl checkpoint")


def load(file, **kwargs):
    """pickle.load through the allow-list (torch.load reads a legacy file's header with it)."""
    return Unpickler(file, **kwargs).load()


def pickled_globals(path):
    """The (module, name) pairs named by the GLOBAL opcodes of a torch zip checkpoint's pickle, read without
    unpickling; empty for the pre-1.6 format. torch.save writes protocol 2, where every global is a GLOBAL."""
    if not zipfile.is_zipfile(path):
        return set()
    with zipfile.ZipFile(path) as archive:
        names = [name for name in archive.namelist() if name.endswith("/data.pkl") and name.count("/") == 1]
        data = archive.read(names[0]) if names else b""
    found = set()
    try:
        for opcode, argument, _ in pickletools.genops(data):
            if opcode.name == "GLOBAL":
                module, _, name = argument.partition(" ")
                found.add((_PYTHON2_MODULES.get(module, module), name))
    except ValueError:  # not a pickle past this point: loading it names the fault
        pass
    return found


def written_by_unpatched_dassl(path):
    """Whether the checkpoint pickles what only unpatched Dassl code writes: optimiser or scheduler objects."""
    return bool(pickled_globals(path) & DASSL_MARKERS)


def load_checkpoint(path):
    """The checkpoint at `path` through the allow-list, storages on the CPU; UnpicklingError on any other global."""
    return torch.load(path, map_location="cpu", pickle_module=sys.modules[__name__], weights_only=False)


def scheduler_state(state):
    """A scheduler state as the patched warm-up schedulers load it: unpatched Dassl's successor object becomes
    its state dict, without the optimiser object (the optimiser's own state is the checkpoint's "optimizer")."""
    successor = state.get("successor")
    if isinstance(successor, PickledObject):
        return {**state, "successor": {key: value for key, value in successor.state.items() if key != "optimizer"}}
    return state
