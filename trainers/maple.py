"""MaPLe (Khattak et al., CVPR 2023): coupled vision-language deep prompts, cross-entropy on hard labels."""
from dassl.engine import TRAINER_REGISTRY

from .coop import CoOp
from .deep_prompts import DeepPromptedCLIP, MaPLePrompts


@TRAINER_REGISTRY.register()
class MaPLe(CoOp):
    """CoOp's cross-entropy step on MaPLe's prompts (TRAINER.MAPLE.*): text prompts in layers
    0..PROMPT_DEPTH-1, vision prompts projected from them. Only `prompt_learner` trains and is saved.
    """

    CONFIG_NODE = "MAPLE"

    def build_model(self):
        node = self.method_cfg
        clip_model = self.load_clip_model()
        learner = MaPLePrompts(
            clip_model, self.dm.dataset.classnames, n_ctx=node.N_CTX, depth=node.PROMPT_DEPTH, ctx_init=node.CTX_INIT
        )
        self.install_prompted_model(DeepPromptedCLIP(clip_model, learner, self.cfg.MODEL.TEXT_TRUNCATION))
