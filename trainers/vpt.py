"""VPT (deep visual prompt tuning, as MaPLe's repository trains it for its comparisons).

Learnable prompts in the image tower only, in layers 0..PROMPT_DEPTH_VISION-1; the class texts are
fixed, "<CTX_INIT> <class>." through the plain text tower (zero-shot features), computed once.
Cross-entropy on hard labels. The reference code saves its whole model into prompt_learner/, the
folder this project's VPT saves its vision prompts into; its files are told apart by their keys.
"""
from dassl.engine import TRAINER_REGISTRY

from . import dassl_compat
from .base import checkpoint_path, load_published_checkpoint
from .checkpoint_import import VPT_LAYOUT
from .coop import CoOp
from .deep_prompts import DeepPromptInjector, LayerPrompts, check_depth, tower_widths
from .prompted_clip import PromptedCLIP
from .text_encoder import template_text_features


class VisionPromptedCLIP(PromptedCLIP):
    """PromptedCLIP with deep vision prompts (`prompt_learner`, a LayerPrompts) and fixed class text
    features (C, E), the same for training and evaluation."""

    def __init__(self, clip_model, vision_prompts, text_features):
        super().__init__(clip_model, vision_prompts)
        self.register_buffer("class_text_features", text_features, persistent=False)
        self.injector = DeepPromptInjector(clip_model, vision_sources=[vision_prompts.source])

    def encode_text(self):
        return self.class_text_features


def written_by_reference_vpt(path):
    """Whether the checkpoint at `path` holds the reference code's whole VPT model (its image_encoder.VPT keys)."""
    return any(VPT_LAYOUT.prompt_key(key) for key in dassl_compat.load_checkpoint(path)["state_dict"])


@TRAINER_REGISTRY.register()
class VPT(CoOp):
    """CoOp's cross-entropy step on vision prompts (TRAINER.VPT.*); only `prompt_learner` trains and is saved."""

    CONFIG_NODE = "VPT"

    def build_model(self):
        node = self.method_cfg
        clip_model = self.load_clip_model()
        _, width = tower_widths(clip_model)
        n_layers = len(clip_model.visual.transformer.resblocks)
        check_depth("TRAINER.VPT.PROMPT_DEPTH_VISION", node.PROMPT_DEPTH_VISION, n_layers, minimum=1)
        template = f"{node.CTX_INIT} {{}}.".replace("_", " ").strip()
        print(f"Fixed class texts: {template!r}")
        text_features = template_text_features(
            clip_model, self.dm.dataset.classnames, [template], self.cfg.MODEL.TEXT_TRUNCATION
        )
        prompts = LayerPrompts(node.N_CTX_VISION, width, range(node.PROMPT_DEPTH_VISION), self.device)
        self.install_prompted_model(VisionPromptedCLIP(clip_model, prompts, text_features.type(clip_model.dtype)))

    def load_model(self, directory, epoch=None):
        """This project's checkpoints, or the reference code's whole VPT model in the same folder."""
        if directory and written_by_reference_vpt(checkpoint_path(directory, "prompt_learner", epoch)):
            load_published_checkpoint(self, directory, epoch, VPT_LAYOUT)
        else:
            super().load_model(directory, epoch)
