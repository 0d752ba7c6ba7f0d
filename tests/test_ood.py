"""OOD detection: the metrics against hand-computed cases and scikit-learn, the scores' values and direction,
the ImageNet OOD readers on miniature trees in their published layouts, and scripts/ood.sh end to end.

The end-to-end test runs the open-set demo (scripts/ood.sh without a dataset root: scripts/base2new.sh's demo,
then the OOD pass) on the tiny CLIPs pretrained as tests/test_learning.py pretrains them; set
FDBPL_TEST_PRETRAINED=<dir> to reuse them (see tests/pretrained_clips.py), else they are pretrained once per session.
"""
import os
import re
import shutil

import numpy as np
import pytest
import torch

from tests import dataset_trees
from tests.conftest import REPO_ROOT, requires_dassl, run_script
from trainers.ood import SCORES, detection_metrics, negative_prompts, ood_scores, roc_points

DEMO_TRAINERS = ("ZeroshotCLIP", "CoOp", "FDBPL")


# ---------------------------------------------------------------------------------------------------------
# Metrics


@pytest.mark.parametrize("id_values, ood_values, expected", [
    ([3, 2], [1, 0], (1.0, 0.0, 1.0)),  # separated
    ([0, 1], [2, 3], (0.0, 1.0, 0.5 * 1 / 3 + 0.5 * 2 / 4)),  # inverted: precision 1/3 then 2/4
    # ties at 0.5: tpr 0, .25, .75, .75, 1 over fpr 0, 0, .5, 1, 1; AP = .25 * 1 + .5 * 3/4 + .25 * 4/6
    ([0.9, 0.5, 0.5, 0.1], [0.5, 0.2], (0.625, 1.0, 0.25 + 0.375 + 0.25 * 4 / 6)),
    ([1.0], [1.0], (0.5, 1.0, 0.5)),  # one tie: half a pair, precision 1/2
    # TPR 0.95 needs 19 of 20 ID scores, threshold 2: one OOD score of three (19.5) is above it
    # AUROC by pairs: 0.5 is below all 20 ID scores, 19.5 below one, 1.5 below 19
    (list(range(1, 21)), [0.5, 19.5, 1.5], ((20 + 1 + 19) / 60, 1 / 3, None)),
])
def test_metrics_equal_hand_computed_values(id_values, ood_values, expected):
    found = detection_metrics(id_values, ood_values)
    for name, value, wanted in zip(("auroc", "fpr95", "aupr"), found, expected):
        if wanted is not None:
            assert value == pytest.approx(wanted, abs=1e-12), name


def test_metrics_equal_scikit_learn_with_ties():
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    for trial in range(20):
        id_values = np.round(rng.normal(1.0, 1.0, rng.integers(5, 200)), 1)  # rounding makes ties
        ood_values = np.round(rng.normal(0.0, 1.0, rng.integers(5, 200)), 1)
        labels = np.r_[np.ones(id_values.size), np.zeros(ood_values.size)]
        scores = np.r_[id_values, ood_values]
        fpr, tpr, _ = metrics.roc_curve(labels, scores, drop_intermediate=False)
        found = detection_metrics(id_values, ood_values)
        assert found.auroc == pytest.approx(metrics.roc_auc_score(labels, scores), abs=1e-12), trial
        assert found.aupr == pytest.approx(metrics.average_precision_score(labels, scores), abs=1e-12), trial
        assert found.fpr95 == pytest.approx(fpr[np.argmax(tpr >= 0.95)], abs=1e-12), trial


def test_roc_points_and_empty_sets():
    tpr, fpr, precision = roc_points([2, 1], [1])
    assert tpr.tolist() == [0, 0.5, 1] and fpr.tolist() == [0, 0, 1] and precision.tolist() == [1, 2 / 3]
    with pytest.raises(ValueError, match="0 OOD images"):
        detection_metrics([1.0], [])


# ---------------------------------------------------------------------------------------------------------
# Scores


