"""scripts/parse_results.py on hand-written Dassl log folders; expected numbers computed by hand."""
import csv
import io
import math

import pytest

from scripts import parse_results as pr
from tests.conftest import run_script

HEADER = "Loading trainer: CoOp\nLoading dataset: Caltech101\nBuilding transform_test\n"
EPOCHS = "epoch [1/2] batch [1/1] time 0.1 (0.1) loss 1.0\nepoch [2/2] batch [1/1] time 0.1 (0.1) loss 0.9\n"


def result_block(accuracy, split="test"):
    return (
        f"Evaluate on the *{split}* set\n=> result\n* total: 1,000\n"
        f"* correct: {round(accuracy * 10):,}\n* accuracy: {accuracy:.1f}%\n"
        f"* error: {100 - accuracy:.1f}%\n* macro_f1: {accuracy - 0.3:.1f}%\n"
    )


def train_log(accuracy, finish="Finish training"):
    return (HEADER + EPOCHS + f"{finish}\nDeploy the last-epoch model\n"
            + result_block(accuracy) + "Elapsed: 0:01:02\n")


def eval_log(accuracy):
    loading = "Loading weights to prompt_learner from output/model.pth.tar-2 (epoch = 2)\n"
    return HEADER + loading + result_block(accuracy)


CRASH = 'Traceback (most recent call last):\n  File "train.py", line 1, in <module>\nRuntimeError: boom\n'


def write_log(root, rel, text, name="log.txt"):
    folder = root / rel
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder / name


def b2n_rel(split, dataset, trainer, cfg, seed, shots=16):
    return f"base2new/{split}/{dataset}/shots_{shots}/{trainer}/{cfg}/seed{seed}"


# (trainer, cfg) -> dataset folder -> (Base per seed 1..3, New per seed 1..3)
B2N = {
    ("CoOp", "vit_b16"): {
        "Caltech101": ([89.0, 90.0, 91.0], [72.0, 72.0, 72.0]),
        "DescribableTextures": ([60.0, 60.0, 60.0], [88.0, 90.0, 92.0]),
    },
    ("FDBPL", "vit_b32"): {
        "Caltech101": ([80.0, 80.0, 80.0], [80.0, 80.0, 80.0]),
        "DescribableTextures": ([84.0, 84.0, 84.0], [62.0, 63.0, 64.0]),
    },
}


def write_b2n(root, runs=B2N):
    """Our layout: train_base (its final test deliberately differs), test_base and test_new eval-only."""
    for (trainer, cfg), per_dataset in runs.items():
        for dataset, (base, new) in per_dataset.items():
            for seed, (b, n) in enumerate(zip(base, new), start=1):
                write_log(root, b2n_rel("train_base", dataset, trainer, cfg, seed), train_log(1.0))
                write_log(root, b2n_rel("test_base", dataset, trainer, cfg, seed), eval_log(b))
                write_log(root, b2n_rel("test_new", dataset, trainer, cfg, seed), eval_log(n))
    return root


@pytest.fixture
def b2n_root(tmp_path):
    return write_b2n(tmp_path / "out")


def cells(table):
    headers, rows = pr.table_cells(table)
    return [headers] + rows


# Hand computation. std is the population std: [89, 90, 91] -> sqrt(2/3) = 0.8165.
# CoOp:  Caltech101 B 90, N 72 -> HM 2*90*72/162 = 80;  DTD B 60, N 90 -> HM 2*60*90/150 = 72.
#        Average B (90+60)/2 = 75, N (72+90)/2 = 81 -> HM 2*75*81/156 = 77.8846.
# FDBPL: Caltech101 B 80, N 80 -> HM 80;  DTD B 84, N 63 -> HM 2*84*63/147 = 72.
#        Average B 82, N 71.5 -> HM 2*82*71.5/153.5 = 76.3909.
COMPLETE_CELLS = [
    ["Dataset", "CoOp Base", "CoOp New", "CoOp HM", "FDBPL Base", "FDBPL New", "FDBPL HM"],
    ["Caltech101", "90.00 ± 0.82", "72.00 ± 0.00", "80.00", "80.00 ± 0.00", "80.00 ± 0.00", "80.00"],
    ["DTD", "60.00 ± 0.00", "90.00 ± 1.63", "72.00", "84.00 ± 0.00", "63.00 ± 0.82", "72.00"],
    ["Average", "75.00", "81.00", "77.88", "82.00", "71.50", "76.39"],
]


def test_parse_log_complete_training_and_eval_only():
    assert pr.parse_log(train_log(71.2)) == (71.2, "")
    assert pr.parse_log(train_log(64.5, finish="Finished training")) == (64.5, "")
    assert pr.parse_log(eval_log(55.0)) == (55.0, "")


def test_parse_log_takes_the_block_after_finish_training_not_a_validation_block():
    text = (HEADER + EPOCHS + result_block(99.0, split="val") + "Finish training\n"
            + "Deploy the model with the best val performance\n" + result_block(70.0))
    assert pr.parse_log(text) == (70.0, "")


def test_parse_log_ignores_per_class_average_line():
    per_class = "=> per-class result\n* class: 0 (cat)\ttotal: 10\tcorrect: 9\tacc: 90.0%\n* average: 88.0%\n"
    text = eval_log(61.0) + per_class
    assert pr.parse_log(text) == (61.0, "")


