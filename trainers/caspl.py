"""CasPL stage 2 (Wu et al., ECCV 2024): a base method's adapting prompts cascaded with frozen boosting prompts.

Token order in every layer, as the paper's Fig. 2b draws it: vision [CLS, patches | boost | adapt], text
[SOS | adapt | boost | the base method's fixed init words | class name . EOT]. So the vision boosting
tokens keep their stage-1 positions right after the patches, and the text ones stay just before the
class words, as in stage 1. Depth: boosting prompts in layers 0..TRAINER.CASPL.PROMPT_DEPTH_*-1,
adapting prompts where the base method puts them; in a layer where one group has no prompts its
tokens are the previous block's output (CoOp: deep boosting tokens beside CoOp's layer-0 context).
Each base method keeps its loss; PromptSRC's frozen-CLIP anchors stay plain CLIP (both groups off).
"""
import os.path as osp
from functools import partial

import torch.nn as nn
from dassl.engine import TRAINER_REGISTRY

from . import dassl_compat
from .base import checkpoint_path, freeze_all_but_prompts
from .caspl_boost import BOOST_MODEL, build_boosting_prompts
from .coop import CoOp
from .deep_prompts import DeepPromptedCLIP, PromptSource, published_ctx_init
from .maple import MaPLe
from .prompt_learners import PromptLearner, count_tokens
from .promptsrc import PromptSRC

BOOST_PROMPTS = "boost_prompts"  # stage-2 checkpoint folder of the frozen copy: stage-2 runs evaluate on their own


def cascade_layout(ctx_init, n_adapt, n_boost):
    """The adapting learner's init words: its first `n_adapt` tokens, `n_boost` "X" placeholders, its other words.

    An empty `ctx_init` (random context) gives n_adapt + n_boost placeholders.
    """
    words = ctx_init.replace("_", " ").split()
    if not words:
        return " ".join(["X"] * (n_adapt + n_boost))
    cut = next((cut for cut in range(len(words) + 1) if count_tokens(" ".join(words[:cut])) == n_adapt), None)
    if cut is None:
        raise ValueError(
            f"The first {n_adapt} tokens of the context init {ctx_init!r} end inside a word, so the boosting "
            "text tokens cannot follow them; change the base method's CTX_INIT or its number of context tokens"
        )
    return " ".join(words[:cut] + ["X"] * n_boost + words[cut:])


def boost_checkpoint(directory, epoch):
    """The stage-1 checkpoint of the boosting prompts: epoch `epoch`, or with 0 the last one Dassl saved."""
    if epoch > 0:
        return checkpoint_path(directory, BOOST_MODEL, epoch)
    marker = osp.join(directory, BOOST_MODEL, "checkpoint")
    if not osp.isfile(marker):
        raise FileNotFoundError(
            f"TRAINER.CASPL.BOOST_DIR {directory!r} holds no boosting prompts ({marker} is missing): give the "
            "--output-dir of a finished CasPL_Boost run"
        )
    with open(marker, encoding="utf-8") as handle:
        return osp.join(directory, BOOST_MODEL, handle.readline().strip())


def load_boosting_prompts(boost, directory, epoch):
    """Load a CasPL_Boost checkpoint into `boost`, naming the tensors whose shapes differ from TRAINER.CASPL's."""
    path = boost_checkpoint(directory, epoch)
    state_dict = dassl_compat.load_checkpoint(path)["state_dict"]
    found = {key: tuple(value.shape) for key, value in state_dict.items()}
    expected = {key: tuple(value.shape) for key, value in boost.state_dict().items()}
    if found != expected:
        differing = sorted(key for key in found.keys() | expected.keys() if found.get(key) != expected.get(key))
        details = ", ".join(f"{key} {found.get(key)} (expected {expected.get(key)})" for key in differing[:4])
        raise ValueError(
            f"{path} holds boosting prompts of another shape: {details}. Set TRAINER.CASPL.N_CTX_TEXT, "
            "N_CTX_VISION, PROMPT_DEPTH_TEXT and PROMPT_DEPTH_VISION as in the CasPL_Boost run"
        )
    boost.load_state_dict(state_dict)
    print(f"Loaded the CasPL boosting prompts (frozen) from {path}")


def no_prompts(layer):
    """A text source that keeps the learner's own tokens in every layer (CoOp's context may be class-specific)."""
    return None


def boost_text_layer(boost, layer):
    """The boosting text tokens at `layer`: unlike a prompt learner's, their layer-0 context is injected too,
    since the adapting learner's embeddings only hold placeholders there."""
    return boost.ctx if layer == 0 else boost.text_layer(layer)