def test_scores_equal_their_definitions():
    logits, logits_neg = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    scores = ood_scores(logits, logit_scale=2.0, logits_neg=logits_neg, temperature=1.0)
    e = np.e
    assert scores["msp"].item() == pytest.approx(e ** 2 / (e ** 2 + 1))
    assert scores["mcm"].item() == pytest.approx(e / (e + 1))  # softmax of the cosines (1, 0)
    assert scores["max_logit"].item() == pytest.approx(2.0)
    assert scores["energy"].item() == pytest.approx(np.log(e ** 2 + 1))
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    assert scores["ctw"].item() == pytest.approx(sigmoid(2.0))  # p(yes) of the predicted class 0
    p = np.array([e ** 2, 1]) / (e ** 2 + 1)
    assert scores["atd"].item() == pytest.approx(p[0] * sigmoid(2.0) + p[1] * sigmoid(-1.0))
    assert ood_scores(logits, 2.0, temperature=0.5)["mcm"].item() == pytest.approx(e ** 2 / (e ** 2 + 1))
    assert set(ood_scores(logits, 2.0)) == set(SCORES)  # no negative logits: no CLIPN scores


def test_every_score_ranks_a_constructed_id_image_above_an_ood_one():
    """ID: one class clearly matches and its "no" prompt does not; OOD: no class matches, the "no" prompts do."""
    scale = 100.0
    cos_id, cos_ood = torch.tensor([[0.35, 0.20, 0.18]]), torch.tensor([[0.22, 0.21, 0.20]])
    cos_id_neg, cos_ood_neg = torch.tensor([[0.20, 0.21, 0.20]]), torch.tensor([[0.25, 0.24, 0.23]])
    id_scores = ood_scores(scale * cos_id, scale, scale * cos_id_neg)
    ood = ood_scores(scale * cos_ood, scale, scale * cos_ood_neg)
    for name in (*SCORES, "ctw", "atd"):
        assert id_scores[name].item() > ood[name].item(), name
        assert detection_metrics(id_scores[name].numpy(), ood[name].numpy()).auroc == 1.0, name


def test_negative_prompts_are_found_where_they_exist():
    class Model:
        prompt_learner_neg = object()

        def encode_text_pair(self):
            return None

    class Trainer:
        pass

    trainer = Trainer()
    assert negative_prompts(trainer) is None  # zero-shot CLIP: no model
    trainer.model = Model()
    assert negative_prompts(trainer) == "pair"
    trainer.model.prompt_learner_neg = None
    assert negative_prompts(trainer) is None  # CoOp, FDBPL family without DUAL_PROMPTS
    trainer.negative_context = object()
    assert negative_prompts(trainer) == "context"  # a model of other code with a second context


# ---------------------------------------------------------------------------------------------------------
# ImageNet OOD readers


def _image(path):
    dataset_trees._image(str(path))


def mcm_tree(root):
    """MCM's ImageNet_OOD_dataset/: the MOS archives (one images/ folder each) and DTD's class folders."""
    base = root / "ImageNet_OOD_dataset"
    for name, count in (("iNaturalist", 3), ("SUN", 2), ("Places", 4)):
        for i in range(count):
            _image(base / name / "images" / f"{name.lower()}_{i}.jpg")
    for texture, count in (("banded", 2), ("zigzagged", 1)):
        for i in range(count):
            _image(base / "dtd" / "images" / texture / f"{texture}_{i:04d}.jpg")
    (base / "dtd" / "images" / "banded" / "notes.txt").write_text("not an image")
    (base / "dtd" / "labels").mkdir()
    (base / "dtd" / "labels" / "labels_joint_anno.txt").write_text("banded/banded_0000.jpg banded\n")


@requires_dassl
def test_readers_read_mcm_layout(tmp_path):
    from datasets.ood_sets import OOD_LABEL, read_ood_set

    mcm_tree(tmp_path)
    counts = {name: len(read_ood_set(tmp_path, name)) for name in ("iNaturalist", "SUN", "Places", "Textures")}
    assert counts == {"iNaturalist": 3, "SUN": 2, "Places": 4, "Textures": 3}
    textures = read_ood_set(tmp_path, "Textures")
    base = tmp_path / "ImageNet_OOD_dataset" / "dtd" / "images"
    assert [item.impath for item in textures] == [
        str(base / "banded" / "banded_0000.jpg"), str(base / "banded" / "banded_0001.jpg"),
        str(base / "zigzagged" / "zigzagged_0000.jpg")]
    assert {item.label for item in textures} == {OOD_LABEL} and textures[0].classname == "banded"