@pytest.mark.parametrize("text, reason", [
    (HEADER + EPOCHS, "training never printed 'Finish training'"),
    (HEADER + EPOCHS + result_block(50.0, split="val"), "training never printed"),
    (HEADER + EPOCHS + "Finish training\nDeploy the last-epoch model\n", "no final '=> result' block"),
    (HEADER + CRASH, "no final '=> result' block"),
    (eval_log(50.0) + CRASH, "Python traceback after the final '=> result' block"),
    (HEADER + "=> result\n* total: 1,000\n", "has no accuracy line"),
    ("", "no final '=> result' block"),
    (train_log(71.2).replace("accuracy: 71.2%", "accuracy: 1e999%"), "'1e999%' is not a percentage"),
    (train_log(71.2).replace("accuracy: 71.2%", "accuracy: nan%"), "'nan%' is not a percentage"),
    (train_log(-5.0), "'-5.0%' is not a percentage"),
    (train_log(100.1), "'100.1%' is not a percentage"),
])
def test_parse_log_incomplete(text, reason):
    accuracy, problem = pr.parse_log(text)
    assert accuracy is None and reason in problem


def write_reruns(root, rel):
    """A folder of four attempts: log.txt 70, then 60, 73.4 and an unfinished one as log.txt-<timestamp>."""
    write_log(root, rel, train_log(70.0))
    write_log(root, rel, train_log(60.0), name="log.txt-2024-05-01-10-00-00")
    write_log(root, rel, train_log(73.4), name="log.txt-2024-05-02-10-00-00")
    write_log(root, rel, HEADER + EPOCHS, name="log.txt-2024-05-03-10-00-00")
    return root / rel


def write_marker(folder, *extra):
    (folder / "finished.txt").write_text("\n".join(["2024-05-01 10:00:00", "python train.py --seed 1", *extra, ""]))


def test_read_run_reads_the_log_finished_txt_names_not_the_newest(tmp_path):
    folder = write_reruns(tmp_path, "seed1")
    write_marker(folder, "log log.txt-2024-05-01-10-00-00")
    assert pr.read_run(str(folder), 1) == pr.Run(1, str(folder / "log.txt-2024-05-01-10-00-00"), 60.0, "")
    write_marker(folder, "log log.txt-2024-05-09-10-00-00")
    assert pr.read_run(str(folder), 1) == pr.Run(
        1, str(folder / "log.txt-2024-05-09-10-00-00"), None,
        "missing: finished.txt names log.txt-2024-05-09-10-00-00, which is not in the run folder")


@pytest.mark.parametrize("marker", [None, ()], ids=["no finished.txt", "finished.txt without a log line"])
def test_read_run_reads_log_txt_as_coop_parser_when_no_log_is_named(tmp_path, marker):
    folder = write_reruns(tmp_path, "seed1")
    if marker is not None:
        write_marker(folder, *marker)
    assert pr.read_run(str(folder), 1) == pr.Run(1, str(folder / "log.txt"), 70.0, "")
    (folder / "log.txt").write_text(HEADER + EPOCHS + CRASH)
    assert pr.read_run(str(folder), 1) == pr.Run(
        1, str(folder / "log.txt"), None, "crashed or still running: training never printed 'Finish training'")
    (folder / "log.txt").unlink()
    run = pr.read_run(str(folder), 1)
    assert run.accuracy is None and run.problem == (
        "missing: no log.txt in the run folder (its log.txt-2024-05-01-10-00-00, log.txt-2024-05-02-10-00-00, "
        "log.txt-2024-05-03-10-00-00 not read: no finished.txt names one)")


def test_table_notes_and_lists_the_log_read(b2n_root, capsys):
    folder = b2n_root / b2n_rel("test_new", "Caltech101", "CoOp", "vit_b16", 2)
    write_log(b2n_root, b2n_rel("test_new", "Caltech101", "CoOp", "vit_b16", 2), eval_log(40.0),
              name="log.txt-2024-05-02-10-00-00")
    write_marker(folder, "log log.txt-2024-05-02-10-00-00")
    table = pr.summarize(pr.collect(str(b2n_root), "base2new", trainers=["CoOp"]))
    assert cells(table)[1][2] == "61.33 ± 15.08"  # New of seeds 1-3: 72, 40, 72
    assert table.notes == [f"CoOp New, Caltech101: seed 2 read from {folder / 'log.txt-2024-05-02-10-00-00'}, "
                           "the log finished.txt names (not log.txt)"]
    pr.main([str(b2n_root), "--trainers", "CoOp", "--list-runs"])
    listing = capsys.readouterr().out.split("Runs (cell, seed: file read -> accuracy or problem):\n")[1]
    assert f"  CoOp New, Caltech101, seed 2: {folder / 'log.txt-2024-05-02-10-00-00'} -> 40.00\n" in listing
    dtd = b2n_root / b2n_rel("test_base", "DescribableTextures", "CoOp", "vit_b16", 3) / "log.txt"
    assert f"  CoOp Base, DTD, seed 3: {dtd} -> 60.00\n" in listing
    assert len(listing.strip().splitlines()) == 2 * 2 * 3  # Base and New, 2 datasets, 3 seeds


def test_read_run_without_log(tmp_path):
    (tmp_path / "seed2").mkdir()
    run = pr.read_run(str(tmp_path / "seed2"), 2)
    assert run.accuracy is None and run.problem == "missing: no log.txt in the run folder"


def test_canonical_and_display_dataset_names():
    assert pr.canonical_dataset("oxford_pets") == pr.canonical_dataset("OxfordPets") == "OxfordPets"
    assert pr.canonical_dataset("imagenet") == "ImageNet"
    assert pr.display_name(pr.canonical_dataset("dtd")) == "DTD"
    assert pr.display_name("Synthetic") == "Synthetic"


