"""Runs of the reference code that save their whole model (MaPLe, IVLP/PromptSRC, PromptKD) resume here
(trainers/reference_resume.py) with their prompts, momentum and schedule, through train.py --resume to the last epoch.

Each file is written as the reference's code saves it after one of two epochs: its CustomCLIP's state dict in that
model's order (its own logit_scale first; in each module the parameters, then the buffers, then the submodules; the
VPT prompts registered first in their CLIP modules), and Dassl's save_checkpoint with an SGD optimiser built over
every parameter of that model, stepped so that the prompts hold momentum buffers, and the pickled scheduler. The
file's momentum is named through the test's own copy of that model, never through the code under test.
"""
from dataclasses import dataclass

import pytest
import torch

from tests.cli_runs import BASE_OPTS, train_args
from tests.conftest import requires_dassl, run_script
from tests.test_checkpoint_import import (
    build, class_buffers, frozen_state, ivlp_prompt_state, maple_state, module_tree, promptkd_state, randomise_prompts,
    save_as_reference,
)

pytestmark = requires_dassl


@dataclass
class ReferenceRun:
    """A reference run folder at epoch 1, with the file's momentum by file key and where each lands here."""

    directory: str
    path: str
    momentum: dict  # file key -> momentum buffer
    placement: dict  # file key -> (this project's module, key)


def in_module_order(frozen, prompts):
    """`frozen` weights with each prompt placed before the first weight of its module: the references' CLIP
    registers VPT before class_embedding and a block's VPT_shallow before its attn."""
    ordered, waiting = {}, dict(prompts)
    for key, value in frozen.items():
        for prompt_key in [name for name in waiting if key.startswith(name.rsplit(".", 1)[0] + ".")]:
            ordered[prompt_key] = waiting.pop(prompt_key)
        ordered[key] = value
    assert not waiting, f"no module for {sorted(waiting)}"
    return ordered


def write_reference_run(directory, folder, state, trainable, placement, optim_cfg):
    """Save as the reference does after epoch 1 of 2; the file's momentum is named through the reference model."""
    from trainers import dassl_pickle

    path = save_as_reference(directory, folder, state, trainable, epoch=1, optim_cfg=optim_cfg)
    names = [name for name, _ in module_tree(state, trainable).named_parameters()]
    optimizer = dassl_pickle.load_checkpoint(path)["optimizer"]
    momentum = {names[index]: entry["momentum_buffer"] for index, entry in optimizer["state"].items()}
    assert set(momentum) == set(trainable), "every prompt stepped, nothing else"
    return ReferenceRun(str(directory), path, momentum, placement)


def check_momentum(trainer, run):
    """Every momentum buffer of the trainer's optimisers is the file's buffer of the parameter placed there."""
    resumed = {}
    for name in trainer.get_model_names():
        optim = trainer._optims[name]
        for key, param in trainer._models[name].named_parameters() if optim is not None else ():
            if optim.state.get(param):
                resumed[(name, key)] = optim.state[param]["momentum_buffer"]
    assert set(resumed) == set(run.placement.values())
    for file_key, buffer in run.momentum.items():
        ours = resumed[run.placement[file_key]]
        assert torch.equal(ours, buffer.to(ours.dtype).reshape(ours.shape)), f"momentum of {file_key}"


def check_schedule(trainer, run):
    from trainers import dassl_pickle

    written = dassl_pickle.load_checkpoint(run.path)
    for name in run_modules(run):
        schedule, group = trainer._scheds[name], trainer._optims[name].param_groups[0]
        assert (schedule.last_epoch, schedule.successor.last_epoch) == (
            1, written["scheduler"]["successor"].state["last_epoch"])
        assert schedule.get_last_lr() == written["scheduler"]["_last_lr"] == [group["lr"]]
        assert group["initial_lr"] == written["optimizer"]["param_groups"][0]["initial_lr"]


def run_modules(run):
    return sorted({module for module, _ in run.placement.values()})


def resume_through_train_py(synthetic_root, student, run, trainer, output_dir, *opts):
    """train.py --resume from the reference run: it continues to the last epoch (2) and tests; returns the log."""
    run_script("train.py", *train_args(synthetic_root, output_dir, trainer, student), "--resume", run.directory,
               *BASE_OPTS, *opts)
    log = (output_dir / "log.txt").read_text()
    assert f"Resuming {run.path}" in log and "epoch [2/2]" in log and "* accuracy:" in log
    for name in run_modules(run):
        assert (output_dir / name / "model.pth.tar-2").is_file()
    return log


