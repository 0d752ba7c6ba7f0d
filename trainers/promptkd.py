"""PromptKD (Li et al., CVPR 2024): unsupervised prompt distillation from a large teacher CLIP run online.

Stage 1 trains the teacher: PromptSRC on a large CLIP (scripts/promptkd.sh). Stage 2, this trainer:
the student's image tower gets deep vision prompts and a projector to the teacher's embedding width;
its logits are against the teacher's class text features, computed once when training starts for
all classes and stored as <OUTPUT_DIR>/teacher_text_features.pt (the published code recomputes them
every step). The student's text tower is never used; the teacher's image tower runs on every batch.
Loss, normalised as published: KD_WEIGHT * T^2 * sum_{b,c} p_t (log p_t - log p_s) / (B * C), with
p = softmax(logits / T), i.e. KD_WEIGHT / C times the per-image KL(p_t || p_s) T^2.

TRANSDUCTIVE (published) trains on the unlabelled training images of ALL classes whatever
DATASET.SUBSAMPLE_CLASSES is, with logits over all classes; without it, on the run's own training
split (base images in base-to-new, logits over those classes), for a fair comparison with FDBPL.
Labels are never read. Evaluation takes the stored rows of its classes (base: the first rows, new:
the last, checked by name); it needs the student checkpoints and the stored features, no teacher. A
student of the published code (VLPromptLearner/) stores no features: its teacher computes them, as there.
"""
import os
import os.path as osp

import torch
import torch.nn as nn
import torch.nn.functional as F
from dassl.data.data_manager import build_data_loader
from dassl.data.datasets import build_dataset
from dassl.data.transforms import build_transform
from dassl.engine import TRAINER_REGISTRY

from .base import PromptTrainer
from .checkpoint_import import published_layout
from .deep_prompts import DeepPromptInjector, LayerPrompts, check_depth, tower_widths
from .losses import distillation_kl
from .online_teacher import load_online_teacher, teacher_checkpoint

TEXT_FEATURES_FILE = "teacher_text_features.pt"


def build_projector(in_dim, out_dim, layers):
    """Student -> teacher width: 1 = Linear; 2 = Linear-BatchNorm-ReLU-Linear (published, as 1x1 convolutions)."""
    if layers == 1:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(
        nn.Linear(in_dim, out_dim), nn.BatchNorm1d(out_dim), nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim)
    )


def save_text_features(directory, features, classnames, teacher):
    """Store the teacher's class text features (C, E) with their class names and a teacher description."""
    os.makedirs(directory, exist_ok=True)
    path = osp.join(directory, TEXT_FEATURES_FILE)
    data = {"text_features": features.detach().float().cpu(), "classnames": list(classnames), "teacher": teacher}
    torch.save(data, path)
    print(f"Stored the teacher text features of {len(classnames)} classes at {path}")


def load_text_features(directory):
    """(features (C, E), class names) stored by a PromptKD training run in `directory`, read weights-only."""
    path = osp.join(directory, TEXT_FEATURES_FILE)
    if not osp.isfile(path):
        raise FileNotFoundError(
            f"No teacher text features at {path}: PromptKD evaluates with the features its training run "
            "stored there; give --model-dir the output folder of a PromptKD training run"
        )
    data = torch.load(path, map_location="cpu", weights_only=True)
    features, classnames = data.get("text_features"), data.get("classnames")
    if not (isinstance(features, torch.Tensor) and features.dim() == 2 and isinstance(classnames, list)
            and len(classnames) == features.shape[0]):
        raise ValueError(f"{path} is not a PromptKD text-feature file (text_features (C, E) and C classnames)")
    print(f"Loaded the teacher text features of {len(classnames)} classes ({data.get('teacher')}) from {path}")
    return features, classnames


