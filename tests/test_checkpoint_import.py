"""Checkpoints of the reference code (CoOp, CoCoOp, MaPLe, IVLP/PromptSRC, PromptKD) evaluate here as the model
they came from.

Each file is written as the reference saves it: Dassl's `save_checkpoint` with its five entries, the reference's
model folder, module and key names and dtypes, the scheduler state as the unpatched `state_dict` gives it (its
successor scheduler pickled as an object, holding the optimiser over the reference's parameters with momentum
buffers), and, for the whole-model checkpoints, the frozen CLIP weights. The prompts come from one of this
project's trainers (the source); the file is evaluated through train.py and in-process, against the source.
"""
import collections
import io
import os
import pickle
import shutil
import subprocess
import sys
from contextlib import contextmanager, nullcontext

import pytest
import torch
import torch.nn as nn

from tests.cli_runs import BASE_OPTS, log_accuracy, train, train_args
from tests.cli_runs import build_trainer as build_cli_trainer
from tests.conftest import REPO_ROOT, requires_dassl, run_script

pytestmark = requires_dassl

EPOCH = 2
NEW_OPTS = ("DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "new")
BUFFERS = ("token_prefix", "token_suffix", "token_prefix2", "token_suffix2", "running_mean", "running_var",
           "num_batches_tracked")


# Writing as the references do ------------------------------------------------------------------------------

def module_tree(state, trainable):
    """An nn.Module whose state dict has exactly the keys of `state`, the reference model's: parameters, and
    buffers where the reference registers buffers; only the `trainable` keys require grad."""
    root = nn.Module()
    for key, value in state.items():
        *path, leaf = key.split(".")
        module = root
        for part in path:
            if part not in module._modules:
                module.add_module(part, nn.Module())
            module = module._modules[part]
        if leaf in BUFFERS:
            module.register_buffer(leaf, value.detach().clone())
        else:
            module.register_parameter(leaf, nn.Parameter(value.detach().clone(), requires_grad=key in trainable))
    return root


def dassl_optim_cfg():
    from trainers.config import get_cfg

    cfg = get_cfg()  # the references' configs: SGD (momentum 0.9), cosine, one constant warm-up epoch
    cfg.OPTIM.NAME, cfg.OPTIM.LR, cfg.OPTIM.MAX_EPOCH, cfg.OPTIM.LR_SCHEDULER = "sgd", 0.002, 20, "cosine"
    cfg.OPTIM.WARMUP_EPOCH, cfg.OPTIM.WARMUP_TYPE, cfg.OPTIM.WARMUP_CONS_LR = 1, "constant", 1e-5
    return cfg.OPTIM


def save_as_reference(directory, folder, state, trainable, epoch=EPOCH, optim_cfg=None, **extra):
    """Save `state` as the reference's Dassl trainer does after `epoch` epochs (plus `extra` entries). Its
    optimiser covers every parameter of `state` (MaPLe, PromptSRC, PromptKD: `build_optimizer(self.model)`)
    and has stepped, so it holds momentum buffers."""
    from dassl.optim import build_lr_scheduler, build_optimizer
    from dassl.utils import save_checkpoint
    from torch.optim.lr_scheduler import LRScheduler

    model = module_tree(state, trainable)
    optim_cfg = optim_cfg or dassl_optim_cfg()
    optim = build_optimizer(model, optim_cfg)
    sched = build_lr_scheduler(optim, optim_cfg)
    for _ in range(epoch):
        for name, param in model.named_parameters():
            param.grad = torch.randn_like(param) if name in trainable else None
        optim.step()
        sched.step()
    with torch.no_grad():  # the values the run ended with
        for name, param in model.named_parameters():
            param.copy_(state[name])
    save_checkpoint(
        {"state_dict": model.state_dict(), "epoch": epoch, "optimizer": optim.state_dict(),
         "scheduler": LRScheduler.state_dict(sched),  # unpatched Dassl: the successor scheduler as an object
         "val_result": None, **extra},
        os.path.join(directory, folder),
    )
    return os.path.join(directory, folder, f"model.pth.tar-{epoch}")


@contextmanager
def saved_from_gpu():
    """torch.save tags every storage `cuda:0`, as on the GPU the references train on."""
    original = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        yield
    finally:
        torch.serialization.location_tag = original


def fp16(tensor):
    return tensor.detach().half()


def round_to_fp16_(module):
    """Make a module's parameters fp16 values: the references store those prompts in fp16."""
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(param.half().float())


def gpa_fp16(tensor, epochs=20, mean=15, std=1):
    """PromptSRC's prompt averaging of a frozen fp16 weight: sum over epochs of w_e * weight, in fp16."""
    from trainers.gpa import gaussian_epoch_weights

    total = torch.zeros_like(fp16(tensor))
    for weight in gaussian_epoch_weights(epochs, mean, std):
        total = total + fp16(tensor) * weight
    return total


def frozen_state(clip_model, image_encoder="image_encoder", text=True, transform=fp16):
    """The whole-model checkpoints' frozen CLIP weights: CustomCLIP's image_encoder (CLIP's visual) and
    text_encoder (CLIP's transformer, positional_embedding, ln_final, text_projection); fp16 as PREC fp16."""
    state = {f"{image_encoder}.{key[len('visual.'):]}": transform(value)
             for key, value in clip_model.state_dict().items() if key.startswith("visual.")}
    if text:
        state.update({f"text_encoder.{key}": transform(value) for key, value in clip_model.state_dict().items()
                      if key.split(".")[0] in ("transformer", "ln_final", "positional_embedding", "text_projection")})
    return state


def class_buffers(learner, prefix="prompt_learner."):
    """The class-name buffers the references save (persistent there, rebuilt here)."""
    return {f"{prefix}token_prefix": fp16(learner.token_prefix), f"{prefix}token_suffix": fp16(learner.token_suffix)}


def coop_state(trainer):
    learner = trainer.model.prompt_learner
    return {"ctx": learner.ctx.detach().clone(), **class_buffers(learner, prefix="")}, {"ctx"}


def maple_state(trainer):
    learner = trainer.model.prompt_learner
    round_to_fp16_(learner)  # the reference's ctx (CLIP's dtype) and proj (.half()) are fp16
    prompts = {f"prompt_learner.{key}": value.detach().clone() for key, value in learner.state_dict().items()}
    for key in ("prompt_learner.ctx", "prompt_learner.proj.weight", "prompt_learner.proj.bias"):
        prompts[key] = fp16(prompts[key])
    state = {**prompts, **class_buffers(learner), **frozen_state(trainer.clip_model),
             "logit_scale": trainer.clip_model.logit_scale.detach().clone()}
    return state, set(prompts)


def ivlp_prompt_state(learner):
    """IVLPPrompts -> the keys of PromptSRC's CustomCLIP: ctx in the prompt learner, the others in CLIP's blocks."""
    state = {"prompt_learner.ctx": fp16(learner.ctx)}
    for layer, value in learner.vision_prompts.layer.items():
        key = "image_encoder.VPT" if layer == "0" else f"image_encoder.transformer.resblocks.{layer}.VPT_shallow"
        state[key] = value.detach().clone()
    for layer, value in learner.text_prompts.layer.items():
        state[f"text_encoder.transformer.resblocks.{layer}.VPT_shallow"] = value.detach().clone()
    return state


def promptsrc_state(trainer):
    learner = trainer.model.prompt_learner
    with torch.no_grad():
        learner.ctx.copy_(learner.ctx.half().float())
    prompts = ivlp_prompt_state(learner)
    clip_model = trainer.clip_model
    state = {**prompts, **class_buffers(learner), **frozen_state(clip_model, transform=gpa_fp16),
             **frozen_state(clip_model, "prompt_learner.ZS_image_encoder", text=False, transform=gpa_fp16),
             "logit_scale": clip_model.logit_scale.detach().clone()}
    return state, set(prompts)


def promptkd_state(trainer):
    model = trainer.model
    round_to_fp16_(model.projector)  # published: convert_weights(VPT_image_trans)
    prompts = {("image_encoder.VPT" if layer == "0" else f"image_encoder.transformer.resblocks.{layer}.VPT_shallow"):
               value.detach().clone() for layer, value in model.vision_prompts.layer.items()}
    projector = {}
    for key, value in model.projector.state_dict().items():
        if key.startswith(("0.", "3.")):  # Conv2d(in, out, 1), in fp16
            value = fp16(value[..., None, None] if value.dim() == 2 else value)
        projector[f"VPT_image_trans.conv1.{key}"] = value.detach().clone()
    state = {**prompts, **projector, **frozen_state(trainer.clip_model, text=False),
             "logit_scale": trainer.clip_model.logit_scale.detach().clone()}
    return state, set(prompts) | {key for key in projector if key.rsplit(".", 1)[-1] not in BUFFERS}


# Source models -----------------------------------------------------------------------------------------------

def build(synthetic_root, trainer, backbone, output_dir, *opts, subsample=BASE_OPTS):
    return build_cli_trainer(synthetic_root, trainer, backbone, str(output_dir), opts=(*subsample, *opts))


def randomise_prompts(trainer, seed=7):
    """Prompts unlike any initialisation, so that loading them is seen in the logits."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name in trainer.get_model_names():
            for param in trainer._models[name].parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


def sample_images(trainer, count=8):
    return next(iter(trainer.test_loader))["img"][:count]


@torch.no_grad()
def logits(trainer, images):
    trainer.set_model_mode("eval")
    with trainer.model.frozen_text_features() if hasattr(trainer.model, "frozen_text_features") else nullcontext():
        return trainer.model_inference(images.to(trainer.device))


def accuracy(trainer):
    """The `* accuracy:` value Dassl prints for the trainer's test split, as log_accuracy reads it."""
    return round(float(trainer.test()), 1)


def check_same_model(source, target, images):
    torch.testing.assert_close(logits(target, images), logits(source, images), rtol=0, atol=0)


def reference_file_holds_what_dassl_writes(path):
    """The file is one the project's weights-only loader refused: momentum buffers and the scheduler object."""
    from trainers import dassl_pickle

    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, map_location="cpu", weights_only=True)
    checkpoint = dassl_pickle.load_checkpoint(path)
    assert set(checkpoint) == {"state_dict", "epoch", "optimizer", "scheduler", "val_result"}
    successor = checkpoint["scheduler"]["successor"]
    assert successor.pickled_class == "torch.optim.lr_scheduler.CosineAnnealingLR"
    optimiser = successor.state["optimizer"]
    assert optimiser.pickled_class == "torch.optim.sgd.SGD"
    assert isinstance(optimiser.state["state"], collections.defaultdict)
    assert any("momentum_buffer" in state for state in optimiser.state["state"].values())
    return checkpoint


