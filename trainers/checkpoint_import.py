"""Checkpoints of the reference code, mapped once onto this project's modules and keys.

CoOp and CoCoOp save their prompt learner alone, in `prompt_learner/`, under this project's keys (`ctx`,
CoCoOp's `meta_net.*`): they load as this project's own checkpoints do. MaPLe, IVLP/PromptSRC, PromptKD and
VPT save their whole model under one Dassl model folder; a `Layout` sorts every key of such a file into
- a prompt of one of this project's modules (renamed, and converted where the two differ in form),
- a frozen CLIP weight (renamed to CLIP's own key): compared with the run's CLIP, so that a checkpoint of
  another backbone is named as such, and never loaded,
- a class-name buffer: it belongs to the training classes and is rebuilt for the run's.
A key that no rule matches is an error: the file is not that method's.
"""
import os.path as osp
import re
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch

CLIP = "frozen CLIP"
REBUILT = "rebuilt from class names"
# Relative difference (in norm) up to which a frozen weight counts as the run's: PromptSRC's prompt averaging
# also averages the frozen weights, in fp16, which leaves them ~1e-3 off; another CLIP is off by ~1.
FROZEN_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Rule:
    """Keys of the file that match `pattern` (whole key) go to `target` (a module name, CLIP or REBUILT), under
    `key` (a re template on the match; empty keeps the key), through `convert` when given."""

    pattern: str
    target: str
    key: str = ""
    convert: Optional[Callable] = None


@dataclass(frozen=True)
class Frozen:
    """A frozen weight of a checkpoint: its key in the file, CLIP's key for it, and its value."""

    file_key: str
    clip_key: str
    value: torch.Tensor


@dataclass(frozen=True)
class Layout:
    """How the reference code `method` saves: its Dassl model folder (`other_folders`: names its files are also
    published under), the rules for its keys, and `buffers`, the pattern of the keys that are buffers, not
    parameters (its optimiser numbers the parameters only; empty: none). `unused` names this project's modules
    that the file has no counterpart of; evaluation does not need them."""

    method: str
    folder: str
    rules: tuple
    buffers: str = ""
    unused: tuple = ()
    other_folders: tuple = ()

    def in_directory(self, directory):
        """This layout with `folder` the one of its folders that `directory` holds, or None."""
        for folder in (self.folder, *self.other_folders):
            if osp.isdir(osp.join(directory, folder)):
                return replace(self, folder=folder)
        return None

    def sort(self, state_dict, source):
        """({module: state dict}, [Frozen]) of a checkpoint's `state_dict`; `source` names the file in errors."""
        prompts, frozen = {}, []
        for file_key, value in state_dict.items():
            target, key, convert = self.place(file_key, source)
            value = convert(value) if convert else value
            if target == CLIP:
                frozen.append(Frozen(file_key, key, value))
            elif target != REBUILT:
                prompts.setdefault(target, {})[key] = value
        return prompts, frozen

    def place(self, file_key, source):
        """(target, key, conversion or None) of the file's `file_key`; `source` names the file in errors."""
        rule, match = self._rule(file_key, source)
        return rule.target, match.expand(rule.key) if rule.key else file_key, rule.convert

    def _rule(self, file_key, source):
        for rule in self.rules:
            match = re.fullmatch(rule.pattern, file_key)
            if match:
                return rule, match
        writers = [layout.method for layout in dict.fromkeys(LAYOUTS.values())  # IVLP's layout is PromptSRC's
                   if layout is not self and layout.prompt_key(file_key)]
        hint = f"a key of {' and '.join(writers)} checkpoints" if writers else "written by other code"
        raise ValueError(
            f"{source} holds '{file_key}', which a {self.method} checkpoint ({self.folder}/) does not ({hint}). "
            "Evaluate it with the trainer of the method that wrote it (--trainer)"
        )

    def prompt_key(self, file_key):
        """Whether `file_key` is a prompt in this layout."""
        return any(rule.target not in (CLIP, REBUILT) and re.fullmatch(rule.pattern, file_key) for rule in self.rules)


def one_by_one_convolution(value):
    """PromptKD's projector is 1x1 convolutions, weights (out, in, 1, 1); this project's is Linear, (out, in)."""
    return value.flatten(1) if value.dim() == 4 else value


_FROZEN_TOWERS = (
    Rule(r"image_encoder\.(.+)", CLIP, r"visual.\1"),
    Rule(r"text_encoder\.(.+)", CLIP, r"\1"),  # the TextEncoder's attributes are named as CLIP's
    Rule(r"logit_scale", CLIP),
)

_IVLP_VISION = (
    Rule(r"image_encoder\.VPT", "prompt_learner", "vision_prompts.layer.0"),
    Rule(r"image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow", "prompt_learner", r"vision_prompts.layer.\1"),
)

# The references' CLIP (clip/model.py) registers no buffer; their prompt learners and PromptKD's projector do.
MAPLE = Layout("MaPLe", "MultiModalPromptLearner", (
    Rule(r"prompt_learner\.token_(prefix|suffix)", REBUILT),
    Rule(r"prompt_learner\.(.+)", "prompt_learner", r"\1"),  # ctx, proj, compound_prompts_text, ..._projections
    *_FROZEN_TOWERS,
), buffers=r"prompt_learner\.token_(prefix|suffix)")

