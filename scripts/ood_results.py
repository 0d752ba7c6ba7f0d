"""The OOD detection table of scripts/ood.sh's run folders: parse_results.py --protocol ood.

Reads each run's log (the one finished.txt names, else log.txt): its last `* ood id accuracy:` line and the
`* ood <set> <score>: auroc A% fpr95 F% aupr P%` lines after it, which scripts/ood_eval.py writes. Rows are
dataset, OOD set and score; each method has an AUROC and an FPR95 column, mean ± std over seeds (AUPR in the
CSV). --plot draws, per dataset and OOD set, the ROC curves of the methods and each method's ID / OOD score
histograms, from the first complete seed's ood_scores.npz.
"""
import csv
import glob
import os
import re
import sys
from collections import namedtuple

import numpy as np
from tabulate import tabulate

if __package__:  # imported as scripts.ood_results
    from . import parse_results as pr
else:
    import parse_results as pr

LAYOUT = "ood/{benchmark}/{dataset}/shots_{shots}/{trainer}/{cfg}/seed{seed}"
BENCHMARKS = ("openset", "imagenet")
TITLES = {"openset": "Open-set base-to-new OOD detection (ID: base classes, OOD: new classes)",
          "imagenet": "ImageNet-1k OOD detection (ID: ImageNet val)"}
SCORE_ORDER = ("msp", "mcm", "max_logit", "energy", "ctw", "atd")
METRICS = ("auroc", "fpr95", "aupr")
ACCURACY_LINE = re.compile(r"^\* ood id accuracy: (\S+)% \((\d+) images\)$")
METRIC_LINE = re.compile(r"^\* ood (\S+) (\S+): auroc (\S+)% fpr95 (\S+)% aupr (\S+)% \((\d+) images\)$")
SCORES_FILE = "ood_scores.npz"
ACCURACY = ("(ID)", "accuracy")  # the (set, score) of a dataset's ID accuracy row
# metrics: {(set, score): (auroc, fpr95, aupr)} in percent; problem "" when complete.
OODRun = namedtuple("OODRun", "seed path accuracy metrics problem")
Key = namedtuple("Key", "dataset shots trainer cfg seed")


def parse_ood_log(text):
    """(ID accuracy, metrics, problem) of the last OOD pass in a log."""
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if ACCURACY_LINE.match(line)]
    if not starts:
        return None, {}, "incomplete: no '* ood id accuracy' line (the OOD pass did not finish)"
    last = lines[starts[-1]:]
    if any(line.startswith(pr.TRACEBACK) for line in last):
        return None, {}, "crashed: a Python traceback follows its last OOD results"
    metrics = {}
    for line in last:
        found = METRIC_LINE.match(line)
        if found:
            metrics[found[1], found[2]] = tuple(float(found[i]) for i in (3, 4, 5))
    return float(ACCURACY_LINE.match(lines[starts[-1]])[1]), metrics, ""


def read_ood_run(run_dir, seed):
    path = os.path.join(run_dir, pr.vouched_log(run_dir) or pr.LOG)
    if not os.path.isfile(path):
        return OODRun(seed, run_dir, None, {}, f"missing: no {os.path.basename(path)} in the run folder")
    with open(path, encoding="utf-8", errors="replace") as log:
        accuracy, metrics, problem = parse_ood_log(log.read())
    return OODRun(seed, path, accuracy, metrics, problem)


def index_runs(root, benchmark):
    """{Key: run folder} of every OOD run folder of `benchmark` under `root`."""
    pattern = LAYOUT.format(benchmark=benchmark, dataset="*", shots="*", trainer="*", cfg="*", seed="*")
    runs = {}
    for path in glob.glob(os.path.join(root, pattern)):
        parts = os.path.relpath(path, root).split(os.sep)
        dataset, shots, trainer, cfg, seed = parts[2], parts[3][len("shots_"):], parts[4], parts[5], parts[6][4:]
        if os.path.isdir(path) and shots.isdigit() and seed.isdigit():
            runs[Key(pr.canonical_dataset(dataset), int(shots), trainer, cfg, int(seed))] = path
    return runs


def _selected(found, wanted):
    return [item for item in dict.fromkeys(wanted) if item in found] if wanted else sorted(found)