# MaPLe --------------------------------------------------------------------------------------------------------

def test_a_maple_run_of_the_reference_code_resumes_with_its_momentum_and_schedule(
        synthetic_root, tiny_student, tmp_path):
    from trainers import dassl_pickle

    source = build(synthetic_root, "MaPLe", tiny_student, tmp_path / "source")
    randomise_prompts(source)
    state, trainable = maple_state(source)  # saved in MaPLe's order: CustomCLIP's logit_scale, then its modules
    placement = {key: ("prompt_learner", key[len("prompt_learner."):]) for key in trainable}
    run = write_reference_run(tmp_path / "maple", "MultiModalPromptLearner", state, trainable, placement,
                              source.cfg.OPTIM)
    written = dassl_pickle.load_checkpoint(run.path)["state_dict"]
    assert list(written)[:5] == ["logit_scale", "prompt_learner.ctx", "prompt_learner.token_prefix",
                                 "prompt_learner.token_suffix", "prompt_learner.proj.weight"]

    resumed = build(synthetic_root, "MaPLe", tiny_student, tmp_path / "resumed")
    assert resumed.resume_model_if_exist(run.directory) == 1
    for key, value in resumed.model.prompt_learner.state_dict().items():
        assert torch.equal(value, state[f"prompt_learner.{key}"].to(value.dtype)), key
    check_momentum(resumed, run)
    check_schedule(resumed, run)
    resume_through_train_py(synthetic_root, tiny_student, run, "MaPLe", tmp_path / "out")


# IVLP / PromptSRC -----------------------------------------------------------------------------------------------

def promptsrc_reference_state(trainer, zero_shot_tower=True):
    """(state dict in the order of PromptSRC's CustomCLIP, prompt keys, placement); without the zero-shot tower, the
    state dict of IVLP's CustomCLIP."""
    learner, clip_model = trainer.model.prompt_learner, trainer.clip_model
    with torch.no_grad():
        learner.ctx.copy_(learner.ctx.half().float())
    prompts = ivlp_prompt_state(learner)
    placement = {"prompt_learner.ctx": ("prompt_learner", "ctx")}
    for tower, prefix in (("vision_prompts", "image_encoder"), ("text_prompts", "text_encoder")):
        for layer in getattr(learner, tower).layer:
            key = f"{prefix}.VPT" if layer == "0" else f"{prefix}.transformer.resblocks.{layer}.VPT_shallow"
            placement[key] = ("prompt_learner", f"{tower}.layer.{layer}")
    state = {"logit_scale": clip_model.logit_scale.detach().clone(), "prompt_learner.ctx": prompts.pop(
        "prompt_learner.ctx"), **class_buffers(learner)}
    if zero_shot_tower:
        state.update(frozen_state(clip_model, "prompt_learner.ZS_image_encoder", text=False))
    state.update(in_module_order(frozen_state(clip_model), prompts))
    return state, set(placement), placement


@pytest.fixture(scope="module")
def promptsrc_run(synthetic_root, tiny_student, tmp_path_factory):
    directory = tmp_path_factory.mktemp("promptsrc")
    source = build(synthetic_root, "PromptSRC", tiny_student, directory / "source")
    randomise_prompts(source)
    state, trainable, placement = promptsrc_reference_state(source)
    keys = list(state)
    assert keys[:4] == ["logit_scale", "prompt_learner.ctx", "prompt_learner.token_prefix",
                        "prompt_learner.token_suffix"]
    assert keys.index("image_encoder.VPT") + 1 == keys.index("image_encoder.class_embedding")
    assert keys.index("text_encoder.transformer.resblocks.1.VPT_shallow") + 1 == keys.index(
        "text_encoder.transformer.resblocks.1.attn.in_proj_weight")
    return write_reference_run(directory / "run", "VLPromptLearner", state, trainable, placement, source.cfg.OPTIM)


