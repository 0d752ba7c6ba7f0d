"""Deep prompts by hooks: equal to the published MaPLe / IVLP concatenation, plain CLIP when off, cascading."""
import copy
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from clip import clip
from clip.model import CLIP, convert_weights

from trainers.deep_prompts import (
    DeepPromptedCLIP,
    DeepPromptInjector,
    IVLPPrompts,
    LayerPrompts,
    MaPLePrompts,
    PromptSource,
)
from trainers.text_encoder import encode_texts

CLASSNAMES = ["cat", "golden_retriever", "a very long class name of many words"]
TEXT_WIDTH, VISION_WIDTH, LAYERS = 64, 128, 3


def build_clip(seed=0):
    """A tiny fp32 CLIP whose towers differ in width (MaPLe's projection maps 64 -> 128)."""
    torch.manual_seed(seed)
    model = CLIP(
        embed_dim=32, image_resolution=16, vision_layers=LAYERS, vision_width=VISION_WIDTH, vision_patch_size=8,
        context_length=77, vocab_size=49408, transformer_width=TEXT_WIDTH, transformer_heads=1,
        transformer_layers=LAYERS,
    )
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".ln_" in name or name.startswith(("ln_", "visual.ln_")):
                param.add_(0.1 * torch.randn_like(param))
    return model.eval().requires_grad_(False)


def randomise(module, std=0.5):
    """Prompt values far from their init, so every prompt visibly changes the features."""
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0, std)
    return module


@pytest.fixture
def image():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))


def reference_image_features(clip_model, image, prompts):
    """Published VisionTransformer + ResidualAttentionBlock_IVLP/_MaPLe: append at layer 0, replace the tail after."""
    visual = clip_model.visual
    x = visual.conv1(image)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    x = torch.cat([visual.class_embedding + torch.zeros(x.shape[0], 1, x.shape[-1]), x], dim=1)
    x = x + visual.positional_embedding
    if prompts:
        x = torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x).permute(1, 0, 2)
    for layer, block in enumerate(visual.transformer.resblocks):
        if 0 < layer < len(prompts):
            prefix = x[: x.shape[0] - prompts[layer].shape[0]]
            x = torch.cat([prefix, prompts[layer].expand(x.shape[1], -1, -1).permute(1, 0, 2)], dim=0)
        x = block(x)
    x = x.permute(1, 0, 2)
    return visual.ln_post(x[:, 0]) @ visual.proj


def reference_text_features(clip_model, prompt_prefix, prompts):
    """Published TextEncoder (all 77 positions): [SOS, ctx, rest] at layer 0, positions 1..n replaced after."""
    tokens = torch.cat([clip.tokenize(f"{prompt_prefix} {name.replace('_', ' ')}.") for name in CLASSNAMES])
    embedding = clip_model.token_embedding(tokens)
    n_ctx, n_cls = prompts[0].shape[0], len(CLASSNAMES)
    x = torch.cat([embedding[:, :1], prompts[0].expand(n_cls, -1, -1), embedding[:, 1 + n_ctx :]], dim=1)
    x = (x + clip_model.positional_embedding).permute(1, 0, 2)
    for layer, block in enumerate(clip_model.transformer.resblocks):
        if 0 < layer < len(prompts):
            context = prompts[layer].expand(n_cls, -1, -1).permute(1, 0, 2)
            x = torch.cat([x[:1], context, x[1 + n_ctx :]], dim=0)
        x = block(x)
    x = clip_model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(n_cls), tokens.argmax(dim=-1)] @ clip_model.text_projection


def model_features(model, image):
    learner = model.prompt_learner
    return model.image_encoder(image), model.text_encoder(learner(), learner.tokenized_prompts)


def assert_same(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "depth_text, depth_vision, n_text, n_vision",
    [(1, 1, 4, 4), (2, 2, 2, 3), (3, 3, 4, 4), (3, 0, 1, 4), (1, 3, 6, 1)],
)
def test_ivlp_equals_published_concatenation(image, depth_text, depth_vision, n_text, n_vision):
    clip_model = build_clip()
    learner = randomise(IVLPPrompts(clip_model, CLASSNAMES, n_text, n_vision, depth_text, depth_vision))
    model = DeepPromptedCLIP(clip_model, learner, truncate=False)
    image_features, text_features = model_features(model, image)

    vision = [learner.vision_prompts(layer) for layer in range(depth_vision)]
    text = [learner.ctx] + [learner.text_prompts(layer) for layer in range(1, depth_text)]
    prefix = "a photo of a" if n_text <= 4 else " ".join(["X"] * n_text)  # published: init words only if they suffice
    with model.unprompted():
        assert_same(image_features, reference_image_features(clip_model, image, vision))
        assert_same(text_features, reference_text_features(clip_model, prefix, text))


