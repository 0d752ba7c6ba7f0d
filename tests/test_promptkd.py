"""PromptKD: teacher (PromptSRC, stage 1) -> distilled student (stage 2) -> eval on base and new; data protocol."""
import os
import shlex
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import REPO_ROOT, requires_dassl
from tests.cli_runs import BASE_OPTS, build_trainer, log_accuracy, train

pytestmark = requires_dassl

TEACHER_TEMPLATE = "a photo of a {}."


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def teacher_run(data_root, tiny_teacher, tmp_path_factory):
    """Stage 1: PromptSRC on the tiny teacher CLIP, base classes, 4 shots, 2 epochs."""
    output_dir = tmp_path_factory.mktemp("teacher")
    train(data_root, output_dir, "PromptSRC", tiny_teacher, *BASE_OPTS)
    return output_dir


@pytest.fixture(scope="module")
def teacher_opts(tiny_teacher, teacher_run):
    return ("TRAINER.PROMPTKD.TEACHER_BACKBONE", tiny_teacher, "TRAINER.PROMPTKD.TEACHER_DIR", str(teacher_run))


@pytest.fixture(scope="module")
def student_run(data_root, tiny_student, teacher_opts, tmp_path_factory):
    """Stage 2 through train.py: transductive PromptKD of the tiny student from the stage-1 teacher."""
    output_dir = tmp_path_factory.mktemp("student")
    result = train(data_root, output_dir, "PromptKD", tiny_student, *BASE_OPTS, *teacher_opts)
    return output_dir, result.stdout


def synthetic_classnames():
    from datasets.synthetic import classname

    return [classname(label) for label in range(10)]


def reference_teacher(tiny_teacher, teacher_run, classnames):
    """The stage-1 teacher rebuilt directly from its checkpoint, without trainers.online_teacher."""
    from trainers.clip_loading import load_clip
    from trainers.deep_prompts import DeepPromptedCLIP, IVLPPrompts

    clip_model = load_clip(tiny_teacher)
    learner = IVLPPrompts(clip_model, classnames, 4, 4, depth_text=2, depth_vision=2, ctx_init="a photo of a")
    state = torch.load(teacher_run / "prompt_learner" / "model.pth.tar-2", weights_only=True)["state_dict"]
    learner.load_state_dict(state)
    return DeepPromptedCLIP(clip_model, learner)


def stored_features(run_dir):
    return torch.load(os.path.join(run_dir, "teacher_text_features.pt"), weights_only=True)


def test_stage1_stage2_and_eval_on_base_and_new_through_the_cli(student_run, data_root, tiny_student, tmp_path):
    output_dir, stdout = student_run
    assert "Transductive: training on the 40 training images of all 10 classes" in stdout
    assert " kd " in stdout and " agree " in stdout
    prompts = torch.load(output_dir / "prompt_learner" / "model.pth.tar-2", weights_only=True)["state_dict"]
    assert set(prompts) == {"layer.0", "layer.1"}, "only the student's vision prompts are saved, no CLIP weights"
    assert (output_dir / "projector" / "model.pth.tar-2").is_file()
    for split in ("base", "new"):
        eval_dir = tmp_path / split
        result = train(data_root, eval_dir, "PromptKD", tiny_student, "DATASET.NUM_SHOTS", "4",
                       "DATASET.SUBSAMPLE_CLASSES", split, eval_only_from=output_dir)
        assert f"Loaded {output_dir / 'projector' / 'model.pth.tar-2'} into 'projector'" in result.stdout
        assert "Loading the teacher" not in result.stdout, "evaluation must not need the teacher"
        log = (eval_dir / "log.txt").read_text()
        assert "# classes  5" in log and "Finish training" not in log
        assert 0.0 <= log_accuracy(eval_dir) <= 100.0


def test_stored_text_features_are_the_prompted_teachers_for_all_classes(student_run, teacher_run, tiny_teacher):
    from trainers.clip_loading import load_clip
    from trainers.text_encoder import template_text_features

    data = stored_features(student_run[0])
    classnames = synthetic_classnames()
    assert data["classnames"] == classnames, "the run trains on base classes but stores all 10"
    with torch.no_grad():
        expected = reference_teacher(tiny_teacher, teacher_run, classnames).encode_text()
    torch.testing.assert_close(data["text_features"], expected, rtol=1e-5, atol=1e-6)
    zero_shot = template_text_features(load_clip(tiny_teacher), classnames, [TEACHER_TEMPLATE])
    assert (data["text_features"] - zero_shot).abs().max() > 1e-3, "the teacher's prompts were not applied"


def counting_hook(counts, name):
    """For a text tower's first block: it runs once per text pass (the text encoder runs blocks one by one)."""
    def hook(*args):
        counts[name] += 1
    return hook


