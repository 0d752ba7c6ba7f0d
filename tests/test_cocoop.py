"""CoCoOp and CoCoOp_FDBPL: the meta-net conditions each image's context, training and evaluation through train.py,
from RIL tables with and without negative prompts and from an online teacher, checkpoints and resumed runs of the CoOp
repository's code, and its scripts/cocoop/ wrappers."""
import os

import pytest
import torch
import torch.nn.functional as F

from tests.cli_runs import BASE_OPTS, SYNTHETIC, log_accuracies, log_accuracy, train, train_args
from tests.cli_runs import build_trainer as build_cli_trainer
from tests.conftest import requires_dassl, run_script
from tests.test_checkpoint_import import (
    EPOCH, accuracy, check_same_model, class_buffers, logits, randomise_prompts, reference_file_holds_what_dassl_writes,
    round_to_fp16_, sample_images, save_as_reference,
)

pytestmark = requires_dassl

NEW_OPTS = ("DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "new")
KEYS = {"ctx", "meta_net.linear1.weight", "meta_net.linear1.bias", "meta_net.linear2.weight", "meta_net.linear2.bias"}


def build(synthetic_root, trainer, backbone, output_dir, *opts, subsample=BASE_OPTS):
    return build_cli_trainer(synthetic_root, trainer, backbone, str(output_dir), opts=(*subsample, *opts))


@torch.no_grad()
def per_image_logits(model, clip_model, images):
    """CoCoOp's logits (B, C) written out image by image, as the reference computes them: the meta-net's shift
    added to the context, each image's C prompts through CLIP's own text transformer (all 77 tokens)."""
    learner, meta_net = model.prompt_learner, model.prompt_learner.meta_net
    tokens = learner.tokenized_prompts
    embedded = clip_model.token_embedding(tokens)
    rows = []
    for feature in F.normalize(clip_model.encode_image(images), dim=-1):
        prompts = embedded.clone()
        prompts[:, 1 : 1 + learner.n_ctx] = learner.ctx + meta_net.linear2(torch.relu(meta_net.linear1(feature)))
        x = clip_model.transformer((prompts + clip_model.positional_embedding).permute(1, 0, 2)).permute(1, 0, 2)
        text = clip_model.ln_final(x)[torch.arange(len(tokens)), tokens.argmax(dim=-1)] @ clip_model.text_projection
        rows.append(clip_model.logit_scale.exp() * feature @ F.normalize(text, dim=-1).t())
    return torch.stack(rows)


# The instance-conditioned context ------------------------------------------------------------------------------

@pytest.fixture
def cocoop(synthetic_root, tiny_student, tmp_path):
    trainer = build(synthetic_root, "CoCoOp", tiny_student, tmp_path)
    randomise_prompts(trainer)
    trainer.set_model_mode("eval")
    return trainer


def test_logits_are_each_images_own_prompts_whatever_the_images_per_text_pass(cocoop, monkeypatch):
    from trainers import cocoop as module

    model, images = cocoop.model, sample_images(cocoop, count=5)
    expected = per_image_logits(model, cocoop.clip_model, images)
    for prompts_per_pass in (module.TEXT_PASS_PROMPTS, 2 * model.prompt_learner.n_cls, 1):  # 1, 2+2+1, 5x1 images
        monkeypatch.setattr(module, "TEXT_PASS_PROMPTS", prompts_per_pass)
        with torch.no_grad():
            torch.testing.assert_close(model(images), expected, rtol=0, atol=1e-5)


def test_the_meta_net_conditions_the_class_features_on_the_image(cocoop):
    """Two images get different class text features; with the meta-net's output zeroed they get the same ones,
    CoOp's, and the logits change: they depend on the image beyond its image feature."""
    model, images = cocoop.model, sample_images(cocoop, count=2)
    with torch.no_grad():
        image_features = F.normalize(model.image_encoder(images), dim=-1)
        conditioned = model.conditioned_text_features(image_features)
        before = model(images)
        model.prompt_learner.meta_net.linear2.weight.zero_()
        model.prompt_learner.meta_net.linear2.bias.zero_()
        unconditioned = model.conditioned_text_features(image_features)
        after = model(images)
    assert (conditioned[0] - conditioned[1]).abs().max() > 1e-3
    torch.testing.assert_close(unconditioned[0], unconditioned[1], rtol=0, atol=1e-6)
    assert (before - after).abs().max() > 1e-2


def test_an_evaluation_batch_needs_few_text_passes(cocoop):
    """The reference encodes one image's prompts per pass, one pass per image of a test batch; here the batch's 5
    classes x 35 images fit in one pass, cut after the last EOT token."""
    model, images = cocoop.model, sample_images(cocoop, count=50)
    assert len(images) == 35
    lengths = []
    handle = model.text_encoder.transformer.resblocks[0].register_forward_pre_hook(
        lambda module, args: lengths.append(tuple(args[0].shape[:2])))
    with torch.no_grad():
        model(images)
    handle.remove()
    eot = int(model.prompt_learner.tokenized_prompts.argmax(dim=-1).max())
    assert lengths == [(eot + 1, len(images) * model.prompt_learner.n_cls)]


def test_a_step_trains_the_context_and_the_meta_net_only(synthetic_root, tiny_student, tmp_path):
    trainer = build(synthetic_root, "CoCoOp", tiny_student, tmp_path)
    model = trainer.model
    prompts = {f"prompt_learner.{key}" for key in KEYS}
    assert {name for name, param in model.named_parameters() if param.requires_grad} == prompts
    optimised = {id(param) for group in trainer._optims["prompt_learner"].param_groups for param in group["params"]}
    assert optimised == {id(param) for param in model.prompt_learner.parameters()}
    before = {key: value.clone() for key, value in model.state_dict().items()}
    trainer.batch_idx, trainer.num_batches = 0, 10
    assert trainer.forward_backward(next(iter(trainer.train_loader_x)))["loss"] > 0
    after = model.state_dict()
    assert {key for key in before if not torch.equal(before[key], after[key])} == prompts


# Training and evaluation through train.py ----------------------------------------------------------------------

def test_trains_on_base_and_evaluates_on_new(synthetic_root, tiny_student, tmp_path):
    base = tmp_path / "base"
    result = train(synthetic_root, base, "CoCoOp", tiny_student, *BASE_OPTS)
    checkpoint = base / "prompt_learner" / "model.pth.tar-2"
    assert sorted(path.name for path in base.iterdir() if (path / "checkpoint").is_file()) == ["prompt_learner"]
    assert set(torch.load(checkpoint, weights_only=True)["state_dict"]) == KEYS
    assert "epoch [2/2]" in result.stdout and " loss " in result.stdout

    result = train(synthetic_root, tmp_path / "new", "CoCoOp", tiny_student, *NEW_OPTS, eval_only_from=base)
    assert f"Loaded {checkpoint}" in result.stdout and "# classes  5" in (tmp_path / "new" / "log.txt").read_text()
    assert 0.0 <= log_accuracy(tmp_path / "new") <= 100.0
    train(synthetic_root, tmp_path / "again", "CoCoOp", tiny_student, *BASE_OPTS, eval_only_from=base)
    assert log_accuracies(tmp_path / "again") == log_accuracies(base)[-1:]


# From RIL tables ------------------------------------------------------------------------------------------------

DUAL = ("TRAINER.FDBPL.DUAL_PROMPTS", "True")
REGIONS = 12  # the ril_table fixture's regions per image, of 20 images (5 base classes x 4 shots)
# One batch per epoch holding every region of every image: epoch 2's loss is a function of the table and of the
# prompts epoch 1 saved, whatever order the loader draws.
WHOLE_TABLE = ("DATALOADER.TRAIN_X.BATCH_SIZE", str(20 * REGIONS), "TRAINER.FDBPL.REPEAT", str(REGIONS),
               "TRAIN.CHECKPOINT_FREQ", "1", "OPTIM.LR", "0.05")


def logged(output_dir, term):
    """The value of `term` that Dassl logged for the only batch of epoch 2."""
    import re

    match = re.search(rf"epoch \[2/2\] batch \[1/1\].* {term} ([0-9.]+) \(", (output_dir / "log.txt").read_text())
    assert match, f"no '{term}' in epoch 2's log line"
    return float(match.group(1))


def fdbpl_terms(logits_pos, logits_neg, prob, entropy, alpha=0.5):
    """L_pos (information-weighted forward and reverse KL to the teacher) and L_neg (the negative prompts' entropy
    below its maximum, weighted by the information the region lacks), written out for this test."""
    import math

    weight = 1 - entropy.double() / math.log(prob.shape[1])
    log_p, log_q = prob.double().log(), torch.log_softmax(logits_pos.double(), 1)
    forward, reverse = (prob * (log_p - log_q)).sum(1), (log_q.exp() * (log_q - log_p)).sum(1)
    pos = (weight * (alpha * forward + (1 - alpha) * reverse)).mean().item()
    if logits_neg is None:
        return pos, None
    log_n = torch.log_softmax(logits_neg.double(), 1)
    return pos, ((1 - weight) * ((log_n.exp() * log_n).sum(1) + math.log(prob.shape[1]))).mean().item()


@pytest.mark.parametrize("opts", [(), DUAL], ids=["pos", "dual"])
def test_cocoop_fdbpl_logs_the_fdbpl_loss_of_its_logits(synthetic_root, ril_table, tiny_student, tmp_path, opts):
    """Epoch 2's logged L_pos (and L_neg) equal the terms computed from the table's targets and the logits of the
    model epoch 1 saved (its negative context swapped in); then the run evaluates on the new classes."""
    from ril.region_dataset import RegionDataset, collate_regions
    from trainers.ril_supervision import swapped_context

    out = tmp_path / "run"
    result = train(synthetic_root, out, "CoCoOp_FDBPL", tiny_student, *BASE_OPTS, "TRAINER.FDBPL.RIL_TABLE",
                   ril_table, *WHOLE_TABLE, *opts)
    assert "Training from RIL table" in result.stdout and " diff2 " not in result.stdout
    assert all((f" {term} " in result.stdout) == bool(opts) for term in ("neg", "diff1"))
    assert (out / "prompt_learner_neg" / "model.pth.tar-2").is_file() == bool(opts)

    trainer = build(synthetic_root, "CoCoOp_FDBPL", tiny_student, tmp_path / "rebuilt", *opts)
    trainer.load_model(str(out), epoch=1)
    cfg = trainer.cfg
    dataset = RegionDataset(ril_table, cfg.DATASET.ROOT, cfg.INPUT.SIZE, cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD,
                            repeat=REGIONS)
    batch = collate_regions([dataset[i] for i in range(len(dataset))])
    model = trainer.model.eval()
    with torch.no_grad():
        logits_pos, logits_neg = model(batch["img"]), None
        if opts:
            with swapped_context(model.prompt_learner, trainer.negative_context.ctx):
                logits_neg = model(batch["img"])
    pos, neg = fdbpl_terms(logits_pos, logits_neg, batch["soft_label"], batch["entropy"])
    assert logged(out, "pos") == pytest.approx(pos, abs=1.5e-4)
    if opts:
        assert logged(out, "neg") == pytest.approx(neg, abs=1.5e-4)
        assert not torch.allclose(logits_pos, logits_neg, atol=1e-3)

    train(synthetic_root, tmp_path / "new", "CoCoOp_FDBPL", tiny_student, *NEW_OPTS, *opts, eval_only_from=out)
    assert 0.0 <= log_accuracy(tmp_path / "new") <= 100.0


def test_cocoop_fdbpl_trains_with_an_online_teacher(synthetic_root, tiny_student, tiny_teacher, tmp_path):
    """The official FDBPL code's CoCoOp_KDPL: the same losses against a teacher run on every batch, no table."""
    result = train(synthetic_root, tmp_path, "CoCoOp_FDBPL", tiny_student, *BASE_OPTS, *DUAL,
                   "TRAINER.FDBPL.TEACHER_SOURCE", "online", "TRAINER.FDBPL.TEACHER_BACKBONE", tiny_teacher)
    assert "(TRAINER.FDBPL.TEACHER_SOURCE online)" in result.stdout and "Training from RIL table" not in result.stdout
    assert all(f" {term} " in result.stdout for term in ("pos", "neg", "diff1"))
    assert (tmp_path / "prompt_learner_neg" / "model.pth.tar-2").is_file()
    assert 0.0 <= log_accuracy(tmp_path) <= 100.0


def test_cocoop_fdbpl_dual_prompts_need_lambda_diff2_zero(synthetic_root, tiny_student, tmp_path):
    with pytest.raises(ValueError, match=r"TRAINER\.FDBPL\.LAMBDA_DIFF2 is 0\.1, but L_diff2 compares class text "
                                         r"features, which ConditionalPromptedCLIP does not expose"):
        build(synthetic_root, "CoCoOp_FDBPL", tiny_student, tmp_path, *DUAL, "TRAINER.FDBPL.LAMBDA_DIFF2", "0.1")


# Checkpoints and runs of the CoOp repository's code -------------------------------------------------------------

def reference_state(trainer):
    """CoCoOp's prompt_learner/ as the reference saves it under PREC fp16: ctx (CLIP's dtype) and the meta-net
    (.half()) in fp16, the class-name buffers in its state dict's order, after ctx."""
    learner = trainer.model.prompt_learner
    round_to_fp16_(learner)
    meta_net = {f"meta_net.{key}": value.detach().half() for key, value in learner.meta_net.state_dict().items()}
    return {"ctx": learner.ctx.detach().half(), **class_buffers(learner, prefix=""), **meta_net}, KEYS


def test_reference_checkpoint_evaluates_as_the_model_it_came_from(synthetic_root, tiny_student, tmp_path):
    source = build(synthetic_root, "CoCoOp", tiny_student, tmp_path / "source")
    randomise_prompts(source)
    path = save_as_reference(tmp_path / "cocoop", "prompt_learner", *reference_state(source))
    written = reference_file_holds_what_dassl_writes(path)["state_dict"]
    assert list(written)[:3] == ["ctx", "token_prefix", "token_suffix"] and set(written) - KEYS == {
        "token_prefix", "token_suffix"}

    target = build(synthetic_root, "CoCoOp", tiny_student, tmp_path / "target")
    images = sample_images(target)
    assert not torch.allclose(logits(target, images), logits(source, images))
    target.load_model(str(tmp_path / "cocoop"), epoch=EPOCH)
    check_same_model(source, target, images)
    train(synthetic_root, tmp_path / "eval", "CoCoOp", tiny_student, *BASE_OPTS, eval_only_from=tmp_path / "cocoop")
    assert log_accuracy(tmp_path / "eval") == accuracy(source)


def test_a_reference_run_resumes_with_its_momentum_and_schedule(synthetic_root, tiny_student, tmp_path):
    """Its optimiser covers the prompt learner only, ctx then the meta-net, as this project's: momentum by position."""
    from trainers import dassl_pickle

    source = build(synthetic_root, "CoCoOp", tiny_student, tmp_path / "source")
    randomise_prompts(source)
    state, trainable = reference_state(source)
    reference = tmp_path / "cocoop"
    path = save_as_reference(reference, "prompt_learner", state, trainable, epoch=1, optim_cfg=source.cfg.OPTIM)
    written = dassl_pickle.load_checkpoint(path)

    resumed = build(synthetic_root, "CoCoOp", tiny_student, tmp_path / "resumed")
    assert resumed.resume_model_if_exist(str(reference)) == 1
    learner = resumed.model.prompt_learner
    for key, value in learner.state_dict().items():
        assert torch.equal(value, state[key].float()), key
    optimiser = resumed._optims["prompt_learner"]
    for index, param in enumerate(learner.parameters()):
        assert torch.equal(optimiser.state[param]["momentum_buffer"],
                           written["optimizer"]["state"][index]["momentum_buffer"].float())
    schedule = resumed._scheds["prompt_learner"]
    assert schedule.get_last_lr() == written["scheduler"]["_last_lr"] != [source.cfg.OPTIM.WARMUP_CONS_LR]

    args = train_args(synthetic_root, tmp_path / "out", "CoCoOp", tiny_student)
    run_script("train.py", *args, "--resume", str(reference), *BASE_OPTS)
    assert "Found checkpoints of epoch 1" in (tmp_path / "out" / "log.txt").read_text()
    assert (tmp_path / "out" / "prompt_learner" / "model.pth.tar-2").is_file() and os.path.isfile(path)


# The reference's scripts ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def wrapped(tiny_student, tmp_path_factory):
    """scripts/cocoop/ on the test suite's Synthetic with the tiny student, tiny_ep2 and 1 epoch: base-to-new (train,
    test) and cross-dataset (xd_train on imagenet.yaml, a copy of Synthetic's, as SOURCE_DATASET, then xd_test)."""
    from tests.test_reference_cli import wrapper

    cwd = tmp_path_factory.mktemp("cocoop")
    (cwd / "imagenet.yaml").write_text(open(SYNTHETIC).read())
    env = {"DATA": str(tmp_path_factory.mktemp("data")), "CFG": "tiny_ep2", "BACKBONE": tiny_student,
           "DEVICE": "cpu", "SOURCE_DATASET": str(cwd / "imagenet.yaml")}
    one_epoch = ("--", "OPTIM.MAX_EPOCH", "1")
    for script, *args in (("base2new_train.sh", SYNTHETIC, "1"), ("base2new_test.sh", SYNTHETIC, "1"),
                          ("xd_train.sh", "1"), ("xd_test.sh", SYNTHETIC, "1")):
        wrapper(f"cocoop/{script}", *args, *one_epoch, cwd=cwd, env=env)
    return cwd


def test_reference_scripts_run_end_to_end(wrapped, tiny_student):
    from tests.test_reference_cli import checkpoint_tag, parse, row

    cfg = f"tiny_ep2_{checkpoint_tag(tiny_student)}"
    output = wrapped / "output"
    common = f"synthetic_small/shots_16/CoCoOp/{cfg}/seed1"
    base, new = (log_accuracy(output / "base2new" / split / common) for split in ("train_base", "test_new"))
    assert row(parse(str(output), "--trainers", "CoCoOp"), "synthetic_small")[:2] == [
        f"{base:.2f} ± 0.00", f"{new:.2f} ± 0.00"]
    trained = output / "imagenet" / "CoCoOp" / f"{cfg}_16shots" / "seed1"
    assert (trained / "prompt_learner" / "model.pth.tar-1").is_file()
    evaluated = output / "evaluation" / "CoCoOp" / f"{cfg}_16shots" / "synthetic_small" / "seed1"
    assert 0.0 <= log_accuracy(evaluated) <= 100.0
