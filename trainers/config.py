"""Every config key the project adds to Dassl's defaults, declared once, and the config builder.

`train.py` and `python -m ril` build their config through `setup_cfg`, so a table is made from
exactly the image list that training reads. `setup_cfg` raises ValueError naming the file or
override of any key it cannot take. The reference repositories' keys that this project spells
otherwise or does not need are taken by every merge (trainers/reference_configs.py).
"""
import difflib

import yaml
from dassl.config import get_cfg_default
from dassl.data.datasets import DATASET_REGISTRY
from dassl.engine import TRAINER_REGISTRY
from yacs.config import CfgNode as CN

from .plugins import PluginError, config_extensions
from .reference_configs import (
    MODAL_KEY, absent_node_error, apply_modal, check_trainer_exists, take_reference_key, take_reference_keys,
)

PRECISIONS = ("fp16", "fp32", "amp")

# How a run folder's recorded settings are compared (trainers/run_record.py), as fnmatch patterns of
# dotted keys. The backbone and the RIL table are compared by identity (checksum, table fingerprint),
# not by MODEL.BACKBONE.NAME or TRAINER.FDBPL.RIL_TABLE.
IDENTITY_KEYS = ("MODEL.BACKBONE.NAME", "TRAINER.FDBPL.RIL_TABLE")
# Never change the trained prompts: where a run writes, what it logs and keeps, switches with identical
# results, and how the final test is computed and shown. Resuming may change them.
RUN_ONLY_KEYS = (
    "OUTPUT_DIR", "RESUME", "VERBOSE", "TRAIN.PRINT_FREQ", "TRAIN.CHECKPOINT_FREQ",
    "MODEL.TEXT_TRUNCATION", "MODEL.TEXT_CHECKPOINTING",
    "TEST.EVALUATOR", "TEST.SPLIT", "TEST.PER_CLASS_RESULT", "TEST.COMPUTE_CMAT", "DATALOADER.TEST.*",
)
# What defines a trained model, so --eval-only must match the training run in it; every other key
# (DATASET.*, SEED, OPTIM.*, TRAIN.*, TEST.*, DATALOADER.*, augmentation) may differ on evaluation.
MODEL_KEYS = ("TRAINER.*", "MODEL.*", "INPUT.SIZE", "INPUT.PIXEL_MEAN", "INPUT.PIXEL_STD")
# Keys under MODEL_KEYS that only training reads (loss weights, supervision, teachers, stage-1 runs)
# or that set the precision evaluation runs in: --eval-only may differ in them too.
TRAINING_ONLY_KEYS = (
    "TRAINER.*.PREC",
    "TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT", "TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT", "TRAINER.PROMPTSRC.GPA_*",
    "TRAINER.PROMPTKD.KD_WEIGHT", "TRAINER.PROMPTKD.TEMPERATURE", "TRAINER.PROMPTKD.TRANSDUCTIVE",
    "TRAINER.PROMPTKD.TEACHER_*",
    "TRAINER.FDBPL.ALPHA", "TRAINER.FDBPL.LAMBDA_*", "TRAINER.FDBPL.DENSIFY", "TRAINER.FDBPL.REPEAT",
    "TRAINER.FDBPL.FEATURE_CACHE", "TRAINER.FDBPL.IN_MEMORY", "TRAINER.FDBPL.RIL_FILL",
    "TRAINER.FDBPL.TEACHER_*",
    "TRAINER.CASPL.TEACHER_*", "TRAINER.CASPL.TEMPERATURE", "TRAINER.CASPL.KD_WEIGHT", "TRAINER.CASPL.BOOST_*",
)