@pytest.mark.parametrize("depth", [1, 2, LAYERS])
@pytest.mark.parametrize("n_ctx", [2, 4])
def test_maple_equals_published_concatenation(image, depth, n_ctx):
    clip_model = build_clip()
    learner = randomise(MaPLePrompts(clip_model, CLASSNAMES, n_ctx=n_ctx, depth=depth))
    model = DeepPromptedCLIP(clip_model, learner, truncate=False)
    image_features, text_features = model_features(model, image)

    text = [learner.ctx, *learner.compound_prompts_text]
    vision = [learner.proj(learner.ctx)] + [
        projection(prompts) for projection, prompts in zip(learner.compound_prompt_projections, text[1:])
    ]
    assert len(text) == depth and vision[0].shape == (n_ctx, VISION_WIDTH)
    with model.unprompted():
        assert_same(image_features, reference_image_features(clip_model, image, vision))
        assert_same(text_features, reference_text_features(clip_model, "a photo of a", text))


def test_zero_length_prompts_give_plain_clip_exactly(image):
    clip_model = build_clip()
    learner = IVLPPrompts(clip_model, CLASSNAMES, 0, 0, LAYERS, LAYERS, ctx_init="")
    model = DeepPromptedCLIP(clip_model, learner, truncate=False)
    tokens = torch.cat([clip.tokenize(f"{name.replace('_', ' ')}.") for name in CLASSNAMES])
    assert torch.equal(model.encode_image(image), F.normalize(clip_model.encode_image(image), dim=-1))
    assert torch.equal(model.encode_text(), F.normalize(clip_model.encode_text(tokens), dim=-1))


def test_unprompted_towers_are_plain_clip(image):
    clip_model, twin = build_clip(), build_clip()
    model = DeepPromptedCLIP(clip_model, randomise(IVLPPrompts(clip_model, CLASSNAMES, depth_text=2, depth_vision=2)))
    prompted = model.encode_image(image)
    texts = ["a photo of a cat.", "a sketch of a dog."]
    plain_image = F.normalize(twin.encode_image(image), dim=-1)
    assert not torch.allclose(prompted, plain_image, atol=1e-3)
    assert not torch.allclose(encode_texts(clip_model, texts), encode_texts(twin, texts), atol=1e-3)
    with model.unprompted():
        assert torch.equal(model.encode_image(image), plain_image)
        assert torch.equal(encode_texts(clip_model, texts), encode_texts(twin, texts))
    assert torch.equal(model.encode_image(image), prompted)


def test_vision_only_injector_leaves_text_alone(image):
    """PromptKD's student: vision prompts only."""
    clip_model, twin = build_clip(), build_clip()
    prompts = randomise(LayerPrompts(4, VISION_WIDTH, range(LAYERS)))
    DeepPromptInjector(clip_model, vision_sources=[prompts.source])
    texts = ["a photo of a cat."]
    assert torch.equal(encode_texts(clip_model, texts), encode_texts(twin, texts))
    assert_same(clip_model.encode_image(image), reference_image_features(twin, image, list(prompts.layer.values())))


def test_gradients_reach_every_prompt_and_no_clip_weight(image):
    clip_model = build_clip()
    learner = IVLPPrompts(clip_model, CLASSNAMES, depth_text=LAYERS, depth_vision=LAYERS)
    model = DeepPromptedCLIP(clip_model, learner)
    F.cross_entropy(model(image), torch.tensor([0, 2])).backward()
    for name, param in learner.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert all(param.grad is None for param in clip_model.parameters())