def class_rows(stored, classnames, subsample):
    """Rows of the all-class features for `classnames`: the first rows for base and all, the last for new."""
    start = len(stored) - len(classnames) if subsample == "new" else 0
    rows = slice(start, start + len(classnames))
    if list(stored[rows]) != list(classnames):
        first = next(i for i, name in enumerate(classnames) if start + i >= len(stored) or stored[start + i] != name)
        raise ValueError(
            f"The stored teacher text features cover {len(stored)} classes ({', '.join(stored[:3])}, ...), but this "
            f"run's {len(classnames)} classes (DATASET.SUBSAMPLE_CLASSES={subsample}) do not match their rows "
            f"{start}..{start + len(classnames) - 1} (first difference: class {first}, {classnames[first]!r}). "
            "Evaluate on the dataset the PromptKD student was trained on."
        )
    return rows


class PromptKDStudent(nn.Module):
    """Frozen CLIP image tower with deep vision prompts; `forward` gives projected, normalised features."""

    def __init__(self, clip_model, n_ctx, depth):
        super().__init__()
        _, width = tower_widths(clip_model)
        check_depth("TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", depth, len(clip_model.visual.transformer.resblocks), 1)
        clip_model.requires_grad_(False)
        self.image_encoder = clip_model.visual
        self.logit_scale = clip_model.logit_scale
        self.dtype = clip_model.dtype
        self.vision_prompts = LayerPrompts(n_ctx, width, range(depth), clip_model.logit_scale.device)
        self.projector = None  # built once the teacher's width is known (PromptKD.add_projector)
        self.injector = DeepPromptInjector(clip_model, vision_sources=[self.vision_prompts.source])

    def forward(self, image):
        """(B, E_teacher) normalised features; the projector runs in fp32."""
        return F.normalize(self.projector(self.image_encoder(image.type(self.dtype)).float()), dim=-1)

    def logits(self, features, text_features):
        return self.logit_scale.exp() * features @ text_features.t()