def test_harmonic_mean_by_hand():
    assert pr.harmonic_mean(90.0, 72.0) == pytest.approx(80.0)
    assert pr.harmonic_mean(0.0, 0.0) == 0.0


def test_base2new_complete_table(b2n_root):
    results = pr.collect(str(b2n_root), "base2new")
    assert results.seeds == [1, 2, 3] and results.datasets == ["Caltech101", "DescribableTextures"]
    table = pr.summarize(results)
    assert cells(table) == COMPLETE_CELLS
    assert table.notes == []
    hm = table.stats[pr.Column(pr.Method("CoOp", "vit_b16"), "hm", 16), "Average"]
    assert hm.mean == pytest.approx(2 * 75 * 81 / 156)
    std = table.stats[pr.Column(pr.Method("CoOp", "vit_b16"), "base", 16), "Caltech101"].std
    assert std == pytest.approx(math.sqrt(2 / 3))


def test_trainer_selection_and_order(b2n_root):
    table = pr.summarize(pr.collect(str(b2n_root), "base2new", trainers=["FDBPL", "CoOp"]))
    assert cells(table)[0][1:4] == ["FDBPL Base", "FDBPL New", "FDBPL HM"]
    table = pr.summarize(pr.collect(str(b2n_root), "base2new", cfgs=["vit_b16"]))
    assert [c.method.trainer for c in table.columns] == ["CoOp"] * 3
    with pytest.raises(pr.ResultsError, match="--trainers KgCoOp: no such runs; found CoOp, FDBPL"):
        pr.collect(str(b2n_root), "base2new", trainers=["KgCoOp"])


def test_same_trainer_with_two_configs_gets_cfg_in_label(b2n_root):
    write_b2n(b2n_root, {("CoOp", "vit_b32"): B2N[("CoOp", "vit_b16")]})
    headers = cells(pr.summarize(pr.collect(str(b2n_root), "base2new", trainers=["CoOp"])))[0]
    assert headers[1] == "CoOp/vit_b16 Base" and headers[4] == "CoOp/vit_b32 Base"


def test_missing_seed_is_marked_and_not_averaged_in(b2n_root):
    missing = b2n_root / b2n_rel("test_new", "Caltech101", "CoOp", "vit_b16", 3)
    (missing / "log.txt").unlink()
    missing.rmdir()
    table = pr.summarize(pr.collect(str(b2n_root), "base2new", trainers=["CoOp"]))
    # New of Caltech101 from seeds 1, 2 only: [72, 72]; HM and Average unchanged in value but marked.
    assert cells(table)[1] == ["Caltech101", "90.00 ± 0.82", "72.00 ± 0.00 (2/3)", "80.00 (2/3)"]
    assert cells(table)[3] == ["Average", "75.00 (1/2)", "81.00 (1/2)", "77.88 (1/2)"]
    assert table.notes == [
        f"CoOp New, Caltech101: seed 3 missing: no run folder: {missing}",
        "Average of CoOp includes Caltech101 with missing seeds.",
    ]


def test_expected_seeds_flag_marks_seeds_never_run(b2n_root):
    table = pr.summarize(pr.collect(str(b2n_root), "base2new", trainers=["FDBPL"], seeds=[1, 2, 3, 4]))
    assert cells(table)[1][1] == "80.00 ± 0.00 (3/4)"
    assert len(table.notes) == 2 * 2 + 1  # seed 4 of Base and New on both datasets, and the Average


def test_crashed_run_is_marked_and_excluded(b2n_root):
    crashed = write_log(b2n_root, b2n_rel("test_base", "DescribableTextures", "FDBPL", "vit_b32", 2), HEADER + CRASH)
    table = pr.summarize(pr.collect(str(b2n_root), "base2new", trainers=["FDBPL"]))
    assert cells(table)[2] == ["DTD", "84.00 ± 0.00 (2/3)", "63.00 ± 0.82", "72.00 (2/3)"]
    assert table.notes[0] == f"FDBPL Base, DTD: seed 2 crashed or still running: no final '=> result' block: {crashed}"


def test_dataset_without_any_complete_run_is_left_out_of_average(b2n_root):
    for seed in (1, 2, 3):
        log = b2n_root / b2n_rel("test_new", "DescribableTextures", "FDBPL", "vit_b32", seed) / "log.txt"
        log.write_text(eval_log(63.0) + CRASH)
    table = pr.summarize(pr.collect(str(b2n_root), "base2new", trainers=["FDBPL"]))
    # Average over Caltech101 only: B 80, N 80, HM 80; 1 of 2 datasets complete.
    assert cells(table)[2] == ["DTD", "84.00 ± 0.00", "—", "—"]
    assert cells(table)[3] == ["Average", "80.00 (1/2)", "80.00 (1/2)", "80.00 (1/2)"]
    crashed = b2n_root / b2n_rel("test_new", "DescribableTextures", "FDBPL", "vit_b32", "{1,2,3}") / "log.txt"
    assert table.notes == [
        f"FDBPL New, DTD: seeds 1 2 3 crashed: Python traceback after the final '=> result' block: {crashed}",
        "Average of FDBPL leaves out DTD (no complete run).",
    ]


def test_base_never_mixes_test_base_and_train_base_seeds(b2n_root):
    """train_base holds a different final accuracy (1.0), so a silent fallback would show in the mean."""
    absent = b2n_root / b2n_rel("test_base", "Caltech101", "FDBPL", "vit_b32", 3)
    (absent / "log.txt").unlink()
    absent.rmdir()
    table = pr.summarize(pr.collect(str(b2n_root), "base2new", trainers=["FDBPL"]))
    assert cells(table)[1][1] == "80.00 ± 0.00 (2/3)"
    assert table.notes[0] == f"FDBPL Base, Caltech101: seed 3 missing: no run folder: {absent}"


