"""Deep prompts (MaPLe, IVLP/PromptSRC, CasPL, PromptKD's student) for OpenAI's unmodified CLIP, by hooks.

Layer l is the input of transformer block l; a tower prompted to depth d has prompts at layers
0..d-1 (depth 1 = shallow). Vision prompts are appended after the patch tokens before `ln_pre`
(layer 0) and their positions are overwritten at the start of blocks 1..d-1. Text prompts occupy
positions 1..n after SOS: at layer 0 with the positional embedding added, as CLIP does for words,
then overwritten at the start of blocks 1..d-1. CLIP's outputs are unchanged: `ln_post` of the CLS
token (prompt tokens dropped), the EOT token for text.
"""
import copy
from contextlib import contextmanager
from functools import partial
from typing import Callable, NamedTuple

import torch
import torch.nn as nn

from .prompt_learners import PromptLearner, count_tokens
from .prompted_clip import PromptedCLIP


class PromptSource(NamedTuple):
    """A group of `n_tokens` prompt tokens in one tower: `prompts(layer)` -> (n_tokens, width), or None."""

    n_tokens: int
    prompts: Callable


def tower_widths(clip_model):
    """(text width, vision width); deep prompts need a ViT image tower."""
    if not hasattr(clip_model.visual, "transformer"):
        raise ValueError(
            f"Deep prompts need a ViT CLIP backbone (e.g. ViT-B/16); this image encoder is a "
            f"{type(clip_model.visual).__name__}. Set MODEL.BACKBONE.NAME to a ViT model."
        )
    return clip_model.ln_final.weight.shape[0], clip_model.visual.conv1.weight.shape[0]


def check_depth(name, depth, n_layers, minimum):
    if not minimum <= depth <= n_layers:
        raise ValueError(f"{name} must be between {minimum} and {n_layers} (the tower's layers); got {depth}")