# The methods -------------------------------------------------------------------------------------------------

def test_coop_checkpoint_evaluates_on_new_classes_as_its_prompts(synthetic_root, tiny_student, tmp_path):
    """CoOp's prompt_learner/ carries over as is; its class-name buffers (base classes) are rebuilt for new."""
    source = build(synthetic_root, "CoOp", tiny_student, tmp_path / "base")
    randomise_prompts(source)
    state, trainable = coop_state(source)
    path = save_as_reference(tmp_path / "coop", "prompt_learner", state, trainable)
    reference_file_holds_what_dassl_writes(path)
    assert state["token_prefix"].shape[0] == 5  # the base classes'

    on_new = build(synthetic_root, "CoOp", tiny_student, tmp_path / "new", subsample=NEW_OPTS)
    images = sample_images(on_new)
    before = logits(on_new, images)
    on_new.model.prompt_learner.ctx.data.copy_(state["ctx"])
    expected, expected_accuracy = logits(on_new, images), accuracy(on_new)
    assert not torch.allclose(before, expected)

    target = build(synthetic_root, "CoOp", tiny_student, tmp_path / "target", subsample=NEW_OPTS)
    target.load_model(str(tmp_path / "coop"), epoch=EPOCH)
    torch.testing.assert_close(logits(target, images), expected, rtol=0, atol=0)
    train(synthetic_root, tmp_path / "eval", "CoOp", tiny_student, *NEW_OPTS, eval_only_from=tmp_path / "coop")
    assert log_accuracy(tmp_path / "eval") == expected_accuracy


