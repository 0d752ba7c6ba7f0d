"""Results table of the benchmark protocols: Base / New / HM or accuracy, mean ± std over seeds.

Reads one Dassl log per run folder: the one its finished.txt names (the attempt the protocol scripts
saw succeed), else log.txt, as CoOp's parse_test_res.py. Missing or unfinished runs are marked and
listed, never averaged in; a run read from another file than log.txt gets a note. Reads the folders
of this project's protocol scripts and of the reference repositories' scripts (CoOp, MaPLe,
PromptSRC, PromptKD), and names every run folder it did not read, with why. Needs numpy and
tabulate only (matplotlib for --plot).
"""
import argparse
import csv
import glob
import importlib
import os
import re
import sys
from collections import namedtuple
from dataclasses import dataclass, field

import numpy as np
from tabulate import tabulate

PROTOCOLS = ("base2new", "cross_dataset", "domain_generalization", "few_shot")
TITLES = {
    "base2new": "Base-to-new generalization",
    "cross_dataset": "Cross-dataset transfer",
    "domain_generalization": "Domain generalization",
    "few_shot": "Few-shot classification",
}
# (config file stem, DATASET.NAME, display name) in the papers' table order.
DATASETS = (
    ("imagenet", "ImageNet", "ImageNet"),
    ("caltech101", "Caltech101", "Caltech101"),
    ("oxford_pets", "OxfordPets", "OxfordPets"),
    ("stanford_cars", "StanfordCars", "StanfordCars"),
    ("oxford_flowers", "OxfordFlowers", "Flowers102"),
    ("food101", "Food101", "Food101"),
    ("fgvc_aircraft", "FGVCAircraft", "FGVCAircraft"),
    ("sun397", "SUN397", "SUN397"),
    ("dtd", "DescribableTextures", "DTD"),
    ("eurosat", "EuroSAT", "EuroSAT"),
    ("ucf101", "UCF101", "UCF101"),
    ("imagenetv2", "ImageNetV2", "ImageNetV2"),
    ("imagenet_sketch", "ImageNetSketch", "ImageNet-Sketch"),
    ("imagenet_a", "ImageNetA", "ImageNet-A"),
    ("imagenet_r", "ImageNetR", "ImageNet-R"),
    ("synthetic", "Synthetic", "Synthetic"),  # the generated dataset of the demo and the tests
)
SOURCE_DATASET = "ImageNet"
IMAGENET_VARIANTS = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")
AVERAGE = "Average"
# Run folders relative to the output root, per split: this project's protocol scripts and the reference
# repositories' (CoOp, MaPLe, PromptSRC and PromptKD write base2new/ alike; seed_<S> is PromptKD's spelling).
# A "_coop" split has CoOp's nctx<N>_csc<B>_ctp<P> level, which becomes part of the config name: <cfg>/<level>.
LAYOUTS = {
    "base2new": {split: f"base2new/{split}/{{dataset}}/shots_{{shots}}/{{trainer}}/{{cfg}}/seed{{seed}}"
                 for split in ("train_base", "test_base", "test_new")},
    "transfer": {
        "target": "evaluation/{trainer}/{cfg}_{shots}shots/{dataset}/seed{seed}",
        "target_coop": "evaluation/{trainer}/{cfg}_{shots}shots/{variant}/{dataset}/seed{seed}",  # CoOp's eval.sh
        "source": "{dataset}/{trainer}/{cfg}_{shots}shots/seed{seed}",
        "source_coop": "{dataset}/{trainer}/{cfg}_{shots}shots/{variant}/seed{seed}",  # CoOp's main.sh
    },
    "few_shot": {
        "test": "few_shot/{dataset}/shots_{shots}/{trainer}/{cfg}/seed{seed}",
        # PromptSRC's reproduce_few_shot.sh, then its few_shot.sh
        "test_reproduced": "few_shot/{dataset}/{trainer}/{cfg}_{shots}shots/seed{seed}",
        "test_trained": "{dataset}/{trainer}/{cfg}_{shots}shots/seed{seed}",
        "test_trained_coop": "{dataset}/{trainer}/{cfg}_{shots}shots/{variant}/seed{seed}",  # CoOp's main.sh
    },
}
# Transfer runs trained on a dataset other than the source: a method's own runs on each dataset (PromptKD's
# xd_train.sh distils on each target), read only for a method without any evaluation/ run.
OWN_SPLITS = {"source": "own", "source_coop": "own_coop"}
# metric -> splits that can provide it, preferred first; a cell reads the first split holding any of its seeds.
METRIC_SPLITS = {
    "base2new": {"base": ("test_base", "train_base"), "new": ("test_new", "train_base")},
    "transfer": {"accuracy": ("target", "target_coop", "own", "own_coop")},
    "few_shot": {"accuracy": ("test", "test_reproduced", "test_trained", "test_trained_coop")},
}
SOURCE_SPLITS = ("target", "target_coop", "source", "source_coop")  # the transfer source's row
PLACEHOLDERS = {"dataset": "<Dataset>", "shots": "<K>", "trainer": "<Trainer>", "cfg": "<cfg>", "seed": "<S>",
                "variant": "nctx<N>_csc<B>_ctp<P>"}
FIELD_PATTERNS = {"seed": r"(?P<seed_spelling>_?)(?P<seed>\d+)", "shots": r"(?P<shots>\d+)",
                  "variant": r"(?P<variant>nctx\d+_csc[^/_]+_ctp[^/]+)"}
