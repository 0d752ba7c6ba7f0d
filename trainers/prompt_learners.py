"""CoOp's learnable text context, shared by every text-prompt trainer.

Prompt layout per class: [SOS] [ctx_1 .. ctx_n] [class tokens] [.] [EOT] [pad...] ("end"), with the
class tokens moved between the two context halves ("middle") or before the context ("front").
"""
import torch
import torch.nn as nn
from clip.simple_tokenizer import SimpleTokenizer

from .text_encoder import tokenize

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
_tokenizer = SimpleTokenizer()


def count_tokens(text):
    return len(_tokenizer.encode(text))


def _arrangement(position, n_ctx, name_len, length):
    """Order of the source sequence [SOS | ctx (n_ctx) | class, '.', EOT, pad] for one class."""
    sos, ctx = [0], list(range(1, 1 + n_ctx))
    suffix = list(range(1 + n_ctx, length))
    name, rest = suffix[:name_len], suffix[name_len:]
    if position == "end":
        return sos + ctx + suffix
    if position == "middle":
        half = n_ctx // 2
        return sos + ctx[:half] + name + ctx[half:] + rest
    return sos + name + ctx + rest


def embed_words(token_embedding, text, n_tokens):
    """Token embeddings (n_tokens, width) of the first `n_tokens` tokens of `text`, without gradient."""
    device = token_embedding.weight.device
    with torch.no_grad():
        return token_embedding(tokenize([text]).to(device))[0, 1 : 1 + n_tokens]


class PromptLearner(nn.Module):
    """Learnable context vectors; `forward()` gives prompt embeddings (C, 77, width).

    Args:
        n_ctx: number of context vectors. Without `ctx_init` they are random (std 0.02). With it,
            None takes all of its tokens (CoOp); a smaller number makes only the first `n_ctx`
            tokens learnable and keeps the rest as fixed text (MaPLe, PromptSRC).
        ctx_init: initial words of the context.
        csc: class-specific context (one context per class) instead of a shared one.
    """

    def __init__(self, clip_model, classnames, n_ctx=16, ctx_init="", csc=False, class_token_position="end"):
        super().__init__()
        if class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(
                f"CLASS_TOKEN_POSITION must be one of {CLASS_TOKEN_POSITIONS}; got {class_token_position!r}"
            )
        token_embedding = clip_model.token_embedding
        device, dtype = token_embedding.weight.device, clip_model.dtype
        classnames = [name.replace("_", " ") for name in classnames]
        ctx_init = ctx_init.replace("_", " ").strip()
        if ctx_init:
            n_init = count_tokens(ctx_init)
            n_ctx = n_init if n_ctx is None else min(n_ctx, n_init)
            if n_ctx < n_init and class_token_position != "end":
                raise ValueError("A context partly fixed by its init words needs CLASS_TOKEN_POSITION 'end'")
            init = embed_words(token_embedding, ctx_init, n_ctx).type(dtype)
            ctx = init.expand(len(classnames), -1, -1).clone() if csc else init.clone()
            prompt_prefix = ctx_init
        else:
            width = token_embedding.weight.shape[1]
            shape = (len(classnames), n_ctx, width) if csc else (n_ctx, width)
            ctx = torch.empty(shape, dtype=dtype, device=device)
            nn.init.normal_(ctx, std=0.02)
            prompt_prefix = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(ctx)
        self.n_cls = len(classnames)
        self.n_ctx = n_ctx
        self.prompt_prefix = prompt_prefix

        tokenized = tokenize([f"{prompt_prefix} {name}." for name in classnames]).to(device)
        with torch.no_grad():
            embedding = token_embedding(tokenized).type(dtype)
        # Rebuilt from the class names, which differ between base and new classes: not saved.
        self.register_buffer("token_prefix", embedding[:, :1], persistent=False)
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :], persistent=False)
        self.register_buffer("tokenized_prompts", tokenized, persistent=False)
        length = tokenized.shape[1]
        order = [_arrangement(class_token_position, n_ctx, count_tokens(name), length) for name in classnames]
        self.register_buffer("order", torch.tensor(order), persistent=False)
        self.class_token_position = class_token_position

    def forward(self):
        ctx = self.ctx
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        prompts = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)
        if self.class_token_position == "end":
            return prompts
        index = self.order.unsqueeze(-1).expand(-1, -1, prompts.shape[-1])
        return torch.gather(prompts, 1, index)