class CasPLCascade:
    """Mixin before a base prompt trainer (`class X_CasPL(CasPLCascade, X)`): the base method, cascaded.

    The base `build_model` runs unchanged on `method_cfg`, whose CTX_INIT reserves the boosting text
    positions; `cascade` then rebuilds the model around the same CLIP and prompt learner.
    `ADAPT_TOKENS_KEY` names the base node's number of learnable text tokens.
    """

    ADAPT_TOKENS_KEY = None

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        if cfg.TRAINER.CASPL.BOOST_EPOCH < 0:
            raise ValueError(
                f"TRAINER.CASPL.BOOST_EPOCH must be >= 0 (0 = the last saved); got {cfg.TRAINER.CASPL.BOOST_EPOCH}"
            )

    def adapting_context(self):
        """(init words, "" for a random init; number of learnable text tokens) of the base method's context."""
        node = self.cfg.TRAINER[self.CONFIG_NODE]
        n_adapt = node[self.ADAPT_TOKENS_KEY]
        return published_ctx_init(node.CTX_INIT, n_adapt), n_adapt

    @property
    def method_cfg(self):
        """The base method's node with CTX_INIT laid out by `cascade_layout`; every other key as configured."""
        if getattr(self, "_cascade_node", None) is None:
            ctx_init, n_adapt = self.adapting_context()
            node = self.cfg.TRAINER[self.CONFIG_NODE].clone()
            node.defrost()
            node.CTX_INIT = cascade_layout(ctx_init, n_adapt, self.cfg.TRAINER.CASPL.N_CTX_TEXT)
            node.freeze()
            self._cascade_node = node
        return self._cascade_node

    def build_model(self):
        super().build_model()
        learner = self.model.prompt_learner
        self.model.injector.remove()
        self.cascade(self.model.injector.clip_model, learner, [learner.vision_source], learner.text_source)

    def cascade(self, clip_model, learner, adapt_vision, adapt_text):
        """`self.model` with vision [boost, *adapt_vision] and text [adapt_text, boost]; boost frozen, registered."""
        node = self.cfg.TRAINER.CASPL
        if not self.adapting_context()[0]:
            nn.init.normal_(learner.ctx, std=0.02)  # the base method's random init, not the placeholders' embedding
        print(f"CasPL text layout: [SOS] {learner.prompt_prefix} <class>. (first {learner.n_ctx} adapting, "
              f"then {node.N_CTX_TEXT} boosting tokens)")
        boost = build_boosting_prompts(clip_model, self.dm.dataset.classnames, node)
        self.model = DeepPromptedCLIP(
            clip_model, learner, self.cfg.MODEL.TEXT_TRUNCATION,
            vision_sources=[boost.vision_source, *adapt_vision],
            text_sources=[adapt_text, PromptSource(boost.n_ctx, partial(boost_text_layer, boost))],
        )
        self.model.boost_prompts = boost
        freeze_all_but_prompts(self.model).to(self.device)
        self.register_model(BOOST_PROMPTS, boost)
        if node.BOOST_DIR:
            load_boosting_prompts(boost, node.BOOST_DIR, node.BOOST_EPOCH)
        else:
            print(f"TRAINER.CASPL.BOOST_DIR is empty: the boosting prompts must come from --model-dir/{BOOST_PROMPTS}")

    def prepare_training(self):
        if not self.cfg.TRAINER.CASPL.BOOST_DIR:
            raise ValueError(
                "TRAINER.CASPL.BOOST_DIR is empty, and stage 2 trains on top of boosting prompts: train them with "
                "--trainer CasPL_Boost and pass its --output-dir as TRAINER.CASPL.BOOST_DIR"
            )
        super().prepare_training()


@TRAINER_REGISTRY.register()
class CoOp_CasPL(CasPLCascade, CoOp):
    """CoOp's cross-entropy on its layer-0 text context, cascaded with the deep boosting prompts.

    Built here, not by `build_coop_model`, which makes every init word learnable (no room for placeholders).
    """

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        if cfg.TRAINER.COOP.CLASS_TOKEN_POSITION != "end":
            raise ValueError(
                f"CoOp_CasPL needs TRAINER.COOP.CLASS_TOKEN_POSITION 'end' (the boosting text tokens sit between "
                f"the context and the class name); got {cfg.TRAINER.COOP.CLASS_TOKEN_POSITION!r}"
            )

    def adapting_context(self):
        node = self.cfg.TRAINER.COOP
        ctx_init = node.CTX_INIT.replace("_", " ").strip()
        return ctx_init, count_tokens(ctx_init) if ctx_init else node.N_CTX

    def build_model(self):
        node, clip_model = self.method_cfg, self.load_clip_model()
        n_adapt = self.adapting_context()[1]
        learner = PromptLearner(clip_model, self.dm.dataset.classnames, n_ctx=n_adapt, ctx_init=node.CTX_INIT,
                                csc=node.CSC, class_token_position=node.CLASS_TOKEN_POSITION)
        self.register_trainable("prompt_learner", learner)  # first: Dassl logs the first model's learning rate
        self.cascade(clip_model, learner, [], PromptSource(n_adapt, no_prompts))
        self.build_grad_scaler()


@TRAINER_REGISTRY.register()
class MaPLe_CasPL(CasPLCascade, MaPLe):
    """MaPLe's coupled prompts and cross-entropy (TRAINER.MAPLE), cascaded with the boosting prompts."""

    ADAPT_TOKENS_KEY = "N_CTX"


@TRAINER_REGISTRY.register()
class PromptSRC_CasPL(CasPLCascade, PromptSRC):
    """PromptSRC's IVLP prompts, self-regularisation and GPA (TRAINER.PROMPTSRC), cascaded with the boosting prompts."""

    ADAPT_TOKENS_KEY = "N_CTX_TEXT"