ZEROSHOT_LAYOUT = re.compile(r"^ZeroshotCLIP/[^/]+/[^/]+$")  # CoOp's zeroshot.sh: one run, no seed folder
CASPL_BOOST_LAYOUT = re.compile(r"^base2new/train_all/[^/]+/shots_\d+/CasPL_Boost/")  # caspl.sh's stage 1
# A reference PromptKD base-to-new log (its config dump: TRAINER.NAME PromptKD, TRAINER.MODAL base2novel) tests the
# new classes after training and validates on the base classes; this project's PromptKD runs test their own classes.
PROMPTKD_LOG = (re.compile(r"^  NAME: PromptKD$", re.MULTILINE), re.compile(r"^  MODAL: base2novel$", re.MULTILINE))
VAL_MARK, BEST_VAL_DEPLOY = "Evaluate on the *val* set", "Deploy the model with the best val performance"
RESULT_MARK = "=> result"
FINISH_MARKS = ("Finish training", "Finished training")  # Dassl; older Dassl forks print the latter
ACCURACY_LINE = re.compile(r"^\* accuracy: (\S+)%$")
PERCENT = re.compile(r"^[0-9]+(\.[0-9]+)?$")  # what Dassl prints: f"{acc:.1f}"
EPOCH_LINE = re.compile(r"^epoch \[\d+/\d+\]")
TRACEBACK = "Traceback (most recent call last):"
MARKER = "finished.txt"  # the protocol scripts' completion marker: date, command, then "log <file>"
LOG = "log.txt"
VOUCHED = "log "


class ResultsError(ValueError):
    """The output root or the selection flags do not match any run."""


# path: the log file read, or the folder where the run was expected; problem: "" when complete.
Run = namedtuple("Run", "seed path accuracy problem")
RIL_TABLE = "table.h5"  # the protocol scripts' table file (scripts/lib/common.sh), with its own marker

# A run folder not read, and why.
Skipped = namedtuple("Skipped", "path reason")
RunKey = namedtuple("RunKey", "split dataset shots trainer cfg seed")
Method = namedtuple("Method", "trainer cfg")
Column = namedtuple("Column", "method metric shots")  # metric: base | new | hm | accuracy
# complete / expected count seeds, or datasets for the Average row.
Stat = namedtuple("Stat", "mean std complete expected")


@dataclass
class Results:
    protocol: str
    methods: list
    datasets: list  # table rows (DATASET.NAME); the transfer source comes first
    seeds: list
    shots: list
    columns: list  # measured columns: base and new, or accuracy per shots
    cells: dict  # (Column, dataset) -> list[Run], one per expected seed
    source: str = SOURCE_DATASET  # transfer protocols: the dataset the models were trained on
    skipped: list = field(default_factory=list)  # Skipped run folders
    own_methods: list = field(default_factory=list)  # transfer methods read from runs trained on each dataset


@dataclass
class Table:
    title: str
    protocol: str
    labels: dict  # Method -> short column label
    columns: list
    rows: list  # datasets, then AVERAGE
    stats: dict  # (Column, row) -> Stat
    notes: list
    source: str = SOURCE_DATASET
    spread: str = "std"  # what ± shows: std, or ci95 (1.96 std / sqrt(n))
    skipped: list = field(default_factory=list)  # lines naming the run folders not read


def canonical_dataset(folder):
    """DATASET.NAME for a config stem or a DATASET.NAME (any case); unknown names are kept as is."""
    for stem, name, _ in DATASETS:
        if folder.lower() in (stem, name.lower()):
            return name
    return folder


def display_name(dataset):
    return next((display for _, name, display in DATASETS if name == dataset), dataset)


def parse_log(text):
    """(accuracy, "") of the final `=> result` block of a finished run, or (None, why not)."""
    lines = [line.strip() for line in text.splitlines()]
    finish = max((i for i, line in enumerate(lines) if line in FINISH_MARKS), default=None)
    result = max((i for i, line in enumerate(lines) if line == RESULT_MARK), default=None)
    if finish is None and any(EPOCH_LINE.match(line) for line in lines):
        return None, "crashed or still running: training never printed 'Finish training'"
    if result is None or (finish is not None and result < finish):
        return None, "crashed or still running: no final '=> result' block"
    tail = lines[result + 1:]
    accuracy = next((m for m in map(ACCURACY_LINE.match, tail) if m), None)
    if accuracy is None:
        return None, "crashed or still running: the final '=> result' block has no accuracy line"
    if any(line.startswith(TRACEBACK) for line in tail):
        return None, "crashed: Python traceback after the final '=> result' block"
    value = accuracy.group(1)
    if not PERCENT.match(value) or float(value) > 100.0:
        return None, f"corrupt log: the final accuracy '{value}%' is not a percentage between 0 and 100"
    return float(value), ""


def is_promptkd_base2novel(text):
    """True for a log of PromptKD's own code in its base2novel setting (see PROMPTKD_LOG)."""
    return all(pattern.search(text) for pattern in PROMPTKD_LOG)


def deployed_validation(text):
    """(accuracy, "") of the validation that chose the deployed model (TEST.FINAL_MODEL best_val: the best, the
    first of equals as Dassl keeps it) of a finished training log, or (None, why not)."""
    accuracy, problem = parse_log(text)
    if problem:
        return None, problem
    lines = [line.strip() for line in text.splitlines()]
    if BEST_VAL_DEPLOY not in lines:
        return None, "no validation accuracy: the run deployed its last epoch (TEST.FINAL_MODEL last_step)"
    values = []
    for start in (i for i, line in enumerate(lines) if line == VAL_MARK):
        match = next((m for m in map(ACCURACY_LINE.match, lines[start + 1:start + 8]) if m), None)
        if match and PERCENT.match(match.group(1)):
            values.append(float(match.group(1)))
    return (max(values), "") if values else (None, "no '* accuracy:' line after 'Evaluate on the *val* set'")