def test_maple_checkpoint_from_a_gpu_run_evaluates_as_its_prompts(synthetic_root, tiny_student, tmp_path):
    source = build(synthetic_root, "MaPLe", tiny_student, tmp_path / "source")
    randomise_prompts(source)
    state, trainable = maple_state(source)
    with saved_from_gpu():
        path = save_as_reference(tmp_path / "maple", "MultiModalPromptLearner", state, trainable)
    assert b"cuda:0" in open(path, "rb").read()
    checkpoint = reference_file_holds_what_dassl_writes(path)
    assert {"prompt_learner.compound_prompts_text.0", "prompt_learner.compound_prompt_projections.0.weight",
            "prompt_learner.proj.weight", "image_encoder.conv1.weight", "text_encoder.ln_final.weight",
            "logit_scale"} <= set(checkpoint["state_dict"])

    target = build(synthetic_root, "MaPLe", tiny_student, tmp_path / "target")
    images = sample_images(target)
    assert not torch.allclose(logits(target, images), logits(source, images))
    target.load_model(str(tmp_path / "maple"), epoch=EPOCH)
    check_same_model(source, target, images)
    train(synthetic_root, tmp_path / "eval", "MaPLe", tiny_student, *BASE_OPTS, eval_only_from=tmp_path / "maple")
    assert log_accuracy(tmp_path / "eval") == accuracy(source)