def test_teacher_text_encoder_runs_once_per_run_and_the_student_text_tower_never(
        data_root, tiny_student, teacher_opts, tmp_path, monkeypatch):
    import trainers.online_teacher
    import trainers.promptkd as promptkd

    counts = {"teacher_text": 0, "teacher_image": 0, "student_text": 0}
    original = promptkd.load_online_teacher

    def counted_teacher(*args, **kwargs):
        """The teacher's text tower runs while it is built (its class features), so count from there."""
        import ril.teachers

        original_load = ril.teachers.load_teacher

        def load_counted(*load_args, **load_kwargs):
            frozen = original_load(*load_args, **load_kwargs)
            frozen.model.transformer.resblocks[0].register_forward_hook(counting_hook(counts, "teacher_text"))
            frozen.model.visual.register_forward_hook(counting_hook(counts, "teacher_image"))
            return frozen

        monkeypatch.setattr(trainers.online_teacher, "load_teacher", load_counted)
        return original(*args, **kwargs)

    monkeypatch.setattr(promptkd, "load_online_teacher", counted_teacher)
    trainer = build_trainer(data_root, "PromptKD", tiny_student, tmp_path,
                            opts=(*BASE_OPTS, *teacher_opts, "OPTIM.MAX_EPOCH", "2"))
    trainer.clip_model.transformer.resblocks[0].register_forward_hook(counting_hook(counts, "student_text"))
    trainer.train()
    assert counts["teacher_text"] == 1
    assert counts["teacher_image"] == trainer.num_batches * trainer.max_epoch == 20
    assert counts["student_text"] == 0


def test_training_step_loss_equals_the_published_formula(data_root, tiny_student, tiny_teacher, teacher_run,
                                                         teacher_opts, tmp_path):
    trainer = build_trainer(data_root, "PromptKD", tiny_student, tmp_path, opts=(
        *BASE_OPTS, *teacher_opts, "TRAINER.PROMPTKD.TEMPERATURE", "2.0", "TRAINER.PROMPTKD.KD_WEIGHT", "7.0"))
    trainer.before_train()
    trainer.set_model_mode("train")
    image = next(iter(trainer.train_loader_x))["img"]
    model, text = trainer.model, stored_features(tmp_path)["text_features"]
    teacher = reference_teacher(tiny_teacher, teacher_run, synthetic_classnames())
    with torch.no_grad():
        teacher_logits = teacher.logits(teacher.encode_image(image), text)
        features = F.normalize(model.projector(model.image_encoder(image)), dim=-1)
        student_logits = model.logit_scale.exp() * features @ text.t()
    p_teacher = (teacher_logits / 2).softmax(dim=1)
    assert student_logits.shape == (4, 10), "batch of 4 images, logits over all 10 classes (transductive)"
    # KL summed over the batch, times T^2 = 4, divided by B * C = 40
    expected_kd = (p_teacher * (p_teacher.log() - (student_logits / 2).log_softmax(dim=1))).sum() * 4 / 40

    prompts_before = model.vision_prompts.layer["0"].detach().clone()
    projector_before = model.projector[0].weight.detach().clone()
    clip_before = model.image_encoder.conv1.weight.detach().clone()
    trainer.batch_idx, trainer.num_batches = 0, 10
    summary = trainer.forward_backward({"img": image})
    assert summary["kd"] == pytest.approx(expected_kd.item(), rel=1e-4)
    assert summary["loss"] == pytest.approx(7 * expected_kd.item(), rel=1e-4)
    assert not torch.equal(model.vision_prompts.layer["0"], prompts_before)
    assert not torch.equal(model.projector[0].weight, projector_before)
    assert torch.equal(model.image_encoder.conv1.weight, clip_before)


@pytest.mark.parametrize("transductive, n_images, n_classes", [(True, 40, 10), (False, 20, 5)])
def test_transductive_trains_on_all_classes_and_the_other_protocol_on_base(
        transductive, n_images, n_classes, data_root, tiny_student, teacher_opts, tmp_path):
    trainer = build_trainer(data_root, "PromptKD", tiny_student, tmp_path, opts=(
        *BASE_OPTS, *teacher_opts, "TRAINER.PROMPTKD.TRANSDUCTIVE", str(transductive)))
    trainer.before_train()
    items = trainer.train_loader_x.dataset.data_source
    assert len(items) == n_images and {item.label for item in items} == set(range(n_classes))
    stored = stored_features(tmp_path)["text_features"]
    assert stored.shape == (10, 64)
    assert torch.equal(trainer.train_text, stored[:n_classes])
    assert torch.equal(trainer.eval_text, stored[:5])