def test_maple_vision_gradients_reach_the_text_prompts_through_the_projections(image):
    clip_model = build_clip()
    learner = MaPLePrompts(clip_model, CLASSNAMES, n_ctx=2, depth=LAYERS)
    model = DeepPromptedCLIP(clip_model, learner)
    model.encode_image(image).sum().backward()
    for name, param in learner.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    learner.zero_grad(set_to_none=True)
    model.encode_text().sum().backward()
    assert learner.ctx.grad is not None and learner.compound_prompts_text[0].grad is not None
    assert learner.proj.weight.grad is None and learner.compound_prompt_projections[0].weight.grad is None


def test_causal_truncation_with_deep_text_prompts_changes_nothing():
    clip_model = build_clip()
    learner = randomise(IVLPPrompts(clip_model, CLASSNAMES, 4, 4, LAYERS, LAYERS))
    features = {}
    for truncate in (True, False):
        model = DeepPromptedCLIP(clip_model, learner, truncate=truncate)
        features[truncate] = model.encode_text()
        model.injector.remove()
    torch.testing.assert_close(features[True], features[False], rtol=1e-5, atol=1e-6)


def cascaded_and_single(depth=LAYERS):
    """CasPL stage 2 (vision [boost, adapt], text [adapt, boost]) and one IVLP group holding the concatenation."""
    layout = "a photo X X X"  # 2 adapting words, then placeholders for the 3 boosting text tokens
    clip_model = build_clip()
    adapt = randomise(IVLPPrompts(clip_model, CLASSNAMES, 2, 2, depth, depth, ctx_init=layout))
    boost_text = randomise(LayerPrompts(3, TEXT_WIDTH, range(depth))).requires_grad_(False)
    boost_vision = randomise(LayerPrompts(1, VISION_WIDTH, range(depth))).requires_grad_(False)
    cascaded = DeepPromptedCLIP(
        clip_model, adapt,
        vision_sources=[boost_vision.source, adapt.vision_source],
        text_sources=[adapt.text_source, boost_text.source],
    )
    twin = build_clip()
    single = IVLPPrompts(twin, CLASSNAMES, 5, 3, depth, depth, ctx_init=layout)
    with torch.no_grad():
        single.ctx.copy_(torch.cat([adapt.ctx, boost_text(0)]))
        for layer in range(depth):
            single.vision_prompts(layer).copy_(torch.cat([boost_vision(layer), adapt.vision_prompts(layer)]))
            if layer:
                single.text_prompts(layer).copy_(torch.cat([adapt.text_prompts(layer), boost_text(layer)]))
    return cascaded, DeepPromptedCLIP(twin, single), (boost_text, boost_vision)


def test_cascaded_sources_equal_one_source_holding_the_concatenation(image):
    cascaded, single, _ = cascaded_and_single()
    assert_same(cascaded.encode_image(image), single.encode_image(image))
    assert_same(cascaded.encode_text(), single.encode_text())


def test_frozen_source_is_unchanged_by_an_optimiser_step(image):
    cascaded, _, frozen_groups = cascaded_and_single()
    frozen = [param.detach().clone() for group in frozen_groups for param in group.parameters()]
    adapting = [param.detach().clone() for param in cascaded.prompt_learner.parameters()]
    optimiser = torch.optim.SGD(cascaded.prompt_learner.parameters(), lr=0.1)
    F.cross_entropy(cascaded(image), torch.tensor([1, 2])).backward()
    optimiser.step()
    after = [param for group in frozen_groups for param in group.parameters()]
    assert all(torch.equal(old, new) for old, new in zip(frozen, after))
    assert all(not torch.equal(old, new) for old, new in zip(adapting, cascaded.prompt_learner.parameters()))


def test_text_layout_must_reserve_every_text_source():
    clip_model = build_clip()
    adapt = IVLPPrompts(clip_model, CLASSNAMES, 2, 2, 2, 2, ctx_init="a photo")
    boost = LayerPrompts(3, TEXT_WIDTH, range(2))
    with pytest.raises(ValueError, match="placeholder words"):
        DeepPromptedCLIP(clip_model, adapt, text_sources=[adapt.text_source, boost.source])