def base_of_train_base(text):
    """Base of a train_base log: its final test, or the deployed validation of a PromptKD base2novel log."""
    return deployed_validation(text) if is_promptkd_base2novel(text) else parse_log(text)


def new_of_train_base(text):
    """New of a train_base log: the final test of a PromptKD base2novel log only."""
    if is_promptkd_base2novel(text):
        return parse_log(text)
    return None, "not a PromptKD base2novel log, whose final test alone is on the new classes"


def vouched_log(run_dir):
    """The log file finished.txt names: the one its successful attempt wrote (log.txt-<timestamp> when
    Dassl found a log.txt of an earlier attempt); None without such a line (or without finished.txt)."""
    marker = os.path.join(run_dir, MARKER)
    if not os.path.isfile(marker):
        return None
    with open(marker, encoding="utf-8", errors="replace") as handle:
        lines = handle.read().splitlines()[2:]  # after the date and the command
    return next((line[len(VOUCHED):].strip() for line in lines if line.startswith(VOUCHED)), None)


def read_run(run_dir, seed, accuracy_of=parse_log):
    """The run in the log finished.txt vouches for, else in log.txt; never another attempt's log. `accuracy_of`
    reads (accuracy, problem) from the log's text."""
    vouched = vouched_log(run_dir)
    path = os.path.join(run_dir, vouched or LOG)
    if not os.path.isfile(path):
        if vouched:
            return Run(seed, path, None, f"missing: {MARKER} names {vouched}, which is not in the run folder")
        others = sorted(glob.glob(LOG + "-*", root_dir=run_dir))
        unread = f" (its {', '.join(others)} not read: no {MARKER} names one)" if others else ""
        return Run(seed, run_dir, None, f"missing: no {LOG} in the run folder{unread}")
    with open(path, encoding="utf-8", errors="replace") as log:
        accuracy, problem = accuracy_of(log.read())
    return Run(seed, path, accuracy, problem)


def layout_of(protocol):
    return protocol if protocol in ("base2new", "few_shot") else "transfer"


def _template_regex(template):
    parts = re.split(r"\{(\w+)\}", template)
    pattern = "".join(
        re.escape(part) if i % 2 == 0 else FIELD_PATTERNS.get(part, rf"(?P<{part}>[^/]+)")
        for i, part in enumerate(parts)
    )
    return re.compile(pattern + "$")


def _match(template, rel):
    """The fields of `rel` (a path relative to the output root) in `template`'s layout, or None."""
    match = _template_regex(template).match(rel.replace(os.sep, "/"))
    if match is None:
        return None
    fields = match.groupdict()
    if fields.get("variant"):  # CoOp's level is part of the config: rn50_ep50/nctx16_cscFalse_ctpend
        fields["cfg"] = f"{fields['cfg']}/{fields.pop('variant')}"
    return fields


def index_runs(root, protocol, source=SOURCE_DATASET):
    """Every run folder of `protocol` under `root` by RunKey, and the spelling of its folders: the folder name of
    each dataset, and seed<S> or seed_<S> per method."""
    runs, folders = {}, {}
    for split, template in LAYOUTS[layout_of(protocol)].items():
        for rel in sorted(glob.glob(re.sub(r"\{\w+\}", "*", template), root_dir=root)):
            match = _match(template, rel)
            if match is None:
                continue
            dataset = canonical_dataset(match["dataset"])
            key = RunKey(split, dataset, int(match["shots"]), match["trainer"], match["cfg"], int(match["seed"]))
            if split in OWN_SPLITS and dataset != source:
                key = key._replace(split=OWN_SPLITS[split])
            path = os.path.join(root, rel)
            if key in runs:
                raise ResultsError(f"{runs[key]} and {path} hold the same run; move one of them away")
            runs[key] = path
            folders.setdefault(dataset, match["dataset"])
            folders.setdefault(Method(key.trainer, key.cfg), "seed" + match["seed_spelling"])
    return runs, folders


def _select_shots(protocol, runs, shots):
    found = sorted({key.shots for key in runs})
    if protocol == "few_shot":
        return sorted(set(shots or found))
    if shots and len(shots) > 1:
        raise ResultsError(f"--shots takes one value for {protocol}, got {shots}")
    if shots or 16 in found or not found:
        return list(shots or [16])
    if len(found) > 1:
        raise ResultsError(f"no 16-shot {protocol} runs, but runs of {', '.join(map(str, found))} shots: "
                           "pass --shots to choose one")
    return found  # e.g. PromptKD's runs, distilled on every unlabelled image (shots_0)


def _select_methods(runs, trainers, cfgs):
    found = sorted({Method(key.trainer, key.cfg) for key in runs}, key=lambda m: (m.trainer, m.cfg))
    for flag, wanted, have in (("--trainers", trainers, {m.trainer for m in found}),
                               ("--cfg", cfgs, {m.cfg for m in found})):
        unknown = [name for name in wanted or [] if name not in have]
        if unknown:
            raise ResultsError(f"{flag} {' '.join(unknown)}: no such runs; found {', '.join(sorted(have))}")
    methods = [m for m in found if (not cfgs or m.cfg in cfgs)]
    if trainers:
        methods = [m for name in trainers for m in methods if m.trainer == name]
    return methods


