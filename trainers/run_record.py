"""What a run folder records about its run, and the checks that keep a folder's results its own.

Before it trains, a run writes `run_config.yaml` into OUTPUT_DIR: its full config (the paths in
PATH_KEYS made absolute), its backbone identity (model name, or checkpoint path and sha256) and its
RIL table's fingerprint. An --eval-only run writes `eval_config.yaml` the same way. The record binds
once the folder holds a checkpoint:

- resuming (automatically into OUTPUT_DIR, or from --resume) must match it in every key except
  RUN_ONLY_KEYS, in the backbone and in the table; only a run of the reference code (CoOp's Dassl
  checkpoints), given to --resume, is resumed without a record;
- --eval-only must match its --model-dir's record in MODEL_KEYS except TRAINING_ONLY_KEYS, and in
  the backbone (trainers/config.py declares these key groups).

`--fresh` moves a previous run's files into a `replaced-<time>` subfolder, so nothing is deleted.
"""
import fnmatch
import os
import tempfile
import time

import yaml

from datasets.common import atomic_write
from ril.format import BOOKKEEPING_FIELDS
from ril.shards import table_attrs

from .checkpoints import EPOCH_FILE, MARKER, saved_epochs
from .clip_loading import backbone_id
from .dassl_pickle import written_by_unpatched_dassl
from .config import IDENTITY_KEYS, MODEL_KEYS, RUN_ONLY_KEYS, TRAINING_ONLY_KEYS, flat_keys

RECORD_FILE = "run_config.yaml"
EVAL_RECORD_FILE = "eval_config.yaml"
RECORD_FORMAT = 1
PATH_KEYS = ("DATASET.ROOT", "TRAINER.PROMPTKD.TEACHER_DIR", "TRAINER.CASPL.TEACHER_DIR", "TRAINER.CASPL.BOOST_DIR")
REPLACED_PREFIX = "replaced-"
# A run's own files besides its model folders; --fresh moves them with the checkpoints.
RUN_FILES = (RECORD_FILE, EVAL_RECORD_FILE, "tensorboard", "finished.txt", "log.txt")
ABSENT = "(absent)"  # a key or field one side does not have


def backbone_identity(name):
    """`backbone_id` of MODEL.BACKBONE.NAME, or the name itself when it is no file (loading then says why)."""
    return backbone_id(name) if os.path.isfile(os.path.expanduser(name)) else name


def same_backbone(recorded, current):
    """Checkpoint files compare by checksum, wherever they are; model names by name."""
    recorded_sha, current_sha = recorded.partition("#sha256=")[2], current.partition("#sha256=")[2]
    return recorded_sha == current_sha if recorded_sha and current_sha else recorded == current


def ril_table_identity(path):
    """A table's fingerprint and settings: its root attributes without bookkeeping (creation time,
    completeness) and without the class-name list, which `classnames_sha256` stands for. Tables equal
    in them hold the same soft labels."""
    if not path:
        return None
    if not os.path.isfile(path):
        return {"missing": os.path.abspath(path)}
    attrs = table_attrs(path)  # probed in a child process first: a corrupt table cannot crash this one
    return {key: attrs[key] for key in sorted(attrs) if key not in BOOKKEEPING_FIELDS and key != "classnames"}


def run_identity(cfg):
    return {
        "backbone": backbone_identity(cfg.MODEL.BACKBONE.NAME),
        "ril_table": ril_table_identity(cfg.TRAINER.FDBPL.RIL_TABLE),
    }


def recorded_config(cfg):
    """The config as plain YAML values, with the PATH_KEYS that are set made absolute."""
    config = yaml.safe_load(cfg.dump())
    for key in PATH_KEYS:
        *parents, leaf = key.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        if node[leaf]:
            node[leaf] = os.path.abspath(os.path.expanduser(node[leaf]))
    return config


def write_record(directory, filename, cfg, identity, **extra):
    record = {"format": RECORD_FORMAT, **extra, **identity, "config": recorded_config(cfg)}
    atomic_write(os.path.join(directory, filename), "w",
                 lambda handle: yaml.safe_dump(record, handle, sort_keys=False, allow_unicode=True))