def extend_cfg(cfg):
    """Declare the project's keys on a Dassl default config (in place)."""
    cfg.DATASET.SUBSAMPLE_CLASSES = "all"  # all, base or new (base = first half of sorted labels)

    cfg.DATASET.SYNTHETIC = CN()
    cfg.DATASET.SYNTHETIC.NUM_CLASSES = 16  # classes of the generated demo dataset (at most 16)
    cfg.DATASET.SYNTHETIC.IMAGES_PER_CLASS = 40  # images drawn per class (split 50/20/30 %)
    cfg.DATASET.SYNTHETIC.IMAGE_SIZE = 64  # side of the generated square images, in pixels

    cfg.MODEL.TEXT_TRUNCATION = True  # run the causal text transformer only up to the last EOT
    cfg.MODEL.TEXT_CHECKPOINTING = False  # recompute text blocks in backward: less memory, one more forward

    cfg.TRAINER.ZEROSHOTCLIP = CN()
    cfg.TRAINER.ZEROSHOTCLIP.PREC = "fp16"  # fp16, fp32, amp (fp32 is forced on CPU)
    cfg.TRAINER.ZEROSHOTCLIP.TEMPLATES = ()  # prompt templates; empty = the dataset's CoOp template

    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16  # number of context vectors
    cfg.TRAINER.COOP.CSC = False  # class-specific context
    cfg.TRAINER.COOP.CTX_INIT = ""  # initialization words (overrides N_CTX)
    cfg.TRAINER.COOP.PREC = "fp16"  # fp16, fp32, amp (fp32 is forced on CPU)
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # end, middle or front

    cfg.TRAINER.MAPLE = CN()
    cfg.TRAINER.MAPLE.N_CTX = 2  # number of context vectors
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"  # initialization words
    cfg.TRAINER.MAPLE.PREC = "fp16"  # fp16, fp32, amp
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9  # layers with prompts, 1 = shallow (max = layers)

    cfg.TRAINER.PROMPTSRC = CN()
    cfg.TRAINER.PROMPTSRC.N_CTX_VISION = 4  # vision prompt tokens per layer
    cfg.TRAINER.PROMPTSRC.N_CTX_TEXT = 4  # text prompt tokens per layer
    cfg.TRAINER.PROMPTSRC.CTX_INIT = "a photo of a"  # initialization words of the text prompts
    cfg.TRAINER.PROMPTSRC.PREC = "fp16"  # fp16, fp32, amp
    cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION = 9  # layers with vision prompts
    cfg.TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT = 9  # layers with text prompts
    cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT = 25  # L1 to frozen CLIP text features (int, as published)
    cfg.TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT = 10  # L1 to frozen CLIP image features (int, as published)
    cfg.TRAINER.PROMPTSRC.GPA_MEAN = 15  # Gaussian prompt aggregation: mean epoch
    cfg.TRAINER.PROMPTSRC.GPA_STD = 1  # Gaussian prompt aggregation: std in epochs

    # PromptKD stage 2: student vision prompts + projector distilled from an online teacher (stage 1 =
    # PromptSRC on the teacher CLIP); the teacher's prompt layout is read from its checkpoint.
    cfg.TRAINER.PROMPTKD = CN()
    cfg.TRAINER.PROMPTKD.N_CTX_VISION = 4  # student vision prompt tokens per layer
    cfg.TRAINER.PROMPTKD.PROMPT_DEPTH_VISION = 9  # student layers with vision prompts (1 = shallow)
    cfg.TRAINER.PROMPTKD.PROJECT_LAYER = 2  # projector to the teacher width: 1 Linear, 2 Linear-BN-ReLU-Linear
    cfg.TRAINER.PROMPTKD.PREC = "fp16"  # fp16, fp32, amp (student and teacher)
    cfg.TRAINER.PROMPTKD.KD_WEIGHT = 1000.0  # loss weight; the KL is summed and divided by B * C (as published)
    cfg.TRAINER.PROMPTKD.TEMPERATURE = 1.0  # distillation temperature T (the KL is scaled by T^2)
    cfg.TRAINER.PROMPTKD.TRANSDUCTIVE = True  # train on the unlabelled train images of ALL classes (published);
    # False: the run's own train split (base classes in base-to-new)
    cfg.TRAINER.PROMPTKD.TEACHER_BACKBONE = "ViT-L/14"  # teacher CLIP: model name or checkpoint path
    cfg.TRAINER.PROMPTKD.TEACHER_DIR = ""  # stage-1 PromptSRC output folder (or a published teacher folder
    # holding VLPromptLearner/); empty = zero-shot teacher with the dataset's template
    cfg.TRAINER.PROMPTKD.TEACHER_EPOCH = 0  # teacher checkpoint epoch; 0 = model-best.pth.tar, which a published
    # PromptKD teacher folder holds (scripts/promptkd.sh gives its stage-1 run's last epoch)
    cfg.TRAINER.PROMPTKD.TEACHER_CTX_INIT = "a photo of a"  # the teacher's CTX_INIT (sets its prompt words)

    # FDBPL: the FDBPL trainer's prompts, and the RIL supervision every *_FDBPL trainer shares.
    cfg.TRAINER.FDBPL = CN()
    cfg.TRAINER.FDBPL.N_CTX = 4  # context vectors when CTX_INIT is empty
    cfg.TRAINER.FDBPL.CTX_INIT = "a photo of a"  # positive prompt init (its tokens set the length)
    cfg.TRAINER.FDBPL.NEG_CTX_INIT = "a photo of no"  # negative prompt init (every dual-prompt trainer)
    cfg.TRAINER.FDBPL.CSC = False  # class-specific context
    cfg.TRAINER.FDBPL.CLASS_TOKEN_POSITION = "end"  # end, middle or front
    cfg.TRAINER.FDBPL.PREC = "fp16"  # fp16, fp32, amp
    cfg.TRAINER.FDBPL.ALPHA = 0.5  # forward-KL share of L_pos (1 - ALPHA goes to reverse KL)
    cfg.TRAINER.FDBPL.LAMBDA_NEG = 1.0  # weight of L_neg
    cfg.TRAINER.FDBPL.LAMBDA_DIFF1 = 0.001  # weight of the first-order difference L_diff1
    cfg.TRAINER.FDBPL.LAMBDA_DIFF2 = 0.1  # weight of the second-order difference L_diff2
    cfg.TRAINER.FDBPL.DUAL_PROMPTS = False  # *_FDBPL trainers: add negative prompts + PCD terms
    # (the FDBPL trainer always has them)
    cfg.TRAINER.FDBPL.RIL_TABLE = ""  # path of the RIL table (.h5) to train from
    cfg.TRAINER.FDBPL.DENSIFY = "smooth"  # smooth or renorm (how top-K becomes C classes)
    cfg.TRAINER.FDBPL.REPEAT = 1  # regions per decoded image per visit (FKD's repeat factor);
    # an epoch visits every image once, so REPEAT multiplies the iterations per epoch
    cfg.TRAINER.FDBPL.FEATURE_CACHE = False  # serve stored student image features, no pixels
    cfg.TRAINER.FDBPL.IN_MEMORY = False  # load the whole table into memory
    cfg.TRAINER.FDBPL.RIL_FILL = False  # RIL_TABLE may be lazy: score its missing regions with TEACHER_BACKBONE
    cfg.TRAINER.FDBPL.TEACHER_SOURCE = "ril"  # ril (soft labels from RIL_TABLE) or online: KDPL, the same losses
    # against TEACHER_BACKBONE run on every batch of training images (random crops from INPUT.TRANSFORMS)
    cfg.TRAINER.FDBPL.TEACHER_BACKBONE = "ViT-L/14"  # online and RIL_FILL: CLIP name, checkpoint path or open_clip:M/P
    cfg.TRAINER.FDBPL.TEACHER_TEMPLATES = ()  # online: class texts (templates or set names as in
    # `python -m ril precompute --templates`); empty = the dataset's CoOp template, as an RIL table's default

    # CasPL: stage 1 (CasPL_Boost) trains the boosting prompts; stage 2 (<Base>_CasPL) loads them
    # frozen and reads the boosting-prompt shape here, the adapting prompts from the base method's node.
    cfg.TRAINER.CASPL = CN()
    cfg.TRAINER.CASPL.N_CTX_TEXT = 4  # boosting text tokens per layer (one context shared by all classes)
    cfg.TRAINER.CASPL.N_CTX_VISION = 4  # boosting vision tokens per layer
    cfg.TRAINER.CASPL.CTX_INIT = "a photo of a"  # init words of the layer-0 text tokens (at most N_CTX_TEXT tokens)
    cfg.TRAINER.CASPL.PROMPT_DEPTH_TEXT = 9  # boosting text tokens in layers 0..depth-1
    cfg.TRAINER.CASPL.PROMPT_DEPTH_VISION = 9  # boosting vision tokens in layers 0..depth-1
    cfg.TRAINER.CASPL.PREC = "fp16"  # stage 1: fp16, fp32, amp (stage 2 uses the base method's PREC)
    cfg.TRAINER.CASPL.TEACHER_SOURCE = "online"  # stage 1: online (teacher CLIP on every batch) or ril
    # (soft labels from TRAINER.FDBPL.RIL_TABLE with FDBPL's L_pos; no teacher runs)
    cfg.TRAINER.CASPL.TEACHER_BACKBONE = "ViT-L/14"  # online teacher: CLIP name, checkpoint path or open_clip:M/P
    cfg.TRAINER.CASPL.TEACHER_TEMPLATES = ()  # online zero-shot teacher class texts (templates or set names as
    # in `python -m ril precompute --templates`); empty = the dataset's CoOp template, as an RIL table's default
    cfg.TRAINER.CASPL.TEACHER_DIR = ""  # online teacher: a PromptSRC run on TEACHER_BACKBONE (or a published
    # PromptKD teacher folder holding VLPromptLearner/) for a fine-tuned teacher; empty = zero-shot teacher
    cfg.TRAINER.CASPL.TEACHER_EPOCH = 20  # TEACHER_DIR's checkpoint epoch; 0 = model-best.pth.tar
    cfg.TRAINER.CASPL.TEMPERATURE = 1.0  # KD temperature of the online mode (must be 1 with ril)
    cfg.TRAINER.CASPL.KD_WEIGHT = 1000.0  # stage-1 loss weight; the KL is summed and divided by B * C
    # (PromptKD's published normalisation and weight, which CasPL's unreleased code is assumed to share)
    cfg.TRAINER.CASPL.BOOST_DIR = ""  # stage 2: output folder of the CasPL_Boost run to cascade
    cfg.TRAINER.CASPL.BOOST_EPOCH = 0  # stage 2: its checkpoint epoch; 0 = the last one it saved

    # IVLP: independent deep prompts in both towers (MaPLe's baseline); depth 0 of the vision tower (with
    # N_CTX_VISION 0) is its language-only prompting. Defaults as MaPLe's train.py declares them.
    cfg.TRAINER.IVLP = CN()
    cfg.TRAINER.IVLP.N_CTX_VISION = 2  # vision prompt tokens per layer
    cfg.TRAINER.IVLP.N_CTX_TEXT = 2  # text prompt tokens per layer
    cfg.TRAINER.IVLP.CTX_INIT = "a photo of a"  # initialization words of the text prompts
    cfg.TRAINER.IVLP.PREC = "fp16"  # fp16, fp32, amp
    cfg.TRAINER.IVLP.PROMPT_DEPTH_VISION = 9  # layers with vision prompts (0 = none)
    cfg.TRAINER.IVLP.PROMPT_DEPTH_TEXT = 9  # layers with text prompts (1 = shallow)

    # VPT: deep vision prompts only; the class texts are fixed ("<CTX_INIT> <class>."), as in MaPLe's repository.
    cfg.TRAINER.VPT = CN()
    cfg.TRAINER.VPT.N_CTX_VISION = 2  # vision prompt tokens per layer
    cfg.TRAINER.VPT.CTX_INIT = "a photo of a"  # words before the class name in the fixed class texts (the
    # reference code always uses "a photo of a", the value of its configs)
    cfg.TRAINER.VPT.PREC = "fp16"  # fp16, fp32, amp
    cfg.TRAINER.VPT.PROMPT_DEPTH_VISION = 1  # layers with vision prompts (1 = shallow)

    # CoCoOp: CoOp's context plus a per-image shift from a meta-net on the image feature. Defaults as the CoOp
    # repository's train.py declares them.
    cfg.TRAINER.COCOOP = CN()
    cfg.TRAINER.COCOOP.N_CTX = 16  # number of context vectors
    cfg.TRAINER.COCOOP.CTX_INIT = ""  # initialization words (overrides N_CTX)
    cfg.TRAINER.COCOOP.PREC = "fp16"  # fp16, fp32, amp (fp32 is forced on CPU)