def _select_datasets(protocol, runs, datasets, source):
    """Table rows: --datasets, else the datasets found; transfer rows start with the source."""
    chosen = [canonical_dataset(name) for name in datasets] if datasets else {key.dataset for key in runs}
    if protocol == "cross_dataset" and not datasets:
        chosen = [name for name in chosen if name not in IMAGENET_VARIANTS]
    if protocol == "domain_generalization" and not datasets:
        chosen = [name for name in chosen if name in IMAGENET_VARIANTS]
    if layout_of(protocol) == "transfer":
        chosen = [source] + [name for name in chosen if name != source]
    order = [name for _, name, _ in DATASETS]
    return sorted(dict.fromkeys(chosen), key=lambda n: (order.index(n) if n in order else len(order), n))


def _splits(protocol, metric, dataset, source):
    if layout_of(protocol) == "transfer" and dataset == source:
        return SOURCE_SPLITS
    return METRIC_SPLITS[layout_of(protocol)][metric]


def _missing_split(protocol, metric, dataset, source, method):
    """The split whose folder a missing run is expected in: the first layout of the protocol (Base: train_base,
    as the references' scripts write no test_base; a transfer source: its training run), in CoOp's form for a
    config with CoOp's level."""
    if layout_of(protocol) == "transfer":
        split = "source" if dataset == source else "target"
    else:
        split = "train_base" if metric == "base" else METRIC_SPLITS[layout_of(protocol)][metric][0]
    coop = f"{split}_coop" if split != "test" else "test_trained_coop"
    return coop if "/" in method.cfg and coop in LAYOUTS[layout_of(protocol)] else split


def _accuracy_of(protocol, metric, split):
    """How a run of `split` gives `metric` (see base_of_train_base and new_of_train_base)."""
    if protocol == "base2new" and split == "train_base":
        return base_of_train_base if metric == "base" else new_of_train_base
    return parse_log


def _usable(protocol, metric, split, paths):
    """Whether a split holding these run folders can give `metric`: a train_base run gives New only as a
    PromptKD base2novel log."""
    if protocol != "base2new" or metric != "new" or split != "train_base":
        return True
    return any(is_promptkd_base2novel(_log_text(path)) for path in paths)


def _log_text(run_dir):
    path = os.path.join(run_dir, vouched_log(run_dir) or LOG)
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8", errors="replace") as log:
        return log.read()


def _cell_runs(root, protocol, index, column, dataset, seeds, source):
    """All seeds of a cell from the first split holding any of them (splits never mix); absent ones missing."""
    runs, folders = index
    splits = _splits(protocol, column.metric, dataset, source)
    keys = {split: [RunKey(split, dataset, column.shots, *column.method, seed) for seed in seeds] for split in splits}
    present = {split: [runs[key] for key in keys[split] if key in runs] for split in splits}
    chosen = next((split for split in splits
                   if present[split] and _usable(protocol, column.metric, split, present[split])), None)
    if chosen is None:
        chosen = _missing_split(protocol, column.metric, dataset, source, column.method)
        keys[chosen] = [RunKey(chosen, dataset, column.shots, *column.method, seed) for seed in seeds]
    accuracy_of = _accuracy_of(protocol, column.metric, chosen)
    return [read_run(runs[key], key.seed, accuracy_of) if key in runs else _missing_run(root, protocol, folders, key)
            for key in keys[chosen]]


def _missing_run(root, protocol, folders, key):
    cfg, _, variant = key.cfg.partition("/")
    expected = LAYOUTS[layout_of(protocol)][key.split].format(
        dataset=folders.get(key.dataset, key.dataset), shots=key.shots, trainer=key.trainer, cfg=cfg,
        variant=variant, seed=key.seed)
    spelling = folders.get(Method(key.trainer, key.cfg), "seed")
    expected = re.sub(r"seed(\d+)$", lambda m: spelling + m.group(1), expected)
    return Run(key.seed, os.path.join(root, expected), None, "missing: no run folder")


def run_folders(root):
    """Folders under `root` (relative) that hold a Dassl log or a completion marker, except RIL table folders:
    the protocol scripts mark finished tables too (OUT/ril/.../table.h5), but a table is not a run."""
    for directory, _, files in os.walk(root):
        if RIL_TABLE in files:
            continue
        if any(name == LOG or name.startswith(LOG + "-") or name == MARKER for name in files):
            yield os.path.relpath(directory, root)


def skipped_folders(root, protocol, runs, kept, shots):
    """Run folders the table does not read, with why: no layout of `protocol` describes them, or one does but
    they have other shots, or they are a method's runs on each dataset while its targets are evaluation/ runs.
    (Runs the selection flags leave out are not listed.) `runs`: every indexed run; `kept`: those the table may
    read."""
    skipped = []
    for key, path in runs.items():
        rel = os.path.relpath(path, root)
        if key not in kept:
            skipped.append(Skipped(rel, f"trained on {key.dataset}, not on the source: {key.trainer}/{key.cfg}'s "
                                        "targets are its evaluation/ runs"))
        elif key.shots not in shots:
            skipped.append(Skipped(rel, f"{key.shots} shots (the table has {', '.join(map(str, shots))}): "
                                        f"pass --shots {key.shots}"))
    indexed = {os.path.relpath(path, root) for path in runs.values()}
    skipped += [Skipped(rel, _unread_reason(rel, protocol)) for rel in sorted(set(run_folders(root)) - indexed)]
    return sorted(skipped)


