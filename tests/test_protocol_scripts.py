"""The protocol scripts end to end on the Synthetic dataset and tiny CLIPs: folders, markers, resume, tables."""
import glob
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import pytest

from tests.cli_runs import SYNTHETIC as TEST_SYNTHETIC
from tests.conftest import REPO_ROOT, requires_dassl

pytestmark = requires_dassl

SCRIPTS = os.path.join(REPO_ROOT, "scripts")
SETTING_VARS = ("DATA", "OUT", "TRAINER", "CFG", "DATASETS", "SOURCE_DATASET", "TARGET_DATASETS", "SEEDS", "SHOTS",
                "SUBSAMPLE", "BACKBONE", "LOAD_EPOCH", "TEACHER", "REGIONS", "TOPK", "RIL_DIR", "RIL_WORKERS",
                "NPROC", "DEVICE", "DRY_RUN", "VERBOSE", "RANDOM_CLIP")
COMMON_FLAGS = ("--data", "--out", "--trainer", "--cfg", "--seeds", "--shots", "--teacher", "--regions", "--topk",
                "--ril-dir", "--ril-workers", "--nproc", "--device", "--dry-run", "--verbose")
TRAIN_FLAGS = COMMON_FLAGS + ("--backbone", "--load-epoch")
FLAGS = {
    "base2new.sh": TRAIN_FLAGS + ("--datasets", "--random-clip"),
    "few_shot.sh": TRAIN_FLAGS + ("--datasets",),
    "cross_dataset.sh": TRAIN_FLAGS + ("--source-dataset", "--target-datasets"),
    "domain_generalization.sh": TRAIN_FLAGS + ("--source-dataset", "--target-datasets"),
    "precompute_ril.sh": COMMON_FLAGS + ("--datasets", "--subsample"),
}
ACCURACY = re.compile(r"^\* accuracy: ([0-9.]+)%$", re.MULTILINE)
SYNTHETIC = os.path.join(REPO_ROOT, "configs", "datasets", "synthetic.yaml")  # the demo's dataset
# The test suite's small Synthetic, given to the scripts as a .yaml path: they name its folders and rows after
# the file.
TEST_DATASET = "synthetic_small"


def script_env():
    """The caller's environment without any protocol setting, so only the flags given count."""
    env = {key: value for key, value in os.environ.items() if key not in SETTING_VARS}
    env.update(PYTHON=sys.executable, PYTHONWARNINGS="ignore")
    return env


def run_protocol(script, *args, check=True, timeout=600):
    result = subprocess.run(["bash", os.path.join(SCRIPTS, script), *args], env=script_env(), capture_output=True,
                            text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} exited with {result.returncode}\n--- stdout ---\n{result.stdout[-6000:]}"
                             f"\n--- stderr ---\n{result.stderr[-6000:]}")
    return result


def log_accuracy(run_dir):
    """The accuracy of the one complete log in `run_dir` (a killed attempt leaves a log without one)."""
    found = []
    for path in glob.glob(os.path.join(run_dir, "log.txt*")):
        matches = ACCURACY.findall(open(path).read())
        if matches:
            found.append(float(matches[-1]))
    assert len(found) == 1, f"expected one complete log in {run_dir}, found accuracies {found}"
    return found[0]


def table_row(stdout, dataset):
    """Cells of the row of `dataset` in parse_results' printed table (columns are 2+ spaces apart)."""
    rows = [line for line in stdout.splitlines() if line.startswith(dataset + "  ")]
    assert len(rows) == 1, f"no single '{dataset}' row in:\n{stdout}"
    return re.split(r"\s{2,}", rows[0].strip())[1:]


def base_new_cells(base, new):
    return [f"{base:.2f} ± 0.00", f"{new:.2f} ± 0.00", f"{2 * base * new / (base + new):.2f}"]


def commands(stdout):
    return [shlex.split(line[2:]) for line in stdout.splitlines() if line.startswith("+ ")]