def collect(root, benchmark, trainers=None, cfgs=None, datasets=None, seeds=None, shots=None):
    """(methods, datasets, seeds, shots, {(Method, dataset): [OODRun per seed]})."""
    runs = index_runs(root, benchmark)
    if not runs:
        expected = LAYOUT.format(benchmark=benchmark, dataset="<dataset>", shots="<K>", trainer="<TRAINER>",
                                 cfg="<cfg>", seed="<S>")
        raise pr.ResultsError(f"no OOD runs under {root}; expected {expected}/ (scripts/ood.sh)")
    shots = (shots or [16])[0]
    kept = {key: path for key, path in runs.items() if key.shots == shots}
    methods = [pr.Method(trainer, cfg) for trainer in _selected({k.trainer for k in kept}, trainers)
               for cfg in _selected({k.cfg for k in kept if k.trainer == trainer}, cfgs)]
    rows = [pr.canonical_dataset(d) for d in datasets] if datasets else sorted({k.dataset for k in kept})
    seeds = seeds or sorted({k.seed for k in kept})
    cells = {}
    for method in methods:
        for dataset in rows:
            cells[method, dataset] = [
                read_ood_run(kept[key], seed) if key in kept else
                OODRun(seed, None, None, {}, "missing: no run folder") for seed in seeds
                for key in [Key(dataset, shots, method.trainer, method.cfg, seed)]]
    return methods, rows, seeds, shots, cells


def stat(values, expected, spread):
    """pr.Stat of the complete runs' values."""
    return pr.cell_stat([pr.Run(None, None, value, "") for value in values], spread)._replace(expected=expected)


def table_rows(methods, datasets, cells, spread):
    """[(dataset, set, score, {(Method, metric): Stat})], with Average rows when there are several datasets."""
    rows = []
    for dataset in datasets:
        complete = {m: [run for run in cells[m, dataset] if not run.problem] for m in methods}
        expected = len(next(iter(cells.values())))
        pairs = sorted({pair for runs in complete.values() for run in runs for pair in run.metrics},
                       key=lambda pair: (pair[0], SCORE_ORDER.index(pair[1]) if pair[1] in SCORE_ORDER else 99))
        rows.append((dataset, *ACCURACY, {(m, "auroc"): stat([r.accuracy for r in complete[m]], expected, spread)
                                          for m in methods}))
        for pair in pairs:
            rows.append((dataset, *pair, {(m, metric): pair_stat(complete[m], pair, i, expected, spread)
                                          for m in methods for i, metric in enumerate(METRICS)}))
    return rows + average_rows(methods, datasets, rows)


def pair_stat(runs, pair, i, expected, spread):
    """Stat of metric `i` of (set, score) `pair` over complete `runs`; None when they have runs but none holds
    it (a score the model has not, e.g. CLIPN's without negative prompts)."""
    values = [run.metrics[pair][i] for run in runs if pair in run.metrics]
    return None if runs and not values else stat(values, expected, spread)


def average_rows(methods, datasets, rows):
    """Mean over datasets of each (set, score) mean, when there are several datasets."""
    if len(datasets) < 2:
        return []
    averages = []
    for pair in dict.fromkeys((row[1], row[2]) for row in rows):
        stats = [row[3] for row in rows if (row[1], row[2]) == pair]
        values = {}
        for key in stats[0]:
            if all(s.get(key) is None for s in stats):
                values[key] = None
                continue
            means = [s[key].mean for s in stats if s.get(key) is not None and s[key].mean is not None]
            values[key] = pr.Stat(float(np.mean(means)) if means else None, None, len(means), len(datasets))
        averages.append((pr.AVERAGE, *pair, values))
    return averages


def table_cells(methods, rows):
    labels = pr.method_labels(methods)
    headers = ["Dataset", "OOD set", "Score"] + [f"{labels[m]} {name}" for m in methods for name in ("AUROC", "FPR95")]
    body = []
    for dataset, set_name, score, stats in rows:
        cells = []
        for method in methods:
            for metric in ("auroc", "fpr95"):
                value = stats.get((method, metric))
                blank = (set_name, score) == ACCURACY and metric == "fpr95"
                cells.append("" if blank else "n/a" if value is None else pr.format_stat(value))
        body.append([pr.display_name(dataset), set_name, score, *cells])
    return headers, body


def problems(methods, datasets, cells):
    return [f"{method.trainer}/{method.cfg} {dataset} seed {run.seed}: {run.problem} ({run.path})"
            for method in methods for dataset in datasets for run in cells[method, dataset] if run.problem]