def _unread_reason(rel, protocol):
    if CASPL_BOOST_LAYOUT.match(rel.replace(os.sep, "/")):
        return "CasPL's boosting stage (caspl.sh, all classes): its prompts are part of the *_CasPL runs, not a row"
    if ZEROSHOT_LAYOUT.match(rel.replace(os.sep, "/")):
        return "CoOp's zeroshot.sh layout (ZeroshotCLIP/<cfg>/<Dataset>, one run without a seed folder), not read"
    others = [name for name in PROTOCOLS if layout_of(name) != layout_of(protocol)
              and any(_match(template, rel) for template in LAYOUTS[layout_of(name)].values())]
    if others:
        return f"another protocol's layout: read by --protocol {' / '.join(others)}"
    if any(_match(template, rel) for template in LAYOUTS[layout_of(protocol)].values()):
        return "a run folder inside another run folder"
    return "no layout of any protocol (see --help)"


def collect(root, protocol, trainers=None, cfgs=None, datasets=None, seeds=None, shots=None, source=None):
    """Find and read every expected run; `None` selectors mean everything found under `root`.

    `source`: the transfer protocols' source dataset (default ImageNet), the table's first row.
    """
    source = canonical_dataset(source) if source else SOURCE_DATASET
    if not os.path.isdir(root):
        raise ResultsError(f"OUTPUT_ROOT {root} is not a directory; pass the folder the protocol scripts wrote into")
    indexed, folders = index_runs(root, protocol, source)
    evaluated = {Method(k.trainer, k.cfg) for k in indexed if k.split.startswith("target")}
    runs = {k: path for k, path in indexed.items()
            if not (k.split in OWN_SPLITS.values() and Method(k.trainer, k.cfg) in evaluated)}
    if not runs:
        layout = "\n  ".join(os.path.join(root, template.format(**PLACEHOLDERS), "log.txt")
                             for template in LAYOUTS[layout_of(protocol)].values())
        found = "".join(f"\n  {s.path}: {s.reason}" for s in skipped_folders(root, protocol, indexed, runs, []))
        raise ResultsError(f"no {protocol} runs under {root}; expected\n  {layout}"
                           + (f"\nRun folders found and not read:{found}" if found else ""))
    wanted = [k for k in runs if (not trainers or k.trainer in trainers) and (not cfgs or k.cfg in cfgs)]
    shots = _select_shots(protocol, wanted or runs, shots)
    methods = _select_methods([k for k in runs if k.shots in shots], trainers, cfgs)
    selected = [k for k in runs if k.shots in shots and Method(k.trainer, k.cfg) in methods]
    datasets = _select_datasets(protocol, [k for k in selected if k.split != "source"], datasets, source)
    seeds = sorted(set(seeds or {k.seed for k in selected if k.dataset in datasets}))
    columns = [Column(m, metric, k) for m in methods for metric in METRIC_SPLITS[layout_of(protocol)] for k in shots]
    cells = {(column, dataset): _cell_runs(root, protocol, (runs, folders), column, dataset, seeds, source)
             for column in columns for dataset in datasets}
    own = [m for m in methods
           if any(k.split in OWN_SPLITS.values() and Method(k.trainer, k.cfg) == m for k in selected)]
    return Results(protocol, methods, datasets, seeds, shots, columns, cells, source,
                   skipped_folders(root, protocol, indexed, runs, shots), own)


def harmonic_mean(base, new):
    return 2 * base * new / (base + new) if base + new > 0 else 0.0


def cell_stat(runs, spread="std"):
    """Mean and population std (numpy's default, as the original parsers) of the complete runs; with spread ci95,
    the 95 % confidence interval 1.96 std / sqrt(n) instead, as CoOp's parse_test_res.py --ci95."""
    values = [run.accuracy for run in runs if run.accuracy is not None]
    if not values:
        return Stat(None, None, 0, len(runs))
    std = float(np.std(values))
    return Stat(float(np.mean(values)), std if spread == "std" else 1.96 * std / np.sqrt(len(values)), len(values),
                len(runs))


def hm_stat(base, new):
    """HM of the mean Base and the mean New; as complete as the less complete of the two."""
    if base.mean is None or new.mean is None:
        return Stat(None, None, 0, base.expected)
    return Stat(harmonic_mean(base.mean, new.mean), None, min(base.complete, new.complete), base.expected)


def method_labels(methods):
    """The trainer name, or trainer/cfg when one trainer appears with several configs."""
    trainers = [m.trainer for m in methods]
    return {m: m.trainer if trainers.count(m.trainer) == 1 else f"{m.trainer}/{m.cfg}" for m in methods}


def column_label(table, column):
    label = table.labels[column.method]
    if column.metric in ("base", "new", "hm"):
        return f"{label} {'HM' if column.metric == 'hm' else column.metric.capitalize()}"
    return f"{label} {column.shots}-shot" if table.protocol == "few_shot" else label


def _average(table, group, rows, name):
    """Average row of the columns in `group` over the rows where all of them have a value."""
    measured = [c for c in group if c.metric != "hm"]
    included = [r for r in rows if all(table.stats[c, r].mean is not None for c in measured)]
    full = [r for r in included
            if all(table.stats[c, r].complete == table.stats[c, r].expected for c in measured)]
    for column in measured:
        mean = float(np.mean([table.stats[column, r].mean for r in included])) if included else None
        table.stats[column, AVERAGE] = Stat(mean, None, len(full), len(rows))
    if len(measured) < len(group):
        base, new = (table.stats[c, AVERAGE] for c in measured)
        table.stats[group[-1], AVERAGE] = hm_stat(base, new)
    left_out = [display_name(r) for r in rows if r not in included]
    partial = [display_name(r) for r in included if r not in full]
    if left_out:
        table.notes.append(f"Average of {name} leaves out {', '.join(left_out)} (no complete run).")
    if partial:
        table.notes.append(f"Average of {name} includes {', '.join(partial)} with missing seeds.")