def get_cfg():
    """Dassl's defaults plus every project key, plus the keys of loaded plugins (trainers/plugins.py)."""
    cfg = get_cfg_default()
    extend_cfg(cfg)
    for name, extend_plugin_cfg in config_extensions():
        declared = flat_keys(cfg)
        extend_plugin_cfg(cfg)
        after = flat_keys(cfg)
        changed = [key for key, value in declared.items() if key not in after or after[key] != value]
        if changed:
            key = changed[0]
            now = after.get(key, "<removed>")
            raise PluginError(
                f"plugin {name!r}: its extend_cfg changes {len(changed)} key(s) the project declares, e.g. {key} "
                f"({declared[key]!r} -> {now!r}); a plugin declares new keys only (its own TRAINER.<NODE>)"
            )
    return cfg


def setup_cfg(args):
    """Merge dataset config, method config, CLI flags and trailing opts, in CoOp's order."""
    check_trainer_exists(getattr(args, "trainer", ""), "--trainer")
    cfg, switches = get_cfg(), {}
    for flag in ("dataset_config_file", "config_file"):
        path = getattr(args, flag, "")
        if path:
            merge_file(cfg, path, "--" + flag.replace("_", "-"), switches)
    _apply_flags(cfg, args)
    merge_opts(cfg, getattr(args, "opts", None) or [], switches)
    apply_modal(cfg, *switches.get(MODAL_KEY, (None, None)))
    cfg.freeze()
    return cfg