def test_a_promptsrc_run_resumes_with_its_momentum_and_its_prompts_standing_in_for_the_average(
        synthetic_root, tiny_student, promptsrc_run, tmp_path):
    from trainers.gpa import flat_parameters

    resumed = build(synthetic_root, "PromptSRC", tiny_student, tmp_path / "resumed")
    assert resumed.resume_model_if_exist(promptsrc_run.directory) == 1
    check_momentum(resumed, promptsrc_run)
    check_schedule(resumed, promptsrc_run)
    first_weight = resumed.gpa.weights[0]
    assert 0 < first_weight < 1
    torch.testing.assert_close(resumed.gpa.total, first_weight * flat_parameters(resumed.model.prompt_learner),
                               rtol=0, atol=0)

    log = resume_through_train_py(synthetic_root, tiny_student, promptsrc_run, "PromptSRC", tmp_path / "out")
    assert (f"holds no running Gaussian prompt average (GPA): epochs 1-1, {first_weight:.3g} of its weight, enter it "
            "with the prompts of epoch 1 instead of their own") in log


def rotated(keys, positions):
    """`keys` with the keys at `positions` each moved one position on among them."""
    moved = list(keys)
    names = [keys[position] for position in positions]
    for position, name in zip(positions, names[1:] + names[:1]):
        moved[position] = name
    return moved


@pytest.mark.parametrize("fault", ["every parameter", "prompts of one shape"])
def test_a_mapping_off_by_one_position_fails_the_check(
        synthetic_root, tiny_student, promptsrc_run, tmp_path, monkeypatch, fault):
    """Naming the file's momentum one position off is caught: by the resume itself (a frozen weight's position, a
    shape), or, among prompts of one shape, by the test's comparison."""
    from trainers import reference_resume

    named = reference_resume.parameter_keys

    def off_by_one(layout, state_dict):
        keys = named(layout, state_dict)
        if fault == "every parameter":
            return rotated(keys, range(len(keys)))
        return rotated(keys, [position for position, key in enumerate(keys) if key in promptsrc_run.placement])

    monkeypatch.setattr(reference_resume, "parameter_keys", off_by_one)
    resumed = build(synthetic_root, "PromptSRC", tiny_student, tmp_path / "resumed")
    if fault == "every parameter":
        with pytest.raises(ValueError, match=r"its optimiser holds a state for '[\w.]+', a weight PromptSRC's code "
                                             r"keeps frozen"):
            resumed.resume_model_if_exist(promptsrc_run.directory)
    else:
        resumed.resume_model_if_exist(promptsrc_run.directory)
        with pytest.raises(AssertionError, match="momentum of"):
            check_momentum(resumed, promptsrc_run)


def test_ivlp_and_promptsrc_runs_resume_only_with_their_own_trainer(
        synthetic_root, tiny_student, promptsrc_run, tmp_path):
    ivlp_opts = ("TRAINER.IVLP.N_CTX_TEXT", "4", "TRAINER.IVLP.N_CTX_VISION", "4")  # PromptSRC's tiny prompts
    ivlp = build(synthetic_root, "IVLP", tiny_student, tmp_path / "ivlp", *ivlp_opts)
    with pytest.raises(ValueError, match=r"holds PromptSRC's zero-shot image tower \(prompt_learner\."
                                         r"ZS_image_encoder\.\*\): it is a run of PromptSRC's reference code, which "
                                         r"IVLP would continue with other losses\. Resume it with --trainer PromptSRC"):
        ivlp.resume_model_if_exist(promptsrc_run.directory)

    source = build(synthetic_root, "IVLP", tiny_student, tmp_path / "source", *ivlp_opts)
    randomise_prompts(source)
    state, trainable, placement = promptsrc_reference_state(source, zero_shot_tower=False)
    run = write_reference_run(tmp_path / "ivlp_run", "VLPromptLearner", state, trainable, placement, source.cfg.OPTIM)
    assert ivlp.resume_model_if_exist(run.directory) == 1
    check_momentum(ivlp, run)
    promptsrc = build(synthetic_root, "PromptSRC", tiny_student, tmp_path / "promptsrc")
    with pytest.raises(ValueError, match=r"holds no PromptSRC's zero-shot image tower .*: it is a run of IVLP's "
                                         r"reference code, which PromptSRC would continue with other losses"):
        promptsrc.resume_model_if_exist(run.directory)


# PromptKD ---------------------------------------------------------------------------------------------------------