def read_record(directory):
    """The training record of `directory`, or None when there is none."""
    path = os.path.join(directory, RECORD_FILE)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as handle:
            record = yaml.safe_load(handle)
    except (OSError, yaml.YAMLError, UnicodeDecodeError) as error:
        record, reason = None, str(error)
    else:
        reason = "it lacks the config, backbone and ril_table entries"
    if not (isinstance(record, dict) and {"config", "backbone", "ril_table"} <= record.keys()):
        raise ValueError(
            f"{path} cannot be read as the record train.py writes ({reason}). Restore it, use another "
            "--output-dir, or pass --fresh to move the old run aside"
        )
    return record


def _matches(key, patterns):
    return any(fnmatch.fnmatchcase(key, pattern) for pattern in patterns)


def _shown(value):
    text = ABSENT if value is ABSENT else repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def differences(record, cfg, identity, eval_only):
    """'KEY: recorded A, now B' for every compared key, backbone and table field that differs."""
    recorded, current = flat_keys(record["config"]), flat_keys(recorded_config(cfg))
    lines = []
    for key in sorted(recorded.keys() | current.keys()):
        if _matches(key, IDENTITY_KEYS + RUN_ONLY_KEYS):
            continue
        if eval_only and (not _matches(key, MODEL_KEYS) or _matches(key, TRAINING_ONLY_KEYS)):
            continue
        old, new = recorded.get(key, ABSENT), current.get(key, ABSENT)
        if old != new:
            lines.append(f"{key}: recorded {_shown(old)}, now {_shown(new)}")
    if not same_backbone(record["backbone"], identity["backbone"]):
        lines.append(f"backbone (MODEL.BACKBONE.NAME): recorded {record['backbone']}, now {identity['backbone']}")
    if not eval_only:
        lines += _table_differences(record["ril_table"], identity["ril_table"])
    return lines


def _table_differences(recorded, current):
    name = "RIL table (TRAINER.FDBPL.RIL_TABLE)"
    if recorded == current:
        return []
    if not (isinstance(recorded, dict) and isinstance(current, dict)):
        return [f"{name}: recorded {_shown(recorded)}, now {_shown(current)}"]
    fields = sorted(field for field in recorded.keys() | current.keys() if recorded.get(field) != current.get(field))
    return [f"{name} {field}: recorded {_shown(recorded.get(field, ABSENT))}, "
            f"now {_shown(current.get(field, ABSENT))}" for field in fields]


def model_folders(directory):
    """Names of the subfolders of `directory` that hold Dassl checkpoints."""
    if not os.path.isdir(directory):
        return []
    return sorted(
        entry.name for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(REPLACED_PREFIX)
        and any(name == MARKER or EPOCH_FILE.fullmatch(name) or name == "model-best.pth.tar"
                for name in os.listdir(entry.path))
    )


def reference_run_to_resume(directory, cfg, folders):
    """Whether `directory` is --resume's (not OUTPUT_DIR, where this run's pruning would delete its files) and
    the newest checkpoint of every model folder was written by unpatched Dassl code: a reference repository's."""
    if os.path.realpath(directory) != os.path.realpath(cfg.RESUME or "") or \
            os.path.realpath(directory) == os.path.realpath(cfg.OUTPUT_DIR):
        return False
    newest = [max(saved_epochs(os.path.join(directory, folder)), default=None) for folder in folders]
    return all(epoch is not None and written_by_unpatched_dassl(
        os.path.join(directory, folder, f"model.pth.tar-{epoch}")) for folder, epoch in zip(folders, newest))


def check_resumable(directory, cfg, identity):
    """Refuse to continue (or report) the run in `directory` when its record differs from this run."""
    folders = model_folders(directory)
    if not folders:
        return
    record = read_record(directory)
    if record is None:
        if reference_run_to_resume(directory, cfg, folders):
            print(f"--resume {directory}: a run of the reference code (its checkpoints pickle Dassl's optimiser and "
                  "scheduler objects), which records no settings: they are not checked")
            return
        raise ValueError(
            f"{directory} holds checkpoints ({', '.join(folders)}) but no {RECORD_FILE}, so the settings they "
            "were trained with cannot be checked (a run of an older version or of other code). Pass --fresh "
            "to move them aside and train anew, or use another --output-dir"
        )
    lines = differences(record, cfg, identity, eval_only=False)
    if lines:
        raise ValueError(
            f"{directory} holds a run trained with other settings ({os.path.join(directory, RECORD_FILE)}):\n  "
            + "\n  ".join(lines)
            + "\nResuming would continue that run, or report its result as this one's. Use another "
            "--output-dir, or pass --fresh to move the old run aside and train anew"
        )


