"""PromptSRC: train on base / evaluate on new through train.py, its loss terms, frozen features and GPA."""
import math
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from tests.cli_runs import BASE_OPTS, log_accuracies, train_args
from tests.cli_runs import build_trainer as build_cli_trainer
from tests.conftest import requires_dassl, run_script

pytestmark = requires_dassl



def cli_args(synthetic_root, output_dir, backbone, *extra):
    return ["train.py", *train_args(synthetic_root, output_dir, "PromptSRC", backbone), *extra]


def build_trainer(synthetic_root, output_dir, backbone, *opts):
    return build_cli_trainer(synthetic_root, "PromptSRC", backbone, output_dir, opts=(*BASE_OPTS, *opts))


def plain_clip(backbone):
    from trainers.clip_loading import load_clip

    return load_clip(backbone, "fp32", "cpu")


def published_frozen_text(clip_model, classnames):
    """The published fixed embeddings: raw encode_text of a CLIP without prompts, averaged over 60 templates."""
    from clip import clip

    from trainers.templates import PROMPTSRC_TEMPLATES

    with torch.no_grad():
        raw = [clip_model.encode_text(clip.tokenize([t.format(name.replace("_", " ")) for name in classnames]))
               for t in PROMPTSRC_TEMPLATES]
    mean = torch.stack(raw).mean(dim=0)
    return mean / mean.norm(dim=-1, keepdim=True)


@pytest.fixture(scope="module")
def base_run(synthetic_root, tiny_student, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("promptsrc_base")
    run_script(*cli_args(synthetic_root, output_dir, tiny_student, *BASE_OPTS))
    return output_dir


def test_trains_on_base_and_evaluates_on_new(base_run, synthetic_root, tiny_student, tmp_path):
    assert (base_run / "prompt_learner" / "model.pth.tar-2").is_file()
    assert (base_run / "gpa" / "model.pth.tar-2").is_file()
    log = (base_run / "log.txt").read_text()
    assert "Using the Gaussian-aggregated (GPA) prompts" in log and "# classes  5" in log
    for term in ("ce", "scl_text", "scl_image", "scl_logits"):
        assert re.search(rf" {term} [0-9.]+ \(", log), term

    eval_dir = tmp_path / "new"
    run_script(*cli_args(synthetic_root, eval_dir, tiny_student, "--eval-only", "--model-dir", str(base_run),
                         "--load-epoch", "2", "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "new"))
    assert "# classes  5" in (eval_dir / "log.txt").read_text()
    assert 0.0 <= log_accuracies(eval_dir)[-1] <= 100.0


def test_eval_only_of_the_final_checkpoint_reproduces_the_final_test(base_run, synthetic_root, tiny_student, tmp_path):
    run_script(*cli_args(synthetic_root, tmp_path, tiny_student, "--eval-only", "--model-dir", str(base_run),
                         "--load-epoch", "2", *BASE_OPTS))
    assert log_accuracies(tmp_path) == log_accuracies(base_run)[-1:]


def test_gaussian_epoch_weights_are_the_normalised_density_peaked_at_the_mean():
    from trainers.gpa import gaussian_epoch_weights

    weights = gaussian_epoch_weights(20, 15, 1)
    density = [math.exp(-0.5 * (epoch - 15) ** 2) / math.sqrt(2 * math.pi) for epoch in range(1, 21)]
    assert weights == pytest.approx([value / sum(density) for value in density], rel=1e-12)
    assert sum(weights) == pytest.approx(1.0) and max(range(20), key=weights.__getitem__) == 14
    assert gaussian_epoch_weights(3, 2, 1) == pytest.approx([0.274068619, 0.451862762, 0.274068619])
    far = gaussian_epoch_weights(2, 45, 5)  # the density itself underflows far from the mean
    assert far[1] > far[0] > 0 and sum(far) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        gaussian_epoch_weights(5, 2, 0)


def test_prompt_aggregate_keeps_each_parameter_dtype():
    from trainers.gpa import PromptAggregate

    learner = nn.Module()
    learner.ctx = nn.Parameter(torch.zeros(2, 3, dtype=torch.float16))
    learner.deep = nn.ParameterList([nn.Parameter(torch.zeros(4))])
    aggregate = PromptAggregate(learner, [0.25, 0.75])
    for epoch, value in enumerate((2.0, 6.0)):
        with torch.no_grad():
            learner.ctx.fill_(value)
            learner.deep[0].fill_(-value)
        aggregate.add(learner, epoch)
    aggregate.load_into(learner)
    assert learner.ctx.dtype == torch.float16 and torch.equal(learner.ctx, torch.full((2, 3), 5.0).half())
    assert torch.equal(learner.deep[0], torch.full((4,), -5.0))


def test_self_consistency_terms_by_hand():
    from trainers.promptsrc import self_consistency_terms

    terms = self_consistency_terms(
        torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]]),
        torch.tensor([[0.5, 0.5], [0.0, 0.0]]), torch.tensor([[0.0, 0.5], [0.0, 1.0]]),
        torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]]),
    )
    # zero-shot p = (1/4, 3/4), prompted q = (1/2, 1/2): KL(p || q) summed, over B * C = 2 logits
    kl = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert terms["scl_text"].item() == pytest.approx(1.0)
    assert terms["scl_image"].item() == pytest.approx(1.5 / 4)
    assert terms["scl_logits"].item() == pytest.approx(kl / 2)