def _seed_pattern(run):
    """The run's path with its seed folder as a NUL placeholder, so seeds failing alike share a note."""
    folder, name = run.path, ""
    if not re.fullmatch(rf"seed_?{run.seed}", os.path.basename(folder)):
        folder, name = os.path.split(folder)
    spelling = os.path.basename(folder)[:-len(str(run.seed))]
    return os.path.join(os.path.dirname(folder), spelling + "\0" + (os.sep + name if name else ""))


def _problem_notes(table, results):
    """One note per problem and cell, and one per run read from another file than log.txt."""
    for (column, dataset), runs in results.cells.items():
        failed = {}
        for run in runs:
            if run.problem:
                failed.setdefault((run.problem, _seed_pattern(run)), []).append(str(run.seed))
        for (problem, pattern), seeds in failed.items():
            listed = seeds[0] if len(seeds) == 1 else "{" + ",".join(seeds) + "}"
            table.notes.append(f"{column_label(table, column)}, {display_name(dataset)}: "
                               f"seed{'s' * (len(seeds) > 1)} {' '.join(seeds)} {problem}: "
                               + pattern.replace("\0", listed))
        for run in runs:
            if os.path.basename(run.path).startswith(LOG + "-"):
                table.notes.append(f"{column_label(table, column)}, {display_name(dataset)}: seed {run.seed} "
                                   f"read from {run.path}, the log {MARKER} names (not log.txt)")


def run_listing(table, results):
    """One line per expected run: the cell, the file read (or the folder expected) and its result."""
    lines = ["Runs (cell, seed: file read -> accuracy or problem):"]
    for (column, dataset), runs in results.cells.items():
        for run in runs:
            outcome = f"{run.accuracy:.2f}" if run.accuracy is not None else run.problem
            lines.append(f"  {column_label(table, column)}, {display_name(dataset)}, seed {run.seed}: "
                         f"{run.path} -> {outcome}")
    return lines


def incomplete_cells(table):
    """Labels of the dataset cells (not the Average) with fewer complete seeds than expected."""
    return [f"{column_label(table, column)}, {display_name(row)}"
            for (column, row), stat in table.stats.items()
            if row != AVERAGE and column.metric != "hm" and (stat.mean is None or stat.complete < stat.expected)]


def summarize(results, spread="std"):
    """Per-dataset stats, HM (base2new) and the Average row, with notes on every incomplete cell; `spread`: std
    or ci95 (see cell_stat)."""
    seeds, shots = " ".join(map(str, results.seeds)), ", ".join(map(str, results.shots))
    title = f"{TITLES[results.protocol]} ({shots} shots; seeds {seeds})"
    table = Table(title, results.protocol, method_labels(results.methods), [], results.datasets + [AVERAGE], {}, [],
                  results.source, spread, skipped_lines(results.skipped))
    for (column, dataset), runs in results.cells.items():
        table.stats[column, dataset] = cell_stat(runs, spread)
    _problem_notes(table, results)
    for method in results.own_methods:
        table.notes.append(f"{table.labels[method]}: no evaluation/ runs, so each dataset's accuracy is that of its "
                           f"run trained on that dataset (<Dataset>/{method.trainer}/<cfg>_<K>shots/seed<S>, as "
                           "PromptKD's xd_train.sh distils on each target).")
    averaged = [d for d in results.datasets if layout_of(results.protocol) != "transfer" or d != results.source]
    for method in results.methods:
        group = [c for c in results.columns if c.method == method]
        if results.protocol == "base2new":
            group.append(Column(method, "hm", results.shots[0]))
            for dataset in results.datasets:
                table.stats[group[-1], dataset] = hm_stat(*(table.stats[c, dataset] for c in group[:2]))
            _average(table, group, averaged, table.labels[method])
        else:
            for column in group:
                _average(table, [column], averaged, column_label(table, column))
        table.columns += group
    return table


def format_stat(stat):
    """'71.20 ± 0.30', with '(2/3)' when some seeds (or datasets, for the Average) are missing."""
    if stat.mean is None:
        return "—"
    text = f"{stat.mean:.2f}" + (f" ± {stat.std:.2f}" if stat.std is not None else "")
    return text + (f" ({stat.complete}/{stat.expected})" if stat.complete < stat.expected else "")


def row_label(table, row):
    if layout_of(table.protocol) == "transfer" and row == table.source:
        return f"{display_name(row)} (source)"
    return display_name(row)


def table_cells(table):
    headers = ["Dataset"] + [column_label(table, c) for c in table.columns]
    rows = [[row_label(table, r)] + [format_stat(table.stats[c, r]) for c in table.columns] for r in table.rows]
    return headers, rows


def skipped_lines(skipped):
    """One line per reason a run folder was not read: the folder, or how many and the first of them."""
    reasons = {}
    for item in skipped:
        reasons.setdefault(item.reason, []).append(item.path)
    return [f"{paths[0]}: {reason}" if len(paths) == 1 else
            f"{len(paths)} run folders, e.g. {paths[0]}: {reason}" for reason, paths in reasons.items()]