def test_hooks_are_removable_and_never_stacked(image):
    clip_model, twin = build_clip(), build_clip()
    model = DeepPromptedCLIP(clip_model, randomise(IVLPPrompts(clip_model, CLASSNAMES, depth_text=2, depth_vision=2)))
    with pytest.raises(RuntimeError, match="already has deep-prompt hooks"):
        DeepPromptedCLIP(clip_model, IVLPPrompts(clip_model, CLASSNAMES, depth_text=2, depth_vision=2))
    model.injector.remove()
    assert torch.equal(clip_model.encode_image(image), twin.encode_image(image))
    DeepPromptedCLIP(clip_model, IVLPPrompts(clip_model, CLASSNAMES, depth_text=2, depth_vision=2))


def test_deepcopy_has_its_own_prompts_and_hooks(image):
    clip_model = build_clip()
    model = DeepPromptedCLIP(clip_model, randomise(MaPLePrompts(clip_model, CLASSNAMES, 2, LAYERS)))
    before = model(image)
    duplicate = copy.deepcopy(model)
    assert torch.equal(duplicate(image), before)
    with torch.no_grad():
        duplicate.prompt_learner.compound_prompts_text[1].add_(1.0)
    assert not torch.allclose(duplicate(image), before, atol=1e-4)
    assert torch.equal(model(image), before)
    duplicate.injector.remove()
    assert torch.equal(model(image), before)
    assert torch.equal(duplicate.image_encoder(image), build_clip().visual(image))


def test_state_dict_holds_only_prompts_and_round_trips(image):
    learner = randomise(IVLPPrompts(build_clip(), CLASSNAMES, depth_text=2, depth_vision=LAYERS))
    assert list(learner.state_dict()) == [
        "ctx", "text_prompts.layer.1", "vision_prompts.layer.0", "vision_prompts.layer.1", "vision_prompts.layer.2",
    ]
    model = DeepPromptedCLIP(build_clip(), learner)
    other_clip = build_clip()
    fresh = IVLPPrompts(other_clip, CLASSNAMES, depth_text=2, depth_vision=LAYERS)
    reloaded = DeepPromptedCLIP(other_clip, fresh)
    assert not torch.equal(reloaded(image), model(image))
    fresh.load_state_dict(copy.deepcopy(learner.state_dict()))
    assert torch.equal(reloaded(image), model(image))


def test_maple_keeps_the_published_parameter_names_and_dtypes():
    clip_model = build_clip()
    convert_weights(clip_model)
    learner = MaPLePrompts(clip_model, CLASSNAMES, n_ctx=2, depth=2)
    assert {key: value.dtype for key, value in learner.state_dict().items()} == {
        "ctx": torch.float16, "proj.weight": torch.float16, "proj.bias": torch.float16,
        "compound_prompts_text.0": torch.float32,
        "compound_prompt_projections.0.weight": torch.float32, "compound_prompt_projections.0.bias": torch.float32,
    }
    # Deeper projections start as clones of one layer, as the published _get_clones makes them.
    deep = MaPLePrompts(build_clip(), CLASSNAMES, n_ctx=2, depth=LAYERS).compound_prompt_projections
    assert torch.equal(deep[0].weight, deep[1].weight)


def test_fp16_clip_runs_prompted_and_trains_the_prompts(image):
    clip_model = build_clip()
    convert_weights(clip_model)
    learner = IVLPPrompts(clip_model, CLASSNAMES, depth_text=2, depth_vision=2)
    model = DeepPromptedCLIP(clip_model, learner)
    logits = model(image)
    assert logits.dtype == torch.float16 and torch.isfinite(logits).all()
    logits.float().sum().backward()
    assert learner.ctx.grad.dtype == torch.float16
    assert learner.vision_prompts(1).grad.dtype == torch.float32


def test_clear_errors():
    clip_model = build_clip()
    with pytest.raises(ValueError, match="depth_text must be between 1 and 3"):
        IVLPPrompts(clip_model, CLASSNAMES, depth_text=4)
    with pytest.raises(ValueError, match="ViT CLIP backbone"):
        DeepPromptInjector(SimpleNamespace(visual=torch.nn.Identity()))
    wrong = PromptSource(2, lambda layer: torch.zeros(2, TEXT_WIDTH))
    DeepPromptInjector(clip_model, vision_sources=[wrong])
    with pytest.raises(ValueError, match=r"source 0 gave shape \(2, 64\) at layer 0; expected \(2, 128\)"):
        clip_model.encode_image(torch.zeros(1, 3, 16, 16))
