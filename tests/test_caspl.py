"""CasPL end to end: boosting prompts (online teacher or RIL table) -> cascaded stage 2 per base method -> base/new."""
import os
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from tests.conftest import REPO_ROOT, requires_dassl
from tests.cli_runs import (
    BASE_OPTS,
    build_trainer,
    log_accuracy,
    precompute_table,
    train,
)
from tests.test_promptkd import reference_teacher, synthetic_classnames, teacher_run  # noqa: F401 (fixture)
from trainers.templates import CLIP_SELECTED_TEMPLATES

pytestmark = requires_dassl

ALL_OPTS = ("DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "all")  # stage 1: every class, labels unused
NEW_OPTS = ("DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "new")
BASES = ("CoOp_CasPL", "MaPLe_CasPL", "PromptSRC_CasPL")


def in_parallel(*calls):
    """Run independent train.py calls two at a time (2 cores; most of a tiny run is start-up)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


def state_dict(path):
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def boost_runs(data_root, tiny_student, tiny_teacher, tmp_path_factory):
    """Stage 1 from the online teacher, and from an all-class RIL table whose teacher file is deleted before
    training (the ril mode must not need it): {source: (output_dir, stdout)}."""
    dirs = {source: tmp_path_factory.mktemp(f"boost_{source}") for source in ("online", "ril")}
    ril_dir = tmp_path_factory.mktemp("ril")

    def online():
        return train(data_root, dirs["online"], "CasPL_Boost", tiny_student, *ALL_OPTS,
                     "TRAINER.CASPL.TEACHER_BACKBONE", tiny_teacher)

    def from_table():
        teacher = shutil.copy(tiny_teacher, ril_dir / "teacher_copy.pt")
        table = precompute_table(data_root, teacher, ril_dir / "synthetic_all_4shot.h5",
                                 os.path.join(REPO_ROOT, "configs/trainers/CasPL_Boost/tiny_ep2.yaml"), *ALL_OPTS)
        os.remove(teacher)
        return train(data_root, dirs["ril"], "CasPL_Boost", tiny_student, *ALL_OPTS,
                     "TRAINER.CASPL.TEACHER_SOURCE", "ril", "TRAINER.FDBPL.RIL_TABLE", table)

    results = dict(zip(dirs, in_parallel(online, from_table)))
    return {source: (dirs[source], results[source].stdout) for source in dirs}


@pytest.fixture(scope="module")
def stage2_runs(data_root, tiny_student, boost_runs, tmp_path_factory):
    """{(base, source): (train dir, new-class eval dir)}: every base on the online boost, PromptSRC on the table's."""
    keys = [(base, "online") for base in BASES] + [("PromptSRC_CasPL", "ril")]
    dirs = {key: (tmp_path_factory.mktemp(f"{key[0]}_{key[1]}"), tmp_path_factory.mktemp(f"{key[0]}_{key[1]}_new"))
            for key in keys}
    in_parallel(*[
        lambda key=key: train(data_root, dirs[key][0], key[0], tiny_student, *BASE_OPTS,
                              "TRAINER.CASPL.BOOST_DIR", str(boost_runs[key[1]][0]))
        for key in keys
    ])
    in_parallel(*[
        lambda key=key: train(data_root, dirs[key][1], key[0], tiny_student, *NEW_OPTS, eval_only_from=dirs[key][0])
        for key in keys
    ])
    return dirs


def test_cascade_layout_reserves_the_boosting_positions_after_the_adapting_tokens():
    from trainers.caspl import cascade_layout
    from trainers.prompt_learners import count_tokens

    assert cascade_layout("a photo of a", 4, 4) == "a photo of a X X X X"
    assert cascade_layout("a_photo of a", 2, 3) == "a photo X X X of a"  # MaPLe: 2 learnable, "of a" fixed
    assert cascade_layout("", 3, 2) == "X X X X X"  # random init: placeholders only
    assert count_tokens("xylographic") > 1
    with pytest.raises(ValueError, match="inside a word"):
        cascade_layout("a xylographic photo", 2, 4)


def capture_inputs(module, seen, key):
    """Record what `module` receives after the injector's hooks (registered earlier, so run first)."""
    module.register_forward_pre_hook(lambda _module, args: seen.__setitem__(key, args[0].detach()))


def test_maple_cascade_token_order_in_both_towers(data_root, tiny_student, tmp_path):
    """Vision [CLS, patches | boost (4) | MaPLe (2)]; text [SOS | MaPLe ctx (2) | boost (4) | "of a" | class]."""
    from trainers.text_encoder import tokenize

    model = build_trainer(data_root, "MaPLe_CasPL", tiny_student, tmp_path, opts=BASE_OPTS).model
    learner, boost, clip_model = model.prompt_learner, model.boost_prompts, model.injector.clip_model
    seen = {}
    capture_inputs(clip_model.transformer.resblocks[0], seen, "text")
    capture_inputs(clip_model.visual.ln_pre, seen, "vision")
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
        position = clip_model.positional_embedding
        fixed_words = clip_model.token_embedding(tokenize(["of a"]))[0, 1:3]
        text = seen["text"][:, 0]  # (L, width) of the first class
        assert torch.allclose(text[1:3], learner.ctx + position[1:3], atol=1e-6)
        assert torch.allclose(text[3:7], boost.ctx + position[3:7], atol=1e-6)
        assert torch.allclose(text[7:9], fixed_words + position[7:9], atol=1e-6)
        patches = (32 // clip_model.visual.conv1.kernel_size[0]) ** 2
        vision = seen["vision"][0]  # (L, width) of the first image
        assert vision.shape[0] == 1 + patches + 4 + 2, "the base method's own injector must be gone"
        assert torch.allclose(vision[-6:-2], boost.vision_prompts(0), atol=1e-6)
        assert torch.allclose(vision[-2:], learner.proj(learner.ctx), atol=1e-6)


def test_coop_cascade_has_deep_boosting_tokens_beside_its_shallow_random_context(data_root, tiny_student, tmp_path):
    model = build_trainer(data_root, "CoOp_CasPL", tiny_student, tmp_path, opts=BASE_OPTS).model
    learner, boost, clip_model = model.prompt_learner, model.boost_prompts, model.injector.clip_model
    seen = {}
    capture_inputs(clip_model.transformer.resblocks[0], seen, "layer0")
    capture_inputs(clip_model.transformer.resblocks[1], seen, "layer1")
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
        position = clip_model.positional_embedding
        assert torch.allclose(seen["layer0"][1:5, 0], learner.ctx + position[1:5], atol=1e-6)
        assert torch.allclose(seen["layer0"][5:9, 0], boost.ctx + position[5:9], atol=1e-6)
        assert torch.allclose(seen["layer1"][5:9, 0], boost.text_prompts(1), atol=1e-6)
        placeholder = clip_model.token_embedding.weight[learner.tokenized_prompts[0, 1]]
        assert not torch.allclose(learner.ctx[0], placeholder), "CoOp's random init was left as the 'X' embedding"


def test_boost_online_distils_the_teacher_without_labels(boost_runs, data_root, tiny_student, tiny_teacher, tmp_path):
    from trainers.losses import distillation_kl

    output_dir, stdout = boost_runs["online"]
    assert sorted(os.listdir(output_dir / "prompt_learner")) == ["checkpoint", "model.pth.tar-2"]
    assert "CasPL online teacher" in stdout and " kd " in stdout
    assert 0.0 <= log_accuracy(output_dir) <= 100.0

    trainer = build_trainer(data_root, "CasPL_Boost", tiny_student, tmp_path,
                            opts=(*ALL_OPTS, "TRAINER.CASPL.TEACHER_BACKBONE", tiny_teacher))
    trainer.before_train()
    trainer.epoch, trainer.batch_idx, trainer.num_batches = 0, 0, len(trainer.train_loader_x)
    batch = next(iter(trainer.train_loader_x))
    del batch["label"]
    with torch.no_grad():
        expected = distillation_kl(trainer.model(batch["img"]), trainer.teacher.logits(batch["img"]))
    summary = trainer.forward_backward(batch)
    assert summary["kd"] == pytest.approx(expected.item(), rel=1e-5)
    assert summary["loss"] == pytest.approx(1000.0 * summary["kd"], rel=1e-5)  # KD_WEIGHT of the tiny config


def first_images(trainer):
    """The training images of the first batch, after the trainer's teacher was loaded."""
    trainer.before_train()
    return next(iter(trainer.train_loader_x))["img"]


def test_online_teacher_reads_the_datasets_coop_template_by_default(data_root, tiny_student, tiny_teacher,
                                                                    tmp_path, monkeypatch, capsys):
    """Synthetic's CoOp template is the plain one, so give it another to tell the two apart."""
    from ril.teachers import load_teacher
    from trainers.templates import DATASET_TEMPLATES

    monkeypatch.setitem(DATASET_TEMPLATES, "Synthetic", "a blurry photo of a {}.")
    opts = (*ALL_OPTS, "TRAINER.CASPL.TEACHER_BACKBONE", tiny_teacher)
    trainer = build_trainer(data_root, "CasPL_Boost", tiny_student, tmp_path, opts=opts)
    first_images(trainer)
    assert "zero-shot, class texts from ['a blurry photo of a {}.']" in capsys.readouterr().out
    frozen = load_teacher(tiny_teacher)
    classnames = synthetic_classnames()
    torch.testing.assert_close(trainer.teacher.class_features,
                               frozen.class_features(classnames, ["a blurry photo of a {}."]))
    chosen = build_trainer(data_root, "CasPL_Boost", tiny_student, tmp_path / "set",
                           opts=(*opts, "TRAINER.CASPL.TEACHER_TEMPLATES", "('imagenet7',)"))
    first_images(chosen)
    torch.testing.assert_close(chosen.teacher.class_features,
                               frozen.class_features(classnames, CLIP_SELECTED_TEMPLATES))


def test_online_teacher_fine_tuned_by_promptsrc(data_root, tiny_student, tiny_teacher, teacher_run, tmp_path, capsys):
    """TEACHER_DIR: stage 1 distils the tuned PromptSRC teacher of tests/test_promptkd.py, not the zero-shot one."""
    base = (*ALL_OPTS, "TRAINER.CASPL.TEACHER_BACKBONE", tiny_teacher)
    tuned = build_trainer(data_root, "CasPL_Boost", tiny_student, tmp_path / "tuned", opts=(
        *base, "TRAINER.CASPL.TEACHER_DIR", str(teacher_run), "TRAINER.CASPL.TEACHER_EPOCH", "2"))
    images = first_images(tuned)
    assert f"(prompted from {teacher_run})" in capsys.readouterr().out
    zero_shot = build_trainer(data_root, "CasPL_Boost", tiny_student, tmp_path / "zero_shot", opts=base)
    first_images(zero_shot)
    reference = reference_teacher(tiny_teacher, teacher_run, synthetic_classnames())
    with torch.no_grad():
        expected = reference.logits(reference.encode_image(images), reference.encode_text())
    tuned_logits = tuned.teacher.logits(images)
    torch.testing.assert_close(tuned_logits, expected, rtol=1e-4, atol=1e-4)
    assert (tuned_logits - zero_shot.teacher.logits(images)).abs().max() > 1e-2


def test_boost_from_the_table_runs_no_teacher(boost_runs):
    output_dir, stdout = boost_runs["ril"]
    assert "Training from RIL table" in stdout and " kd " in stdout and "online teacher" not in stdout
    assert (output_dir / "prompt_learner" / "model.pth.tar-2").is_file()


@pytest.mark.parametrize("base, source", [(base, "online") for base in BASES] + [("PromptSRC_CasPL", "ril")])
def test_stage2_trains_on_base_evaluates_on_new_and_keeps_the_boost_bit_identical(stage2_runs, boost_runs, base,
                                                                                 source):
    train_dir, new_dir = stage2_runs[(base, source)]
    boost_dir = boost_runs[source][0]
    stage1 = state_dict(boost_dir / "prompt_learner" / "model.pth.tar-2")
    stage2 = state_dict(train_dir / "boost_prompts" / "model.pth.tar-2")
    assert stage1.keys() == stage2.keys()
    assert all(torch.equal(stage1[key], stage2[key]) for key in stage1)
    assert 0.0 <= log_accuracy(train_dir) <= 100.0
    log = (new_dir / "log.txt").read_text()
    assert "# classes  5" in log and f"Loaded {train_dir / 'boost_prompts' / 'model.pth.tar-2'}" in log
    assert 0.0 <= log_accuracy(new_dir) <= 100.0


def test_eval_only_on_base_reproduces_the_training_run(stage2_runs, data_root, tiny_student, tmp_path):
    """The stage-2 folder alone (adapting + frozen boosting prompts) rebuilds the trained model exactly."""
    train_dir, _ = stage2_runs[("MaPLe_CasPL", "online")]
    train(data_root, tmp_path, "MaPLe_CasPL", tiny_student, *BASE_OPTS, eval_only_from=train_dir)
    assert log_accuracy(tmp_path) == log_accuracy(train_dir)


def test_stage2_steps_never_move_the_boosting_prompts(boost_runs, data_root, tiny_student, tmp_path):
    boost_dir = boost_runs["online"][0]
    trainer = build_trainer(data_root, "PromptSRC_CasPL", tiny_student, tmp_path, opts=(
        *BASE_OPTS, "TRAINER.CASPL.BOOST_DIR", str(boost_dir), "TRAINER.CASPL.BOOST_EPOCH", "2", "OPTIM.LR", "1.0"))
    boost, learner = trainer.model.boost_prompts, trainer.model.prompt_learner
    optimised = {id(param) for optim in trainer._optims.values() if optim
                 for group in optim.param_groups for param in group["params"]}
    assert not any(param.requires_grad or id(param) in optimised for param in boost.parameters())
    adapting = [param.detach().clone() for param in learner.parameters()]
    trainer.before_train()
    trainer.epoch, trainer.num_batches = 1, len(trainer.train_loader_x)  # past the constant warm-up
    for trainer.batch_idx, batch in zip(range(2), trainer.train_loader_x):
        trainer.forward_backward(batch)
    stage1 = state_dict(boost_dir / "prompt_learner" / "model.pth.tar-2")
    assert all(torch.equal(value, stage1[key]) for key, value in boost.state_dict().items())
    assert any(not torch.equal(old, new) for old, new in zip(adapting, learner.parameters()))


def test_stage2_errors_name_the_key(boost_runs, data_root, tiny_student, tmp_path):
    from trainers.base import TrainingSetupError

    trainer = build_trainer(data_root, "CoOp_CasPL", tiny_student, tmp_path, opts=BASE_OPTS)
    with pytest.raises(TrainingSetupError, match="TRAINER.CASPL.BOOST_DIR is empty"):
        trainer.before_train()
    with pytest.raises(ValueError, match=r"vision_prompts.layer.0 \(4, 64\) \(expected \(2, 64\)\)"):
        build_trainer(data_root, "CoOp_CasPL", tiny_student, tmp_path, opts=(
            *BASE_OPTS, "TRAINER.CASPL.BOOST_DIR", str(boost_runs["online"][0]), "TRAINER.CASPL.N_CTX_VISION", "2"))
    with pytest.raises(FileNotFoundError, match="holds no boosting prompts"):
        build_trainer(data_root, "CoOp_CasPL", tiny_student, tmp_path, opts=(
            *BASE_OPTS, "TRAINER.CASPL.BOOST_DIR", str(tmp_path)))


def test_stage1_errors_name_the_key(data_root, tiny_student, tmp_path):
    with pytest.raises(ValueError, match="temperature-1 probabilities"):
        build_trainer(data_root, "CasPL_Boost", tiny_student, tmp_path, opts=(
            *ALL_OPTS, "TRAINER.CASPL.TEACHER_SOURCE", "ril", "TRAINER.CASPL.TEMPERATURE", "2.0"))
    with pytest.raises(ValueError, match="N_CTX_TEXT is 2"):
        build_trainer(data_root, "CasPL_Boost", tiny_student, tmp_path,
                      opts=(*ALL_OPTS, "TRAINER.CASPL.N_CTX_TEXT", "2"))
    with pytest.raises(ValueError, match="with TEACHER_SOURCE ril the teacher is the one that scored the RIL table"):
        build_trainer(data_root, "CasPL_Boost", tiny_student, tmp_path, opts=(
            *ALL_OPTS, "TRAINER.CASPL.TEACHER_SOURCE", "ril", "TRAINER.CASPL.TEACHER_DIR", str(tmp_path)))
    with pytest.raises(ValueError, match="reads no templates"):
        build_trainer(data_root, "CasPL_Boost", tiny_student, tmp_path, opts=(
            *ALL_OPTS, "TRAINER.CASPL.TEACHER_DIR", str(tmp_path), "TRAINER.CASPL.TEACHER_TEMPLATES", "('imagenet7',)"))
    with pytest.raises(FileNotFoundError, match="holds neither prompt_learner/"):
        build_trainer(data_root, "CasPL_Boost", tiny_student, tmp_path,
                      opts=(*ALL_OPTS, "TRAINER.CASPL.TEACHER_DIR", str(tmp_path)))


def test_script_chains_table_boost_cascade_and_evaluation(tmp_path, tiny_student, tiny_teacher):
    """scripts/caspl.sh --dry-run: stage 2 gets stage 1's folder, stage 1 the table, the evals stage 2's folder."""
    settings = ("DATA", "OUT", "TRAINER", "CFG", "BOOST_CFG", "TEACHER_SOURCE", "TEACHER", "BOOST_SHOTS", "DATASETS",
                "SEEDS", "SHOTS", "BACKBONE", "LOAD_EPOCH", "REGIONS", "TOPK", "RIL_DIR", "RIL_WORKERS", "NPROC",
                "DEVICE", "DRY_RUN", "VERBOSE")
    env = {key: value for key, value in os.environ.items() if key not in settings}
    result = subprocess.run(
        ["bash", os.path.join(REPO_ROOT, "scripts", "caspl.sh"), "--data", str(tmp_path),
         "--out", str(tmp_path / "out"),
         "--datasets", "synthetic", "--seeds", "1", "--shots", "4", "--trainer", "MaPLe_CasPL", "--cfg", "tiny_ep2",
         "--boost-cfg", "tiny_ep2", "--teacher-source", "ril", "--teacher", tiny_teacher, "--backbone", tiny_student,
         "--device", "cpu", "--dry-run"],
        env=dict(env, PYTHON=sys.executable, PYTHONWARNINGS="ignore"), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    commands = [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]
    assert len(commands) == 7, result.stdout
    precompute, boost, *boost_evals = commands[:4]
    stage2, *stage2_evals = commands[4:]

    def value(command, flag):
        return command[command.index(flag) + 1]

    assert precompute[1:4] == ["-m", "ril", "precompute"] and precompute[-4:] == [
        "DATASET.NUM_SHOTS", "0", "DATASET.SUBSAMPLE_CLASSES", "all"]
    assert value(boost, "--trainer") == "CasPL_Boost" and value(boost, "TRAINER.CASPL.TEACHER_SOURCE") == "ril"
    assert value(boost, "TRAINER.FDBPL.RIL_TABLE") == value(precompute, "--out")
    assert value(boost, "DATASET.SUBSAMPLE_CLASSES") == "all"
    assert value(stage2, "--trainer") == "MaPLe_CasPL" and value(stage2, "DATASET.SUBSAMPLE_CLASSES") == "base"
    assert value(stage2, "TRAINER.CASPL.BOOST_DIR") == value(boost, "--output-dir")
    for command, model_dir, split in zip(boost_evals + stage2_evals, [boost, boost, stage2, stage2],
                                         ["base", "new", "base", "new"]):
        assert "--eval-only" in command and value(command, "--load-epoch") == "2"
        assert value(command, "--model-dir") == value(model_dir, "--output-dir")
        assert value(command, "DATASET.SUBSAMPLE_CLASSES") == split