def check_model_dir(model_dir, cfg, identity):
    """Refuse to evaluate `model_dir` with a model of other settings than it was trained with."""
    record = read_record(model_dir)
    if record is None:
        print(f"{model_dir} has no {RECORD_FILE} (an older run, or published checkpoints): its settings "
              "are not checked, only the backbone its checkpoints name, if they name one")
        return
    lines = differences(record, cfg, identity, eval_only=True)
    if lines:
        raise ValueError(
            f"--model-dir {model_dir} was trained with other settings ({os.path.join(model_dir, RECORD_FILE)}):\n  "
            + "\n  ".join(lines)
            + "\n--eval-only must build the model it was trained with (the backbone, and the TRAINER, MODEL and "
            "INPUT.SIZE/PIXEL_MEAN/PIXEL_STD keys other than loss weights, supervision, teachers and PREC): "
            "evaluate with its --config-file and --backbone"
        )


def move_previous_run(directory):
    """--fresh: move the run files of `directory` into a new replaced-<time> subfolder; nothing is deleted."""
    if not os.path.isdir(directory):
        return
    names = sorted(
        entry.name for entry in os.scandir(directory)
        if entry.name in RUN_FILES or entry.name.startswith("log.txt-")
    ) + model_folders(directory)
    if not names:
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target, number = os.path.join(directory, REPLACED_PREFIX + stamp), 1
    while os.path.exists(target):
        target, number = os.path.join(directory, f"{REPLACED_PREFIX}{stamp}-{number}"), number + 1
    os.makedirs(target)
    for name in names:
        os.replace(os.path.join(directory, name), os.path.join(target, name))
    print(f"--fresh: moved the previous run in {directory} ({', '.join(names)}) to {target}")


def ensure_writable(directory):
    try:
        os.makedirs(directory, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise ValueError(
            f"OUTPUT_DIR (--output-dir) {directory} cannot be written ({error.strerror or error}); "
            "choose a folder you can write to"
        ) from error


def open_training_folder(cfg, fresh=False):
    """Check OUTPUT_DIR (and RESUME) against their records, after --fresh moved an old run aside, and
    record this run. ValueError names every difference."""
    if cfg.RESUME:
        if fresh:
            raise ValueError("--fresh starts a new run and --resume continues one: pass only one of them")
        if not model_folders(cfg.RESUME):
            state = "holds no checkpoint (<model>/model.pth.tar-N)" if os.path.isdir(cfg.RESUME) else "does not exist"
            raise ValueError(
                f"--resume {cfg.RESUME} {state}, so there is nothing to resume: pass the --output-dir of an "
                "interrupted training run, or leave --resume out to train from scratch"
            )
    elif fresh:
        move_previous_run(cfg.OUTPUT_DIR)
    identity = run_identity(cfg)
    for directory in dict.fromkeys(filter(None, (cfg.RESUME, cfg.OUTPUT_DIR))):
        check_resumable(directory, cfg, identity)
    ensure_writable(cfg.OUTPUT_DIR)
    write_record(cfg.OUTPUT_DIR, RECORD_FILE, cfg, identity, mode="train")


def open_evaluation_folder(cfg, model_dir, load_epoch=None, fresh=False):
    """Check --model-dir's record against this evaluation, and record the evaluation in OUTPUT_DIR."""
    if fresh:
        raise ValueError("--fresh starts a new training run; --eval-only trains nothing: leave --fresh out")
    identity = {"backbone": backbone_identity(cfg.MODEL.BACKBONE.NAME), "ril_table": None}
    if model_dir:
        check_model_dir(model_dir, cfg, identity)
    ensure_writable(cfg.OUTPUT_DIR)
    write_record(cfg.OUTPUT_DIR, EVAL_RECORD_FILE, cfg, identity, mode="eval",
                 model_dir=os.path.abspath(model_dir) if model_dir else "", load_epoch=load_epoch)
