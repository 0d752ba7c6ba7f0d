"""A plugin module as a lab has it: Dassl trainers written the CoOp repository's way, outside the project.

`LabCoCoOp` is built like the CoOp repository's CoCoOp (its own `load_clip_to_cpu`, `TextEncoder`,
`PromptLearner` with a meta-net, a `CustomCLIP` whose forward returns the cross-entropy while
training, a `TrainerX` subclass); `LabKgCoOp` like KgCoOp's (the forward returns `(logits, score)`
while training, score being the distance of the learned class features to the hand-crafted ones).
Nothing here imports the project, except the FDBPL lines at the end. Tests load it with
`train.py --plugin tests.outside_trainers`.
"""
from collections import OrderedDict

import clip
import torch
import torch.nn as nn
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.optim import build_lr_scheduler, build_optimizer
from dassl.utils import load_checkpoint
from yacs.config import CfgNode as CN


def extend_cfg(cfg):
    cfg.TRAINER.LABCOCOOP = CN()
    cfg.TRAINER.LABCOCOOP.CTX_INIT = "a photo of a"
    cfg.TRAINER.LABCOCOOP.PREC = "fp32"
    cfg.TRAINER.LABKGCOOP = CN()
    cfg.TRAINER.LABKGCOOP.CTX_INIT = "a photo of a"
    cfg.TRAINER.LABKGCOOP.PREC = "fp32"
    cfg.TRAINER.LABKGCOOP.W = 8.0


def load_clip_to_cpu(cfg):
    model, _ = clip.load(cfg.MODEL.BACKBONE.NAME, device="cpu", jit=False)
    return model.float()


class TextEncoder(nn.Module):
    def __init__(self, clip_model):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection

    def forward(self, prompts, tokenized_prompts):
        x = (prompts + self.positional_embedding).permute(1, 0, 2)
        x = self.transformer(x).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokenized_prompts.argmax(dim=-1)] @ self.text_projection