def checkpoint_tag(path):
    """lib/common.sh's folder tag of a checkpoint: its file name and the POSIX cksum of its absolute path."""
    crc = subprocess.run(["cksum"], input=os.path.abspath(path), capture_output=True, text=True, check=True)
    return f"{os.path.splitext(os.path.basename(path))[0]}-{crc.stdout.split()[0]}"


def option(command, flag):
    return command[command.index(flag) + 1]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.mark.parametrize("script", sorted(FLAGS))
def test_help_names_every_flag_and_its_variable(script):
    result = run_protocol(script, "--help")
    listed = re.findall(r"^  (--[a-z-]+)", result.stdout, re.MULTILINE)
    assert sorted(listed) == sorted(FLAGS[script])
    for flag in FLAGS[script]:
        variable = flag[2:].upper().replace("-", "_")
        assert re.search(rf"^  {flag}\b.*\(env {variable}\b", result.stdout, re.MULTILINE), flag
    assert "-- KEY VALUE" in result.stdout

    rejected = run_protocol(script, "--no-such-flag", check=False)
    assert rejected.returncode == 2 and "unknown option '--no-such-flag'" in rejected.stderr


def test_base2new_resumes_after_a_kill_and_prints_the_logged_accuracies(data_root, tiny_student, tiny_teacher,
                                                                          tmp_path):
    out = tmp_path / "out"
    student = checkpoint_tag(tiny_student)  # any --backbone but ViT-B/16 and ViT-B/32 is in the folder names
    methods = (f"ZeroshotCLIP/tiny_{student}", f"CoOp/tiny_ep2_{student}", f"FDBPL/tiny_ep2_{student}")
    args = ["--data", data_root, "--out", str(out), "--trainer", "ZeroshotCLIP CoOp FDBPL", "--cfg",
            "tiny tiny_ep2 tiny_ep2", "--datasets", TEST_SYNTHETIC, "--seeds", "1", "--shots", "4", "--backbone",
            tiny_student, "--teacher", tiny_teacher, "--regions", "8", "--topk", "3", "--ril-workers", "0",
            "--device", "cpu"]
    runs = {(split, method): out / "base2new" / split / TEST_DATASET / "shots_4" / method / "seed1"
            for split in ("train_base", "test_base", "test_new") for method in methods}
    first = runs["test_base", methods[0]]

    sweep = subprocess.Popen(["bash", os.path.join(SCRIPTS, "base2new.sh"), *args], env=script_env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (first / "finished.txt").exists() and sweep.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    os.killpg(sweep.pid, signal.SIGKILL)
    sweep.wait()
    assert (first / "finished.txt").exists(), "the first step never finished"
    assert not (runs["test_new", methods[0]] / "finished.txt").exists(), "the kill came too late"
    first_log_mtime = os.path.getmtime(first / "log.txt")

    resumed = run_protocol("base2new.sh", *args)
    assert f"[skip] test_base {TEST_DATASET} {methods[0]} 4-shot seed 1" in resumed.stdout
    assert resumed.stdout.count("[run] ") == 8  # ZeroshotCLIP test_new; CoOp 3 steps; FDBPL table + 3 steps
    assert os.path.getmtime(first / "log.txt") == first_log_mtime
    assert not runs["train_base", methods[0]].exists()  # nothing to train
    assert all((path / "finished.txt").exists() for path in runs.values() if "ZeroshotCLIP" not in str(path))
    checkpoint = runs["train_base", methods[1]] / "prompt_learner" / "model.pth.tar-2"
    assert str(checkpoint) in open(runs["test_new", methods[1]] / "log.txt").read()  # MAX_EPOCH of tiny_ep2

    tables = glob.glob(str(out / "ril" / TEST_DATASET / "shots_4" / "base" / "teacher-*_32px_bicubic_m8_k3" / "seed1"
                           / "table.h5"))
    assert len(tables) == 1 and os.path.exists(os.path.join(os.path.dirname(tables[0]), "finished.txt"))
    train_log = open(runs["train_base", methods[2]] / "log.txt").read()
    assert f"Training from RIL table {tables[0]}" in train_log

    accuracy = {key: log_accuracy(path) for key, path in runs.items() if key[0] != "train_base"}
    expected = [cell for method in methods
                for cell in base_new_cells(accuracy["test_base", method], accuracy["test_new", method])]
    assert table_row(resumed.stdout, TEST_DATASET) == expected

    again = run_protocol("base2new.sh", *args)
    assert "[run] " not in again.stdout and again.stdout.count("[skip] ") == 8
    assert table_row(again.stdout, TEST_DATASET) == expected


def test_each_seed_has_its_table_shared_by_later_trainers_and_cells_average_the_seeds(data_root, tiny_student,
                                                                                      tiny_teacher, tmp_path):
    """The scripts' default is three seeds; every other test runs one. Each seed draws its own few-shot
    images, so it needs its own RIL table, and its cell is the mean ± std of the seeds' logged accuracies."""
    out = tmp_path / "out"
    method = f"FDBPL/tiny_ep2_{checkpoint_tag(tiny_student)}"
    args = ["--data", data_root, "--out", str(out), "--trainer", "FDBPL", "--cfg", "tiny_ep2", "--datasets",
            TEST_SYNTHETIC, "--seeds", "1 2", "--shots", "2", "--backbone", tiny_student, "--teacher", tiny_teacher,
            "--regions", "4", "--topk", "3", "--ril-workers", "0", "--device", "cpu"]
    result = run_protocol("base2new.sh", *args)
    assert result.stdout.count("[run] ") == 8  # per seed: its table, train_base, test_base, test_new

    table_root = glob.glob(str(out / "ril" / TEST_DATASET / "shots_2" / "base" / "teacher-*_m4_k3"))
    assert len(table_root) == 1
    image_lists = set()
    for seed in (1, 2):
        table = os.path.join(table_root[0], f"seed{seed}", "table.h5")
        fingerprint = subprocess.run([sys.executable, "-m", "ril", "inspect", "--table", table], capture_output=True,
                                     text=True, check=True).stdout.splitlines()[1]
        assert f", seed={seed}," in fingerprint, fingerprint
        image_lists.add(re.search(r"image_list_sha256=(\w+)", fingerprint).group(1))
        train_log = open(out / "base2new" / "train_base" / TEST_DATASET / "shots_2" / method / f"seed{seed}"
                         / "log.txt").read()
        assert f"Training from RIL table {table}" in train_log
    assert len(image_lists) == 2  # the seeds drew different few-shot images

    accuracies = {split: [log_accuracy(out / "base2new" / split / TEST_DATASET / "shots_2" / method / f"seed{seed}")
                          for seed in (1, 2)] for split in ("test_base", "test_new")}
    base, new = (sum(values) / 2 for values in accuracies.values())
    spreads = [abs(values[0] - values[1]) / 2 for values in accuracies.values()]  # population std of two values
    assert table_row(result.stdout, TEST_DATASET) == [f"{base:.2f} ± {spreads[0]:.2f}",
                                                      f"{new:.2f} ± {spreads[1]:.2f}",
                                                      f"{2 * base * new / (base + new):.2f}"]

    # A later sweep of another FDBPL-family trainer, whose method config cuts regions the same way,
    # trains from the same table (recorded with FDBPL's config) instead of stopping at it.
    twin = run_protocol("base2new.sh", *args[:args.index("--trainer")], "--trainer", "CoOp_FDBPL", "--cfg",
                        "tiny_ep2", *args[args.index("--datasets"):args.index("--seeds")], "--seeds", "1",
                        *args[args.index("--shots"):])
    assert "[skip] RIL table " in twin.stdout and twin.stdout.count("[run] ") == 3
    twin_log = open(out / "base2new" / "train_base" / TEST_DATASET / "shots_2" / method.replace("FDBPL", "CoOp_FDBPL", 1)
                    / "seed1" / "log.txt").read()
    assert f"Training from RIL table {os.path.join(table_root[0], 'seed1', 'table.h5')}" in twin_log


def test_cross_dataset_then_domain_generalization_reuses_the_source_model(data_root, tiny_student, tmp_path):
    out = tmp_path / "out"
    second_target = tmp_path / "synthetic_copy.yaml"  # another folder name for the same dataset
    second_target.write_text(open(TEST_SYNTHETIC).read())
    common = ["--data", data_root, "--out", str(out), "--trainer", "CoOp", "--cfg", "tiny_ep2",
              "--source-dataset", TEST_SYNTHETIC, "--seeds", "1", "--shots", "4", "--backbone", tiny_student,
              "--device", "cpu"]
    cross = run_protocol("cross_dataset.sh", *common, "--target-datasets", TEST_SYNTHETIC)
    cfg = f"tiny_ep2_{checkpoint_tag(tiny_student)}"
    source = out / TEST_DATASET / "CoOp" / f"{cfg}_4shots" / "seed1"
    assert (source / "finished.txt").exists()
    target = out / "evaluation" / "CoOp" / f"{cfg}_4shots" / TEST_DATASET / "seed1"
    # The source evaluated as a target is the source row (--source-dataset reaches the parser).
    assert table_row(cross.stdout, f"{TEST_DATASET} (source)") == [f"{log_accuracy(target):.2f} ± 0.00"]

    dg = run_protocol("domain_generalization.sh", *common, "--target-datasets", str(second_target),
                      "--load-epoch", "2")
    assert f"[skip] train {TEST_DATASET} CoOp/{cfg} 4-shot seed 1" in dg.stdout and dg.stdout.count("[run] ") == 1
    copy = out / "evaluation" / "CoOp" / f"{cfg}_4shots" / "synthetic_copy" / "seed1"
    assert str(source / "prompt_learner" / "model.pth.tar-2") in open(copy / "log.txt").read()
    assert table_row(dg.stdout, "synthetic_copy") == [f"{log_accuracy(copy):.2f} ± 0.00"]


def test_few_shot_trains_once_per_shots_and_tabulates_them(data_root, tiny_student, tmp_path):
    out = tmp_path / "out"
    result = run_protocol("few_shot.sh", "--data", data_root, "--out", str(out), "--trainer", "CoOp", "--cfg",
                          "tiny_ep2", "--datasets", TEST_SYNTHETIC, "--seeds", "1", "--shots", "1 2", "--backbone",
                          tiny_student, "--device", "cpu")
    cfg = f"tiny_ep2_{checkpoint_tag(tiny_student)}"
    runs = [out / "few_shot" / TEST_DATASET / f"shots_{k}" / "CoOp" / cfg / "seed1" for k in (1, 2)]
    assert table_row(result.stdout, TEST_DATASET) == [f"{log_accuracy(run):.2f} ± 0.00" for run in runs]
    assert "DATASET.NUM_SHOTS 2 DATASET.SUBSAMPLE_CLASSES all" in open(runs[1] / "finished.txt").read()


def test_demo_dry_run_pretrains_tiny_clips_once_and_uses_the_demo_configs(tmp_path):
    out = tmp_path / "demo"
    result = run_protocol("base2new.sh", "--out", str(out), "--dry-run")
    assert "tiny CLIPs pretrained here" in result.stdout
    lines = commands(result.stdout)
    pretrain, student = os.path.join(SCRIPTS, "pretrain_tiny_clip.py"), str(out / "pretrained" / "student.pt")
    assert lines[0] == [sys.executable, pretrain, "--preset", "student", "--out", student]
    assert lines[1] == [sys.executable, pretrain, "--preset", "teacher", "--out", str(out / "pretrained" / "teacher.pt")]
    tag = "_" + checkpoint_tag(student)
    coop = [line for line in lines if "CoOp" in line]
    assert os.path.join(REPO_ROOT, "configs", "trainers", "CoOp", "tiny_ep10.yaml") in coop[0]
    assert str(out / "base2new" / "train_base" / "synthetic" / "shots_16" / "CoOp" / ("tiny_ep10" + tag) / "seed1") in coop[0]
    assert coop[1][coop[1].index("--load-epoch") + 1] == "10"
    assert not out.exists()
    random_data = run_protocol("base2new.sh", "--data", str(tmp_path), "--random-clip", "--dry-run", check=False)
    assert random_data.returncode == 2 and "--random-clip applies to the demo only" in random_data.stderr


def test_demo_dry_run_prints_the_demo_commands(tmp_path):
    out = tmp_path / "demo"
    result = run_protocol("base2new.sh", "--out", str(out), "--nproc", "2", "--random-clip", "--dry-run")
    assert "random tiny CLIP" in result.stdout
    lines = commands(result.stdout)
    python, student, teacher = sys.executable, str(out / "tiny_clip" / "student.pt"), str(out / "tiny_clip" / "teacher.pt")
    make = os.path.join(SCRIPTS, "make_tiny_clip.py")
    assert lines[0] == [python, make, "--out", student + ".tmp", "--seed", "1"]
    assert lines[1] == [python, make, "--out", teacher + ".tmp", "--width", "128", "--layers", "3", "--seed", "2"]
    data, train = str(out / "data"), os.path.join(REPO_ROOT, "train.py")
    tag = "_" + checkpoint_tag(student)  # the student checkpoint names the run folders

    def train_py(trainer, cfg, folder, *rest):
        run = out / "base2new" / folder / "synthetic" / "shots_4" / trainer / (cfg + tag) / "seed1"
        return [python, train, "--root", data, "--seed", "1", "--trainer", trainer, "--dataset-config-file", SYNTHETIC,
                "--config-file", os.path.join(REPO_ROOT, "configs", "trainers", trainer, cfg + ".yaml"),
                "--output-dir", str(run), "--backbone", student, *rest]

    def evaluate(trainer, split):
        model = str(out / "base2new" / "train_base" / "synthetic" / "shots_4" / trainer / ("tiny_ep2" + tag) / "seed1")
        return train_py(trainer, "tiny_ep2", f"test_{split}", "--eval-only", "--model-dir", model, "--load-epoch",
                        "2", "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", split, "USE_CUDA", "False")

    precompute = lines[7]
    table = precompute[precompute.index("--out") + 1]
    assert re.fullmatch(re.escape(str(out / "ril" / "synthetic" / "shots_4" / "base")) + r"/teacher-\d+_32px_bicubic"
                        r"_m16_k5/seed1/table\.h5", table)
    assert lines[2:] == [
        train_py("ZeroshotCLIP", "tiny", "test_base", "--eval-only", "DATASET.NUM_SHOTS", "4",
                 "DATASET.SUBSAMPLE_CLASSES", "base", "USE_CUDA", "False"),
        train_py("ZeroshotCLIP", "tiny", "test_new", "--eval-only", "DATASET.NUM_SHOTS", "4",
                 "DATASET.SUBSAMPLE_CLASSES", "new", "USE_CUDA", "False"),
        train_py("CoOp", "tiny_ep2", "train_base", "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base",
                 "USE_CUDA", "False"),
        evaluate("CoOp", "base"),
        evaluate("CoOp", "new"),
        [python, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "ril", "precompute", "--root", data,
         "--seed", "1", "--dataset-config-file", SYNTHETIC, "--config-file",
         os.path.join(REPO_ROOT, "configs", "trainers", "FDBPL", "tiny_ep2.yaml"), "--teacher", teacher, "--regions",
         "16", "--topk", "5", "--out", table, "--workers", "0", "--device", "cpu", "DATASET.NUM_SHOTS", "4",
         "DATASET.SUBSAMPLE_CLASSES", "base"],
        train_py("FDBPL", "tiny_ep2", "train_base", "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base",
                 "TRAINER.FDBPL.RIL_TABLE", table, "USE_CUDA", "False"),
        evaluate("FDBPL", "base"),
        evaluate("FDBPL", "new"),
    ]
    assert not out.exists()  # a dry run creates nothing


def test_missing_data_and_bad_lists_are_usage_errors(tmp_path):
    missing = run_protocol("few_shot.sh", "--out", str(tmp_path), check=False)
    assert missing.returncode == 2 and "--data" in missing.stderr
    bad = run_protocol("cross_dataset.sh", "--data", str(tmp_path), "--shots", "4 8", check=False)
    assert bad.returncode == 2 and "--shots takes one value" in bad.stderr
    unknown = run_protocol("precompute_ril.sh", "--data", str(tmp_path), "--datasets", "no_such_set", check=False)
    assert unknown.returncode == 1 and "dataset config 'no_such_set' not found" in unknown.stderr
    assert "oxford_pets" in unknown.stderr  # the choices are named


def dry_run_commands(script, data_root, *args, out="out"):
    result = run_protocol(script, "--data", str(data_root), "--out", str(data_root / out), "--seeds", "1",
                          "--dry-run", *args)
    return commands(result.stdout)


def config_of(command):
    """(trainer, config file relative to configs/trainers/, run folder's <cfg> name) of a train.py command."""
    cfg_file = os.path.relpath(option(command, "--config-file"), os.path.join(REPO_ROOT, "configs", "trainers"))
    return option(command, "--trainer"), cfg_file, option(command, "--output-dir").split(os.sep)[-2]


def test_each_trainer_defaults_to_its_published_config_and_backbone_picks_the_twins(tmp_path):
    trainers = ("--trainer", "CoOp PromptSRC FDBPL", "--datasets", "dtd")
    default = [config_of(c) for c in dry_run_commands("base2new.sh", tmp_path, *trainers) if "--trainer" in c]
    assert sorted(set(default)) == [
        ("CoOp", "CoOp/vit_b16_ep50_ctxv1.yaml", "vit_b16_ep50_ctxv1"),
        ("FDBPL", "FDBPL/vit_b32_ep50.yaml", "vit_b32_ep50"),
        ("PromptSRC", "PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml", "vit_b16_c2_ep20_batch4_4+4ctx"),
    ]
    for student in ("16", "32"):
        lines = dry_run_commands("base2new.sh", tmp_path, *trainers, "--backbone", f"ViT-B/{student}")
        assert all("--backbone" not in c for c in lines)  # the twin configs name the student
        assert sorted({config_of(c) for c in lines if "--trainer" in c}) == [
            ("CoOp", f"CoOp/vit_b{student}_ep50_ctxv1.yaml", f"vit_b{student}_ep50_ctxv1"),
            ("FDBPL", f"FDBPL/vit_b{student}_ep50.yaml", f"vit_b{student}_ep50"),
            ("PromptSRC", f"PromptSRC/vit_b{student}_c2_ep20_batch4_4+4ctx.yaml",
             f"vit_b{student}_c2_ep20_batch4_4+4ctx"),
        ]

    few_shot = dry_run_commands("few_shot.sh", tmp_path, "--trainer", "PromptSRC", "--datasets", "dtd", "--shots", "1")
    assert config_of(few_shot[0])[1] == "PromptSRC/vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml"
    cross = dry_run_commands("cross_dataset.sh", tmp_path, "--trainer", "MaPLe", "--target-datasets", "dtd")
    assert config_of(cross[0])[1] == "MaPLe/vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml"


def test_other_backbones_are_passed_and_name_the_run_folders(tmp_path):
    checkpoint = tmp_path / "clips" / "student.pt"
    for backbone, tag in (("RN50", "RN50"), (str(checkpoint), checkpoint_tag(checkpoint))):
        lines = dry_run_commands("base2new.sh", tmp_path, "--trainer", "CoOp", "--datasets", "dtd",
                                 "--backbone", backbone)
        assert {config_of(c)[1:] for c in lines} == {("CoOp/vit_b16_ep50_ctxv1.yaml", f"vit_b16_ep50_ctxv1_{tag}")}
        assert {option(c, "--backbone") for c in lines} == {backbone}


def test_a_missing_twin_and_staged_trainers_stop_with_a_pointer(tmp_path):
    own = tmp_path / "my_vit_b16_ep5.yaml"
    own.write_text(open(os.path.join(REPO_ROOT, "configs", "trainers", "CoOp", "vit_b16_ep50.yaml")).read())
    missing = run_protocol("base2new.sh", "--data", str(tmp_path), "--trainer", "CoOp", "--cfg", str(own),
                           "--backbone", "ViT-B/32", "--dry-run", check=False)
    assert missing.returncode == 1 and "[dry-run]" not in missing.stdout
    assert f"has no ViT-B/32 twin: {tmp_path / 'my_vit_b32_ep5.yaml'} does not exist" in missing.stderr
    for trainer, script in (("PromptKD", "promptkd.sh"), ("MaPLe_CasPL", "caspl.sh")):
        staged = run_protocol("base2new.sh", "--data", str(tmp_path), "--trainer", f"CoOp {trainer}", "--dry-run",
                              check=False)
        assert staged.returncode == 2 and f"--trainer {trainer}" in staged.stderr
        assert f"use scripts/{script}" in staged.stderr


def test_a_sweep_with_other_settings_stops_instead_of_reusing_a_folder(data_root, tiny_student, tmp_path):
    out = tmp_path / "out"
    args = ["--data", data_root, "--out", str(out), "--trainer", "ZeroshotCLIP", "--cfg", "tiny", "--datasets",
            TEST_SYNTHETIC, "--seeds", "1", "--shots", "4", "--backbone", tiny_student, "--device", "cpu"]
    first = run_protocol("base2new.sh", *args)
    assert first.stdout.count("[run] ") == 2
    run = out / "base2new" / "test_base" / TEST_DATASET / "shots_4" / "ZeroshotCLIP" / \
        f"tiny_{checkpoint_tag(tiny_student)}" / "seed1"
    assert shlex.split((run / "settings.txt").read_text()) == shlex.split((run / "finished.txt").read_text()
                                                                            .splitlines()[1])
    logs = sorted(os.listdir(run))

    for extra in (["--dry-run"], []):
        other = run_protocol("base2new.sh", *args, *extra, "--", "TRAINER.COOP.N_CTX", "4", check=False)
        assert other.returncode == 1 and "[run] " not in other.stdout and "[dry-run]" not in other.stdout
        assert f"{run} holds a run with other settings" in other.stderr
        assert "TRAINER.COOP.N_CTX: recorded (not given), now 4" in other.stderr
        assert "another --out" in other.stderr
    assert sorted(os.listdir(run)) == logs  # nothing ran

    (run / "settings.txt").unlink()  # a folder from before settings.txt: its finished.txt holds the command
    other_root = run_protocol("base2new.sh", *args[:-2], "--data", str(tmp_path), check=False)
    assert other_root.returncode == 1 and f"--root: recorded {data_root}, now {tmp_path}" in other_root.stderr
    (run / "finished.txt").unlink()  # unfinished: Dassl would resume it with the other settings
    other = run_protocol("base2new.sh", *args, "--", "TRAINER.COOP.N_CTX", "4", check=False)
    assert other.returncode == 1 and "TRAINER.COOP.N_CTX: recorded (not given), now 4" in other.stderr

    again = run_protocol("base2new.sh", *args)  # the same settings resume
    assert again.stdout.count("[run] ") == 1 and again.stdout.count("[skip] ") == 1


def test_a_rerun_into_a_folder_is_read_from_the_log_it_wrote(data_root, tiny_student, tmp_path):
    out = tmp_path / "out"
    args = ["--data", data_root, "--out", str(out), "--trainer", "ZeroshotCLIP", "--cfg", "tiny", "--datasets",
            TEST_SYNTHETIC, "--seeds", "1", "--shots", "4", "--backbone", tiny_student, "--device", "cpu"]
    run_protocol("base2new.sh", *args)
    run = out / "base2new" / "test_new" / TEST_DATASET / "shots_4" / "ZeroshotCLIP" / \
        f"tiny_{checkpoint_tag(tiny_student)}" / "seed1"
    assert (run / "finished.txt").read_text().splitlines()[2] == "log log.txt"
    first = (run / "log.txt").read_text()
    (run / "log.txt").write_text(ACCURACY.sub("* accuracy: 1.00%", first))  # an older attempt's other result
    (run / "finished.txt").unlink()

    rerun = run_protocol("base2new.sh", *args)
    written = [name for name in os.listdir(run) if name.startswith("log.txt-")]
    assert len(written) == 1 and (run / "finished.txt").read_text().splitlines()[2] == f"log {written[0]}"
    accuracy = float(ACCURACY.findall((run / written[0]).read_text())[-1])
    assert accuracy != 1.0 and table_row(rerun.stdout, TEST_DATASET)[1] == f"{accuracy:.2f} ± 0.00"
    assert f"seed 1 read from {run / written[0]}, the log finished.txt names (not log.txt)" in rerun.stdout

    # A finished step whose vouched log holds no accuracy leaves a hole: the sweep fails, never prints a partial table as done.
    (run / written[0]).write_text(ACCURACY.sub("", (run / written[0]).read_text()))
    partial = run_protocol("base2new.sh", *args, check=False)
    assert partial.returncode == 1 and "[skip] test_new" in partial.stdout
    assert "the results table above has incomplete cells" in partial.stderr
    assert f"1 incomplete cell(s) (see the notes): ZeroshotCLIP New, {TEST_DATASET}" in partial.stderr


def test_rehearsal_help_and_bad_values():
    result = subprocess.run(["bash", os.path.join(SCRIPTS, "rehearse.sh"), "--help"], capture_output=True, text=True)
    listed = re.findall(r"^  (--[a-z-]+)", result.stdout, re.MULTILINE)
    assert result.returncode == 0
    assert sorted(listed) == ["--datasets", "--epochs", "--out", "--protocols", "--regions", "--seeds", "--trainers"]
    for args, message in ((["--protocols", "base2new fewshot"], "unknown protocol 'fewshot'"),
                          (["--epochs", "0"], "--epochs is '0'"), (["--bogus"], "unknown option '--bogus'")):
        bad = subprocess.run(["bash", os.path.join(SCRIPTS, "rehearse.sh"), *args], capture_output=True, text=True)
        assert bad.returncode == 2 and message in bad.stderr, bad.stderr


def test_promptkd_kd_weight_per_dataset_and_caspl_tuned_teacher(tmp_path):
    kd = dry_run_commands("promptkd.sh", tmp_path, "--datasets", "dtd oxford_pets", "--zero-shot-teacher")
    students = [c for c in kd if "--eval-only" not in c]
    assert [(os.path.basename(option(c, "--dataset-config-file")), option(c, "TRAINER.PROMPTKD.KD_WEIGHT"))
            for c in students] == [("dtd.yaml", "200.0"), ("oxford_pets.yaml", "1000.0")]
    chosen = dry_run_commands("promptkd.sh", tmp_path, "--datasets", "dtd", "--zero-shot-teacher", "--",
                              "TRAINER.PROMPTKD.KD_WEIGHT", "7.0")[0]
    weights = [chosen[i + 1] for i, word in enumerate(chosen) if word == "TRAINER.PROMPTKD.KD_WEIGHT"]
    assert weights == ["200.0", "7.0"]  # the user's value comes last, so it wins

    caspl = ("--datasets", "dtd", "--trainer", "CoOp_CasPL", "--teacher-dir", str(tmp_path / "teacher"))
    boost = dry_run_commands("caspl.sh", tmp_path, *caspl, "--teacher-epoch", "5")[0]
    assert option(boost, "--trainer") == "CasPL_Boost"
    assert option(boost, "TRAINER.CASPL.TEACHER_DIR") == str(tmp_path / "teacher")
    assert option(boost, "TRAINER.CASPL.TEACHER_EPOCH") == "5"
    ril = run_protocol("caspl.sh", "--data", str(tmp_path), *caspl, "--teacher-source", "ril", "--dry-run",
                       check=False)
    assert ril.returncode == 2 and "--teacher-dir and --teacher-epoch choose a tuned online teacher" in ril.stderr