class DeepPromptInjector:
    """Forward pre-hooks that put the tokens of `vision_sources` / `text_sources` into CLIP's towers.

    Sources of one tower are concatenated in list order: vision [CLS, patches | s1 | s2 ...], text
    [SOS | s1 | s2 ... | rest of the prompt]. A source giving None at a layer keeps the tokens the
    previous block produced there; vision sources must give layer 0. A text source giving layer 0
    overwrites the token embeddings there (a frozen cascaded group); prompt learners leave layer 0
    to their own embeddings. Every run of a hooked tower is prompted, plain-template
    `encode_texts` included, except inside `disabled()`.
    Hooks are bound methods, so a deepcopy of a model holding the injector hooks its own copy.
    """

    def __init__(self, clip_model, vision_sources=(), text_sources=()):
        tower_widths(clip_model)
        self.clip_model = clip_model
        self.vision_sources = [source for source in vision_sources if source.n_tokens > 0]
        self.text_sources = [source for source in text_sources if source.n_tokens > 0]
        self.enabled = True
        self._handles = []
        visual = clip_model.visual
        if self.vision_sources:
            self._hook(visual.ln_pre, 0, self._append_vision)
            for layer, block in enumerate(visual.transformer.resblocks):
                if layer > 0:
                    self._hook(block, layer, self._replace_vision)
        if self.text_sources:
            for layer, block in enumerate(clip_model.transformer.resblocks):
                self._hook(block, layer, self._replace_text)

    def _hook(self, module, layer, method):
        for hook in module._forward_pre_hooks.values():  # two injectors would append prompts twice
            if isinstance(hook, partial) and isinstance(getattr(hook.func, "__self__", None), DeepPromptInjector):
                raise RuntimeError(
                    "This CLIP model already has deep-prompt hooks: give all prompt sources to one "
                    "DeepPromptInjector (cascaded sources are concatenated), or remove() the other first"
                )
        self._handles.append(module.register_forward_pre_hook(partial(method, layer)))

    def remove(self):
        """Detach every hook; the CLIP model is plain again."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @contextmanager
    def disabled(self):
        """Run the towers as plain CLIP on whatever tokens they get (frozen zero-shot features)."""
        previous, self.enabled = self.enabled, False
        try:
            yield
        finally:
            self.enabled = previous

    def _prompts(self, tower, index, source, layer, width):
        prompts = source.prompts(layer)
        if prompts is not None and tuple(prompts.shape) != (source.n_tokens, width):
            raise ValueError(
                f"{tower} prompt source {index} gave shape {tuple(prompts.shape)} at layer {layer}; "
                f"expected ({source.n_tokens}, {width})"
            )
        return prompts

    def _append_vision(self, layer, module, args):
        if not self.enabled:
            return None
        (x,) = args  # (N, L, width)
        tokens = [x]
        for index, source in enumerate(self.vision_sources):
            prompts = self._prompts("vision", index, source, layer, x.shape[-1])
            if prompts is None:
                raise ValueError(f"vision prompt source {index} gave no prompts at layer 0, which places its tokens")
            tokens.append(prompts.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1))
        return (torch.cat(tokens, dim=1),)

    def _replace_vision(self, layer, module, args):
        if not self.enabled:
            return None
        (x,) = args  # (L, N, width)
        start = x.shape[0] - sum(source.n_tokens for source in self.vision_sources)
        return self._replace("vision", self.vision_sources, x, layer, start, None)

    def _replace_text(self, layer, module, args):
        if not self.enabled:
            return None
        (x,) = args  # (L, N, width)
        needed = 2 + sum(source.n_tokens for source in self.text_sources)
        if x.shape[0] < needed:
            raise ValueError(f"A text sequence of {x.shape[0]} tokens cannot hold SOS, the prompts and EOT ({needed})")
        positional = self.clip_model.positional_embedding if layer == 0 else None
        return self._replace("text", self.text_sources, x, layer, 1, positional)

    def _replace(self, tower, sources, x, layer, start, positional):
        """Overwrite the tokens of the sources that give prompts at `layer`, from position `start` on."""
        pieces, position, changed = [x[:start]], start, False
        for index, source in enumerate(sources):
            end = position + source.n_tokens
            prompts = self._prompts(tower, index, source, layer, x.shape[-1])
            if prompts is None:
                pieces.append(x[position:end])
            else:
                prompts = prompts.to(x.dtype)
                if positional is not None:
                    prompts = prompts + positional[position:end].to(x.dtype)
                pieces.append(prompts.unsqueeze(1).expand(-1, x.shape[1], -1))
                changed = True
            position = end
        if not changed:
            return None
        pieces.append(x[position:])
        return (torch.cat(pieces, dim=0),)


def normal_prompts(n_tokens, width, device):
    """N(0, 0.02) prompts drawn in fp32 on the CPU (as the published code does), then moved."""
    prompts = torch.empty(n_tokens, width)
    nn.init.normal_(prompts, std=0.02)
    return nn.Parameter(prompts.to(device))


class LayerPrompts(nn.Module):
    """Independent learnable prompts (n_tokens, width) for the given layers of one tower.

    Kept in fp32 whatever CLIP's precision, like the published VPT prompts; cast when injected.
    State-dict keys name the layer: `layer.<l>`.
    """

    def __init__(self, n_tokens, width, layers, device=None):
        super().__init__()
        self.n_tokens = n_tokens
        self.layer = nn.ParameterDict({str(layer): normal_prompts(n_tokens, width, device) for layer in layers})

    def forward(self, layer):
        key = str(layer)
        return self.layer[key] if key in self.layer else None

    @property
    def source(self):
        """This group as a prompt source; without layers (depth 0) it holds no tokens."""
        return PromptSource(self.n_tokens if len(self.layer) else 0, self)


def published_ctx_init(ctx_init, n_ctx):
    """MaPLe/IVLP take the init words only when they cover the n_ctx learnable tokens, else random "X" context."""
    ctx_init = ctx_init.replace("_", " ").strip()
    return ctx_init if ctx_init and n_ctx <= count_tokens(ctx_init) else ""


class IVLPPrompts(PromptLearner):
    """Independent vision-language prompts (IVLP: PromptSRC, PromptKD, CasPL's groups).

    Text layer 0 is the CoOp context `ctx` (N_CTX_TEXT tokens, the first ones of `ctx_init`, the rest
    of its words staying fixed text); text layers 1..depth_text-1 and vision layers
    0..depth_vision-1 are independent prompts (`text_prompts`, `vision_prompts`).
    """

    def __init__(self, clip_model, classnames, n_ctx_text=4, n_ctx_vision=4, depth_text=9, depth_vision=9,
                 ctx_init="a photo of a"):
        text_width, vision_width = tower_widths(clip_model)
        check_depth("depth_text", depth_text, len(clip_model.transformer.resblocks), minimum=1)
        check_depth("depth_vision", depth_vision, len(clip_model.visual.transformer.resblocks), minimum=0)
        super().__init__(clip_model, classnames, n_ctx=n_ctx_text, ctx_init=published_ctx_init(ctx_init, n_ctx_text))
        device = self.ctx.device
        self.text_prompts = LayerPrompts(self.n_ctx, text_width, range(1, depth_text), device)
        self.vision_prompts = LayerPrompts(n_ctx_vision, vision_width, range(depth_vision), device)

    @classmethod
    def from_config(cls, clip_model, classnames, node):
        """From a config node with N_CTX_TEXT, N_CTX_VISION, PROMPT_DEPTH_TEXT, PROMPT_DEPTH_VISION, CTX_INIT."""
        return cls(
            clip_model, classnames, n_ctx_text=node.N_CTX_TEXT, n_ctx_vision=node.N_CTX_VISION,
            depth_text=node.PROMPT_DEPTH_TEXT, depth_vision=node.PROMPT_DEPTH_VISION, ctx_init=node.CTX_INIT,
        )

    def text_layer(self, layer):
        """Layer 0 is left to the prompt embeddings (`ctx` is already there), so the same text tower
        also serves other layer-0 contexts, such as FDBPL's negative prompts."""
        return None if layer == 0 else self.text_prompts(layer)

    @property
    def text_source(self):
        return PromptSource(self.n_ctx, self.text_layer)

    @property
    def vision_source(self):
        return self.vision_prompts.source


class MaPLePrompts(PromptLearner):
    """MaPLe's coupled prompts: vision prompts are linear maps (text width -> vision width) of the text ones.

    Recomputed on every forward, so vision gradients reach the text prompts. Attribute names and
    initialisation order follow the published MultiModalPromptLearner, whose checkpoints load as is.
    """

    def __init__(self, clip_model, classnames, n_ctx=2, depth=9, ctx_init="a photo of a"):
        text_width, vision_width = tower_widths(clip_model)
        n_layers = min(len(clip_model.transformer.resblocks), len(clip_model.visual.transformer.resblocks))
        check_depth("depth", depth, n_layers, minimum=1)
        super().__init__(clip_model, classnames, n_ctx=n_ctx, ctx_init=published_ctx_init(ctx_init, n_ctx))
        device = self.ctx.device
        self.proj = nn.Linear(text_width, vision_width).to(device, clip_model.dtype)
        self.compound_prompts_text = nn.ParameterList(
            [normal_prompts(self.n_ctx, text_width, device) for _ in range(depth - 1)]
        )
        projection = nn.Linear(text_width, vision_width)
        self.compound_prompt_projections = nn.ModuleList(
            [copy.deepcopy(projection) for _ in range(depth - 1)]
        ).to(device)

    def text_layer(self, layer):
        """Layer 0 is left to the prompt embeddings, as for `IVLPPrompts.text_layer`."""
        if layer == 0:
            return None
        return self.compound_prompts_text[layer - 1] if layer <= len(self.compound_prompts_text) else None

    def vision_layer(self, layer):
        if layer == 0:
            return self.proj(self.ctx)
        if layer > len(self.compound_prompts_text):
            return None
        return self.compound_prompt_projections[layer - 1](self.compound_prompts_text[layer - 1])

    @property
    def text_source(self):
        return PromptSource(self.n_ctx, self.text_layer)

    @property
    def vision_source(self):
        return PromptSource(self.n_ctx, self.vision_layer)


class DeepPromptedCLIP(PromptedCLIP):
    """PromptedCLIP (same encode_image / encode_text / logits contract) with deep prompts in both towers.

    Sources default to the prompt learner's (`vision_source`, `text_source`). Cascading (CasPL) passes
    lists, e.g. vision [boost, adapt], text [adapt, boost]; the prompt learner's token layout must
    then reserve every text source's positions (e.g. ctx_init "a photo of a X X X X", n_ctx_text 4).
    """

    def __init__(self, clip_model, prompt_learner, truncate=True, vision_sources=None, text_sources=None):
        super().__init__(clip_model, prompt_learner, truncate)
        vision_sources = [prompt_learner.vision_source] if vision_sources is None else vision_sources
        text_sources = [prompt_learner.text_source] if text_sources is None else text_sources
        n_text = sum(source.n_tokens for source in text_sources)
        first_eot = int(prompt_learner.tokenized_prompts.argmax(dim=-1).min())
        if n_text >= first_eot:
            raise ValueError(
                f"The text prompt sources need positions 1..{n_text} but a class prompt ends at position "
                f"{first_eot}: give the prompt learner placeholder words for every text source"
            )
        self.injector = DeepPromptInjector(clip_model, vision_sources, text_sources)

    def unprompted(self):
        """Plain CLIP towers with the same weights: PromptSRC's frozen features, template text features."""
        return self.injector.disabled()