class PromptLearner(nn.Module):
    """A shared context from CTX_INIT; with `meta_net`, shifted per image (CoCoOp)."""

    def __init__(self, ctx_init, classnames, clip_model, meta_net=False):
        super().__init__()
        n_ctx = len(ctx_init.split(" "))
        with torch.no_grad():
            embedding = clip_model.token_embedding(clip.tokenize(ctx_init))
        self.ctx = nn.Parameter(embedding[0, 1 : 1 + n_ctx].clone())
        if meta_net:
            vis_dim, ctx_dim = clip_model.visual.output_dim, clip_model.ln_final.weight.shape[0]
            self.meta_net = nn.Sequential(OrderedDict([
                ("linear1", nn.Linear(vis_dim, vis_dim // 4)), ("relu", nn.ReLU(inplace=True)),
                ("linear2", nn.Linear(vis_dim // 4, ctx_dim)),
            ]))
        self.tokenized_prompts = clip.tokenize([f"{ctx_init} {name.replace('_', ' ')}." for name in classnames])
        with torch.no_grad():
            embedding = clip_model.token_embedding(self.tokenized_prompts)
        self.register_buffer("token_prefix", embedding[:, :1, :])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :, :])
        self.n_cls = len(classnames)

    def construct(self, ctx):
        return torch.cat([self.token_prefix, ctx.unsqueeze(0).expand(self.n_cls, -1, -1), self.token_suffix], dim=1)

    def forward(self, image_features=None):
        if image_features is None:
            return self.construct(self.ctx)
        shifted = self.ctx.unsqueeze(0) + self.meta_net(image_features).unsqueeze(1)
        return torch.stack([self.construct(ctx) for ctx in shifted])


class CoCoOpCLIP(nn.Module):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__()
        self.prompt_learner = PromptLearner(cfg.TRAINER.LABCOCOOP.CTX_INIT, classnames, clip_model, meta_net=True)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale

    def forward(self, image, label=None):
        image_features = self.image_encoder(image)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        logits = []
        for prompts, feature in zip(self.prompt_learner(image_features), image_features):
            text_features = self.text_encoder(prompts, self.tokenized_prompts)
            text_features = text_features / text_features.norm(dim=-1, keepdim=True)
            logits.append(self.logit_scale.exp() * feature @ text_features.t())
        logits = torch.stack(logits)
        if self.prompt_learner.training:
            return F.cross_entropy(logits, label)
        return logits


class KgCoOpCLIP(nn.Module):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__()
        ctx_init = cfg.TRAINER.LABKGCOOP.CTX_INIT
        self.prompt_learner = PromptLearner(ctx_init, classnames, clip_model)
        self.tokenized_prompts = self.prompt_learner.tokenized_prompts
        self.image_encoder = clip_model.visual
        self.text_encoder = TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        with torch.no_grad():
            hand_crafted = clip_model.encode_text(self.tokenized_prompts)
        self.register_buffer("hand_crafted", hand_crafted / hand_crafted.norm(dim=-1, keepdim=True))

    def forward(self, image):
        image_features = self.image_encoder(image)
        image_features = image_features / image_features.norm(dim=-1, keepdim=True)
        text_features = self.text_encoder(self.prompt_learner(), self.tokenized_prompts)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)
        logits = self.logit_scale.exp() * image_features @ text_features.t()
        if self.prompt_learner.training:
            score = 1.0 - torch.cosine_similarity(text_features, self.hand_crafted, dim=-1).mean()
            return logits, score
        return logits


class LabTrainer(TrainerX):
    MODEL = None
    NODE = None

    def check_cfg(self, cfg):
        assert cfg.TRAINER[self.NODE].PREC in ["fp16", "fp32", "amp"]

    def build_model(self):
        cfg = self.cfg
        clip_model = load_clip_to_cpu(cfg)
        self.model = self.MODEL(cfg, self.dm.dataset.classnames, clip_model)
        for name, param in self.model.named_parameters():
            param.requires_grad_("prompt_learner" in name)
        self.model.to(self.device)
        self.optim = build_optimizer(self.model.prompt_learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)
        self.scaler = torch.cuda.amp.GradScaler() if cfg.TRAINER[self.NODE].PREC == "amp" else None

    def parse_batch_train(self, batch):
        return batch["img"].to(self.device), batch["label"].to(self.device)

    def load_model(self, directory, epoch=None):
        for name in self.get_model_names():
            checkpoint = load_checkpoint(f"{directory}/{name}/model.pth.tar-{epoch}")
            state_dict = checkpoint["state_dict"]
            for buffer in ("token_prefix", "token_suffix"):
                state_dict.pop(buffer, None)
            self._models[name].load_state_dict(state_dict, strict=False)


@TRAINER_REGISTRY.register()
class LabCoCoOp(LabTrainer):
    MODEL, NODE = CoCoOpCLIP, "LABCOCOOP"

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        loss = self.model(image, label)
        self.model_backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item()}


@TRAINER_REGISTRY.register()
class LabKgCoOp(LabTrainer):
    MODEL, NODE = KgCoOpCLIP, "LABKGCOOP"

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        logits, score = self.model(image)
        loss = F.cross_entropy(logits, label) + self.cfg.TRAINER.LABKGCOOP.W * score
        self.model_backward_and_update(loss)
        if (self.batch_idx + 1) == self.num_batches:
            self.update_lr()
        return {"loss": loss.item()}


# FDBPL added to both, as the README's recipe does it.
from trainers.ril_supervision import RILSupervision  # noqa: E402


@TRAINER_REGISTRY.register()
class LabCoCoOp_FDBPL(RILSupervision, LabCoCoOp):
    LOGITS_IN_EVAL_MODE = True  # its forward returns the cross-entropy while training


@TRAINER_REGISTRY.register()
class LabKgCoOp_FDBPL(RILSupervision, LabKgCoOp):
    pass