def legend(table):
    methods = ", ".join(f"{m.trainer}/{m.cfg}" for m in table.labels)
    spread = ("the 95 % confidence interval 1.96·std/√n over seeds (--ci95)" if table.spread == "ci95"
              else "the population std over seeds")
    lines = [f"Trainer/config: {methods}.", f"± is {spread}; (k/n): k of n seeds complete "
             "(Average: k of n datasets complete)."]
    if table.protocol == "base2new":
        lines.append("HM = 2·B·N/(B+N) of the mean Base B and the mean New N; "
                     "the Average HM is that of the average B and the average N.")
    return lines


def render_text(table):
    headers, rows = table_cells(table)
    body = tabulate(rows, headers, tablefmt="simple", disable_numparse=True)
    notes = ["Notes:"] + [f"  {note}" for note in table.notes] if table.notes else []
    skipped = ["Run folders not read:"] + [f"  {line}" for line in table.skipped] if table.skipped else []
    return "\n".join([table.title, body, *legend(table), *notes, *skipped]) + "\n"


def render_markdown(table):
    headers, rows = table_cells(table)
    body = tabulate(rows, headers, tablefmt="pipe", disable_numparse=True)
    notes = ["Notes:", ""] + [f"- {note}" for note in table.notes] + [""] if table.notes else []
    skipped = ["Run folders not read:", ""] + [f"- {line}" for line in table.skipped] if table.skipped else []
    return "\n".join([f"**{table.title}**", "", body, "", *legend(table), "", *notes, *skipped]).rstrip() + "\n"


def write_csv(table, path):
    """One row per (method, dataset, metric); dataset is DATASET.NAME or 'Average'; the spread column is std or
    ci95."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["trainer", "cfg", "shots", "dataset", "metric", "mean", table.spread, "complete", "expected"])
        for column in table.columns:
            for row in table.rows:
                stat = table.stats[column, row]
                writer.writerow([column.method.trainer, column.method.cfg, column.shots, row, column.metric,
                                 "" if stat.mean is None else f"{stat.mean:.2f}",
                                 "" if stat.std is None else f"{stat.std:.2f}", stat.complete, stat.expected])


def plot_table(table, path):
    """Grouped bars per dataset (Average last): HM for base2new, accuracy otherwise; hatched = incomplete."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [c for c in table.columns if table.protocol != "base2new" or c.metric == "hm"]
    width, x = 0.8 / len(columns), np.arange(len(table.rows))
    figsize = (max(6.0, 0.35 * len(table.rows) * (len(columns) + 1)), 5.0)
    fig, ax = plt.subplots(figsize=figsize, layout="constrained")
    for i, column in enumerate(columns):
        stats = [table.stats[column, row] for row in table.rows]
        heights = [np.nan if s.mean is None else s.mean for s in stats]
        label = table.labels[column.method] if column.metric == "hm" else column_label(table, column)
        bars = ax.bar(x - 0.4 + (i + 0.5) * width, heights, width, label=label)
        for bar, stat in zip(bars, stats):
            bar.set_hatch("//" if stat.complete < stat.expected else None)
        ax.bar_label(bars, labels=["" if s.mean is None else f"{s.mean:.1f}" for s in stats], fontsize=7)
    values = [s.mean for (c, _), s in table.stats.items() if c in columns and s.mean is not None]
    ax.set_ylim(max(0.0, min(values, default=0.0) - 10.0), 104.0)
    ax.set_xticks(x, [row_label(table, row) for row in table.rows], rotation=30, ha="right")
    ax.set_ylabel("HM (%)" if table.protocol == "base2new" else "accuracy (%)")
    ax.set_title(table.title + ("; hatched: incomplete" if table.notes else ""), fontsize=10)
    fig.legend(loc="outside lower center", ncols=min(len(columns), 6), fontsize=8)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("root", metavar="OUTPUT_ROOT", help="the output root the protocol scripts wrote into")
    parser.add_argument("--protocol", choices=PROTOCOLS + ("ood",), default="base2new",
                        help="which benchmark's folders to read (default: base2new); ood: scripts/ood.sh's "
                             "OOD detection runs (scripts/ood_results.py)")
    parser.add_argument("--benchmark", choices=("openset", "imagenet"), default="openset",
                        help="ood: which OOD benchmark's folders, OUTPUT_ROOT/ood/<benchmark>/ (default: openset)")
    parser.add_argument("--plot-score", default="mcm", metavar="SCORE",
                        help="ood: the score whose ROC curves and histograms --plot draws (default: mcm)")
    parser.add_argument("--trainers", nargs="+", metavar="NAME",
                        help="trainer folder names to compare, in this column order (default: all found)")
    parser.add_argument("--cfg", nargs="+", metavar="CFG",
                        help="config names to keep, e.g. vit_b16_ep50 (default: all found)")
    parser.add_argument("--datasets", nargs="+", metavar="NAME",
                        help="table rows, as config stem (oxford_pets) or DATASET.NAME (OxfordPets); "
                             "a dataset without runs shows '—' (default: all found)")
    parser.add_argument("--seeds", nargs="+", type=int, metavar="S",
                        help="expected seeds; any missing one is marked (default: every seed found)")
    parser.add_argument("--source-dataset", metavar="NAME",
                        help="cross_dataset and domain_generalization: the dataset the models were trained on, "
                             "the table's first row, left out of the Average (default: ImageNet)")
    parser.add_argument("--shots", nargs="+", type=int, metavar="K",
                        help="shots per class: one value for base2new and the transfer protocols "
                             "(default 16); the table columns for few_shot (default: all found)")
    parser.add_argument("--ci95", action="store_true",
                        help="± is the 95%% confidence interval 1.96·std/√n over seeds instead of the std, "
                             "as CoOp's parse_test_res.py --ci95")
    parser.add_argument("--list-runs", action="store_true",
                        help="also print every run of the table with the log file read and its accuracy or problem")
    parser.add_argument("--require-complete", action="store_true",
                        help="exit with status 1 (after printing and writing the table) when any cell "
                             "misses a seed or a dataset has no run")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    parser.add_argument("--csv", metavar="FILE",
                        help="also write one CSV row per trainer, cfg, shots, dataset and metric")
    parser.add_argument("--plot", metavar="PNG",
                        help="also draw per-dataset bars, Average last: HM for base2new, accuracy "
                             "otherwise; ood: ROC curves and ID / OOD score histograms (needs matplotlib)")
    return parser