def test_eval_on_new_classes_uses_the_last_stored_rows(student_run, data_root, tiny_student, tmp_path):
    output_dir, _ = student_run
    trainer = build_trainer(data_root, "PromptKD", tiny_student, tmp_path,
                            opts=("DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "new"))
    trainer.load_model(str(output_dir), epoch=2)
    data = stored_features(output_dir)
    assert trainer.dm.dataset.classnames == data["classnames"][5:]
    text = data["text_features"][5:]
    trainer.set_model_mode("eval")
    image = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        model = trainer.model
        features = F.normalize(model.projector(model.image_encoder(image)), dim=-1)
        torch.testing.assert_close(trainer.model_inference(image), model.logit_scale.exp() * features @ text.t())
    projector = torch.load(output_dir / "projector" / "model.pth.tar-2", weights_only=True)["state_dict"]
    assert torch.equal(model.projector[1].running_mean, projector["1.running_mean"])


def test_evaluation_needs_the_stored_features_of_a_promptkd_run(data_root, tiny_student, teacher_run, tmp_path):
    trainer = build_trainer(data_root, "PromptKD", tiny_student, tmp_path, opts=BASE_OPTS)
    with pytest.raises(ValueError, match="pass --model-dir"):
        trainer.load_model("")
    with pytest.raises(FileNotFoundError, match="teacher_text_features.pt"):
        trainer.load_model(str(teacher_run), epoch=2)
    with pytest.raises(FileNotFoundError, match="holds neither prompt_learner/"):
        build_trainer(data_root, "PromptKD", tiny_student, tmp_path,
                      opts=(*BASE_OPTS, "TRAINER.PROMPTKD.TEACHER_DIR", str(tmp_path)))


def test_class_rows_pick_base_and_new_and_check_the_names():
    from trainers.promptkd import class_rows

    assert class_rows(list("abcd"), ["a", "b"], "base") == slice(0, 2)
    assert class_rows(list("abcde"), ["d", "e"], "new") == slice(3, 5)
    assert class_rows(list("abc"), list("abc"), "all") == slice(0, 3)
    with pytest.raises(ValueError, match=r"do not match their rows 2\.\.3 \(first difference: class 0, 'd'\)"):
        class_rows(list("abcd"), ["d", "c"], "new")


def test_teacher_prompts_of_another_backbone_are_refused(teacher_run, tiny_student):
    from trainers.clip_loading import load_clip
    from trainers.online_teacher import ivlp_prompts_from_state, read_teacher_prompts

    state, path = read_teacher_prompts(str(teacher_run), epoch=2)
    with pytest.raises(ValueError, match=r"'ctx' has shape \(4, 128\) but the teacher CLIP expects \(4, 64\)"):
        ivlp_prompts_from_state(load_clip(tiny_student), ["red circle"], state, "a photo of a", path)


def dry_run(tmp_path, *args):
    result = subprocess.run(
        ["bash", os.path.join(REPO_ROOT, "scripts", "promptkd.sh"), "--data", str(tmp_path), "--out", str(tmp_path),
         "--datasets", "synthetic", "--seeds", "1", "--shots", "4", "--cfg", "tiny_ep2", "--teacher", "teacher.pt",
         "--backbone", "student.pt", "--teacher-cfg", os.path.join(REPO_ROOT, "configs/trainers/PromptSRC/tiny_ep2.yaml"),
         "--dry-run", *args],
        env=dict(os.environ, PYTHON=sys.executable, PYTHONWARNINGS="ignore"), capture_output=True, text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [shlex.split(line[2:]) for line in result.stdout.splitlines() if line.startswith("+ ")]


def option(command, key):
    return command[command.index(key) + 1]


def test_script_runs_both_stages_then_evaluates_both_on_base_and_new(tmp_path):
    commands = dry_run(tmp_path)
    trainers = [(option(c, "--trainer"), "--eval-only" in c) for c in commands]
    assert trainers == [("PromptSRC", False), ("PromptSRC", True), ("PromptSRC", True),
                        ("PromptKD", False), ("PromptKD", True), ("PromptKD", True)]
    stage1, stage2 = commands[0], commands[3]
    assert option(stage1, "--backbone") == "teacher.pt" and option(stage1, "DATASET.NUM_SHOTS") == "4"
    assert option(stage2, "--backbone") == "student.pt"
    assert option(stage2, "TRAINER.PROMPTKD.TEACHER_DIR") == option(stage1, "--output-dir")
    assert option(stage2, "TRAINER.PROMPTKD.TEACHER_BACKBONE") == "teacher.pt"
    assert option(stage2, "TRAINER.PROMPTKD.TEACHER_EPOCH") == "2"
    assert option(stage2, "DATASET.NUM_SHOTS") == "0", "transductive: all unlabelled images, as published"
    assert option(stage2, "--output-dir").endswith("base2new/train_base/synthetic/shots_4/PromptKD/tiny_ep2/seed1")
    for command, split in zip(commands[4:], ("base", "new")):
        assert option(command, "--model-dir") == option(stage2, "--output-dir")
        assert option(command, "DATASET.SUBSAMPLE_CLASSES") == split

    commands = dry_run(tmp_path, "--zero-shot-teacher", "--non-transductive")
    assert [option(c, "--trainer") for c in commands] == ["PromptKD"] * 3
    assert option(commands[0], "TRAINER.PROMPTKD.TEACHER_DIR") == ""
    assert option(commands[0], "TRAINER.PROMPTKD.TRANSDUCTIVE") == "False"
    assert option(commands[0], "DATASET.NUM_SHOTS") == "4"
    assert "/PromptKD/tiny_ep2_nontransductive/" in option(commands[0], "--output-dir")
