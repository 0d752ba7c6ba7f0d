"""FDBPL supervision for any Dassl trainer: RIL regions and soft labels replace hard labels.

Put `RILSupervision` first among the bases (`class MyTrainer_FDBPL(RILSupervision, MyTrainer)`; the
other order is refused when the class is defined) and register the class. It works on this project's
`PromptTrainer`s and on Dassl `TrainerX` subclasses of other code (CoOp, CoCoOp, KgCoOp as their
repositories have them): when training starts it builds the region loader, and its `forward_backward`
computes the FDBPL loss and steps with what the trainer has (a `scaler` under amp, its optimisers,
Dassl's per-epoch schedule). A batch that does not come from the region loader stops the run.

The model is scored through `encode_image` / `encode_text` / `logits` when it has them (this project's
models); else `region_logits` calls `self.model(images)`, which must give (B, C) logits or
(logits, extra_loss), the extra loss (e.g. KgCoOp's score) being added to the FDBPL loss unweighted.
For a model that returns its loss while training (the CoOp repository's CoCoOp), set
`LOGITS_IN_EVAL_MODE = True`: logits come from the model in eval mode, with gradients; or override
`region_logits`.

With TRAINER.FDBPL.DUAL_PROMPTS, negative prompts (NEG_CTX_INIT) of the positive context's length are
trained with FDBPL's L_neg and difference terms. This project's models get a second prompt learner; in
deep-prompt models it replaces the positive context at the text input only, so deeper text prompts
(and MaPLe's vision prompts, projected from the positive ones) are shared by both prompt sets. A model
of other code whose `prompt_learner` holds a learnable `ctx` gets a second context (`prompt_learner_neg`,
registered and checkpointed); its negative logits come from the model's own forward with the context
swapped, which runs the image encoder a second time, and such a model exposes no class text features,
so L_diff2 is not available there (LAMBDA_DIFF2 must be 0.0).

With TRAINER.FDBPL.RIL_FILL, the table may be lazy (`python -m ril precompute --lazy`): the regions a
batch draws that are not scored yet are scored by the table's teacher (TEACHER_BACKBONE) in the training
process and written back (`ril.lazy.TableFiller`), so a first run costs about what an online teacher
costs and a rerun with the same seed scores nothing. One process only.

TRAINER.FDBPL.TEACHER_SOURCE online is the KDPL baseline: the same losses, with soft labels from a
teacher CLIP (TEACHER_BACKBONE) run on every batch of Dassl's training images instead of a table.
"""
from collections import namedtuple
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from ril.format import RILTableError, run_fingerprint
from ril.lazy import TableFiller
from ril.reader import densify
from ril.region_dataset import RegionDataset, collate_regions
from ril.shards import open_table

from .base import TrainingSetupError, backward_and_update, end_of_epoch_step, register_trainable
from .clip_loading import backbone_id, load_clip
from .distributed import global_top1_classes, seeded_loader, world_size
from .losses import fdbpl_loss_terms, information_weight, positive_kd_loss, weighted_total
from .online_teacher import load_online_teacher
from .prompt_learners import PromptLearner, count_tokens, embed_words

RegionTargets = namedtuple("RegionTargets", "soft_label entropy label")
RegionForward = namedtuple("RegionForward", "logits image_features text_features loss summary")
LOSS_TERMS = ("pos", "neg", "diff1", "diff2")
TEACHER_SOURCES = ("ril", "online")
# Methods a trainer class placed before the mixin would take from it: training would silently use hard labels.
MIXIN_METHODS = ("forward_backward", "build_model", "before_train")


def has_prompt_encoders(model):
    """True for this project's models (PromptedCLIP and its subclasses), scored feature by feature."""
    return all(callable(getattr(model, name, None)) for name in ("encode_image", "encode_text", "logits"))


@contextmanager
def eval_mode(model):
    """The model in eval mode (gradients still flow), each submodule's training flag restored afterwards."""
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


@contextmanager
def swapped_context(learner, ctx):
    """`learner.ctx` replaced by the Parameter `ctx` for the duration."""
    positive = learner.ctx
    learner.ctx = ctx
    try:
        yield
    finally:
        learner.ctx = positive


class NegativeContext(nn.Module):
    """The negative prompts of a model of other code: a context shaped as its positive `ctx`."""

    def __init__(self, ctx):
        super().__init__()
        self.ctx = nn.Parameter(ctx)