def flat_keys(node, prefix=""):
    """{dotted key: value} of every leaf of a config (or of a nested dict, as a run record holds it)."""
    keys = {}
    for key, value in node.items():
        if isinstance(value, dict):
            keys.update(flat_keys(value, f"{prefix}{key}."))
        else:
            keys[f"{prefix}{key}"] = value
    return keys


def _unknown_key_error(key, cfg, source):
    """Suggest keys of the same node with a close name first (RIL_PATH -> RIL_TABLE), then close keys anywhere;
    a TRAINER.<NODE> no trainer declares points to plugins (trainers/plugins.py)."""
    absent = absent_node_error(key, source)
    if absent:
        return absent
    declared = list(flat_keys(cfg))
    parts = key.split(".")
    trainer_node = ".".join(parts[:2])
    if parts[0] == "TRAINER" and len(parts) >= 2 and trainer_node not in declared_nodes(cfg) | set(declared):
        close = difflib.get_close_matches(key, declared, n=1, cutoff=0.8)  # a typo in the node's name
        hint = f" Did you mean {close[0]}?" if close else ""
        return ValueError(
            f"{source}: unknown config key {key}.{hint} No trainer here declares {trainer_node}: a trainer from "
            "outside the project declares its keys in its plugin's extend_cfg (train.py --plugin MODULE, or "
            "FDBPL_PLUGINS=MODULE for the scripts)."
        )
    node, _, leaf = key.rpartition(".")
    siblings = [name.rpartition(".")[2] for name in declared if name.rpartition(".")[0] == node]
    close = [f"{node}.{name}" if node else name for name in difflib.get_close_matches(leaf, siblings, n=2, cutoff=0.5)]
    close = close or difflib.get_close_matches(key, declared, n=2, cutoff=0.6)
    hint = f" Did you mean {' or '.join(close)}?" if close else " trainers/config.py declares every key of the project."
    return ValueError(f"{source}: unknown config key {key}.{hint}")