def test_promptsrc_checkpoint_with_fp16_averaged_frozen_weights_evaluates_as_its_prompts(
        synthetic_root, tiny_student, tmp_path):
    from trainers.checkpoint_import import FROZEN_TOLERANCE

    source = build(synthetic_root, "PromptSRC", tiny_student, tmp_path / "source")
    randomise_prompts(source)
    state, trainable = promptsrc_state(source)
    path = save_as_reference(tmp_path / "promptsrc", "VLPromptLearner", state, trainable)
    checkpoint = reference_file_holds_what_dassl_writes(path)
    averaged = checkpoint["state_dict"]["prompt_learner.ZS_image_encoder.conv1.weight"].float()
    ours = source.clip_model.visual.conv1.weight.float()
    assert 1e-4 < float((averaged - ours).norm() / ours.norm()) < FROZEN_TOLERANCE  # the averaging's rounding

    target = build(synthetic_root, "PromptSRC", tiny_student, tmp_path / "target")
    images = sample_images(target)
    target.load_model(str(tmp_path / "promptsrc"), epoch=EPOCH)
    check_same_model(source, target, images)
    train(synthetic_root, tmp_path / "eval", "PromptSRC", tiny_student, *BASE_OPTS,
          eval_only_from=tmp_path / "promptsrc")
    assert log_accuracy(tmp_path / "eval") == accuracy(source)


@pytest.fixture(scope="module")
def published_teacher(synthetic_root, tiny_teacher, tmp_path_factory):
    """A PromptKD teacher folder as published: PromptSRC's code on the teacher CLIP, VLPromptLearner/."""
    directory = tmp_path_factory.mktemp("teacher_model")
    teacher = build(synthetic_root, "PromptSRC", tiny_teacher, directory / "run", subsample=())
    randomise_prompts(teacher, seed=3)
    state, trainable = promptsrc_state(teacher)
    # PromptKD's teachers also save token_prefix2 / token_suffix2
    state.update({f"{key}2": value for key, value in class_buffers(teacher.model.prompt_learner).items()})
    save_as_reference(directory, "VLPromptLearner", state, trainable)
    return directory


