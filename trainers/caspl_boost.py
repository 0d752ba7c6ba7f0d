"""CasPL stage 1 (Wu et al., ECCV 2024): boosting prompts distilled from a larger CLIP on unlabeled images.

The student carries IVLP prompts in both towers (TRAINER.CASPL: text and vision tokens in layers
0..PROMPT_DEPTH_*-1) and learns the teacher's class distribution over the run's classes; labels are
never read. TEACHER_SOURCE `online` (the paper) runs TEACHER_BACKBONE on every batch against class
text features computed once per run (zero-shot from TEACHER_TEMPLATES, default the dataset's CoOp
template; or fine-tuned: the IVLP prompts of a PromptSRC run in TEACHER_DIR, as the paper's tuned
teacher), loss KL(teacher || student) at TEMPERATURE; `ril` (ours,
teacher-free) reads the teacher's soft labels from an RIL table (TRAINER.FDBPL.RIL_TABLE) with
FDBPL's L_pos at temperature 1: per region, the teacher's information weight times a forward /
reverse KL mix (TRAINER.FDBPL.ALPHA; 1 = forward KL only). Both are scaled as PromptKD publishes its
KL (divided by B * C, times KD_WEIGHT), so the two sources differ in their targets only. The text
prompts are one context shared by all classes, so stage 2 (trainers/caspl.py) cascades them on any
class set, new classes included.
"""
from dassl.engine import TRAINER_REGISTRY

from .base import PromptTrainer
from .deep_prompts import DeepPromptedCLIP, IVLPPrompts
from .losses import distillation_kl
from .online_teacher import load_online_teacher, teacher_checkpoint
from .prompt_learners import count_tokens
from .ril_supervision import RILSupervision
from .templates import dataset_template

BOOST_MODEL = "prompt_learner"  # the checkpoint folder of the boosting prompts in a stage-1 run
TEACHER_SOURCES = ("online", "ril")


def build_boosting_prompts(clip_model, classnames, node):
    """The boosting prompts (IVLPPrompts) as TRAINER.CASPL (`node`) shapes them; stage 2 builds the same to load them.

    Every text token must be learnable: fixed init words would sit in stage 1's prompt but not in the cascade.
    """
    n_init = count_tokens(node.CTX_INIT.replace("_", " ").strip())
    if n_init > node.N_CTX_TEXT:
        raise ValueError(
            f"TRAINER.CASPL.CTX_INIT {node.CTX_INIT!r} has {n_init} tokens but N_CTX_TEXT is {node.N_CTX_TEXT}: "
            "the words past N_CTX_TEXT would be fixed text that stage 2 does not cascade; give at most "
            "N_CTX_TEXT tokens of init words (or none for a random init)"
        )
    return IVLPPrompts.from_config(clip_model, classnames, node)


@TRAINER_REGISTRY.register()
class CasPL_Boost(RILSupervision, PromptTrainer):
    """Trains `prompt_learner` (the boosting prompts) by distillation only; the teacher is never saved."""

    CONFIG_NODE = "CASPL"

    @property
    def from_table(self):
        return self.method_cfg.TEACHER_SOURCE == "ril"

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        node = cfg.TRAINER.CASPL
        if node.TEACHER_SOURCE not in TEACHER_SOURCES:
            raise ValueError(
                f"TRAINER.CASPL.TEACHER_SOURCE must be one of {TEACHER_SOURCES}; got {node.TEACHER_SOURCE!r}"
            )
        if node.TEMPERATURE <= 0:
            raise ValueError(f"TRAINER.CASPL.TEMPERATURE must be positive; got {node.TEMPERATURE}")
        if node.TEACHER_SOURCE == "ril" and node.TEMPERATURE != 1:
            raise ValueError(
                f"TRAINER.CASPL.TEMPERATURE is {node.TEMPERATURE}, but an RIL table stores the teacher's "
                "temperature-1 probabilities; set TEMPERATURE 1.0 with TEACHER_SOURCE ril"
            )
        if node.TEACHER_DIR:
            self.check_tuned_teacher(node)

    @staticmethod
    def check_tuned_teacher(node):
        """TEACHER_DIR prompts the online teacher: it needs TEACHER_SOURCE online and replaces TEACHER_TEMPLATES."""
        if node.TEACHER_SOURCE == "ril":
            raise ValueError(
                f"TRAINER.CASPL.TEACHER_DIR is {node.TEACHER_DIR!r}, but with TEACHER_SOURCE ril the teacher is the "
                "one that scored the RIL table (TRAINER.FDBPL.RIL_TABLE): clear TEACHER_DIR, or set TEACHER_SOURCE "
                "online to run the fine-tuned teacher on every batch"
            )
        if node.TEACHER_TEMPLATES:
            raise ValueError(
                f"TRAINER.CASPL.TEACHER_TEMPLATES is {list(node.TEACHER_TEMPLATES)}, but a teacher prompted from "
                f"TEACHER_DIR {node.TEACHER_DIR!r} reads no templates: clear one of the two"
            )
        teacher_checkpoint(node.TEACHER_DIR, node.TEACHER_EPOCH or None)

    def build_model(self):
        clip_model = self.load_clip_model()
        learner = build_boosting_prompts(clip_model, self.dm.dataset.classnames, self.method_cfg)
        model = DeepPromptedCLIP(clip_model, learner, self.cfg.MODEL.TEXT_TRUNCATION)
        self.install_prompted_model(model, BOOST_MODEL, learner)

    def prepare_training(self):
        """`ril`: RILSupervision's region loader. `online`: Dassl's loader of training images, and the teacher."""
        if self.from_table:
            super().prepare_training()
            return
        node, cfg = self.method_cfg, self.cfg
        texts = list(node.TEACHER_TEMPLATES) or [dataset_template(cfg.DATASET.NAME)]
        kind = f"prompted from {node.TEACHER_DIR}" if node.TEACHER_DIR else f"zero-shot, class texts from {texts}"
        print(f"CasPL online teacher {node.TEACHER_BACKBONE} ({kind})")
        self.teacher = load_online_teacher(
            node.TEACHER_BACKBONE, self.dm.dataset.classnames, *self.input_normalisation(), self.device,
            templates=node.TEACHER_TEMPLATES, prompt_dir=node.TEACHER_DIR, epoch=node.TEACHER_EPOCH or None,
            truncate=cfg.MODEL.TEXT_TRUNCATION, dataset_name=cfg.DATASET.NAME,
        )

    def forward_backward(self, batch):
        """loss = KD_WEIGHT * kd; kd sums the teacher-to-student KL over classes and divides by B * C in both modes."""
        if self.from_table:
            image, targets = self.parse_ril_batch(batch)
        else:
            image = batch["img"].to(self.device)
            teacher_logits = self.teacher.logits(image)
        with self.autocast():
            logits = self.model(image)
            if self.from_table:
                kd = self.ril_loss(logits, targets)[0] / logits.shape[1]  # L_pos is a mean over regions only
            else:
                kd = distillation_kl(logits, teacher_logits, self.method_cfg.TEMPERATURE)
            loss = self.method_cfg.KD_WEIGHT * kd
        self.backward_and_update(loss)
        self.end_of_epoch_step()
        return {"loss": loss.item(), "kd": kd.item()}