def declared_nodes(cfg):
    """Dotted names of every node of the config (TRAINER, TRAINER.COOP, ...)."""
    return {name.rpartition(".")[0] for name in flat_keys(cfg)}


def _unknown_keys(loaded, node, prefix=""):
    """Dotted keys of a loaded YAML mapping that the config `node` does not declare."""
    for key, value in loaded.items():
        full_key = f"{prefix}{key}"
        if key not in node:
            yield full_key
        elif isinstance(value, dict) and isinstance(node[key], CN):
            yield from _unknown_keys(value, node[key], f"{full_key}.")


def merge_file(cfg, path, flag, switches=None):
    """Merge a YAML config file, read as UTF-8 whatever the locale (yacs would use the locale's encoding);
    `switches` keeps PromptKD's TRAINER.MODAL for apply_modal."""
    source = f"{path} ({flag})"
    try:
        with open(path, encoding="utf-8") as handle:
            loaded = yaml.safe_load(handle)
    except OSError as error:
        raise ValueError(f"{source} cannot be read: {error.strerror}; check the path") from error
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{source} is not valid UTF-8 YAML: {error}") from error
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise ValueError(f"{source} holds a {type(loaded).__name__}, not a mapping of config keys")
    take_reference_keys(loaded, source, {} if switches is None else switches)
    unknown = next(_unknown_keys(loaded, cfg), None)
    if unknown:
        raise _unknown_key_error(unknown, cfg, source)
    try:
        cfg.merge_from_other_cfg(CN(loaded))
    except (KeyError, ValueError, AssertionError) as error:  # yacs: a value of the wrong type, a leaf given a node
        raise ValueError(f"{source}: {error}") from error