ZERO_SHOT_TOWER = "prompt_learner.ZS_image_encoder."  # PromptSRC's frozen image tower for its zero-shot features

# IVLP (multimodal-prompt-learning) and PromptSRC; also PromptKD's teachers, trained with PromptSRC's code (its
# published cross-dataset teacher in VLPromptLearner_large/).
PROMPTSRC = Layout("PromptSRC", "VLPromptLearner", (
    Rule(r"prompt_learner\.token_(prefix|suffix)2?", REBUILT),
    Rule(r"prompt_learner\.ctx", "prompt_learner", "ctx"),
    *_IVLP_VISION,
    Rule(r"text_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow", "prompt_learner", r"text_prompts.layer.\1"),
    Rule(re.escape(ZERO_SHOT_TOWER) + "(.+)", CLIP, r"visual.\1"),
    *_FROZEN_TOWERS,
), buffers=r"prompt_learner\.token_(prefix|suffix)2?",
    unused=("gpa",),  # the Gaussian aggregate is already in the saved prompts
    other_folders=("VLPromptLearner_large",))

# Vision prompts alone, in a LayerPrompts registered as `prompt_learner` (PromptKD's student, VPT).
_VISION_LAYERS = (
    Rule(r"image_encoder\.VPT", "prompt_learner", "layer.0"),
    Rule(r"image_encoder\.transformer\.resblocks\.(\d+)\.VPT_shallow", "prompt_learner", r"layer.\1"),
)

PROMPTKD = Layout("PromptKD", "VLPromptLearner", (
    *_VISION_LAYERS,
    Rule(r"VPT_image_trans\.conv1\.(.+)", "projector", r"\1", one_by_one_convolution),
    *_FROZEN_TOWERS,
), buffers=r"VPT_image_trans\.conv1\.1\.(running_mean|running_var|num_batches_tracked)")  # its BatchNorm2d

# VPT (MaPLe's repository): its whole model in prompt_learner/, the folder name of this project's own modules, so
# it is not in LAYOUTS, which find a layout by its folder; the VPT trainer tells the two apart by the file's keys.
VPT_LAYOUT = Layout("VPT", "prompt_learner", (*_VISION_LAYERS, *_FROZEN_TOWERS))

# This project's trainer -> the layout of the reference code whose checkpoints it evaluates.
LAYOUTS = {"MaPLe": MAPLE, "PromptSRC": PROMPTSRC, "IVLP": PROMPTSRC, "PromptKD": PROMPTKD}


def published_layout(trainer_name, directory, module_names):
    """The reference layout of the run folder `directory` for `trainer_name`, or None when it holds this
    project's model folders (`module_names`) or no layout of that trainer."""
    layout = LAYOUTS.get(trainer_name)
    if layout is None or any(osp.isdir(osp.join(directory, name)) for name in module_names):
        return None
    return layout.in_directory(directory)


def reference_method(layout, state_dict):
    """The method whose reference code wrote `state_dict` (in `layout`): IVLP's files are PromptSRC's without its
    zero-shot image tower."""
    if layout.method == PROMPTSRC.method and not any(key.startswith(ZERO_SHOT_TOWER) for key in state_dict):
        return "IVLP"
    return layout.method


def reference_folders(directory):
    """'VLPromptLearner/ (PromptSRC, IVLP, PromptKD)' for each reference model folder in `directory`: the trainers
    that read it."""
    trainers = {}
    for trainer, layout in LAYOUTS.items():
        found = layout.in_directory(directory)
        if found is not None:
            trainers.setdefault(found.folder, []).append(trainer)
    return [f"{folder}/ ({', '.join(names)})" for folder, names in trainers.items()]


def check_frozen_weights(clip_model, frozen, source, setting):
    """Refuse a checkpoint whose frozen weights are not `clip_model`'s; `setting` says where the run's CLIP was
    chosen, e.g. "MODEL.BACKBONE.NAME (--backbone) is 'ViT-B/16'"."""
    state = clip_model.state_dict()
    advice = f"Use the CLIP it was trained with (this run's {setting})"
    worst, worst_difference = None, 0.0
    for weight in frozen:
        ours = state.get(weight.clip_key)
        if ours is None or tuple(ours.shape) != tuple(weight.value.shape):
            found = "no such weight" if ours is None else f"shape {tuple(ours.shape)}"
            raise ValueError(
                f"{source} was trained with another CLIP: its frozen weight '{weight.file_key}' has shape "
                f"{tuple(weight.value.shape)}, where this run's CLIP has {found} ('{weight.clip_key}'). {advice}"
            )
        ours = ours.detach().float().cpu()
        difference = float((weight.value.detach().float() - ours).norm() / ours.norm().clamp_min(1e-12))
        if difference > worst_difference:
            worst, worst_difference = weight, difference
    if worst_difference > FROZEN_TOLERANCE:
        raise ValueError(
            f"{source} was trained with another CLIP: its frozen weights differ from this run's CLIP (relative "
            f"difference {worst_difference:.3g} in '{worst.file_key}'; up to {FROZEN_TOLERANCE} counts as "
            f"rounding). {advice}"
        )