def test_promptkd_student_evaluates_with_its_published_teacher(
        synthetic_root, tiny_student, tiny_teacher, published_teacher, tmp_path):
    teacher_opts = ("TRAINER.PROMPTKD.TEACHER_BACKBONE", tiny_teacher,
                    "TRAINER.PROMPTKD.TEACHER_DIR", str(published_teacher), "TRAINER.PROMPTKD.TEACHER_EPOCH", "2")
    source = build(synthetic_root, "PromptKD", tiny_student, tmp_path / "source", *teacher_opts)
    source.prepare_training()  # the teacher's text features, and the projector
    randomise_prompts(source)
    with torch.no_grad():
        source.model.projector[1].running_var.uniform_(0.5, 2.0)
    state, trainable = promptkd_state(source)
    path = save_as_reference(tmp_path / "promptkd", "VLPromptLearner", state, trainable)
    reference_file_holds_what_dassl_writes(path)

    target = build(synthetic_root, "PromptKD", tiny_student, tmp_path / "target", *teacher_opts)
    images = sample_images(target)
    target.load_model(str(tmp_path / "promptkd"), epoch=EPOCH)
    check_same_model(source, target, images)
    train(synthetic_root, tmp_path / "eval", "PromptKD", tiny_student, *BASE_OPTS, *teacher_opts,
          eval_only_from=tmp_path / "promptkd")
    assert log_accuracy(tmp_path / "eval") == accuracy(source)

    without_teacher = build(synthetic_root, "PromptKD", tiny_student, tmp_path / "bare")
    with pytest.raises(ValueError, match="stores no teacher text features: set TRAINER.PROMPTKD.TEACHER_BACKBONE"):
        without_teacher.load_model(str(tmp_path / "promptkd"), epoch=EPOCH)


def test_published_teacher_of_another_clip_is_named(published_teacher, tiny_student):
    from trainers.online_teacher import read_teacher_prompts
    from trainers.clip_loading import load_clip

    with pytest.raises(ValueError, match=r"trained with another CLIP: its frozen weight '[\w.]*image_encoder\.[\w.]+' "
                                         r"has shape .*\(this run's teacher CLIP is 'student\.pt'\)"):
        read_teacher_prompts(str(published_teacher), 2, load_clip(tiny_student), "student.pt")



def test_the_published_cross_dataset_teacher_folder_is_read_as_is(published_teacher, tiny_teacher, tmp_path):
    """PromptKD's README publishes its cross-dataset teacher as ImageNet-xd/VLPromptLearner_large/model.pth.tar-20."""
    from trainers.checkpoint_import import published_layout, reference_folders
    from trainers.clip_loading import load_clip
    from trainers.online_teacher import read_teacher_prompts, teacher_checkpoint

    cross = tmp_path / "ImageNet-xd"
    shutil.copytree(published_teacher / "VLPromptLearner", cross / "VLPromptLearner_large")
    path, layout = teacher_checkpoint(str(cross), EPOCH)
    assert (path, layout.folder) == (str(cross / "VLPromptLearner_large" / f"model.pth.tar-{EPOCH}"),
                                     "VLPromptLearner_large")
    clip_model = load_clip(tiny_teacher)
    prompts, read_from = read_teacher_prompts(str(cross), EPOCH, clip_model, "teacher.pt")
    expected, _ = read_teacher_prompts(str(published_teacher), EPOCH, clip_model, "teacher.pt")
    assert read_from == path and prompts.keys() == expected.keys()
    assert all(torch.equal(value, expected[key]) for key, value in prompts.items())
    assert published_layout("PromptSRC", str(cross), ["prompt_learner", "gpa"]).folder == "VLPromptLearner_large"
    assert reference_folders(str(cross)) == ["VLPromptLearner_large/ (PromptSRC, IVLP)"]
    with pytest.raises(FileNotFoundError, match=r"holds neither prompt_learner/ \(a PromptSRC run of train\.py\) nor "
                                                r"VLPromptLearner/ or VLPromptLearner_large/ \(a published PromptKD "
                                                r"teacher\)"):
        teacher_checkpoint(str(tmp_path), EPOCH)


