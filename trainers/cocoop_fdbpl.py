"""CoCoOp with FDBPL supervision: L_pos on RIL regions instead of cross-entropy on hard labels.

CoCoOp's class text features differ from image to image, so its model exposes no `encode_text` and the mixin
scores it through its forward. With TRAINER.FDBPL.DUAL_PROMPTS, the negative context replaces the positive one
in a second forward (shifted by the same meta-net); L_diff2, which compares shared class text features, is not
available, so TRAINER.FDBPL.LAMBDA_DIFF2 must be 0 (the CoCoOp_FDBPL configs set it).
"""
from dassl.engine import TRAINER_REGISTRY

from .cocoop import CoCoOp
from .ril_supervision import RILSupervision


@TRAINER_REGISTRY.register()
class CoCoOp_FDBPL(RILSupervision, CoCoOp):
    """CoCoOp trained from an RIL table (TRAINER.FDBPL.RIL_TABLE)."""
