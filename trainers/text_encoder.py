"""CLIP's text tower applied to prompt embeddings, with exact causal truncation.

CLIP's text transformer is causal and its feature is read at the EOT token, so positions after
the last EOT of a batch cannot change the result: they are not computed when `truncate` is on.
"""
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from clip import clip
from torch.utils.checkpoint import checkpoint


@contextmanager
def causal_mask_length(blocks, length):
    """Give each residual block in `blocks` the (length, length) corner of its causal mask.

    OpenAI's blocks use their stored 77 x 77 mask as is, so it is swapped for the run's length.
    """
    saved = [block.attn_mask for block in blocks]
    try:
        for block, mask in zip(blocks, saved):
            if mask is not None:
                block.attn_mask = mask[:length, :length]
        yield
    finally:
        for block, mask in zip(blocks, saved):
            block.attn_mask = mask


def run_block(block, x):
    """One residual block on a (length, N, width) sequence, its mask cut to that length; a function of
    its inputs alone, so activation checkpointing can re-run it during backward."""
    with causal_mask_length([block], x.shape[0]):
        return block(x)


class TextEncoder(nn.Module):
    """Encode prompt embeddings (N, L, width) with token ids (N, L) into features (N, E).

    `checkpointing` (MODEL.TEXT_CHECKPOINTING) stores only each block's input while gradients are
    recorded and recomputes the block during backward: the text tower's training memory falls to
    about one block's activations, for one more forward pass. Results are unchanged.
    """

    def __init__(self, clip_model, truncate=True):
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection
        self.dtype = clip_model.dtype
        self.truncate = truncate
        self.checkpointing = False

    def forward(self, prompts, tokenized_prompts):
        eot = tokenized_prompts.argmax(dim=-1)
        length = int(eot.max()) + 1 if self.truncate else prompts.shape[1]
        x = prompts[:, :length].type(self.dtype) + self.positional_embedding[:length].type(self.dtype)
        x = x.permute(1, 0, 2)
        for block in self.transformer.resblocks:
            if self.checkpointing and torch.is_grad_enabled():
                x = checkpoint(run_block, block, x, use_reentrant=False)
            else:
                x = run_block(block, x)
        x = x.permute(1, 0, 2)
        x = self.ln_final(x).type(self.dtype)
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


def tokenize(texts):
    """CLIP token ids (N, 77) for a list of strings."""
    return torch.cat([clip.tokenize(text) for text in texts])


@torch.no_grad()
def encode_texts(clip_model, texts, truncate=True):
    """L2-normalised CLIP text features (N, E) of plain strings, e.g. filled templates."""
    device = clip_model.token_embedding.weight.device
    tokens = tokenize(texts).to(device)
    embeddings = clip_model.token_embedding(tokens)
    features = TextEncoder(clip_model, truncate)(embeddings, tokens)
    return F.normalize(features.float(), dim=-1)


def template_text_features(clip_model, classnames, templates, truncate=True):
    """Class text features (C, E): normalised mean over templates of normalised features."""
    per_template = [
        encode_texts(clip_model, [template.format(name.replace("_", " ")) for name in classnames], truncate)
        for template in templates
    ]
    return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)