EPILOG = """\
folder layouts (dataset folders may be config stems or DATASET.NAME; seed_<S> as PromptKD's scripts
spell it reads as seed<S>; CoOp's nctx<N>_csc<B>_ctp<P> level becomes part of the config: <cfg>/<level>):
  base2new   base2new/{train_base,test_base,test_new}/<Dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>/
             Base is read from test_base when a dataset has test_base runs, else from the final test
             of train_base (the original CoOp/MaPLe/PromptSRC scripts have no test_base); New from
             test_new. A train_base log of PromptKD's own code in its base2novel setting (its config
             dump: TRAINER.NAME PromptKD, TRAINER.MODAL base2novel) tests the new classes after
             training and validates on the base classes: New is its final test (without test_new),
             Base the validation of the model it deployed (TEST.FINAL_MODEL best_val).
  cross_dataset, domain_generalization
             targets: evaluation/<Trainer>/<cfg>_<K>shots/<Dataset>/seed<S>/
                      evaluation/<Trainer>/<cfg>_<K>shots/<level>/<Dataset>/seed<S>/ (CoOp's eval.sh)
             source (--source-dataset, default ImageNet; left out of the Average):
                    <source>/<Trainer>/<cfg>_<K>shots/[<level>/]seed<S>/,
             or evaluation/.../imagenet/seed<S>/ when the source was also evaluated there.
             A method without evaluation/ runs reads each dataset from its run trained on that
             dataset, <Dataset>/<Trainer>/<cfg>_<K>shots/seed<S>/ (PromptKD's xd_train.sh), with a note.
             cross_dataset shows the targets other than the ImageNet variants, domain_generalization
             ImageNetV2/Sketch/A/R, unless --datasets is given.
  few_shot   few_shot/<Dataset>/shots_<K>/<Trainer>/<cfg>/seed<S>/ (this project's few_shot.sh)
             few_shot/<Dataset>/<Trainer>/<cfg>_<K>shots/seed<S>/ (PromptSRC's reproduce_few_shot.sh)
             <Dataset>/<Trainer>/<cfg>_<K>shots/seed<S>/ (PromptSRC's few_shot.sh)
             <Dataset>/<Trainer>/<cfg>_<K>shots/<level>/seed<S>/ (CoOp's main.sh)
--shots defaults to 16 for base2new and the transfer protocols, or to the one value found without
16-shot runs (PromptKD's shots_0). Every run folder under OUTPUT_ROOT that the table does not read
is listed after it with why: another protocol's layout, other shots, no layout (CoOp's
zeroshot.sh folders have no seed level and are not read); runs the selection flags leave out are not.

One log per run folder is read. Dassl writes log.txt-<timestamp> instead of log.txt when it reruns
into a folder, so a folder may hold several. The protocol scripts name the log of the attempt that
succeeded in finished.txt ('log <file>', third line); that file is read. Without such a line (the
reference layouts, or older runs) log.txt is read, as CoOp's parse_test_res.py reads it. The notes
name every run read from another file than log.txt; --list-runs lists the file read for every run.
A run is complete when the last '=> result' block of that log holds '* accuracy: X%', comes after
'Finish training' in a training log and has no Python traceback after it.

Cells are mean ± population std (numpy's default, as the original parsers; --ci95: the 95% confidence
interval 1.96*std/sqrt(n), as CoOp's parse_test_res.py --ci95) over the complete seeds,
marked (k/n) when only k of the n expected seeds are complete; the notes list every missing or
crashed run with its path. HM = 2*B*N/(B+N) of the mean Base and the mean New of a dataset. The
Average row is the mean over datasets of Base and of New and, for base2new, the HM of those two
averages, as the papers compute it. A dataset with no complete run is left out of the Average,
which is then marked (k/n datasets) with a note; so is an Average including incomplete datasets.
"""


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.protocol == "ood":
        ood_results = importlib.import_module(f"{__package__}.ood_results" if __package__ else "ood_results")
        sys.exit(ood_results.main(args))
    try:
        results = collect(args.root, args.protocol, args.trainers, args.cfg, args.datasets, args.seeds, args.shots,
                          args.source_dataset)
    except ResultsError as error:
        sys.exit(f"parse_results.py: {error}")
    table = summarize(results, "ci95" if args.ci95 else "std")
    print(render_text(table), end="")
    if args.list_runs:
        print("\n".join(run_listing(table, results)))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(render_markdown(table))
    if args.csv:
        write_csv(table, args.csv)
    if args.plot:
        plot_table(table, args.plot)
    missing = incomplete_cells(table) if args.require_complete else []
    if missing:
        sys.exit(f"parse_results.py: {len(missing)} incomplete cell(s) (see the notes): {'; '.join(missing)}")


if __name__ == "__main__":
    main()