def test_original_coop_layout_reads_base_from_train_base(tmp_path):
    """CoOp/PromptSRC scripts: train_base + test_new only, config-stem dataset folders."""
    for seed, (base, new) in enumerate([(82.0, 70.0), (84.0, 74.0)], start=1):
        write_log(tmp_path, b2n_rel("train_base", "oxford_pets", "PromptSRC", "vit_b16_c2", seed),
                  train_log(base, finish="Finished training"))
        write_log(tmp_path, b2n_rel("test_new", "oxford_pets", "PromptSRC", "vit_b16_c2", seed), eval_log(new))
    write_log(tmp_path, b2n_rel("train_base", "dtd", "PromptSRC", "vit_b16_c2", 1), train_log(80.0))
    table = pr.summarize(pr.collect(str(tmp_path), "base2new", seeds=[1, 2]))
    # OxfordPets: B 83 ± 1, N 72 ± 2 -> HM 2*83*72/155 = 77.1097. DTD has no New: left out of the Average.
    assert cells(table)[1:] == [
        ["OxfordPets", "83.00 ± 1.00", "72.00 ± 2.00", "77.11"],
        ["DTD", "80.00 ± 0.00 (1/2)", "—", "—"],
        ["Average", "83.00 (1/2)", "72.00 (1/2)", "77.11 (1/2)"],
    ]
    assert table.notes == [
        f"PromptSRC Base, DTD: seed 2 missing: no run folder: "
        f"{tmp_path / b2n_rel('train_base', 'dtd', 'PromptSRC', 'vit_b16_c2', 2)}",
        f"PromptSRC New, DTD: seeds 1 2 missing: no run folder: "
        f"{tmp_path / b2n_rel('test_new', 'dtd', 'PromptSRC', 'vit_b16_c2', '{1,2}')}",
        "Average of PromptSRC leaves out DTD (no complete run).",
    ]


def test_both_dataset_folder_spellings_merge_into_one_row(tmp_path):
    write_log(tmp_path, b2n_rel("train_base", "oxford_pets", "CoOp", "c", 1), train_log(80.0))
    write_log(tmp_path, b2n_rel("test_new", "OxfordPets", "CoOp", "c", 1), eval_log(60.0))
    table = pr.summarize(pr.collect(str(tmp_path), "base2new"))
    assert cells(table)[1] == ["OxfordPets", "80.00 ± 0.00", "60.00 ± 0.00", "68.57"]  # 9600/140


def test_markdown_output_exact(b2n_root):
    table = pr.summarize(pr.collect(str(b2n_root), "base2new"))
    assert pr.render_markdown(table) == """\
**Base-to-new generalization (16 shots; seeds 1 2 3)**

| Dataset    | CoOp Base    | CoOp New     | CoOp HM   | FDBPL Base   | FDBPL New    | FDBPL HM   |
|:-----------|:-------------|:-------------|:----------|:-------------|:-------------|:-----------|
| Caltech101 | 90.00 ± 0.82 | 72.00 ± 0.00 | 80.00     | 80.00 ± 0.00 | 80.00 ± 0.00 | 80.00      |
| DTD        | 60.00 ± 0.00 | 90.00 ± 1.63 | 72.00     | 84.00 ± 0.00 | 63.00 ± 0.82 | 72.00      |
| Average    | 75.00        | 81.00        | 77.88     | 82.00        | 71.50        | 76.39      |

Trainer/config: CoOp/vit_b16, FDBPL/vit_b32.
± is the population std over seeds; (k/n): k of n seeds complete (Average: k of n datasets complete).
HM = 2·B·N/(B+N) of the mean Base B and the mean New N; the Average HM is that of the average B and the average N.
"""


def test_markdown_lists_notes(b2n_root):
    (b2n_root / b2n_rel("test_base", "Caltech101", "CoOp", "vit_b16", 1) / "log.txt").write_text(HEADER)
    text = pr.render_markdown(pr.summarize(pr.collect(str(b2n_root), "base2new")))
    assert "| Caltech101 | 90.50 ± 0.50 (2/3) |" in text
    assert text.endswith("Notes:\n\n- CoOp Base, Caltech101: seed 1 crashed or still running: no final '=> result' "
                         f"block: {b2n_root / b2n_rel('test_base', 'Caltech101', 'CoOp', 'vit_b16', 1)}/log.txt\n"
                         "- Average of CoOp includes Caltech101 with missing seeds.\n")


def test_csv_output_exact(b2n_root, tmp_path):
    table = pr.summarize(pr.collect(str(b2n_root), "base2new", trainers=["FDBPL"]))
    pr.write_csv(table, tmp_path / "table.csv")
    assert (tmp_path / "table.csv").read_text() == """\
trainer,cfg,shots,dataset,metric,mean,std,complete,expected
FDBPL,vit_b32,16,Caltech101,base,80.00,0.00,3,3
FDBPL,vit_b32,16,DescribableTextures,base,84.00,0.00,3,3
FDBPL,vit_b32,16,Average,base,82.00,,2,2
FDBPL,vit_b32,16,Caltech101,new,80.00,0.00,3,3
FDBPL,vit_b32,16,DescribableTextures,new,63.00,0.82,3,3
FDBPL,vit_b32,16,Average,new,71.50,,2,2
FDBPL,vit_b32,16,Caltech101,hm,80.00,,3,3
FDBPL,vit_b32,16,DescribableTextures,hm,72.00,,3,3
FDBPL,vit_b32,16,Average,hm,76.39,,2,2
"""


