"""PromptSRC (Khattak et al., ICCV 2023): IVLP prompts regularised towards frozen CLIP, and GPA.

Loss = CE + TEXT_LOSS_WEIGHT * L1(prompted, frozen text features) + IMAGE_LOSS_WEIGHT * L1(prompted,
frozen image features) + KL(zero-shot || prompted logits). Frozen features come from the same CLIP
with its prompts switched off. The final prompts are the Gaussian prompt aggregation over epochs.
"""
import torch
import torch.nn.functional as F
from dassl.engine import TRAINER_REGISTRY
from dassl.metrics import compute_accuracy

from .base import PromptTrainer, freeze_all_but_prompts
from .deep_prompts import DeepPromptedCLIP, IVLPPrompts
from .gpa import PromptAggregate, gaussian_epoch_weights
from .templates import PROMPTSRC_TEMPLATES
from .text_encoder import tokenize

SCL_TERMS = ("scl_text", "scl_image", "scl_logits")


@torch.no_grad()
def frozen_text_features(model, token_embedding, classnames, templates):
    """Frozen class features (C, E): normalised mean over templates of unprompted CLIP's raw text features.

    Raw (unnormalised) features are averaged, as the published code averages `encode_text` outputs.
    """
    device = token_embedding.weight.device
    per_template = []
    with model.unprompted():
        for template in templates:
            tokens = tokenize([template.format(name.replace("_", " ")) for name in classnames]).to(device)
            per_template.append(model.text_encoder(token_embedding(tokens), tokens).float())
    return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)


def self_consistency_terms(text_features, frozen_text, image_features, frozen_image, logits, zero_shot_logits):
    """PromptSRC's unweighted L_SCL terms, in fp32.

    Text (C, E) and image (B, E) features: mean absolute difference. Logits (B, C): KL(zero-shot ||
    prompted) at temperature 1, summed and divided by B * C, as published.
    """
    logits, zero_shot_logits = logits.float(), zero_shot_logits.float()
    kl = F.kl_div(
        F.log_softmax(logits, dim=1), F.log_softmax(zero_shot_logits, dim=1), reduction="sum", log_target=True
    )
    return {
        "scl_text": F.l1_loss(text_features.float(), frozen_text.float()),
        "scl_image": F.l1_loss(image_features.float(), frozen_image.float()),
        "scl_logits": kl / logits.numel(),
    }


@TRAINER_REGISTRY.register()
class PromptSRC(PromptTrainer):
    """IVLP prompts (TRAINER.PROMPTSRC.*) with self-regularisation; checkpoints `prompt_learner` and `gpa`.

    `gpa` holds the running Gaussian-weighted prompt sum; after the last epoch it replaces the prompts,
    before the last checkpoint is written and the final test runs.
    """

    CONFIG_NODE = "PROMPTSRC"

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        std = cfg.TRAINER.PROMPTSRC.GPA_STD
        if std <= 0:
            raise ValueError(f"TRAINER.PROMPTSRC.GPA_STD (in epochs) must be positive; got {std}")

    def build_model(self):
        node, classnames = self.method_cfg, self.dm.dataset.classnames
        clip_model = self.load_clip_model()
        learner = IVLPPrompts.from_config(clip_model, classnames, node)
        self.model = freeze_all_but_prompts(DeepPromptedCLIP(clip_model, learner, self.cfg.MODEL.TEXT_TRUNCATION))
        self.model.to(self.device)
        self._frozen_text = None
        self.register_trainable("prompt_learner", learner)
        weights = gaussian_epoch_weights(self.cfg.OPTIM.MAX_EPOCH, node.GPA_MEAN, node.GPA_STD)
        print("GPA epoch weights: " + ", ".join(f"{weight:.4f}" for weight in weights))
        self.gpa = PromptAggregate(learner, weights).to(self.device)
        self.register_model("gpa", self.gpa)
        self.build_grad_scaler()

    @property
    def frozen_text(self):
        """Frozen class text features (C, E), computed in fp32 on first use. Only training uses them, and
        their 60 template passes cost more than an evaluation of ImageNet's 500 base classes."""
        if self._frozen_text is None:
            with torch.autocast(self.device.type, enabled=False):
                self._frozen_text = frozen_text_features(
                    self.model, self.clip_model.token_embedding, self.dm.dataset.classnames, PROMPTSRC_TEMPLATES
                )
        return self._frozen_text

    def consistency_terms(self, image, image_features, text_features, logits):
        """L_SCL terms of a batch: frozen image features and zero-shot logits from the unprompted towers."""
        with torch.no_grad(), self.model.unprompted():
            frozen_image = self.model.encode_image(image)
        zero_shot_logits = self.model.logits(frozen_image, self.frozen_text.to(frozen_image.dtype))
        return self_consistency_terms(text_features, self.frozen_text, image_features, frozen_image, logits,
                                      zero_shot_logits)

    def regularised_loss(self, supervised, image, image_features, text_features, logits):
        """(loss, summary): the supervised loss (CE here) plus the weighted L_SCL terms."""
        node = self.method_cfg
        terms = self.consistency_terms(image, image_features, text_features, logits)
        loss = (supervised + node.TEXT_LOSS_WEIGHT * terms["scl_text"]
                + node.IMAGE_LOSS_WEIGHT * terms["scl_image"] + terms["scl_logits"])
        return loss, {"loss": loss.item(), **{name: terms[name].item() for name in SCL_TERMS}}

    def forward_backward(self, batch):
        image, label = self.parse_batch_train(batch)
        with self.autocast():
            image_features = self.model.encode_image(image)
            text_features = self.model.encode_text()
            logits = self.model.logits(image_features, text_features)
            ce = F.cross_entropy(logits, label)
            loss, summary = self.regularised_loss(ce, image, image_features, text_features, logits)
        self.backward_and_update(loss)
        self.end_of_epoch_step()
        return {**summary, "ce": ce.item(), "acc": compute_accuracy(logits, label)[0].item()}

    def after_epoch(self):
        """Add this epoch's prompts to the GPA sum; after the last, deploy the aggregate, then save/test."""
        self.gpa.add(self.model.prompt_learner, self.epoch)
        if self.epoch + 1 == self.max_epoch:
            print("Using the Gaussian-aggregated (GPA) prompts for the final model")
            self.gpa.load_into(self.model.prompt_learner)
        super().after_epoch()
