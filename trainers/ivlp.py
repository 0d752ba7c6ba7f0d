"""IVLP (independent vision-language prompting, the baseline of Khattak et al.'s MaPLe, CVPR 2023).

Independent deep prompts in both towers (the prompts PromptSRC regularises), cross-entropy on hard
labels. With PROMPT_DEPTH_VISION 0 and N_CTX_VISION 0 it is MaPLe's deep language prompting.
"""
from dassl.engine import TRAINER_REGISTRY

from .coop import CoOp
from .deep_prompts import DeepPromptedCLIP, IVLPPrompts


@TRAINER_REGISTRY.register()
class IVLP(CoOp):
    """CoOp's cross-entropy step on IVLP prompts (TRAINER.IVLP.*): text prompts in layers 0..PROMPT_DEPTH_TEXT-1,
    vision prompts in layers 0..PROMPT_DEPTH_VISION-1. Only `prompt_learner` trains and is saved.
    """

    CONFIG_NODE = "IVLP"

    def build_model(self):
        clip_model = self.load_clip_model()
        learner = IVLPPrompts.from_config(clip_model, self.dm.dataset.classnames, self.method_cfg)
        self.install_prompted_model(DeepPromptedCLIP(clip_model, learner, self.cfg.MODEL.TEXT_TRUNCATION))