def merge_opts(cfg, opts, switches=None):
    """Merge trailing KEY VALUE overrides, one pair at a time so an error names its pair; `switches` as merge_file."""
    if len(opts) % 2:
        raise ValueError(
            f"config overrides come in KEY VALUE pairs, but {len(opts)} words were given "
            f"({' '.join(opts)}); the last one, {opts[-1]}, has no value"
        )
    declared = flat_keys(cfg)
    for key, value in zip(opts[0::2], opts[1::2]):
        source = f"the override {key} {value}"
        target = take_reference_key(key, value, source, {} if switches is None else switches)
        if target is None:
            continue
        if target not in declared:
            raise _unknown_key_error(target, cfg, source)
        try:
            cfg.merge_from_list([target, value])
        except (KeyError, ValueError, AssertionError) as error:  # yacs: a value of the wrong type
            raise ValueError(f"{source}: {error}") from error


_FLAG_TO_KEY = {
    "root": "DATASET.ROOT",
    "output_dir": "OUTPUT_DIR",
    "resume": "RESUME",
    "source_domains": "DATASET.SOURCE_DOMAINS",
    "target_domains": "DATASET.TARGET_DOMAINS",
    "transforms": "INPUT.TRANSFORMS",
    "trainer": "TRAINER.NAME",
    "backbone": "MODEL.BACKBONE.NAME",
    "head": "MODEL.HEAD.NAME",
}


def _apply_flags(cfg, args):
    for flag, key in _FLAG_TO_KEY.items():
        value = getattr(args, flag, None)
        if value:
            node, _, leaf = key.rpartition(".")
            target = cfg
            for part in node.split(".") if node else []:
                target = target[part]
            target[leaf] = value
    seed = getattr(args, "seed", None)
    if seed is not None and seed >= 0:
        cfg.SEED = seed


def check_registered(cfg):
    """Name an unknown TRAINER.NAME or DATASET.NAME with the closest valid one, before Dassl fails."""
    check_trainer_exists(cfg.TRAINER.NAME, "TRAINER.NAME")
    for key, value, registry, package in (
        ("TRAINER.NAME (--trainer)", cfg.TRAINER.NAME, TRAINER_REGISTRY, "trainers"),
        ("DATASET.NAME (from --dataset-config-file)", cfg.DATASET.NAME, DATASET_REGISTRY, "datasets"),
    ):
        names = registry.registered_names()
        if value in names:
            continue
        ours = sorted(n for n in names if registry.get(n).__module__.split(".")[0] == package)
        same_letters = [name for name in ours if name.lower() == value.lower()]  # Coop -> CoOp, not CoCoOp
        close = same_letters or difflib.get_close_matches(value, ours, n=1)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        raise ValueError(f'{key} is "{value}", which is not registered.{hint} Available: {", ".join(ours)}')


def check_supervision(cfg):
    """A table given to a trainer that does not read tables would be silently unused: it trains on hard labels."""
    from .ril_supervision import RILSupervision

    trainer = TRAINER_REGISTRY.get(cfg.TRAINER.NAME)
    if cfg.TRAINER.FDBPL.RIL_TABLE and not issubclass(trainer, RILSupervision):
        raise ValueError(
            f"TRAINER.FDBPL.RIL_TABLE is set, but {cfg.TRAINER.NAME} does not train from RIL tables (it has no "
            f"RILSupervision), so it would train on hard labels: use an FDBPL trainer (e.g. {cfg.TRAINER.NAME}_FDBPL, "
            "or class X_FDBPL(RILSupervision, X) for your own) or drop the table"
        )