@TRAINER_REGISTRY.register()
class PromptKD(PromptTrainer):
    """Student vision prompts (`prompt_learner`) and projector (`projector`) distilled from an online teacher."""

    CONFIG_NODE = "PROMPTKD"

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        node = cfg.TRAINER.PROMPTKD
        if node.PROJECT_LAYER not in (1, 2):
            raise ValueError(f"TRAINER.PROMPTKD.PROJECT_LAYER must be 1 (Linear) or 2 (MLP); got {node.PROJECT_LAYER}")
        if node.TEMPERATURE <= 0:
            raise ValueError(f"TRAINER.PROMPTKD.TEMPERATURE must be positive; got {node.TEMPERATURE}")
        if node.TEACHER_DIR:
            teacher_checkpoint(node.TEACHER_DIR, node.TEACHER_EPOCH or None)

    def build_model(self):
        node = self.method_cfg
        student = PromptKDStudent(self.load_clip_model(), node.N_CTX_VISION, node.PROMPT_DEPTH_VISION)
        self.model = student.to(self.device)
        self.register_trainable("prompt_learner", student.vision_prompts)
        self.build_grad_scaler()
        self.teacher = self.train_text = self.eval_text = None

    def add_projector(self, teacher_dim):
        """Build and register the projector (student width -> `teacher_dim`) unless it exists."""
        if self.model.projector is None:
            projector = build_projector(self.model.image_encoder.output_dim, teacher_dim, self.method_cfg.PROJECT_LAYER)
            self.model.projector = projector.to(self.device)
            self.register_trainable("projector", self.model.projector)

    def use_text_features(self, features, stored_classnames):
        """Keep the rows of this run's classes for evaluation."""
        self.add_projector(features.shape[1])
        rows = class_rows(stored_classnames, self.dm.dataset.classnames, self.cfg.DATASET.SUBSAMPLE_CLASSES)
        self.eval_text = features[rows].to(self.device)

    def all_classes_dataset(self):
        """The run's dataset with every class: the same reader, SUBSAMPLE_CLASSES set to all on a config copy."""
        if self.cfg.DATASET.SUBSAMPLE_CLASSES == "all":
            return self.dm.dataset
        cfg = self.cfg.clone()
        cfg.defrost()
        cfg.DATASET.SUBSAMPLE_CLASSES = "all"
        cfg.freeze()
        return build_dataset(cfg)

    def load_teacher(self, classnames):
        """(OnlineTeacher for `classnames`, its description) from TRAINER.PROMPTKD.TEACHER_*."""
        node, cfg = self.method_cfg, self.cfg
        if not node.TEACHER_BACKBONE:
            raise ValueError("TRAINER.PROMPTKD.TEACHER_BACKBONE is empty: give the teacher CLIP's name or checkpoint path")
        kind = f"prompted from {node.TEACHER_DIR}" if node.TEACHER_DIR else "zero-shot"
        print(f"Loading the teacher CLIP ({node.TEACHER_BACKBONE}, {kind})")
        teacher = load_online_teacher(
            node.TEACHER_BACKBONE, classnames, *self.input_normalisation(), self.device,
            dataset_name=cfg.DATASET.NAME, prompt_dir=node.TEACHER_DIR,
            epoch=node.TEACHER_EPOCH or None, ctx_init=node.TEACHER_CTX_INIT, truncate=cfg.MODEL.TEXT_TRUNCATION,
        )
        return teacher, f"{node.TEACHER_BACKBONE}, {kind}"

    def prepare_training(self):
        """Load the teacher, store its class text features once, and choose the training images and classes."""
        data = self.all_classes_dataset()
        self.teacher, description = self.load_teacher(data.classnames)
        features = self.teacher.class_features
        save_text_features(self.cfg.OUTPUT_DIR, features, data.classnames, description)
        self.use_text_features(features, data.classnames)
        if self.method_cfg.TRANSDUCTIVE:
            self.train_text = features.to(self.device)
            self.train_loader_x = self.unlabelled_loader(data)
        else:
            self.train_text = self.eval_text
        super().prepare_training()

    def unlabelled_loader(self, data):
        """Dassl's training loader over every training image of `data` (all classes)."""
        cfg = self.cfg
        print(f"Transductive: training on the {len(data.train_x)} training images of all "
              f"{len(data.classnames)} classes, without their labels")
        return build_data_loader(
            cfg, sampler_type=cfg.DATALOADER.TRAIN_X.SAMPLER, data_source=data.train_x,
            batch_size=cfg.DATALOADER.TRAIN_X.BATCH_SIZE, tfm=build_transform(cfg, is_train=True), is_train=True,
        )

    def forward_backward(self, batch):
        image = batch["img"].to(self.device)  # labels are never read: the teacher is the only supervision
        node = self.method_cfg
        with torch.no_grad(), self.autocast():
            teacher_logits = self.teacher.logits(image, self.train_text)
        with self.autocast():
            student_logits = self.model.logits(self.model(image), self.train_text)
            kd = distillation_kl(student_logits, teacher_logits, node.TEMPERATURE)
            loss = node.KD_WEIGHT * kd
        self.backward_and_update(loss)
        self.end_of_epoch_step()
        agree = (student_logits.argmax(dim=1) == teacher_logits.argmax(dim=1)).float().mean().item() * 100
        return {"loss": loss.item(), "kd": kd.item(), "agree": agree}

    def load_model(self, directory, epoch=None):
        """A trained student: its checkpoints and the teacher text features stored beside them, or computed
        from the teacher for a student of the published code, which stores none."""
        if not directory:
            raise ValueError(
                "PromptKD evaluates a trained student with the teacher text features its training run stored: "
                "pass --model-dir with the output folder of that run"
            )
        published = published_layout(type(self).__name__, directory, self.get_model_names())
        if published and not osp.isfile(osp.join(directory, TEXT_FEATURES_FILE)):
            self.use_teacher_text_features(directory)
        else:
            self.use_text_features(*load_text_features(directory))
        super().load_model(directory, epoch)

    def use_teacher_text_features(self, directory):
        """The teacher's class text features of all classes, as the published code computes them at test time."""
        if not self.method_cfg.TEACHER_BACKBONE:
            raise ValueError(
                f"{directory} holds a student of the published PromptKD code, which stores no teacher text "
                "features: set TRAINER.PROMPTKD.TEACHER_BACKBONE (and TEACHER_DIR, its teacher folder) to the "
                "teacher it was distilled from"
            )
        data = self.all_classes_dataset()
        teacher, _ = self.load_teacher(data.classnames)
        self.use_text_features(teacher.class_features, data.classnames)

    def model_inference(self, image):
        return self.model.logits(self.model(image), self.eval_text)