def test_a_coop_run_of_the_reference_code_resumes_with_its_momentum_and_schedule(
        synthetic_root, tiny_student, tmp_path):
    from trainers import dassl_pickle

    source = build(synthetic_root, "CoOp", tiny_student, tmp_path / "source")
    randomise_prompts(source)
    state, trainable = coop_state(source)
    reference = tmp_path / "coop"
    path = save_as_reference(reference, "prompt_learner", state, trainable, epoch=1, optim_cfg=source.cfg.OPTIM)
    written = dassl_pickle.load_checkpoint(path)

    resumed = build(synthetic_root, "CoOp", tiny_student, tmp_path / "resumed")
    assert resumed.resume_model_if_exist(str(reference)) == 1
    assert torch.equal(resumed.model.prompt_learner.ctx, state["ctx"])
    momentum = resumed._optims["prompt_learner"].state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, written["optimizer"]["state"][0]["momentum_buffer"])
    schedule = resumed._scheds["prompt_learner"]
    assert (schedule.last_epoch, schedule.successor.last_epoch) == (1, written["scheduler"]["successor"].state[
        "last_epoch"])
    assert schedule.get_last_lr() == written["scheduler"]["_last_lr"] != [source.cfg.OPTIM.WARMUP_CONS_LR]

    args = train_args(synthetic_root, tmp_path / "out", "CoOp", tiny_student)
    result = run_script("train.py", *args, "--resume", str(reference), *BASE_OPTS)
    assert "a run of the reference code" in result.stdout
    assert "Found checkpoints of epoch 1" in (tmp_path / "out" / "log.txt").read_text()
    assert (tmp_path / "out" / "prompt_learner" / "model.pth.tar-2").is_file() and os.path.isfile(path)

    in_place = train_args(synthetic_root, reference, "CoOp", tiny_student)  # its files would be pruned
    refused = subprocess.run([sys.executable, "train.py", *in_place, *BASE_OPTS], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert refused.returncode == 2 and "but no run_config.yaml" in refused.stderr


# Refusals ----------------------------------------------------------------------------------------------------

def test_checkpoint_of_another_clip_is_named_as_such(synthetic_root, tiny_student, tmp_path):
    from trainers.clip_loading import load_clip

    other = str(tmp_path / "other.pt")
    run_script("scripts/make_tiny_clip.py", "--out", other, "--seed", "5")

    source = build(synthetic_root, "MaPLe", tiny_student, tmp_path / "source")
    state, trainable = maple_state(source)
    state.update(frozen_state(load_clip(other)))  # the same architecture, another CLIP's weights
    save_as_reference(tmp_path / "maple", "MultiModalPromptLearner", state, trainable)
    with pytest.raises(ValueError, match=r"trained with another CLIP: its frozen weights differ from this run's "
                                         r"CLIP \(relative difference [0-9.]+ in '[\w.]+'"):
        source.load_model(str(tmp_path / "maple"), epoch=EPOCH)


def test_checkpoint_of_another_method_or_setting_is_named(synthetic_root, tiny_student, tmp_path):
    coop = build(synthetic_root, "CoOp", tiny_student, tmp_path / "coop")
    state, trainable = coop_state(coop)
    width = state["ctx"].shape[-1]
    state.update({  # CoCoOp's prompt_learner/: the same folder, plus its meta-network
        "meta_net.linear1.weight": torch.randn(width // 16, width), "meta_net.linear1.bias": torch.zeros(width // 16),
        "meta_net.linear2.weight": torch.randn(width, width // 16), "meta_net.linear2.bias": torch.zeros(width),
    })
    save_as_reference(tmp_path / "cocoop", "prompt_learner", state, trainable | {"meta_net.linear1.weight"})
    with pytest.raises(ValueError, match=r"for this run's 'prompt_learner' it holds meta_net\.linear1\.bias"):
        coop.load_model(str(tmp_path / "cocoop"), epoch=EPOCH)

    promptsrc = build(synthetic_root, "PromptSRC", tiny_student, tmp_path / "promptsrc")
    state, trainable = promptsrc_state(promptsrc)
    save_as_reference(tmp_path / "src", "VLPromptLearner", state, trainable)
    with pytest.raises(FileNotFoundError, match=r"No 'prompt_learner' folder in .*src, which holds VLPromptLearner/ "
                                                r"\(PromptSRC, IVLP, PromptKD\) of the reference code: CoOp does not "
                                                r"read"):
        coop.load_model(str(tmp_path / "src"), epoch=EPOCH)
    promptkd = build(synthetic_root, "PromptKD", tiny_student, tmp_path / "promptkd",
                     "TRAINER.PROMPTKD.TEACHER_BACKBONE", tiny_student)
    with pytest.raises(ValueError, match=r"holds 'prompt_learner\.\w+', which a PromptKD checkpoint "
                                         r"\(VLPromptLearner/\) does not \(a key of (MaPLe and )?PromptSRC"):
        promptkd.load_model(str(tmp_path / "src"), epoch=EPOCH)

    deeper = build(synthetic_root, "PromptSRC", tiny_student, tmp_path / "deeper",
                   "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "1")
    with pytest.raises(ValueError, match=r"it holds text_prompts\.layer\.1\. It was trained with another method or "
                                         r"prompt setting"):
        deeper.load_model(str(tmp_path / "src"), epoch=EPOCH)


class Payload:
    """Writes a file when unpickled: the test that it never runs."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_carrying_another_global_is_refused_and_runs_nothing(synthetic_root, tiny_student, tmp_path):
    source = build(synthetic_root, "MaPLe", tiny_student, tmp_path / "source")
    state, trainable = maple_state(source)
    marker = tmp_path / "payload-ran"
    path = save_as_reference(tmp_path / "maple", "MultiModalPromptLearner", state, trainable, payload=Payload(marker))
    from trainers import dassl_pickle

    assert dassl_pickle.written_by_unpatched_dassl(path)  # so the allow-list, not torch's loader, refuses it

    args = train_args(synthetic_root, tmp_path / "eval", "MaPLe", tiny_student)
    result = subprocess.run(
        [sys.executable, "train.py", *args, "--eval-only", "--model-dir", str(tmp_path / "maple"),
         "--load-epoch", str(EPOCH), *BASE_OPTS],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    assert result.returncode == 2, result.stderr
    assert "contains pickled Python objects" in result.stderr and "(posix.system)" in result.stderr
    assert not marker.exists()


def test_the_allow_list_admits_exact_pairs_only():
    from trainers import dassl_pickle

    def unpickle(obj, protocol=2):
        return dassl_pickle.Unpickler(io.BytesIO(pickle.dumps(obj, protocol=protocol))).load()

    assert unpickle(collections.OrderedDict(a=1)) == {"a": 1}
    assert unpickle(collections.defaultdict(dict, {1: {}})).default_factory is dict
    for obj in (torch.optim.SGD.__init__, collections.OrderedDict.fromkeys, getattr, os.system):
        with pytest.raises(pickle.UnpicklingError, match="is not allowed in a Dassl checkpoint"):
            unpickle(obj, protocol=4)  # protocol 4 names dotted paths inside an allowed module


def test_each_layout_sorts_prompts_frozen_weights_and_class_buffers():
    from trainers.checkpoint_import import PROMPTKD, PROMPTSRC

    prompts, frozen = PROMPTSRC.sort({
        "prompt_learner.ctx": torch.ones(4, 8),
        "prompt_learner.token_prefix": torch.zeros(3, 1, 8),
        "image_encoder.VPT": torch.full((4, 16), 2.0),
        "image_encoder.transformer.resblocks.1.VPT_shallow": torch.full((4, 16), 3.0),
        "image_encoder.transformer.resblocks.1.attn.in_proj_weight": torch.zeros(48, 16),
        "text_encoder.transformer.resblocks.1.VPT_shallow": torch.full((4, 8), 4.0),
        "text_encoder.positional_embedding": torch.zeros(77, 8),
        "prompt_learner.ZS_image_encoder.conv1.weight": torch.zeros(16, 3, 8, 8),
    }, "file")
    assert {key: float(value.flatten()[0]) for key, value in prompts["prompt_learner"].items()} == {
        "ctx": 1.0, "vision_prompts.layer.0": 2.0, "vision_prompts.layer.1": 3.0, "text_prompts.layer.1": 4.0}
    assert [weight.clip_key for weight in frozen] == [
        "visual.transformer.resblocks.1.attn.in_proj_weight", "positional_embedding", "visual.conv1.weight"]
    prompts, _ = PROMPTKD.sort({"VPT_image_trans.conv1.0.weight": torch.ones(6, 4, 1, 1),
                                "VPT_image_trans.conv1.1.running_var": torch.ones(6)}, "file")
    assert {key: tuple(value.shape) for key, value in prompts["projector"].items()} == {
        "0.weight": (6, 4), "1.running_var": (6,)}