def xd_rel(trainer, cfg, dataset, seed, shots=16):
    return f"evaluation/{trainer}/{cfg}_{shots}shots/{dataset}/seed{seed}"


def test_cross_dataset_and_domain_generalization(tmp_path):
    """PromptSRC xd layout: source training under imagenet/, targets under evaluation/."""
    for seed, (source, pets, dtd, sketch) in enumerate([(70.0, 90.0, 40.0, 48.0), (72.0, 92.0, 44.0, 50.0)], 1):
        write_log(tmp_path, f"imagenet/MaPLe/vit_b16_xd_16shots/seed{seed}", train_log(source))
        write_log(tmp_path, xd_rel("MaPLe", "vit_b16_xd", "oxford_pets", seed), eval_log(pets))
        write_log(tmp_path, xd_rel("MaPLe", "vit_b16_xd", "dtd", seed), eval_log(dtd))
        write_log(tmp_path, xd_rel("MaPLe", "vit_b16_xd", "imagenet_sketch", seed), eval_log(sketch))
    xd = pr.summarize(pr.collect(str(tmp_path), "cross_dataset"))
    # Average over the targets only: (91 + 42) / 2 = 66.5; the source row is not averaged.
    assert cells(xd) == [
        ["Dataset", "MaPLe"],
        ["ImageNet (source)", "71.00 ± 1.00"],
        ["OxfordPets", "91.00 ± 1.00"],
        ["DTD", "42.00 ± 2.00"],
        ["Average", "66.50"],
    ]
    dg = pr.summarize(pr.collect(str(tmp_path), "domain_generalization"))
    assert cells(dg)[1:] == [["ImageNet (source)", "71.00 ± 1.00"], ["ImageNet-Sketch", "49.00 ± 1.00"],
                             ["Average", "49.00"]]


def test_transfer_from_another_source_dataset(tmp_path):
    """--source-dataset: the source row is that dataset's training run, and ImageNet is not expected."""
    for seed, (source, dtd) in enumerate([(60.0, 40.0), (62.0, 44.0)], 1):
        write_log(tmp_path, f"caltech101/CoOp/vit_b16_16shots/seed{seed}", train_log(source))
        write_log(tmp_path, xd_rel("CoOp", "vit_b16", "dtd", seed), eval_log(dtd))
    table = pr.summarize(pr.collect(str(tmp_path), "cross_dataset", source="caltech101"))
    assert cells(table)[1:] == [["Caltech101 (source)", "61.00 ± 1.00"], ["DTD", "42.00 ± 2.00"], ["Average", "42.00"]]
    assert table.notes == [] and pr.incomplete_cells(table) == []
    imagenet_source = pr.summarize(pr.collect(str(tmp_path), "cross_dataset"))
    assert pr.incomplete_cells(imagenet_source) == ["CoOp, ImageNet"]


def test_few_shot_columns_are_shots(tmp_path):
    for shots, values in ((1, [50.0, 52.0]), (16, [80.0, 80.0])):
        for seed, accuracy in enumerate(values, start=1):
            write_log(tmp_path, f"few_shot/eurosat/shots_{shots}/CoOp/c/seed{seed}", train_log(accuracy))
    write_log(tmp_path, "few_shot/UCF101/shots_1/CoOp/c/seed1", train_log(60.0))
    table = pr.summarize(pr.collect(str(tmp_path), "few_shot"))
    # Average 1-shot over EuroSAT 51 and UCF101 60 (1/2 seeds) = 55.5; 16-shot: UCF101 has no run.
    assert cells(table) == [
        ["Dataset", "CoOp 1-shot", "CoOp 16-shot"],
        ["EuroSAT", "51.00 ± 1.00", "80.00 ± 0.00"],
        ["UCF101", "60.00 ± 0.00 (1/2)", "—"],
        ["Average", "55.50 (1/2)", "80.00 (1/2)"],
    ]
    assert pr.summarize(pr.collect(str(tmp_path), "few_shot", shots=[16])).columns[0].shots == 16
    write_log(tmp_path, "few_shot/eurosat/shots_4/FDBPL/c/seed1", train_log(70.0))
    assert [column.shots for column in pr.collect(str(tmp_path), "few_shot", trainers=["FDBPL"]).columns] == [4]


def test_requested_dataset_without_runs_shows_dash(b2n_root):
    table = pr.summarize(pr.collect(str(b2n_root), "base2new", trainers=["FDBPL"], datasets=["caltech101", "eurosat"]))
    assert cells(table)[1:] == [
        ["Caltech101", "80.00 ± 0.00", "80.00 ± 0.00", "80.00"],
        ["EuroSAT", "—", "—", "—"],
        ["Average", "80.00 (1/2)", "80.00 (1/2)", "80.00 (1/2)"],
    ]
    assert table.notes[0].startswith("FDBPL Base, EuroSAT: seeds 1 2 3 missing: no run folder: ")
    assert table.notes[0].endswith("base2new/train_base/EuroSAT/shots_16/FDBPL/vit_b32/seed{1,2,3}")


def test_bad_selection_exits_with_message(b2n_root):
    with pytest.raises(pr.ResultsError, match="--shots takes one value for base2new"):
        pr.collect(str(b2n_root), "base2new", shots=[4, 16])
    with pytest.raises(SystemExit, match="--cfg vit_l14: no such runs; found vit_b16, vit_b32"):
        pr.main([str(b2n_root), "--cfg", "vit_l14"])


