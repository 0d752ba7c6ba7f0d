"""IVLP, language-only IVLP, VPT and VPT_FDBPL (MaPLe's repository's baselines): prompts at the published depths,
training and evaluation through train.py, checkpoints of the reference code, and its scripts/<method>/ wrappers."""
import os

import pytest
import torch
import torch.nn.functional as F

from tests.cli_runs import BASE_OPTS, SYNTHETIC, config_path, log_accuracies, log_accuracy, train
from tests.cli_runs import build_trainer as build_cli_trainer
from tests.conftest import requires_dassl, run_script
from tests.test_checkpoint_import import (
    EPOCH, accuracy, check_same_model, class_buffers, coop_state, frozen_state, ivlp_prompt_state, logits,
    randomise_prompts, reference_file_holds_what_dassl_writes, sample_images, save_as_reference,
)

pytestmark = requires_dassl

NEW_OPTS = ("DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "new")
LANGUAGE_ONLY = ("TRAINER.IVLP.N_CTX_VISION", "0", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "0")
# This project's keys of each trainer's `prompt_learner` with the tiny_ep2 configs (2 layers, depth 2).
TINY_KEYS = {
    "IVLP": {"ctx", "text_prompts.layer.1", "vision_prompts.layer.0", "vision_prompts.layer.1"},
    "VPT": {"layer.0", "layer.1"},
}


def build(synthetic_root, trainer, backbone, output_dir, *opts, config=None, subsample=BASE_OPTS):
    return build_cli_trainer(synthetic_root, trainer, backbone, str(output_dir), config, opts=(*subsample, *opts))


@pytest.fixture(scope="module")
def vit_clip(tmp_path_factory):
    """A ViT-shaped tiny CLIP (224 px, patch 32, 12 layers in each tower), so the published configs' depths fit."""
    path = tmp_path_factory.mktemp("vit_clip") / "vit.pt"
    run_script("scripts/make_tiny_clip.py", "--out", str(path), "--layers", "12", "--patch", "32",
               "--image-size", "224", "--seed", "3")
    return str(path)


def plain_clip(backbone):
    from trainers.clip_loading import load_clip

    return load_clip(backbone, "fp32", "cpu")


def zero_shot_text(clip_model, classnames, words="a photo of a"):
    """CLIP's own encode_text of "<words> <class>.", normalised: the published VPT's fixed class features."""
    from clip import clip

    tokens = clip.tokenize([f"{words} {name.replace('_', ' ')}." for name in classnames])
    with torch.no_grad():
        return F.normalize(clip_model.encode_text(tokens).float(), dim=-1)


# Prompts at the published depths -----------------------------------------------------------------------------

class BlockRecorder:
    """Each block's input, as it enters the block after every pre-hook (the injector's included), and output."""

    def __init__(self, blocks):
        self.inputs, self.outputs = {}, {}
        self.handles = []
        for layer, block in enumerate(blocks):
            self.handles.append(block.register_forward_pre_hook(
                lambda module, args, layer=layer: self.inputs.__setitem__(layer, args[0].detach().clone())))
            self.handles.append(block.register_forward_hook(
                lambda module, args, output, layer=layer: self.outputs.__setitem__(layer, output.detach().clone())))

    def replaced_layers(self):
        """Layers whose input is not the previous block's output: where prompts were put in."""
        return [layer for layer in range(1, len(self.inputs)) if not torch.equal(self.inputs[layer],
                                                                                  self.outputs[layer - 1])]

    def remove(self):
        for handle in self.handles:
            handle.remove()


def record_towers(model, image):
    """(vision BlockRecorder, text BlockRecorder or None, image features, text features) of one forward."""
    vision = BlockRecorder(model.image_encoder.transformer.resblocks)
    text = BlockRecorder(model.text_encoder.transformer.resblocks)
    with torch.no_grad():
        image_features, text_features = model.encode_image(image), model.encode_text()
    vision.remove()
    text.remove()
    return vision, text if text.inputs else None, image_features, text_features


PUBLISHED = [  # trainer, config, overrides, (vision tokens, depth), (text tokens, depth) or None for fixed texts
    ("IVLP", "vit_b16_c2_ep5_batch4_2+2ctx", (), (2, 12), (2, 12)),
    ("IVLP", "vit_b16_c2_ep5_batch4_4ctx_language_only", (), (0, 0), (4, 12)),
    ("VPT", "vit_b16_c2_ep5_batch4_4", (), (8, 12), None),
    ("IVLP", "vit_b16_c2_ep5_batch4_2+2ctx",
     ("TRAINER.IVLP.PROMPT_DEPTH_VISION", "9", "TRAINER.IVLP.PROMPT_DEPTH_TEXT", "5"), (2, 9), (2, 5)),
    ("VPT", "vit_b16_c2_ep5_batch4_4", ("TRAINER.VPT.PROMPT_DEPTH_VISION", "1"), (8, 1), None),
]


@pytest.mark.parametrize("trainer_name, config, opts, vision, text", PUBLISHED,
                         ids=[f"{case[1]}{'-' + '-'.join(case[2][1::2]) if case[2] else ''}" for case in PUBLISHED])
def test_published_configs_put_prompts_exactly_at_their_depths(
        synthetic_root, vit_clip, tmp_path, trainer_name, config, opts, vision, text):
    trainer = build(synthetic_root, trainer_name, vit_clip, tmp_path, *opts, "DATALOADER.NUM_WORKERS", "0",
                    config=config_path(trainer_name, f"{config}.yaml"))
    model, clip_model = trainer.model, plain_clip(vit_clip)
    randomise_prompts(trainer)
    image = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    prompted = record_towers(model, image)
    with model.injector.disabled():
        unprompted = record_towers(model, image)
    vision_blocks, text_blocks, image_features, text_features = prompted

    n_vision, depth_vision = vision
    vision_prompts = model.prompt_learner if trainer_name == "VPT" else model.prompt_learner.vision_prompts
    assert vision_blocks.replaced_layers() == list(range(1, depth_vision))
    patches = (224 // 32) ** 2 + 1
    assert vision_blocks.inputs[0].shape[0] == patches + (n_vision if depth_vision else 0)
    for layer in range(1, depth_vision):
        expected = vision_prompts(layer)[:, None].expand(-1, 2, -1)
        assert torch.equal(vision_blocks.inputs[layer][patches:], expected), layer
    if depth_vision == 0:
        assert torch.equal(image_features, unprompted[2])
    else:
        assert not torch.allclose(image_features, unprompted[2])
    torch.testing.assert_close(unprompted[2], F.normalize(clip_model.encode_image(image), dim=-1))

    if text is None:  # VPT: the text tower never runs, and its fixed features are zero-shot CLIP's
        assert text_blocks is None
        torch.testing.assert_close(text_features.float(), zero_shot_text(clip_model, trainer.dm.dataset.classnames))
        return
    n_text, depth_text = text
    learner = model.prompt_learner
    assert text_blocks.replaced_layers() == list(range(1, depth_text))
    first = text_blocks.inputs[0][1:1 + n_text]
    torch.testing.assert_close(first, (learner.ctx + clip_model.positional_embedding[1:1 + n_text])[:, None]
                               .expand_as(first))
    for layer in range(1, depth_text):
        context = text_blocks.inputs[layer][1:1 + n_text]
        assert torch.equal(context, learner.text_prompts(layer)[:, None].expand_as(context)), layer
    assert not torch.allclose(text_features, unprompted[3])


def test_language_only_ivlp_has_no_vision_prompts_and_the_published_init(synthetic_root, vit_clip, tmp_path):
    from clip import clip

    trainer = build(synthetic_root, "IVLP", vit_clip, tmp_path, "DATALOADER.NUM_WORKERS", "0",
                    config=config_path("IVLP", "vit_b16_c2_ep5_batch4_4ctx_language_only.yaml"))
    learner = trainer.model.prompt_learner
    assert set(learner.state_dict()) == {"ctx", *(f"text_prompts.layer.{layer}" for layer in range(1, 12))}
    assert learner.prompt_prefix == "a photo of a"
    with torch.no_grad():  # the 4 learnable tokens start as the words' embeddings
        words = plain_clip(vit_clip).token_embedding(clip.tokenize("a photo of a"))[0, 1:5]
    assert torch.equal(learner.ctx, words)


# Training and evaluation through train.py ----------------------------------------------------------------------

@pytest.mark.parametrize("trainer_name", sorted(TINY_KEYS))
def test_trains_on_base_and_evaluates_on_new(synthetic_root, tiny_student, tmp_path, trainer_name):
    base = tmp_path / "base"
    result = train(synthetic_root, base, trainer_name, tiny_student, *BASE_OPTS)
    checkpoint = base / "prompt_learner" / "model.pth.tar-2"
    assert sorted(path.name for path in base.iterdir() if (path / "checkpoint").is_file()) == ["prompt_learner"]
    assert set(torch.load(checkpoint, weights_only=True)["state_dict"]) == TINY_KEYS[trainer_name]
    assert "# classes  5" in (base / "log.txt").read_text() and " loss " in result.stdout

    result = train(synthetic_root, tmp_path / "new", trainer_name, tiny_student, *NEW_OPTS, eval_only_from=base)
    assert f"Loaded {checkpoint}" in result.stdout and "# classes  5" in (tmp_path / "new" / "log.txt").read_text()
    assert 0.0 <= log_accuracy(tmp_path / "new") <= 100.0
    train(synthetic_root, tmp_path / "again", trainer_name, tiny_student, *BASE_OPTS, eval_only_from=base)
    assert log_accuracies(tmp_path / "again") == log_accuracies(base)[-1:]


@pytest.mark.parametrize("trainer_name, opts", [("IVLP", ()), ("IVLP", LANGUAGE_ONLY), ("VPT", ())],
                         ids=["IVLP", "IVLP-language-only", "VPT"])
def test_a_step_changes_every_prompt_and_no_clip_weight(synthetic_root, tiny_student, tmp_path, trainer_name, opts):
    trainer = build(synthetic_root, trainer_name, tiny_student, tmp_path, *opts)
    model = trainer.model
    prompts = {f"prompt_learner.{key}" for key in model.prompt_learner.state_dict()}
    assert {name for name, param in model.named_parameters() if param.requires_grad} == prompts
    optimised = {id(param) for group in trainer._optims["prompt_learner"].param_groups for param in group["params"]}
    assert optimised == {id(param) for param in model.prompt_learner.parameters()}
    before = {key: value.clone() for key, value in model.state_dict().items()}
    text_before = model.encode_text().detach().clone()

    trainer.batch_idx, trainer.num_batches = 0, 10
    assert trainer.forward_backward(next(iter(trainer.train_loader_x)))["loss"] > 0
    after = model.state_dict()
    assert {key for key in before if not torch.equal(before[key], after[key])} == prompts
    assert torch.equal(model.encode_text(), text_before) == (trainer_name == "VPT")


def test_vpt_class_texts_are_zero_shot_clips_with_its_ctx_init(synthetic_root, tiny_student, tmp_path):
    clip_model = plain_clip(tiny_student)
    vpt = build(synthetic_root, "VPT", tiny_student, tmp_path / "vpt")
    zero_shot = build(synthetic_root, "ZeroshotCLIP", tiny_student, tmp_path / "zs",
                      config=config_path("ZeroshotCLIP", "tiny.yaml"))  # Synthetic's template: "a photo of a {}."
    classnames = vpt.dm.dataset.classnames
    torch.testing.assert_close(vpt.model.encode_text(), zero_shot_text(clip_model, classnames))
    torch.testing.assert_close(vpt.model.encode_text(), zero_shot.text_features)
    drawing = build(synthetic_root, "VPT", tiny_student, tmp_path / "drawing", "TRAINER.VPT.CTX_INIT", "a_drawing of a")
    torch.testing.assert_close(drawing.model.encode_text(), zero_shot_text(clip_model, classnames, "a drawing of a"))


def test_vpt_fdbpl_trains_from_an_ril_table(synthetic_root, ril_table, tiny_student, tmp_path):
    base = tmp_path / "base"
    result = train(synthetic_root, base, "VPT_FDBPL", tiny_student, *BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE", ril_table)
    assert "Training from RIL table" in result.stdout and " pos " in result.stdout and " neg " not in result.stdout
    assert set(torch.load(base / "prompt_learner" / "model.pth.tar-2", weights_only=True)["state_dict"]) == {
        "layer.0", "layer.1"}
    train(synthetic_root, tmp_path / "new", "VPT_FDBPL", tiny_student, *NEW_OPTS, eval_only_from=base)
    assert 0.0 <= log_accuracy(tmp_path / "new") <= 100.0

    with pytest.raises(ValueError, match="VPT_FDBPL's class texts are fixed"):
        build(synthetic_root, "VPT_FDBPL", tiny_student, tmp_path / "dual", "TRAINER.FDBPL.DUAL_PROMPTS", "True")


# Checkpoints of the reference code ----------------------------------------------------------------------------

@pytest.mark.parametrize("opts", [(), LANGUAGE_ONLY], ids=["IVLP", "IVLP-language-only"])
def test_ivlp_checkpoint_evaluates_as_its_prompts(synthetic_root, tiny_student, tmp_path, opts):
    """VLPromptLearner/ as MaPLe's IVLP saves it: the whole fp16 model, ctx in fp16, the VPT prompts in fp32."""
    source = build(synthetic_root, "IVLP", tiny_student, tmp_path / "source", *opts)
    randomise_prompts(source)
    learner = source.model.prompt_learner
    with torch.no_grad():
        learner.ctx.copy_(learner.ctx.half().float())
    prompts = ivlp_prompt_state(learner)
    state = {**prompts, **class_buffers(learner), **frozen_state(source.clip_model),
             "logit_scale": source.clip_model.logit_scale.detach().clone()}
    path = save_as_reference(tmp_path / "ivlp", "VLPromptLearner", state, set(prompts))
    assert ("image_encoder.VPT" in reference_file_holds_what_dassl_writes(path)["state_dict"]) == (not opts)

    target = build(synthetic_root, "IVLP", tiny_student, tmp_path / "target", *opts)
    images = sample_images(target)
    assert not torch.allclose(logits(target, images), logits(source, images))
    target.load_model(str(tmp_path / "ivlp"), epoch=EPOCH)
    check_same_model(source, target, images)
    train(synthetic_root, tmp_path / "eval", "IVLP", tiny_student, *BASE_OPTS, *opts,
          eval_only_from=tmp_path / "ivlp")
    assert log_accuracy(tmp_path / "eval") == accuracy(source)


def vpt_reference_state(trainer):
    """The whole VPT model as MaPLe's VPT saves it under prompt_learner/: every weight fp32 (its CLIP is .float()),
    the vision prompts as image_encoder.VPT and image_encoder.transformer.resblocks.<l>.VPT_shallow."""
    prompts = {("image_encoder.VPT" if layer == "0" else f"image_encoder.transformer.resblocks.{layer}.VPT_shallow"):
               value.detach().clone() for layer, value in trainer.model.prompt_learner.layer.items()}
    clip_model = trainer.clip_model
    state = {**prompts, **frozen_state(clip_model, transform=lambda value: value.detach().float()),
             "logit_scale": clip_model.logit_scale.detach().clone()}
    return state, set(prompts)


def test_vpt_checkpoint_in_prompt_learner_evaluates_as_its_prompts(synthetic_root, tiny_student, tmp_path):
    source = build(synthetic_root, "VPT", tiny_student, tmp_path / "source")
    randomise_prompts(source)
    state, trainable = vpt_reference_state(source)
    path = save_as_reference(tmp_path / "vpt", "prompt_learner", state, trainable)
    reference_file_holds_what_dassl_writes(path)

    target = build(synthetic_root, "VPT", tiny_student, tmp_path / "target")
    images = sample_images(target)
    assert not torch.allclose(logits(target, images), logits(source, images))
    target.load_model(str(tmp_path / "vpt"), epoch=EPOCH)
    check_same_model(source, target, images)
    result = train(synthetic_root, tmp_path / "eval", "VPT", tiny_student, *NEW_OPTS, eval_only_from=tmp_path / "vpt")
    assert "VPT's layout" in result.stdout and "frozen CLIP weights checked" in result.stdout
    train(synthetic_root, tmp_path / "base", "VPT", tiny_student, *BASE_OPTS, eval_only_from=tmp_path / "vpt")
    assert log_accuracy(tmp_path / "base") == accuracy(source)


def test_vpt_checkpoint_of_another_clip_or_method_is_named(synthetic_root, tiny_student, tmp_path):
    source = build(synthetic_root, "VPT", tiny_student, tmp_path / "source")
    state, trainable = vpt_reference_state(source)
    state["image_encoder.conv1.weight"] = state["image_encoder.conv1.weight"] * 2
    save_as_reference(tmp_path / "other_clip", "prompt_learner", state, trainable)
    with pytest.raises(ValueError, match=r"trained with another CLIP: .* in 'image_encoder\.conv1\.weight'"):
        source.load_model(str(tmp_path / "other_clip"), epoch=EPOCH)

    state, trainable = vpt_reference_state(source)
    state["prompt_learner.ctx"] = torch.zeros(4, 64)  # a text context, which VPT has not
    save_as_reference(tmp_path / "text", "prompt_learner", state, trainable)
    with pytest.raises(ValueError, match=r"holds 'prompt_learner\.ctx', which a VPT checkpoint \(prompt_learner/\) "
                                         r"does not \(a key of MaPLe and PromptSRC checkpoints\)"):
        source.load_model(str(tmp_path / "text"), epoch=EPOCH)

    coop = build(synthetic_root, "CoOp", tiny_student, tmp_path / "coop")
    save_as_reference(tmp_path / "coop_run", "prompt_learner", *coop_state(coop))
    with pytest.raises(ValueError, match=r"for this run's 'prompt_learner' it holds ctx and lacks layer\.0, layer\.1"):
        source.load_model(str(tmp_path / "coop_run"), epoch=EPOCH)

    shallow = build(synthetic_root, "VPT", tiny_student, tmp_path / "shallow", "TRAINER.VPT.PROMPT_DEPTH_VISION", "1")
    save_as_reference(tmp_path / "deep", "prompt_learner", *vpt_reference_state(source))
    with pytest.raises(ValueError, match=r"it holds layer\.1\. It was trained with another method or prompt setting"):
        shallow.load_model(str(tmp_path / "deep"), epoch=EPOCH)


# The reference's scripts ---------------------------------------------------------------------------------------

# Language-only prompting is IVLP with another config: its base-to-new scripts run here, and the commands of all its
# scripts are compared with the reference's in tests/test_reference_cli.py.
FULL_RUNS = ("independent-vlp", "vpt")


@pytest.fixture(scope="module")
def wrapped(tiny_student, tmp_path_factory):
    """The script folders on the test suite's Synthetic with the tiny student, tiny_ep2 configs and 1 epoch:
    base-to-new (train, test), and for FULL_RUNS also reproduce_* on the train run as published weights and
    cross-dataset (xd_train on imagenet.yaml, a copy of Synthetic's, then xd_test). Language-only prompting runs
    with its vision depth 0."""
    from tests.test_reference_cli import wrapper

    data = str(tmp_path_factory.mktemp("data"))
    env = {"DATA": data, "CFG": "tiny_ep2", "BACKBONE": tiny_student, "DEVICE": "cpu"}
    folders = {}
    for folder, suffix, opts in (("independent-vlp", "ivlp", ()), ("language-prompting", "lp", LANGUAGE_ONLY),
                                 ("vpt", "vpt", ())):
        cwd = tmp_path_factory.mktemp(suffix)
        (cwd / "imagenet.yaml").write_text(open(SYNTHETIC).read())
        overrides = ("--", "OPTIM.MAX_EPOCH", "1", *opts)
        scripts = [("base2new_train", SYNTHETIC), ("base2new_test", SYNTHETIC)]
        if folder in FULL_RUNS:
            scripts += [("xd_train", str(cwd / "imagenet.yaml")), ("xd_test", SYNTHETIC)]
        for script, dataset in scripts:
            wrapper(f"{folder}/{script}_{suffix}.sh", dataset, "1", *overrides, cwd=cwd, env=env)
        if folder in FULL_RUNS:
            weights = cwd / "weights" / "base"
            weights.mkdir(parents=True)
            train_base = next((cwd / "output" / "base2new" / "train_base").glob("*/shots_16/*/*/seed1"))
            os.symlink(train_base, weights / "seed1")
            wrapper(f"{folder}/reproduce_{suffix}.sh", SYNTHETIC, "1", str(cwd / "weights"), *overrides, cwd=cwd,
                    env={**env, "OUT": "reproduced"})
        folders[folder] = cwd
    return folders


@pytest.mark.parametrize("folder, trainer_name", [("independent-vlp", "IVLP"), ("language-prompting", "IVLP"),
                                                  ("vpt", "VPT")])
def test_reference_scripts_run_end_to_end(wrapped, tiny_student, folder, trainer_name):
    from tests.test_reference_cli import checkpoint_tag, parse, row

    cwd, cfg = wrapped[folder], f"tiny_ep2_{checkpoint_tag(tiny_student)}"
    common = f"synthetic_small/shots_16/{trainer_name}/{cfg}/seed1"
    output = cwd / "output"
    base, new = (log_accuracy(output / "base2new" / split / common) for split in ("train_base", "test_new"))
    assert row(parse(str(output), "--trainers", trainer_name), "synthetic_small")[:2] == [
        f"{base:.2f} ± 0.00", f"{new:.2f} ± 0.00"]
    with open(output / "base2new" / "train_base" / common / "run_config.yaml") as handle:
        assert ("PROMPT_DEPTH_VISION: 0" in handle.read()) == (folder == "language-prompting")
    if folder not in FULL_RUNS:
        return
    reproduced = cwd / "reproduced" / "base2new"
    assert log_accuracy(reproduced / "test_base" / common) == base
    assert log_accuracy(reproduced / "test_new" / common) == new

    trained = output / "imagenet" / trainer_name / f"{cfg}_16shots" / "seed1"
    evaluated = output / "evaluation" / trainer_name / f"{cfg}_16shots" / "synthetic_small" / "seed1"
    assert (trained / "prompt_learner" / "model.pth.tar-1").is_file()
    assert 0.0 <= log_accuracy(evaluated) <= 100.0
