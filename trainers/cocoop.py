"""CoCoOp (Zhou et al., CVPR 2022): CoOp's context shifted, image by image, by a meta-net on the image feature.

Each image has its own class prompts, so the text tower encodes C prompts per image, in training and evaluation
alike. They are encoded several images at a time (up to TEXT_PASS_PROMPTS prompts per pass) and only up to the
last EOT token (MODEL.TEXT_TRUNCATION), where the reference encodes one image's C full-length prompts per pass.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY

from .coop import CoOp
from .prompt_learners import PromptLearner
from .text_encoder import TextEncoder

# Prompts per text-encoder pass: about what the reference encodes per pass on ImageNet (1,000 classes, one
# image), so a pass needs at most about the memory of one there; with fewer classes it covers several images.
TEXT_PASS_PROMPTS = 1024


class MetaNet(nn.Module):
    """Context shift (B, width) from normalised image features (B, D): Linear, ReLU, Linear through D // 16."""

    def __init__(self, feature_dim, width):
        super().__init__()
        self.linear1 = nn.Linear(feature_dim, feature_dim // 16)
        self.linear2 = nn.Linear(feature_dim // 16, width)

    def forward(self, image_features):
        return self.linear2(F.relu(self.linear1(image_features)))


class ConditionalPromptLearner(PromptLearner):
    """CoOp's shared context (class token at the end) plus a per-image shift; `forward(image_features)` gives
    prompt embeddings (B, C, 77, width). Its keys are the reference's: ctx and meta_net.linear{1,2}.*."""

    def __init__(self, clip_model, classnames, n_ctx=16, ctx_init=""):
        super().__init__(clip_model, classnames, n_ctx=n_ctx, ctx_init=ctx_init)
        meta_net = MetaNet(clip_model.visual.output_dim, self.ctx.shape[-1])
        self.meta_net = meta_net.to(self.ctx.device, clip_model.dtype)  # fp16 with an fp16 CLIP, as the reference

    def forward(self, image_features):
        ctx = self.ctx + self.meta_net(image_features).unsqueeze(1)  # (B, n_ctx, width)
        count = ctx.shape[0]
        return torch.cat([
            self.token_prefix.expand(count, -1, -1, -1),
            ctx.unsqueeze(1).expand(-1, self.n_cls, -1, -1),
            self.token_suffix.expand(count, -1, -1, -1),
        ], dim=2)


class ConditionalPromptedCLIP(nn.Module):
    """logits (B, C) = exp(logit_scale) * each normalised image feature @ the normalised features of its own class
    prompts. It has no class text features shared by all images, hence no `encode_text`: FDBPL scores it through
    its forward (trainers/ril_supervision.py)."""

    def __init__(self, clip_model, prompt_learner, truncate=True):
        super().__init__()
        self.prompt_learner = prompt_learner
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model, truncate)
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype

    def conditioned_text_features(self, image_features):
        """Normalised class text features (B, C, E) of each image's prompts, TEXT_PASS_PROMPTS prompts per pass."""
        learner = self.prompt_learner
        features = []
        for chunk in image_features.split(max(1, TEXT_PASS_PROMPTS // learner.n_cls)):
            tokens = learner.tokenized_prompts.repeat(len(chunk), 1)
            encoded = self.text_encoder(learner(chunk).flatten(0, 1), tokens)
            features.append(F.normalize(encoded, dim=-1).unflatten(0, (len(chunk), learner.n_cls)))
        return torch.cat(features)

    def forward(self, image):
        image_features = F.normalize(self.image_encoder(image.type(self.dtype)), dim=-1)
        text_features = self.conditioned_text_features(image_features)
        return self.logit_scale.exp() * torch.einsum("be,bce->bc", image_features, text_features)


@TRAINER_REGISTRY.register()
class CoCoOp(CoOp):
    """CoOp's cross-entropy step (TRAINER.COCOOP.*); the prompt learner, context and meta-net, is all that trains
    and is saved, as `prompt_learner/` in the reference's keys."""

    CONFIG_NODE = "COCOOP"

    def build_model(self):
        node = self.method_cfg
        clip_model = self.load_clip_model()
        learner = ConditionalPromptLearner(
            clip_model, self.dm.dataset.classnames, n_ctx=None if node.CTX_INIT else node.N_CTX, ctx_init=node.CTX_INIT
        )
        self.install_prompted_model(ConditionalPromptedCLIP(clip_model, learner, self.cfg.MODEL.TEXT_TRUNCATION))