def test_training_step_loss_equals_the_published_formula(synthetic_root, tiny_student, tmp_path):
    trainer = build_trainer(synthetic_root, tmp_path, tiny_student, "TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT", "3",
                            "TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT", "7")
    batch = next(iter(trainer.train_loader_x))
    image, label = batch["img"], batch["label"]
    model, clip_model = trainer.model, plain_clip(tiny_student)
    with torch.no_grad():
        image_features, text_features = model.encode_image(image), model.encode_text()
        logits = model.logit_scale.exp() * image_features @ text_features.t()
        frozen_image = F.normalize(clip_model.encode_image(image), dim=-1)
        frozen_text = published_frozen_text(clip_model, trainer.dm.dataset.classnames)
        zero_shot = clip_model.logit_scale.exp() * frozen_image @ frozen_text.t()
    p_zero_shot, log_q = zero_shot.softmax(dim=1), logits.log_softmax(dim=1)
    expected = {
        "ce": -log_q[torch.arange(len(label)), label].mean(),
        "scl_text": (text_features - frozen_text).abs().mean(),
        "scl_image": (image_features - frozen_image).abs().mean(),
        "scl_logits": (p_zero_shot * (p_zero_shot.log() - log_q)).sum() / logits.numel(),
    }
    expected["loss"] = expected["ce"] + 3 * expected["scl_text"] + 7 * expected["scl_image"] + expected["scl_logits"]
    assert expected["scl_text"] > 0 and expected["scl_image"] > 0 and expected["scl_logits"] > 0

    trainer.batch_idx, trainer.num_batches = 0, 10
    summary = trainer.forward_backward(batch)
    for name, value in expected.items():
        assert summary[name] == pytest.approx(value.item(), rel=1e-4, abs=1e-7), name
    with torch.no_grad():
        assert not torch.equal(model.encode_text(), text_features)


def test_frozen_text_features_are_computed_once_in_training_and_never_for_evaluation(
    synthetic_root, tiny_student, tmp_path, monkeypatch
):
    import trainers.promptsrc as promptsrc

    builds = []
    original = promptsrc.frozen_text_features
    monkeypatch.setattr(promptsrc, "frozen_text_features", lambda *args: builds.append(1) or original(*args))
    trainer = build_trainer(synthetic_root, tmp_path, tiny_student)
    trainer.test()
    assert builds == []
    text_passes = []
    trainer.model.text_encoder.transformer.resblocks[0].register_forward_hook(lambda *args: text_passes.append(1))
    trainer.train()
    assert len(builds) == 1
    # one pass per frozen-feature template, one prompted class-text pass per step and one per evaluation
    n_templates = len(promptsrc.PROMPTSRC_TEMPLATES)
    assert len(text_passes) == n_templates + trainer.num_batches * trainer.max_epoch + 1
    torch.testing.assert_close(
        trainer.frozen_text, published_frozen_text(plain_clip(tiny_student), trainer.dm.dataset.classnames)
    )
    assert len(builds) == 1


def set_prompts(learner, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in learner.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    return {key: value.clone() for key, value in learner.state_dict().items()}


def test_final_prompts_are_the_gaussian_average_and_survive_resume_and_eval(synthetic_root, tiny_student, tmp_path):
    opts = ("OPTIM.MAX_EPOCH", "3", "TRAIN.CHECKPOINT_FREQ", "1",
            "TRAINER.PROMPTSRC.GPA_MEAN", "2", "TRAINER.PROMPTSRC.GPA_STD", "1")
    first = build_trainer(synthetic_root, tmp_path, tiny_student, *opts)
    states = []
    for first.epoch in range(2):  # two epochs, then the run "crashes"
        states.append(set_prompts(first.model.prompt_learner, first.epoch))
        first.after_epoch()

    resumed = build_trainer(synthetic_root, tmp_path, tiny_student, *opts)
    assert resumed.resume_model_if_exist(str(tmp_path)) == 2
    resumed.epoch = 2
    states.append(set_prompts(resumed.model.prompt_learner, 2))
    resumed.after_epoch()

    density = [math.exp(-0.5 * (epoch - 2) ** 2) for epoch in (1, 2, 3)]
    weights = [value / sum(density) for value in density]
    expected = {key: sum(w * state[key] for w, state in zip(weights, states)) for key in states[0]}
    assert set(expected) == {"ctx", "text_prompts.layer.1", "vision_prompts.layer.0", "vision_prompts.layer.1"}
    final = resumed.model.prompt_learner.state_dict()
    for key, value in expected.items():
        torch.testing.assert_close(final[key], value)

    evaluator = build_trainer(synthetic_root, tmp_path / "eval", tiny_student, *opts, "DATASET.SUBSAMPLE_CLASSES", "new")
    evaluator.load_model(str(tmp_path), epoch=3)
    for key, value in evaluator.model.prompt_learner.state_dict().items():
        torch.testing.assert_close(value, expected[key])