def test_empty_root_names_the_expected_layout(tmp_path):
    with pytest.raises(pr.ResultsError, match=r"(?s)no base2new runs under .*base2new/test_new/<Dataset>/shots_<K>"):
        pr.collect(str(tmp_path), "base2new")
    with pytest.raises(pr.ResultsError, match="is not a directory"):
        pr.collect(str(tmp_path / "absent"), "base2new")


def test_plot_writes_png(b2n_root, tmp_path):
    pr.plot_table(pr.summarize(pr.collect(str(b2n_root), "base2new")), tmp_path / "hm.png")
    assert (tmp_path / "hm.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_end_to_end(b2n_root, tmp_path):
    md, table_csv, png = tmp_path / "t.md", tmp_path / "t.csv", tmp_path / "t.png"
    out = run_script("scripts/parse_results.py", str(b2n_root), "--protocol", "base2new", "--seeds", "1", "2", "3",
                     "--markdown", str(md), "--csv", str(table_csv), "--plot", str(png)).stdout
    assert out.splitlines()[0] == "Base-to-new generalization (16 shots; seeds 1 2 3)"
    assert "Average     75.00         81.00         77.88" in out
    assert md.read_text() == pr.render_markdown(pr.summarize(pr.collect(str(b2n_root), "base2new")))
    rows = list(csv.DictReader(io.StringIO(table_csv.read_text())))
    assert len(rows) == 2 * 3 * 3  # trainers x (Base, New, HM) x (2 datasets + Average)
    assert {"trainer": "CoOp", "dataset": "Average", "metric": "hm", "mean": "77.88"}.items() <= rows[8].items()
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_help_explains_every_flag():
    text = run_script("scripts/parse_results.py", "--help").stdout
    flags = ("--protocol", "--trainers", "--cfg", "--datasets", "--seeds", "--shots", "--markdown", "--csv", "--plot")
    assert all(f"  {flag} " in text for flag in flags)
    assert "HM = 2*B*N/(B+N) of the mean Base and the mean New" in text


def test_require_complete_fails_on_a_missing_seed_or_dataset(b2n_root, capsys):
    pr.main([str(b2n_root), "--require-complete"])  # every cell complete: no exit
    with pytest.raises(SystemExit, match=r"2 incomplete cell\(s\) \(see the notes\): FDBPL Base, EuroSAT; FDBPL New, EuroSAT$") as exited:
        pr.main([str(b2n_root), "--trainers", "FDBPL", "--datasets", "caltech101", "eurosat", "--require-complete"])
    assert exited.value.code != 0
    missing = b2n_root / b2n_rel("test_new", "Caltech101", "CoOp", "vit_b16", 2) / "log.txt"
    missing.write_text(eval_log(72.0) + CRASH)
    with pytest.raises(SystemExit, match=r": CoOp New, Caltech101$"):
        pr.main([str(b2n_root), "--trainers", "CoOp", "--require-complete"])
    assert "CoOp New, Caltech101: seed 2 crashed" in capsys.readouterr().out


# --- The reference repositories' layouts (CoOp, MaPLe, PromptSRC, PromptKD), skipped folders, --ci95. ---
COOP_LEVEL = "nctx16_cscFalse_ctpend"


def promptkd_log(vals, new, deploy="Deploy the model with the best val performance"):
    """A log of PromptKD's own code, base2novel: its config dump, a validation (base classes) after every epoch,
    then the test of the deployed model (new classes)."""
    config = ("************\n** Config **\n************\nDATASET:\n  NAME: Caltech101\n  NUM_SHOTS: 0\n"
              "  SUBSAMPLE_CLASSES: all\nTEST:\n  FINAL_MODEL: best_val\nTRAINER:\n  MODAL: base2novel\n"
              "  NAME: PromptKD\n  PROMPTKD:\n    CE_WEIGHT: 0.0\n")
    epochs = "".join(f"epoch [{e}/{len(vals)}] batch [1/1] loss 1.0\n" + result_block(v, "val")
                     for e, v in enumerate(vals, 1))
    return HEADER + config + epochs + f"Finish training\n{deploy}\n" + result_block(new) + "Elapsed: 0:01:02\n"


def test_promptkd_base2novel_log_gives_base_from_its_validation_and_new_from_its_test(tmp_path):
    """PromptKD's base2new_train.sh writes train_base/.../seed_<S> only; its log validates on base, tests on new."""
    for seed, (vals, new) in enumerate([([80.0, 86.0, 84.0], 70.0), ([82.0, 82.0, 88.0], 74.0)], start=1):
        write_log(tmp_path, b2n_rel("train_base", "caltech101", "PromptKD", "vit_b16_c2", f"_{seed}", shots=0),
                  promptkd_log(vals, new))
    table = pr.summarize(pr.collect(str(tmp_path), "base2new"))
    # Base: best validation 86 and 88 -> 87 ± 1; New 72 ± 2; HM 2*87*72/159 = 78.7925.
    assert table.title == "Base-to-new generalization (0 shots; seeds 1 2)"
    assert cells(table)[1] == ["Caltech101", "87.00 ± 1.00", "72.00 ± 2.00", "78.79"]
    assert table.notes == [] and table.skipped == []


def test_promptkd_log_without_best_val_has_no_base_and_other_logs_give_no_new(tmp_path):
    write_log(tmp_path, b2n_rel("train_base", "dtd", "PromptKD", "c", "_1", shots=0),
              promptkd_log([], 60.0, deploy="Deploy the last-epoch model"))
    write_log(tmp_path, b2n_rel("train_base", "dtd", "CoOp", "c", 1, shots=0), train_log(90.0))
    table = pr.summarize(pr.collect(str(tmp_path), "base2new"))
    assert cells(table)[1] == ["DTD", "90.00 ± 0.00", "—", "—", "—", "60.00 ± 0.00", "—"]
    folder = tmp_path / "base2new/train_base/dtd/shots_0/PromptKD/c/seed_1/log.txt"
    assert (f"PromptKD Base, DTD: seed 1 no validation accuracy: the run deployed its last epoch "
            f"(TEST.FINAL_MODEL last_step): {folder}") in table.notes
    assert (f"CoOp New, DTD: seed 1 missing: no run folder: "
            f"{tmp_path / 'base2new/test_new/dtd/shots_0/CoOp/c/seed1'}") in table.notes


def test_seed_underscore_folders_name_missing_seeds_as_they_are_spelled(tmp_path):
    for split, accuracy in (("train_base", 80.0), ("test_base", 81.0), ("test_new", 70.0)):
        write_log(tmp_path, b2n_rel(split, "dtd", "PromptKD", "c", "_1", shots=0),
                  train_log(accuracy) if split == "train_base" else eval_log(accuracy))
    table = pr.summarize(pr.collect(str(tmp_path), "base2new", seeds=[1, 2]))
    assert cells(table)[1] == ["DTD", "81.00 ± 0.00 (1/2)", "70.00 ± 0.00 (1/2)", "75.10 (1/2)"]  # 11340/151
    assert table.notes[0] == ("PromptKD Base, DTD: seed 2 missing: no run folder: "
                              f"{tmp_path / 'base2new/test_base/dtd/shots_0/PromptKD/c/seed_2'}")


def test_few_shot_reads_coops_level_and_promptsrcs_layouts(tmp_path):
    for seed, accuracy in ((1, 60.0), (2, 62.0), (3, 64.0)):  # CoOp's main.sh caltech101 rn50_ep50 end 16 4 False
        write_log(tmp_path, f"caltech101/CoOp/rn50_ep50_4shots/{COOP_LEVEL}/seed{seed}", train_log(accuracy))
    for seed, accuracy in ((1, 70.0), (2, 72.0)):  # PromptSRC's few_shot.sh caltech101 4, and reproduce_few_shot.sh
        write_log(tmp_path, f"caltech101/PromptSRC/fs_4shots/seed{seed}", train_log(accuracy))
        write_log(tmp_path, f"few_shot/oxford_pets/PromptSRC/fs_4shots/seed{seed}", eval_log(accuracy + 10))
    table = pr.summarize(pr.collect(str(tmp_path), "few_shot", seeds=[1, 2, 3]))
    assert cells(table) == [
        ["Dataset", "CoOp 4-shot", "PromptSRC 4-shot"],
        ["Caltech101", "62.00 ± 1.63", "71.00 ± 1.00 (2/3)"],
        ["OxfordPets", "—", "81.00 ± 1.00 (2/3)"],
        ["Average", "62.00 (1/2)", "76.00 (0/2)"],
    ]
    assert f"CoOp/rn50_ep50/{COOP_LEVEL}" in pr.legend(table)[0]
    assert (f"CoOp 4-shot, OxfordPets: seeds 1 2 3 missing: no run folder: "
            f"{tmp_path / 'oxford_pets/CoOp/rn50_ep50_4shots' / COOP_LEVEL / 'seed{1,2,3}'}") in table.notes
    assert table.skipped == []


def test_cross_dataset_reads_coops_eval_layout(tmp_path):
    for seed, (source, pets) in enumerate([(62.0, 85.0), (64.0, 87.0)], 1):
        write_log(tmp_path, f"imagenet/CoOp/vit_b16_ep50_16shots/{COOP_LEVEL}/seed{seed}", train_log(source))
        write_log(tmp_path, f"evaluation/CoOp/vit_b16_ep50_16shots/{COOP_LEVEL}/oxford_pets/seed{seed}",
                  eval_log(pets))
    table = pr.summarize(pr.collect(str(tmp_path), "cross_dataset"))
    assert cells(table) == [["Dataset", "CoOp"], ["ImageNet (source)", "63.00 ± 1.00"],
                            ["OxfordPets", "86.00 ± 1.00"], ["Average", "86.00"]]
    assert table.notes == [] and table.skipped == []


def test_cross_dataset_reads_promptkds_runs_on_each_target_with_a_note(tmp_path):
    for seed, (pets, dtd) in enumerate([(90.0, 60.0), (92.0, 62.0)], 1):  # PromptKD's xd_train.sh <target> <seed>
        write_log(tmp_path, f"oxford_pets/PromptKD/xd_0shots/seed{seed}", train_log(pets))
        write_log(tmp_path, f"dtd/PromptKD/xd_0shots/seed{seed}", train_log(dtd))
    table = pr.summarize(pr.collect(str(tmp_path), "cross_dataset"))
    assert cells(table)[1:] == [["ImageNet (source)", "—"], ["OxfordPets", "91.00 ± 1.00"], ["DTD", "61.00 ± 1.00"],
                                ["Average", "76.00"]]
    assert table.notes[-1] == ("PromptKD: no evaluation/ runs, so each dataset's accuracy is that of its run trained "
                               "on that dataset (<Dataset>/PromptKD/<cfg>_<K>shots/seed<S>, as PromptKD's xd_train.sh "
                               "distils on each target).")


def test_every_run_folder_not_read_is_named_with_why(tmp_path):
    write_b2n(tmp_path, {("CoOp", "c"): {"Caltech101": ([80.0] * 3, [70.0] * 3)}})
    write_log(tmp_path, b2n_rel("train_base", "dtd", "PromptKD", "c", "_1", shots=0), promptkd_log([80.0], 60.0))
    write_log(tmp_path, f"caltech101/CoOp/rn50_ep50_16shots/{COOP_LEVEL}/seed1", train_log(60.0))
    write_log(tmp_path, f"caltech101/CoOp/rn50_ep50_16shots/{COOP_LEVEL}/seed2", train_log(60.0))
    write_log(tmp_path, "ZeroshotCLIP/rn50/caltech101", eval_log(55.0))
    write_log(tmp_path, "base2new/train_base/imagenet/shots_16/CoOp_OFF/vit_b32_ctxv1/23:05:36/seed1", train_log(1.0))
    # A RIL table the scripts precomputed (marked finished like a run) is not a run folder.
    table_dir = tmp_path / "ril/dtd/shots_16/base/teacher-1_224px_bicubic_m4_k20/seed1"
    table_dir.mkdir(parents=True)
    for name in ("table.h5", pr.MARKER, "console.txt"):
        (table_dir / name).write_text("")
    write_log(tmp_path, "base2new/train_all/dtd/shots_0/CasPL_Boost/c_online/seed1", train_log(1.0))
    table = pr.summarize(pr.collect(str(tmp_path), "base2new"))
    assert table.skipped == [
        "ZeroshotCLIP/rn50/caltech101: CoOp's zeroshot.sh layout (ZeroshotCLIP/<cfg>/<Dataset>, one run without a "
        "seed folder), not read",
        "base2new/train_all/dtd/shots_0/CasPL_Boost/c_online/seed1: CasPL's boosting stage (caspl.sh, all classes): "
        "its prompts are part of the *_CasPL runs, not a row",
        "base2new/train_base/dtd/shots_0/PromptKD/c/seed_1: 0 shots (the table has 16): pass --shots 0",
        "base2new/train_base/imagenet/shots_16/CoOp_OFF/vit_b32_ctxv1/23:05:36/seed1: no layout of any protocol "
        "(see --help)",
        f"2 run folders, e.g. caltech101/CoOp/rn50_ep50_16shots/{COOP_LEVEL}/seed1: another protocol's layout: "
        "read by --protocol cross_dataset / domain_generalization / few_shot",
    ]
    text = pr.render_text(table)
    assert text.endswith("Run folders not read:\n  " + "\n  ".join(table.skipped) + "\n")
    assert "Run folders not read:\n\n- ZeroshotCLIP/rn50/caltech101: " in pr.render_markdown(table)
    # Folders the selection flags leave out are not listed.
    assert pr.collect(str(tmp_path), "base2new", trainers=["CoOp"]).skipped == pr.collect(str(tmp_path),
                                                                                          "base2new").skipped


def test_a_root_without_runs_of_the_protocol_names_what_it_found(tmp_path):
    write_log(tmp_path, f"caltech101/CoOp/rn50_ep50_16shots/{COOP_LEVEL}/seed1", train_log(60.0))
    with pytest.raises(pr.ResultsError) as error:
        pr.collect(str(tmp_path), "base2new")
    assert str(error.value).endswith(
        f"Run folders found and not read:\n  caltech101/CoOp/rn50_ep50_16shots/{COOP_LEVEL}/seed1: another protocol's "
        "layout: read by --protocol cross_dataset / domain_generalization / few_shot")


def test_evaluated_methods_do_not_read_their_runs_on_other_datasets(tmp_path):
    """A few-shot run of a method whose cross-dataset targets are evaluation/ runs is not a target result."""
    write_log(tmp_path, "imagenet/MaPLe/xd_16shots/seed1", train_log(70.0))
    write_log(tmp_path, xd_rel("MaPLe", "xd", "dtd", 1), eval_log(45.0))
    write_log(tmp_path, "oxford_pets/MaPLe/xd_16shots/seed1", train_log(95.0))
    table = pr.summarize(pr.collect(str(tmp_path), "cross_dataset"))
    assert cells(table)[1:] == [["ImageNet (source)", "70.00 ± 0.00"], ["DTD", "45.00 ± 0.00"], ["Average", "45.00"]]
    assert table.skipped == ["oxford_pets/MaPLe/xd_16shots/seed1: trained on OxfordPets, not on the source: "
                             "MaPLe/xd's targets are its evaluation/ runs"]


def test_ci95_is_coops_interval(b2n_root, tmp_path):
    table = pr.summarize(pr.collect(str(b2n_root), "base2new"), "ci95")
    # [89, 90, 91]: std sqrt(2/3) = 0.8165 -> 1.96 * 0.8165 / sqrt(3) = 0.9239; DTD New [88, 90, 92]: 1.8478.
    assert cells(table)[1][1] == "90.00 ± 0.92" and cells(table)[2][2] == "90.00 ± 1.85"
    assert pr.legend(table)[1].startswith("± is the 95 % confidence interval 1.96·std/√n over seeds (--ci95)")
    pr.write_csv(table, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().splitlines()[:2] == [
        "trainer,cfg,shots,dataset,metric,mean,ci95,complete,expected",
        "CoOp,vit_b16,16,Caltech101,base,90.00,0.92,3,3"]
    out = run_script("scripts/parse_results.py", str(b2n_root), "--ci95").stdout
    assert "Caltech101  90.00 ± 0.92" in out
