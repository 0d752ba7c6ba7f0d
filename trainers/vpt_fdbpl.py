"""VPT with FDBPL supervision: L_pos on RIL regions instead of cross-entropy on hard labels.

Only the vision prompts learn; the class texts stay VPT's fixed ones, so there are no text prompts
to pair with FDBPL's negative ones (TRAINER.FDBPL.DUAL_PROMPTS is refused).
"""
from dassl.engine import TRAINER_REGISTRY

from .ril_supervision import RILSupervision
from .vpt import VPT


@TRAINER_REGISTRY.register()
class VPT_FDBPL(RILSupervision, VPT):
    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        if cfg.TRAINER.FDBPL.DUAL_PROMPTS:
            raise ValueError(
                "TRAINER.FDBPL.DUAL_PROMPTS adds negative text prompts beside the positive ones, but VPT_FDBPL's "
                "class texts are fixed (TRAINER.VPT.CTX_INIT): set TRAINER.FDBPL.DUAL_PROMPTS False, or use a "
                "trainer with text prompts (CoOp_FDBPL, MaPLe_FDBPL, PromptSRC_FDBPL)"
            )
