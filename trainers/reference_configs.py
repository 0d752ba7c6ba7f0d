"""What the reference repositories' configs and command lines set that this project spells otherwise or lacks.

The references are CoOp/CoCoOp, MaPLe, PromptSRC, PromptKD and the official FDBPL code. Their config files
and `train.py` overrides merge here unchanged (trainers/config.py calls these helpers on every merge): a
key this project names otherwise is renamed, a key whose value cannot change a result here (nor in the
reference) is accepted and ignored, and PromptKD's TRAINER.MODAL is mapped once every merge is done. A
trainer they have and this project does not is named as such, before any of its files is looked for.
"""
import os

# PromptKD's VLPromptLearner is its teacher's: CTX_INIT words the teacher's prompts, TEACHER_NAME is its CLIP.
RENAMED_KEYS = {
    "TRAINER.PROMPTKD.CTX_INIT": "TRAINER.PROMPTKD.TEACHER_CTX_INIT",
    "TRAINER.PROMPTKD.TEACHER_NAME": "TRAINER.PROMPTKD.TEACHER_BACKBONE",
}
IGNORED_KEYS = (
    # The teacher's text prompt length and depth, which come from its checkpoint here (PromptKD's code fixes the
    # teacher's depth at 9 and fails when N_CTX_TEXT differs from the checkpoint); the student has no text prompts.
    "TRAINER.PROMPTKD.N_CTX_TEXT", "TRAINER.PROMPTKD.PROMPT_DEPTH_TEXT",
    "TRAINER.PROMPTKD.CE_WEIGHT",  # declared by PromptKD's train.py (0.0 in its configs) but never read by its code
)
# PromptKD's switch between its settings, base2novel (its default) and cross: see apply_modal.
MODAL_KEY = "TRAINER.MODAL"
MODALS = ("base2novel", "cross")
# Where PromptKD's code reads the published teachers, under the working directory: <DATASET.NAME>/ for
# base2novel (VLPromptLearner/model-best.pth.tar), ImageNet-xd/ for cross (VLPromptLearner_large/, epoch 20).
PUBLISHED_TEACHERS = "teacher_model"
CROSS_TEACHER, CROSS_TEACHER_EPOCH = "ImageNet-xd", 20

KDPL = ("is KDPL, the official FDBPL code's online-distillation baseline; here it is --trainer {}_FDBPL with "
        "TRAINER.FDBPL.TEACHER_SOURCE online and the teacher in TRAINER.FDBPL.TEACHER_BACKBONE (KDPL's "
        "class-agnostic variant, TRAINER.KDPL.CLASS_AGNOSTIC, is not implemented)")
ABSENT_TRAINERS = {
    "CoOp_OFF": "is the official FDBPL code's FDBPL trainer; here it is --trainer FDBPL, and "
                "configs/trainers/FDBPL/official_vit_b32.yaml holds that code's setting",
    "promptsrc_off": "is the official FDBPL code's PromptSRC trained from offline soft labels; here it is "
                     "--trainer PromptSRC_FDBPL",
    **{f"{method}_KDPL": KDPL.format(method) for method in ("CoOp", "CoCoOp", "MaPLe", "PromptSRC", "VPT")},
}
ABSENT_NODES = {"KDPL": "CoOp_KDPL"}  # TRAINER.<node> -> its trainer


def check_trainer_exists(name, source):
    """Name a reference repository's trainer that this project does not have, before its files are looked for."""
    if name in ABSENT_TRAINERS:
        raise ValueError(f"{source} {name}: {name} {ABSENT_TRAINERS[name]}")


def absent_node_error(key, source):
    """The error for a key of a trainer this project does not have (TRAINER.KDPL.TEACHER), else None."""
    parts = key.split(".")
    if len(parts) >= 2 and parts[0] == "TRAINER" and parts[1] in ABSENT_NODES:
        trainer = ABSENT_NODES[parts[1]]
        return ValueError(f"{source}: {key} configures {trainer}, which {ABSENT_TRAINERS[trainer]}")
    return None


def take_reference_key(key, value, source, switches):
    """The project's key for `key` set to `value`: itself, its new name, or None (ignored, or the MODAL switch,
    which is kept in `switches` as (value, source) until apply_modal)."""
    if key == MODAL_KEY:
        if value not in MODALS:
            raise ValueError(f"{source}: {MODAL_KEY} is {value!r}; PromptKD's settings are {' and '.join(MODALS)}")
        switches[MODAL_KEY] = (value, source)
        return None
    return None if key in IGNORED_KEYS else RENAMED_KEYS.get(key, key)


def take_reference_keys(loaded, source, switches):
    """Rename, drop or keep aside the reference keys of a loaded YAML mapping (in place)."""
    for key in (MODAL_KEY, *IGNORED_KEYS, *RENAMED_KEYS):
        found, value = _pop_path(loaded, key)
        target = take_reference_key(key, value, source, switches) if found else None
        if target is None:
            continue
        *nodes, leaf = target.split(".")
        node = loaded
        for name in nodes:
            node = node.setdefault(name, {})
        if leaf in node:
            raise ValueError(f"{source} sets both {key} (PromptKD's name) and {target}, the same setting: keep one")
        node[leaf] = value


def _pop_path(mapping, key):
    """Remove a dotted key from a nested mapping; (True, value) if it was there."""
    *nodes, leaf = key.split(".")
    for node in nodes:
        mapping = mapping.get(node)
        if not isinstance(mapping, dict):
            return False, None
    return (True, mapping.pop(leaf)) if leaf in mapping else (False, None)


def apply_modal(cfg, modal, source):
    """PromptKD's TRAINER.MODAL (its code reads it for PromptKD only), on the merged config.

    There, base2novel trains on the unlabelled images of all classes, validates on the base classes and tests on
    the new ones; cross trains on the run's classes; both read a published teacher under ./teacher_model/. Here:
    the same training (TRANSDUCTIVE) and teacher (when TEACHER_DIR is empty); a base2novel run's own test is on
    the base classes, and its new-class accuracy is an eval-only run with DATASET.SUBSAMPLE_CLASSES new.
    """
    if modal is None or cfg.TRAINER.NAME != "PromptKD":
        return
    node = cfg.TRAINER.PROMPTKD
    if not node.TRANSDUCTIVE:
        raise ValueError(f"{source}: PromptKD's {modal} setting trains on the unlabelled images of every class, but "
                         "TRAINER.PROMPTKD.TRANSDUCTIVE is False: leave out one of the two")
    if modal == "base2novel" and cfg.DATASET.SUBSAMPLE_CLASSES == "all":
        cfg.DATASET.SUBSAMPLE_CLASSES = "base"
    if node.TEACHER_DIR:
        return
    node.TEACHER_DIR = os.path.join(PUBLISHED_TEACHERS, cfg.DATASET.NAME if modal == "base2novel" else CROSS_TEACHER)
    if modal == "cross" and node.TEACHER_EPOCH == 0:
        node.TEACHER_EPOCH = CROSS_TEACHER_EPOCH
    if not os.path.isdir(node.TEACHER_DIR):
        raise ValueError(
            f"{source}: PromptKD's code reads its published {modal} teacher from {node.TEACHER_DIR}/ under the "
            "working directory, and so does this project when TRAINER.PROMPTKD.TEACHER_DIR is empty, but "
            f"{os.path.abspath(node.TEACHER_DIR)} does not exist: put the teacher there, set "
            "TRAINER.PROMPTKD.TEACHER_DIR, or leave out TRAINER.MODAL for a zero-shot teacher"
        )