class RILSupervision:
    """Mixin for a Dassl trainer: training reads an RIL table (TRAINER.FDBPL.*), never a teacher.

    Its `forward_backward` replaces the method's loss by the FDBPL loss; a method with regularisers
    of its own overrides it and adds them to `ril_forward(...).loss`.
    """

    # Only trainers whose image branch is frozen and prompt-free can use stored image features.
    SUPPORTS_FEATURE_CACHE = False
    # The hook for models that return their loss while training: take their logits in eval mode.
    LOGITS_IN_EVAL_MODE = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        mro = cls.__mro__
        for earlier in mro[: mro.index(RILSupervision)]:
            taken = [name for name in MIXIN_METHODS if name in vars(earlier)]
            if taken and not issubclass(earlier, RILSupervision):
                raise TypeError(
                    f"{cls.__name__}: {earlier.__name__} comes before RILSupervision among its bases, so its "
                    f"{', '.join(taken)} would run instead of the mixin's and training would use hard labels; "
                    f"write class {cls.__name__}(RILSupervision, {earlier.__name__})"
                )

    @property
    def ril_cfg(self):
        return self.cfg.TRAINER.FDBPL

    @property
    def dual_prompts(self):
        return self.ril_cfg.DUAL_PROMPTS

    @property
    def online_teacher_source(self):
        return self.ril_cfg.TEACHER_SOURCE == "online"

    def add_negative_prompts(self):
        """Attach and register `prompt_learner_neg` (after `build_model` made `self.model`)."""
        positive = self.model.prompt_learner
        negative = PromptLearner(
            self.clip_model, self.dm.dataset.classnames, n_ctx=positive.n_ctx, ctx_init=self.ril_cfg.NEG_CTX_INIT,
            csc=positive.ctx.dim() == 3, class_token_position=positive.class_token_position,
        ).to(self.device)
        self._check_negative_length(negative.n_ctx, positive.n_ctx)
        self.model.prompt_learner_neg = negative
        self.register_trainable("prompt_learner_neg", negative)

    def add_negative_context(self):
        """Register `prompt_learner_neg`, a second context for a model of other code (its prompt_learner.ctx)."""
        model, node = self.model, self.ril_cfg
        ctx = getattr(getattr(model, "prompt_learner", None), "ctx", None)
        if not isinstance(ctx, nn.Parameter):
            raise ValueError(
                f"TRAINER.FDBPL.DUAL_PROMPTS needs a learnable context, model.prompt_learner.ctx (as in CoOp and "
                f"CoCoOp), which {type(model).__name__} has not; set TRAINER.FDBPL.DUAL_PROMPTS False"
            )
        if node.LAMBDA_DIFF2 != 0:
            raise ValueError(
                f"TRAINER.FDBPL.LAMBDA_DIFF2 is {node.LAMBDA_DIFF2}, but L_diff2 compares class text features, which "
                f"{type(model).__name__} does not expose (it has no encode_text); set TRAINER.FDBPL.LAMBDA_DIFF2 0.0"
            )
        n_ctx = ctx.shape[-2]
        self._check_negative_length(min(count_tokens(node.NEG_CTX_INIT), n_ctx), n_ctx)
        clip_model = getattr(self, "clip_model", None) or load_clip(self.cfg.MODEL.BACKBONE.NAME, "fp32", "cpu")
        init = embed_words(clip_model.token_embedding, node.NEG_CTX_INIT, n_ctx).to(ctx.device, ctx.dtype)
        negative = NegativeContext(init.expand_as(ctx).clone())
        self.negative_context = negative
        register_trainable(self, "prompt_learner_neg", negative)

    def _check_negative_length(self, negative, positive):
        if negative != positive:
            raise ValueError(
                f"TRAINER.FDBPL.NEG_CTX_INIT {self.ril_cfg.NEG_CTX_INIT!r} has {negative} tokens but the "
                f"positive context has {positive}: give at least {positive} words"
            )

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        node = cfg.TRAINER.FDBPL
        if node.TEACHER_SOURCE not in TEACHER_SOURCES:
            raise ValueError(
                f"TRAINER.FDBPL.TEACHER_SOURCE must be one of {TEACHER_SOURCES}; got {node.TEACHER_SOURCE!r}"
            )
        if node.FEATURE_CACHE and not self.SUPPORTS_FEATURE_CACHE:
            raise ValueError(
                f"TRAINER.FDBPL.FEATURE_CACHE is on, but {type(self).__name__} cannot train from stored image "
                "features: its image encoder is prompted or trained (stored features would be stale), or its model "
                "is scored on pixels through its own forward; set TRAINER.FDBPL.FEATURE_CACHE False"
            )
        if node.TEACHER_SOURCE == "online" and (node.RIL_TABLE or node.FEATURE_CACHE or node.RIL_FILL):
            raise ValueError(
                "TRAINER.FDBPL.TEACHER_SOURCE online runs the teacher on every batch and reads no table: unset "
                "TRAINER.FDBPL.RIL_TABLE, FEATURE_CACHE and RIL_FILL, or train from the table with TEACHER_SOURCE ril"
            )
        if node.RIL_FILL and (node.FEATURE_CACHE or node.IN_MEMORY):
            raise ValueError(
                "TRAINER.FDBPL.RIL_FILL scores a lazy table's missing regions from their pixels and reads the file as "
                "it fills: set TRAINER.FDBPL.FEATURE_CACHE and IN_MEMORY False"
            )

    def build_model(self):
        super().build_model()
        if not self.dual_prompts:
            return
        if has_prompt_encoders(self.model):
            self.add_negative_prompts()
        else:
            self.add_negative_context()

    def forward_backward(self, batch):
        with self.ril_autocast():
            result = self.ril_forward(*self.parse_ril_batch(batch))
        self.ril_update(result.loss)
        return result.summary

    def ril_autocast(self):
        """The trainer's autocast (a PromptTrainer's), else fp16 autocast on CUDA when it keeps a grad scaler."""
        own = getattr(super(), "autocast", None)
        if own is not None:
            return own()
        return torch.autocast("cuda", dtype=torch.float16) if getattr(self, "scaler", None) else nullcontext()

    def ril_update(self, loss):
        """The trainer's optimiser step (through its scaler under amp), then Dassl's per-epoch schedule."""
        own = getattr(super(), "backward_and_update", None)
        if own is not None:
            own(loss)
        else:
            backward_and_update(self, loss)
        end_of_epoch_step(self)

    def before_train(self):
        if not hasattr(super(), "prepare_training"):  # a Dassl trainer of other code: nothing else calls it
            try:
                self.prepare_training()
            except (FileNotFoundError, ValueError) as error:
                raise TrainingSetupError(str(error)) from error
        super().before_train()

    def prepare_training(self):
        """Build the region loader (or the online teacher) when training starts, so `--eval-only` needs none."""
        parent = getattr(super(), "prepare_training", None)
        if parent is not None:
            parent()
        if self.online_teacher_source:
            self.ril_teacher = self.build_online_teacher()
        else:
            self.train_loader_x = self.build_region_loader()

    def after_train(self):
        filler = getattr(self, "ril_filler", None)
        if filler is not None:
            filler.close()
            print(f"Lazy RIL table {filler.path}: {filler.scored_regions} regions scored by the teacher in this run "
                  f"({filler.teacher_forwards} teacher forwards); {100 * filler.table.filled_regions().mean():.2f}% "
                  "of the table is filled")
        super().after_train()

    def before_epoch(self):
        super().before_epoch()
        if isinstance(self.train_loader_x.dataset, RegionDataset):
            self.train_loader_x.dataset.set_epoch(self.epoch)
            self.train_loader_x.sampler.set_epoch(self.epoch)

    def build_online_teacher(self):
        node, cfg = self.ril_cfg, self.cfg
        print(f"Online teacher {node.TEACHER_BACKBONE} (TRAINER.FDBPL.TEACHER_SOURCE online): soft labels of every "
              "training batch, no table")
        return load_online_teacher(
            node.TEACHER_BACKBONE, self.dm.dataset.classnames, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD, self.device,
            templates=node.TEACHER_TEMPLATES, truncate=cfg.MODEL.TEXT_TRUNCATION, dataset_name=cfg.DATASET.NAME,
        )

    def build_region_loader(self):
        """A loader of BATCH_SIZE regions per batch (BATCH_SIZE / REPEAT images) from the run's table."""
        node, cfg = self.ril_cfg, self.cfg
        if not node.RIL_TABLE:
            raise RILTableError(
                f"{cfg.TRAINER.NAME} trains from an RIL table, and TRAINER.FDBPL.RIL_TABLE is empty: build one "
                "with `python -m ril precompute` (same --root, --dataset-config-file, --config-file and opts "
                "as this run) and pass TRAINER.FDBPL.RIL_TABLE /path/to/table.h5"
            )
        table = open_table(node.RIL_TABLE, in_memory=node.IN_MEMORY, require_complete=not node.RIL_FILL)
        table.check_fingerprint(run_fingerprint(cfg, self.dm.dataset))
        self.ril_filler = self.build_table_filler(table) if node.RIL_FILL else None
        dataset = RegionDataset(
            table, cfg.DATASET.ROOT, cfg.INPUT.SIZE, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD,
            repeat=node.REPEAT, seed=max(cfg.SEED, 0), densify_mode=node.DENSIFY, features=node.FEATURE_CACHE,
            student_id=backbone_id(cfg.MODEL.BACKBONE.NAME) if node.FEATURE_CACHE else None,
        )
        batch_size = cfg.DATALOADER.TRAIN_X.BATCH_SIZE
        if batch_size % node.REPEAT:
            raise RILTableError(
                f"DATALOADER.TRAIN_X.BATCH_SIZE ({batch_size} regions) must be a multiple of "
                f"TRAINER.FDBPL.REPEAT ({node.REPEAT} regions per image)"
            )
        images_per_batch = batch_size // node.REPEAT
        print(f"Training from RIL table {node.RIL_TABLE}: {len(dataset)} images x {node.REPEAT} regions per visit")
        return seeded_loader(
            dataset, images_per_batch, "images (BATCH_SIZE / TRAINER.FDBPL.REPEAT)", max(cfg.SEED, 0),
            drop_last=len(dataset) >= images_per_batch, num_workers=cfg.DATALOADER.NUM_WORKERS,
            collate_fn=collate_regions, pin_memory=torch.cuda.is_available() and cfg.USE_CUDA,
        )

    def build_table_filler(self, table):
        """The TableFiller of a lazy table that is not complete (None once it is), with its teacher."""
        node = self.ril_cfg
        if table.attrs["complete"]:
            print(f"RIL table {table.path} is complete: TRAINER.FDBPL.RIL_FILL has nothing to score")
            return None
        if not table.lazy:
            table.check_complete()  # an unfinished precompute: its own message
        if world_size() > 1:
            raise RILTableError(
                f"TRAINER.FDBPL.RIL_FILL fills the lazy table {table.path} from one process; under torchrun, train "
                "from a filled table (finish it with python -m ril precompute without --lazy)"
            )
        print(f"Lazy RIL table {table.path}: {100 * table.filled_regions().mean():.2f}% filled; the teacher "
              f"{node.TEACHER_BACKBONE} (TRAINER.FDBPL.TEACHER_BACKBONE) scores the regions this run draws first, "
              "loaded when a batch first has one")
        return TableFiller(table.path, [node.TEACHER_BACKBONE], self.cfg.DATALOADER.TRAIN_X.BATCH_SIZE,
                           given="TRAINER.FDBPL.TEACHER_BACKBONE", device=self.device)

    def lazy_targets(self, batch):
        """(soft labels (B, C), entropies (B,)) of a batch from a lazy table, its unfilled regions scored now."""
        soft_label, entropy = batch["soft_label"], batch["entropy"]
        unfilled = ~batch["filled"]
        if unfilled.any():
            rows = self.ril_filler.fill(batch["index"][unfilled].numpy(), batch["region"][unfilled].numpy(),
                                        batch["raw"])
            soft_label, entropy = soft_label.clone(), entropy.clone()
            soft_label[unfilled] = densify(rows["regions/topk_index"], rows["regions/topk_logprob"],
                                           soft_label.shape[1], self.ril_cfg.DENSIFY)
            entropy[unfilled] = torch.from_numpy(rows["regions/entropy"].astype("float32"))
        return soft_label, entropy

    def parse_ril_batch(self, batch):
        """(pixels (B, 3, H, W) or stored image features (B, D), RegionTargets) on the device."""
        if self.online_teacher_source:
            return self.online_targets(batch)
        if "soft_label" not in batch:
            raise TrainingSetupError(
                f"{type(self).__name__} got a training batch without soft labels (keys: {', '.join(sorted(batch))}): "
                "its train loader is not the RIL region loader, so it would train on hard labels. Something "
                "replaced train_loader_x after RILSupervision.before_train built it (or a before_train did not "
                "call super().before_train())"
            )
        inputs = batch["feature"] if self.ril_cfg.FEATURE_CACHE else batch["img"]
        soft_label, entropy = self.lazy_targets(batch) if "filled" in batch else (batch["soft_label"], batch["entropy"])
        targets = RegionTargets(soft_label.to(self.device), entropy.to(self.device), batch["label"].to(self.device))
        return inputs.to(self.device), targets

    def online_targets(self, batch):
        """(images, RegionTargets) of a batch of Dassl's training images, scored by the online teacher."""
        images = batch["img"].to(self.device)
        log_prob = F.log_softmax(self.ril_teacher.logits(images).float(), dim=1)
        prob = log_prob.exp()
        entropy = -(prob * log_prob).sum(dim=1)
        return images, RegionTargets(prob, entropy, batch["label"].to(self.device))

    def region_image_features(self, model, inputs):
        """Normalised image features (B, E): from the stored cache, or the model's image encoder."""
        if self.ril_cfg.FEATURE_CACHE:
            return F.normalize(inputs.type(model.dtype), dim=-1)
        return model.encode_image(inputs)

    def region_logits(self, images):
        """(logits (B, C), extra loss or None) of a model of other code on training images: `self.model(images)`,
        in eval mode with LOGITS_IN_EVAL_MODE. Override it for a model that needs more (e.g. labels)."""
        model = self.model
        with eval_mode(model) if self.LOGITS_IN_EVAL_MODE else nullcontext():
            try:
                output = model(images)
            except TypeError as error:  # e.g. CoCoOp's forward(image, label) asking for its label
                raise TrainingSetupError(
                    f"{type(model).__name__}(images) failed while training ({error}): a model that needs labels or "
                    f"returns its loss while training needs LOGITS_IN_EVAL_MODE = True on {type(self).__name__}, "
                    "or an override of region_logits (README: Add FDBPL to your Dassl trainer)"
                ) from error
        logits, extra = output if isinstance(output, tuple) else (output, None)
        if logits.dim() != 2 or logits.shape[0] != images.shape[0]:
            raise TrainingSetupError(
                f"{type(model).__name__}(images) returned a tensor of shape {tuple(logits.shape)} while training, "
                f"not ({images.shape[0]}, classes) logits: a model that returns its loss while training needs "
                f"LOGITS_IN_EVAL_MODE = True on {type(self).__name__}, or an override of region_logits"
            )
        return logits, extra

    def ril_forward(self, inputs, targets):
        """RegionForward of a region batch: positive logits, features, and the FDBPL loss with its summary."""
        model = self.model
        if not has_prompt_encoders(model):
            return self.ril_forward_of_other_code(inputs, targets)
        image_features = self.region_image_features(model, inputs)
        if self.dual_prompts:
            text_features, text_neg = model.encode_text_pair()
            dual = (model.logits(image_features, text_neg), text_features, text_neg)
        else:
            text_features, dual = model.encode_text(), None
        logits = model.logits(image_features, text_features)
        loss, summary = self.ril_loss(logits, targets, dual)
        return RegionForward(logits, image_features, text_features, loss, summary)

    def ril_forward_of_other_code(self, images, targets):
        """RegionForward (no features) of a model scored by `region_logits`; its extra loss is added."""
        logits, extra = self.region_logits(images)
        dual = None
        if self.dual_prompts:  # the negative pass's own extra loss regularises nothing of the method: dropped
            with swapped_context(self.model.prompt_learner, self.negative_context.ctx):
                dual = (self.region_logits(images)[0], None, None)
        loss, summary = self.ril_loss(logits, targets, dual)
        if extra is not None:
            loss = loss + extra
            summary.update(loss=loss.item(), extra=extra.item())
        return RegionForward(logits, None, None, loss, summary)

    def ril_loss(self, logits_pos, targets, dual=None):
        """(loss, summary): L_pos alone, or with `dual = (logits_neg, text_pos, text_neg)` all FDBPL terms."""
        node = self.ril_cfg
        if dual is None:
            weight = information_weight(targets.entropy, logits_pos.shape[1])
            loss = positive_kd_loss(logits_pos, targets.soft_label, weight, node.ALPHA)
            return loss, {"loss": loss.item(), "pos": loss.item()}
        logits_neg, text_pos, text_neg = dual
        classes = None if text_pos is None else global_top1_classes(targets.soft_label)
        terms = fdbpl_loss_terms(
            logits_pos, logits_neg, text_pos, text_neg, targets.soft_label, targets.entropy, node.ALPHA, classes
        )
        loss = weighted_total(terms, node.LAMBDA_NEG, node.LAMBDA_DIFF1, node.LAMBDA_DIFF2)
        return loss, {"loss": loss.item(), **{name: terms[name].item() for name in LOSS_TERMS if name in terms}}
