"""A frozen teacher CLIP run on every training batch: PromptKD, and CasPL's online mode.

The teacher is the RIL precompute's (`ril.teachers`: an OpenAI CLIP by name or checkpoint, or an
open_clip model), so online and offline supervision score alike. Its class text features are
computed once per run, from templates (zero-shot) or from the IVLP prompts of a PromptSRC run
(PromptKD's stage-1 teacher; OpenAI CLIP only), read without running code from the file, from this
project's run folder (`prompt_learner/`) or a published PromptSRC / PromptKD teacher folder
(`VLPromptLearner/`, in PromptSRC's layout of trainers/checkpoint_import.py: its frozen CLIP weights
are checked against the teacher's). The prompt layout (tokens, depths) comes from the checkpoint
itself. Images arrive in the student's normalisation and size and are re-normalised and resized for
the teacher.
"""
import os.path as osp

import torch
import torch.nn.functional as F
from clip.model import CLIP

from ril.teachers import load_teacher
from ril.templates import resolve_templates

from . import dassl_compat
from .base import CLASS_NAME_BUFFERS, checkpoint_path
from .checkpoint_import import PROMPTSRC, check_frozen_weights
from .deep_prompts import DeepPromptedCLIP, IVLPPrompts

OWN_FOLDER = "prompt_learner"  # a PromptSRC run of train.py; else a published teacher in PROMPTSRC's layout


def teacher_checkpoint(directory, epoch=None):
    """(path, layout) of the prompt checkpoint of a teacher run: layout None for this project's own run,
    PROMPTSRC's for a published teacher (VLPromptLearner/, or the cross-dataset one's VLPromptLearner_large/);
    epoch None = model-best.pth.tar."""
    if osp.isdir(osp.join(directory, OWN_FOLDER)):
        return checkpoint_path(directory, OWN_FOLDER, epoch), None
    layout = PROMPTSRC.in_directory(directory)
    if layout is not None:
        return checkpoint_path(directory, layout.folder, epoch), layout
    folders = " or ".join(f"{folder}/" for folder in (PROMPTSRC.folder, *PROMPTSRC.other_folders))
    raise FileNotFoundError(
        f"Teacher folder {directory!r} holds neither prompt_learner/ (a PromptSRC run of train.py) nor "
        f"{folders} (a published PromptKD teacher): give the stage-1 output folder, or no folder for a "
        "zero-shot teacher"
    )


def read_teacher_prompts(directory, epoch=None, clip_model=None, spec=""):
    """(IVLPPrompts state dict, checkpoint path) of a teacher run. A published teacher's frozen CLIP weights
    are checked against `clip_model`, the teacher CLIP (`spec`), when given."""
    path, layout = teacher_checkpoint(directory, epoch)
    state = dassl_compat.load_checkpoint(path)["state_dict"]
    if layout is not None:
        prompts, frozen = layout.sort(state, path)
        state = prompts.get(OWN_FOLDER, {})
        if clip_model is not None:
            check_frozen_weights(clip_model, frozen, path, f"teacher CLIP is {spec!r}")
    state = {key: value for key, value in state.items() if key.rsplit(".", 1)[-1] not in CLASS_NAME_BUFFERS}
    if "ctx" not in state:
        raise ValueError(f"{path} holds no IVLP text context ('ctx'): it is not a PromptSRC / IVLP checkpoint")
    return state, path


def ivlp_prompts_from_state(clip_model, classnames, state, ctx_init, source):
    """IVLPPrompts for `classnames` with the layout and the values of `state` (from `source`)."""
    n_text = sum(key.startswith("text_prompts.layer.") for key in state)
    n_vision = sum(key.startswith("vision_prompts.layer.") for key in state)
    learner = IVLPPrompts(
        clip_model, classnames, n_ctx_text=state["ctx"].shape[0],
        n_ctx_vision=state["vision_prompts.layer.0"].shape[0] if n_vision else 0,
        depth_text=n_text + 1, depth_vision=n_vision, ctx_init=ctx_init,
    )
    expected = learner.state_dict()
    for key, value in state.items():
        if key not in expected or expected[key].shape != value.shape:
            found = tuple(expected[key].shape) if key in expected else "no such prompt"
            raise ValueError(
                f"{source}: '{key}' has shape {tuple(value.shape)} but the teacher CLIP expects {found}; "
                "the teacher backbone must be the CLIP the teacher prompts were trained on"
            )
    learner.load_state_dict(state)
    return learner


class OnlineTeacher:
    """Teacher logits (B, C) of student-normalised training images, against class features computed once.

    `frozen` is a `ril.teachers.FrozenCLIP`; with `prompted` (a DeepPromptedCLIP on `frozen.model`), its
    image tower runs with the teacher's prompts.
    """

    def __init__(self, frozen, class_features, pixel_mean, pixel_std, prompted=None):
        self.frozen = frozen
        self.class_features = class_features
        self.prompted = prompted
        device = class_features.device
        teacher_std = _channels(frozen.std, device)
        self.scale = _channels(pixel_std, device) / teacher_std
        self.shift = (_channels(pixel_mean, device) - _channels(frozen.mean, device)) / teacher_std

    @torch.no_grad()
    def logits(self, images, class_features=None):
        """(B, C) fp32 with the teacher's logit scale, against `class_features` (default: all its classes)."""
        images = images.float() * self.scale + self.shift
        if tuple(images.shape[-2:]) != self.frozen.input_size:
            images = F.interpolate(images, size=self.frozen.input_size, mode="bicubic", align_corners=False)
        return self.frozen.logits(images, self.class_features if class_features is None else class_features)


def _channels(values, device):
    return torch.tensor(values, dtype=torch.float32, device=device).view(1, -1, 1, 1)


def load_online_teacher(spec, classnames, pixel_mean, pixel_std, device="cpu", templates=(), prompt_dir="",
                        epoch=None, ctx_init="a photo of a", truncate=True, dataset_name=""):
    """An OnlineTeacher of teacher `spec` for `classnames`: prompted from the run folder `prompt_dir`, else
    zero-shot with `templates` (names or strings as `--templates` takes them; empty = the CoOp template of
    `dataset_name`, as an RIL table's default).

    `pixel_mean` / `pixel_std` are the student's input normalisation.
    """
    frozen = load_teacher(spec, device)
    prompted = None
    if prompt_dir:
        if not isinstance(frozen.model, CLIP):
            raise ValueError(f"Teacher prompts from {prompt_dir} need an OpenAI CLIP teacher, not {spec!r}")
        state, path = read_teacher_prompts(prompt_dir, epoch, frozen.model, spec)
        learner = ivlp_prompts_from_state(frozen.model, classnames, state, ctx_init, path).to(frozen.device)
        prompted = DeepPromptedCLIP(frozen.model, learner, truncate).requires_grad_(False).eval()
        print(f"Teacher prompts: {path}")
        with torch.no_grad():
            class_features = prompted.encode_text().float()
    else:
        class_features = frozen.class_features(classnames, resolve_templates(templates, dataset_name))
    return OnlineTeacher(frozen, class_features, pixel_mean, pixel_std, prompted)