@requires_dassl
@pytest.mark.parametrize("folder", [("Texture", "images"), ("Textures",)])  # LoCoOp's, CLIPN's
def test_readers_read_locoop_and_clipn_layouts_and_ninco(tmp_path, folder):
    from datasets.ood_sets import find_set, read_ood_set

    for name in ("iNaturalist", "SUN", "Places"):
        _image(tmp_path / name / "images" / "a.jpg")
    _image(tmp_path.joinpath(*folder, "banded", "b.jpg"))
    for ninco_class in ("caracal", "ostrich"):
        _image(tmp_path / "NINCO" / "NINCO_OOD_classes" / ninco_class / f"{ninco_class}_1.jpg")
    _image(tmp_path / "NINCO" / "NINCO_OOD_unit_tests" / "noise" / "n.jpg")  # not NINCO's OOD classes
    assert [len(read_ood_set(tmp_path, name)) for name in ("iNaturalist", "SUN", "Places", "Textures")] == [1] * 4
    assert [item.classname for item in read_ood_set(tmp_path, "NINCO")] == ["caracal", "ostrich"]
    assert find_set(tmp_path, "Textures") == str(tmp_path.joinpath(*folder))


@requires_dassl
def test_a_missing_set_names_every_place_looked_at(tmp_path):
    from datasets.ood_sets import find_set, read_ood_set

    assert find_set(tmp_path, "NINCO") is None
    with pytest.raises(FileNotFoundError) as error:
        read_ood_set(tmp_path, "Textures")
    for place in ("ImageNet_OOD_dataset/dtd/images", "Texture/images", "Textures"):
        assert os.path.join(str(tmp_path), place) in str(error.value)
    (tmp_path / "SUN").mkdir()
    with pytest.raises(FileNotFoundError, match="holds no image"):
        read_ood_set(tmp_path, "SUN")
    with pytest.raises(ValueError, match="unknown OOD set 'Texture'"):
        read_ood_set(tmp_path, "Texture")


@requires_dassl
def test_imagenet_benchmark_pass_on_miniature_trees(tmp_path, tiny_student):
    """scripts/ood_eval.py, zero-shot, ID: a miniature ImageNet val, OOD: MCM's layout; NINCO absent."""
    root = tmp_path / "data"
    dataset_trees.imagenet(str(root), True)
    mcm_tree(root)
    out = tmp_path / "run"
    result = run_script(
        "scripts/ood_eval.py", "--root", str(root), "--seed", "1", "--trainer", "ZeroshotCLIP",
        "--dataset-config-file", os.path.join(REPO_ROOT, "configs", "datasets", "imagenet.yaml"),
        "--config-file", os.path.join(REPO_ROOT, "configs", "trainers", "ZeroshotCLIP", "tiny.yaml"),
        "--output-dir", str(out), "--backbone", tiny_student, *[f"--ood-set={name}" for name in
                                                                ("iNaturalist", "SUN", "Places", "Textures")],
        "--if-present", "NINCO", "DATASET.NUM_SHOTS", "1", "USE_CUDA", "False", env={"OMP_NUM_THREADS": "1"})
    assert "OOD set NINCO: not under" in result.stdout
    assert "CLIPN-style scores (ctw, atd): absent, ZeroshotCLIP has no negative prompts" in result.stdout
    scores = np.load(out / "ood_scores.npz")
    sizes = {"id": 15, "iNaturalist": 3, "SUN": 2, "Places": 4, "Textures": 3}  # 5 classes x 3 val images
    for set_name, size in sizes.items():
        assert scores[f"{set_name}.msp"].shape == (size,)
    assert "Textures.ctw" not in scores.files
    check_logged_metrics(out, scores)


def check_logged_metrics(run_dir, scores):
    """Every log line's metrics equal detection_metrics of the saved scores; the ID accuracy too."""
    log = open(run_dir / "log.txt").read()
    lines = re.findall(r"^\* ood (\S+) (\S+): auroc (\S+)% fpr95 (\S+)% aupr (\S+)%", log, re.MULTILINE)
    assert lines
    for set_name, score, *logged in lines:
        metrics = detection_metrics(scores[f"id.{score}"], scores[f"{set_name}.{score}"])
        assert [float(value) for value in logged] == pytest.approx([100 * m for m in metrics], abs=0.005)
    accuracy = float(re.search(r"^\* ood id accuracy: (\S+)%", log, re.MULTILINE)[1])
    assert accuracy == pytest.approx(100 * np.mean(scores["id.label"] == scores["id.prediction"]), abs=0.005)


# ---------------------------------------------------------------------------------------------------------
# scripts/ood.sh