def legend(benchmark, methods, seeds, shots, spread):
    return [f"{TITLES[benchmark]}; {shots} shots; seeds {' '.join(map(str, seeds))}.",
            "Trainer/config: " + ", ".join(f"{m.trainer}/{m.cfg}" for m in methods) + ".",
            "AUROC and FPR95 (FPR at 95 % TPR) in %, ID positive; mean ± "
            + ("1.96·std/√n" if spread == "ci95" else "population std") + " over seeds; (k/n): k of n complete. "
            "(ID) accuracy: the ID test accuracy, in the AUROC column.",
            "Scores: msp max softmax; mcm max softmax(cos/T); max_logit; energy logsumexp of the logits; ctw and "
            "atd CLIPN's competing-to-win and agreeing-to-differ, from the negative prompts (n/a: the model has "
            "none)."]


def write_csv(path, methods, rows, spread):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["trainer", "cfg", "dataset", "ood_set", "score", "metric", "mean", spread, "complete",
                         "expected"])
        for dataset, set_name, score, stats in rows:
            for (method, metric), value in stats.items():
                if value is None:  # a score the model has not
                    continue
                writer.writerow([method.trainer, method.cfg, dataset, set_name, score,
                                 "accuracy" if (set_name, score) == ACCURACY else metric,
                                 "" if value.mean is None else f"{value.mean:.2f}",
                                 "" if value.std is None else f"{value.std:.2f}", value.complete, value.expected])


def plot(path, methods, datasets, cells, score):
    """Per dataset and OOD set: ROC curves of every method, then each method's ID / OOD histograms of `score`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from trainers.ood import roc_points

    panels = []  # (dataset, set, {Method: (id scores, ood scores)})
    for dataset in datasets:
        files = {m: next((os.path.join(os.path.dirname(r.path), SCORES_FILE) for r in cells[m, dataset]
                          if not r.problem), None) for m in methods}
        loaded = {m: np.load(f) for m, f in files.items() if f and os.path.isfile(f)}
        sets = sorted({key.split(".")[0] for data in loaded.values() for key in data.files} - {"id"})
        panels += [(dataset, s, {m: (data[f"id.{score}"], data[f"{s}.{score}"]) for m, data in loaded.items()
                                 if f"{s}.{score}" in data.files}) for s in sets]
    if not panels:
        raise pr.ResultsError(f"--plot: no {SCORES_FILE} with the score {score!r} in the complete runs")
    fig, axes = plt.subplots(len(panels), len(methods) + 1, figsize=(3.2 * (len(methods) + 1), 2.8 * len(panels)),
                             squeeze=False, layout="constrained")
    labels = pr.method_labels(methods)
    for row, (dataset, set_name, scored) in zip(axes, panels):
        row[0].plot([0, 1], [0, 1], color="0.8", linewidth=0.8)
        for method, (id_values, ood_values) in scored.items():
            tpr, fpr, _ = roc_points(id_values, ood_values)
            row[0].plot(fpr, tpr, label=labels[method])
        row[0].set(title=f"{pr.display_name(dataset)} vs {set_name}: ROC ({score})", xlabel="FPR", ylabel="TPR")
        row[0].legend(fontsize=7)
        for ax, method in zip(row[1:], methods):
            if method in scored:
                bins = np.histogram_bin_edges(np.concatenate(scored[method]), bins=30)
                ax.hist(scored[method][0], bins, alpha=0.6, label="ID")
                ax.hist(scored[method][1], bins, alpha=0.6, label=f"OOD ({set_name})")
                ax.legend(fontsize=7)
            ax.set(title=f"{labels[method]}: {score}", xlabel="score")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(args):
    """parse_results.py --protocol ood; returns the exit status."""
    spread = "ci95" if args.ci95 else "std"
    try:
        methods, datasets, seeds, shots, cells = collect(args.root, args.benchmark, args.trainers, args.cfg,
                                                         args.datasets, args.seeds, args.shots)
    except pr.ResultsError as error:
        sys.exit(f"parse_results.py: {error}")
    rows = table_rows(methods, datasets, cells, spread)
    headers, body = table_cells(methods, rows)
    notes = problems(methods, datasets, cells)
    text = tabulate(body, headers, tablefmt="simple", disable_numparse=True)
    lines = [TITLES[args.benchmark], text, *legend(args.benchmark, methods, seeds, shots, spread)]
    print("\n".join(lines + (["Notes:"] + [f"  {note}" for note in notes] if notes else [])))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(tabulate(body, headers, tablefmt="pipe", disable_numparse=True) + "\n")
    if args.csv:
        write_csv(args.csv, methods, rows, spread)
    if args.plot:
        plot(args.plot, methods, datasets, cells, args.plot_score)
    if args.require_complete and (notes or not methods):
        sys.exit(f"parse_results.py: {len(notes)} incomplete OOD run(s) (see the notes)")
    return 0