def test_a_promptkd_student_resumes_with_the_momentum_of_its_prompts_and_projector(
        synthetic_root, tiny_student, tiny_teacher, tmp_path):
    from trainers import dassl_pickle

    teacher_opts = ("TRAINER.PROMPTKD.TEACHER_BACKBONE", tiny_teacher)  # zero-shot: the teacher is not resumed
    source = build(synthetic_root, "PromptKD", tiny_student, tmp_path / "source", *teacher_opts)
    source.prepare_training()  # the projector
    randomise_prompts(source)
    file_state, trainable = promptkd_state(source)
    vision = {key: value for key, value in file_state.items() if key in trainable and key.startswith("image_encoder.")}
    frozen = {key: value for key, value in file_state.items() if key.startswith("image_encoder.") and key not in vision}
    projector = {key: value for key, value in file_state.items() if key.startswith("VPT_image_trans.")}
    state = {"logit_scale": file_state["logit_scale"], **in_module_order(frozen, vision), **projector}
    placement = {key: ("projector", key[len("VPT_image_trans.conv1."):]) for key in trainable if key in projector}
    placement.update({key: ("prompt_learner", "layer.0" if key == "image_encoder.VPT" else f"layer.{key.split('.')[3]}")
                      for key in vision})
    run = write_reference_run(tmp_path / "promptkd", "VLPromptLearner", state, trainable, placement, source.cfg.OPTIM)
    written = list(dassl_pickle.load_checkpoint(run.path)["state_dict"])
    assert written[:2] == ["logit_scale", "image_encoder.VPT"]
    assert written[-5:] == [f"VPT_image_trans.conv1.1.{name}" for name in (
        "running_mean", "running_var", "num_batches_tracked")] + ["VPT_image_trans.conv1.3.weight",
                                                                   "VPT_image_trans.conv1.3.bias"]

    resumed = build(synthetic_root, "PromptKD", tiny_student, tmp_path / "resumed", *teacher_opts)
    resumed.prepare_training()
    assert resumed.resume_model_if_exist(run.directory) == 1
    check_momentum(resumed, run)
    check_schedule(resumed, run)
    assert torch.equal(resumed.model.projector[1].running_var, state["VPT_image_trans.conv1.1.running_var"])
    resume_through_train_py(synthetic_root, tiny_student, run, "PromptKD", tmp_path / "out", *teacher_opts)


# Refusals --------------------------------------------------------------------------------------------------------

def test_a_run_that_cannot_be_resumed_exactly_is_refused_naming_why(synthetic_root, tiny_student, tmp_path):
    from trainers.config import get_cfg

    trainer = build(synthetic_root, "MaPLe", tiny_student, tmp_path / "maple")
    state, trainable = maple_state(trainer)
    placement = {key: ("prompt_learner", key[len("prompt_learner."):]) for key in trainable}
    frozen_trained = write_reference_run(tmp_path / "frozen", "MultiModalPromptLearner", state,
                                         trainable | {"image_encoder.conv1.weight"}, placement, trainer.cfg.OPTIM)
    with pytest.raises(ValueError, match=r"its optimiser holds a state for 'image_encoder\.conv1\.weight', a weight "
                                         r"MaPLe's code keeps frozen and this project never trains"):
        trainer.resume_model_if_exist(frozen_trained.directory)

    staged = get_cfg().OPTIM
    staged.merge_from_other_cfg(trainer.cfg.OPTIM)
    staged.STAGED_LR, staged.NEW_LAYERS = True, ["prompt_learner"]
    save_as_reference(tmp_path / "staged", "MultiModalPromptLearner", state, trainable, epoch=1, optim_cfg=staged)
    with pytest.raises(ValueError, match=r"its optimiser numbers \d+ parameters in 2 groups, and its model has \d+; "
                                         r"MaPLe's code builds one group over the whole model"):
        trainer.resume_model_if_exist(str(tmp_path / "staged"))

    adam = build(synthetic_root, "MaPLe", tiny_student, tmp_path / "adam", "OPTIM.NAME", "adam")
    save_as_reference(tmp_path / "sgd", "MultiModalPromptLearner", state, trainable, epoch=1,
                      optim_cfg=trainer.cfg.OPTIM)
    with pytest.raises(ValueError, match=r"was trained with another optimiser \(settings .*momentum.*\) than this "
                                         r"run's \(settings .*betas.*\): resume it with the OPTIM.NAME"):
        adam.resume_model_if_exist(str(tmp_path / "sgd"))