def test_imagenet_benchmark_dry_run_reads_the_cross_dataset_models(tmp_path):
    (tmp_path / "data").mkdir()
    result = run_script_sh("--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--benchmark",
                           "imagenet", "--trainer", "ZeroshotCLIP CoOp", "--seeds", "1", "--dry-run")
    commands = [line for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert len(commands) == 2 and all("scripts/ood_eval.py" in line for line in commands)
    for name in ("iNaturalist", "SUN", "Places", "Textures"):
        assert f"--ood-set {name}" in commands[1]
    assert "--if-present NINCO" in commands[1] and "DATASET.SUBSAMPLE_CLASSES all" in commands[1]
    assert f"--model-dir {tmp_path}/out/imagenet/CoOp/vit_b16_ep50_ctxv1_16shots/seed1" in commands[1]
    assert "--model-dir" not in commands[0]  # zero-shot CLIP loads nothing


def test_open_set_without_trained_models_stops_naming_base2new(tmp_path):
    (tmp_path / "data").mkdir()
    result = run_script_sh("--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"), "--trainer", "CoOp",
                           "--datasets", "oxford_pets", "--seeds", "1", check=False)
    assert result.returncode != 0
    assert "no finished training run in" in result.stderr and "scripts/base2new.sh" in result.stderr


def run_script_sh(*args, check=True, env=None):
    import subprocess

    full_env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **(env or {}))
    full_env.pop("DATA", None)
    result = subprocess.run(["bash", os.path.join(REPO_ROOT, "scripts", "ood.sh"), *args], cwd=REPO_ROOT,
                            env=full_env, capture_output=True, text=True, timeout=1800)
    if check and result.returncode != 0:
        raise AssertionError(f"ood.sh exited with {result.returncode}\n{result.stdout[-6000:]}\n"
                             f"{result.stderr[-6000:]}")
    return result


@requires_dassl
def test_open_set_demo_runs_end_to_end_for_zero_shot_coop_and_fdbpl(pretrained, tmp_path):  # noqa: F811
    out = tmp_path / "demo"
    (out / "pretrained").mkdir(parents=True)
    for preset, path in pretrained.items():
        for suffix in ("", ".json"):
            shutil.copy(path + suffix, out / "pretrained" / f"{preset}.pt{suffix}")
    result = run_script_sh("--out", str(out))
    table = result.stdout[result.stdout.index("Open-set base-to-new OOD detection"):]
    print(table)
    rows = {tuple(line.split()[:3]): line for line in table.splitlines() if line.startswith("Synthetic")}
    for score in ("msp", "mcm", "max_logit", "energy", "ctw", "atd"):
        assert ("Synthetic", "new", score) in rows, score
    for score in ("ctw", "atd"):  # FDBPL's negative prompts only
        cells = re.split(r"\s{2,}", rows["Synthetic", "new", score].strip())
        assert cells[3:7] == ["n/a"] * 4 and "n/a" not in cells[7:], cells
    for trainer in DEMO_TRAINERS:
        run_dir = next((out / "ood" / "openset" / "synthetic" / "shots_16" / trainer).glob("*/seed1"))
        scores = np.load(run_dir / "ood_scores.npz")
        assert scores["id.msp"].shape == (96,) and scores["new.msp"].shape == (96,)  # 8 classes x 12 test images
        assert ("new.ctw" in scores.files) == (trainer == "FDBPL")
        check_logged_metrics(run_dir, scores)
        if trainer != "ZeroshotCLIP":
            settings = (run_dir / "settings.txt").read_text()
            assert f"--model-dir {out}/base2new/train_base/synthetic/shots_16/{trainer}/" in settings
    again = run_script_sh("--out", str(out))  # nothing reruns: base2new's steps and the OOD passes are finished
    assert "[run]" not in again.stdout and again.stdout.count("[skip]") >= 3 + 6
    changed = run_script_sh("--out", str(out), "--mcm-temperature", "0.5", check=False)  # a folder never mixes two
    assert changed.returncode != 0 and "--mcm-temperature" in changed.stderr and "[run]" not in changed.stdout
    png, csv_path = tmp_path / "ood.png", tmp_path / "ood.csv"
    run_script("scripts/parse_results.py", str(out), "--protocol", "ood", "--plot", str(png), "--csv", str(csv_path))
    assert png.stat().st_size > 10000
    assert "FDBPL,tiny_ep10" in csv_path.read_text() and ",new,ctw,aupr," in csv_path.read_text()
