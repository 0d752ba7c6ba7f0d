"""Exact text-encoder shortcuts: causal truncation for every text branch, text features once per evaluation."""
import pytest
import torch

from trainers.clip_loading import load_clip
from trainers.deep_prompts import DeepPromptedCLIP, IVLPPrompts, MaPLePrompts
from trainers.prompt_learners import PromptLearner
from trainers.prompted_clip import PromptedCLIP
from tests.conftest import requires_dassl
from tests.cli_runs import build_trainer

# Different token lengths in one batch, so the truncated length is set by the longest prompt.
CLASSNAMES = ["cat", "a very long class name with many many words in it", "dog", "golden retriever"]


@pytest.fixture
def clip_model(tiny_student):
    """A fresh CLIP per test: deep-prompt hooks stay on the model they were attached to."""
    return load_clip(tiny_student)


def coop(clip_model):
    return PromptedCLIP(clip_model, PromptLearner(clip_model, CLASSNAMES, n_ctx=4))


def fdbpl(clip_model):
    model = PromptedCLIP(clip_model, PromptLearner(clip_model, CLASSNAMES, n_ctx=None, ctx_init="a photo of a"))
    model.prompt_learner_neg = PromptLearner(clip_model, CLASSNAMES, n_ctx=None, ctx_init="a photo of no")
    return model


def maple(clip_model):
    return DeepPromptedCLIP(clip_model, MaPLePrompts(clip_model, CLASSNAMES, n_ctx=2, depth=2))


def promptsrc(clip_model):
    return DeepPromptedCLIP(clip_model, IVLPPrompts(clip_model, CLASSNAMES, depth_text=2, depth_vision=2))


def caspl(clip_model):
    """CasPL stage 2 on PromptSRC: adapting and boosting text tokens cascaded, as trainers/caspl.py builds it."""
    from functools import partial

    from trainers.caspl import boost_text_layer, cascade_layout
    from trainers.deep_prompts import PromptSource

    adapt = IVLPPrompts(clip_model, CLASSNAMES, depth_text=2, depth_vision=2,
                        ctx_init=cascade_layout("a photo of a", 4, 4))
    boost = IVLPPrompts(clip_model, CLASSNAMES, depth_text=2, depth_vision=2)
    return DeepPromptedCLIP(
        clip_model, adapt, vision_sources=[boost.vision_source, adapt.vision_source],
        text_sources=[adapt.text_source, PromptSource(boost.n_ctx, partial(boost_text_layer, boost))],
    )


def features_and_gradients(model, pair, truncate=True, checkpointing=False):
    """Text features and the gradients of every prompt parameter, for one text-encoder setting."""
    model.text_encoder.truncate, model.text_encoder.checkpointing = truncate, checkpointing
    model.zero_grad()
    features = torch.cat(model.encode_text_pair()) if pair else model.encode_text()
    (features * torch.linspace(-1, 1, features.shape[1])).sum().backward()
    gradients = {name: param.grad.clone() for name, param in model.named_parameters() if param.grad is not None}
    model.text_encoder.truncate, model.text_encoder.checkpointing = True, False
    return features.detach(), gradients


def assert_same_features_and_gradients(result, reference):
    (features, gradients), (expected_features, expected_gradients) = result, reference
    torch.testing.assert_close(features, expected_features, rtol=1e-5, atol=1e-6)
    assert gradients.keys() == expected_gradients.keys() and expected_gradients
    for name, expected in expected_gradients.items():
        scale = expected.abs().max().item()
        torch.testing.assert_close(gradients[name], expected, rtol=1e-5, atol=1e-5 * scale)


TEXT_BRANCHES = [
    pytest.param(coop, False, id="CoOp"),
    pytest.param(fdbpl, True, id="FDBPL-both-prompt-sets"),
    pytest.param(maple, False, id="MaPLe"),
    pytest.param(promptsrc, False, id="PromptSRC"),
    pytest.param(caspl, False, id="CasPL-cascade", marks=requires_dassl),
]


@pytest.mark.parametrize("build, pair", TEXT_BRANCHES)
def test_truncation_gives_the_full_length_features_and_gradients(clip_model, build, pair):
    torch.manual_seed(0)
    model = build(clip_model)
    assert_same_features_and_gradients(features_and_gradients(model, pair, truncate=True),
                                       features_and_gradients(model, pair, truncate=False))


@pytest.mark.parametrize("build, pair", TEXT_BRANCHES)
def test_activation_checkpointing_gives_the_same_features_and_gradients(clip_model, build, pair):
    """Recomputed blocks see the same truncated mask and deep-prompt hooks as the stored forward."""
    torch.manual_seed(0)
    model = build(clip_model)
    assert_same_features_and_gradients(features_and_gradients(model, pair, checkpointing=True),
                                       features_and_gradients(model, pair))


@requires_dassl
def test_text_checkpointing_follows_the_config(synthetic_root, tiny_student, tmp_path):
    trainer = build_trainer(synthetic_root, "FDBPL", tiny_student, tmp_path,
                            opts=("DATASET.NUM_SHOTS", "4", "MODEL.TEXT_CHECKPOINTING", "True"))
    assert trainer.model.text_encoder.checkpointing


def test_both_prompt_sets_go_through_the_text_encoder_in_one_pass(clip_model):
    model = fdbpl(clip_model)
    batches = []
    handle = model.text_encoder.register_forward_hook(lambda module, args, output: batches.append(args[0].shape[0]))
    positive, negative = model.encode_text_pair()
    handle.remove()
    assert batches == [2 * len(CLASSNAMES)]
    torch.testing.assert_close(positive, model.encode_text())


@requires_dassl
@pytest.mark.parametrize("trainer_name", ["CoOp", "FDBPL"])
def test_text_features_are_computed_once_per_evaluation(trainer_name, synthetic_root, tiny_student, tmp_path):
    trainer = build_trainer(synthetic_root, trainer_name, tiny_student, tmp_path,
                            opts=("DATASET.NUM_SHOTS", "4", "DATALOADER.TEST.BATCH_SIZE", "4"))
    calls = []
    trainer.model.text_encoder.register_forward_hook(lambda *args: calls.append(1))
    assert len(trainer.test_loader) > 3
    trainer.test()
    assert len(calls) == 1
    trainer.test()
    assert len(calls) == 2, "each evaluation recomputes them once (prompts may have changed in between)"
