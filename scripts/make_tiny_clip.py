"""Write a small, randomly initialised CLIP checkpoint in OpenAI's state-dict format.

The file loads through the same path as real checkpoints (`MODEL.BACKBONE.NAME=/path/to/file.pt`),
which is how the tests, the demo and CI get a model without downloading one. Its outputs are
meaningless: it exercises the pipeline, not accuracy.

    python scripts/make_tiny_clip.py --out tiny_student.pt
    python scripts/make_tiny_clip.py --out tiny_teacher.pt --width 128 --layers 3
"""
import argparse
import os

import torch
from clip.model import CLIP, convert_weights

VOCAB_SIZE = 49408  # CLIP's BPE vocabulary: the tokenizer needs every id
CONTEXT_LENGTH = 77
HEAD_WIDTH = 64  # clip.model.build_model infers heads as width // 64


def build_tiny_clip(embed_dim, width, layers, patch, image_size, seed):
    if width % HEAD_WIDTH:
        raise ValueError(f"--width must be a multiple of {HEAD_WIDTH} (CLIP infers heads from it)")
    if image_size % patch:
        raise ValueError(f"--image-size {image_size} must be a multiple of --patch {patch}")
    torch.manual_seed(seed)
    return CLIP(
        embed_dim=embed_dim,
        image_resolution=image_size,
        vision_layers=layers,
        vision_width=width,
        vision_patch_size=patch,
        context_length=CONTEXT_LENGTH,
        vocab_size=VOCAB_SIZE,
        transformer_width=width,
        transformer_heads=width // HEAD_WIDTH,
        transformer_layers=layers,
    )


def save_checkpoint(model, path):
    """Write `model` in OpenAI's released state-dict format (fp16), atomically; returns `path`."""
    convert_weights(model)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    torch.save(model.state_dict(), f"{path}.partial")
    os.replace(f"{path}.partial", path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="checkpoint file to write (e.g. tiny_clip.pt)")
    parser.add_argument("--embed-dim", type=int, default=64, help="joint image-text embedding width (default 64)")
    parser.add_argument("--width", type=int, default=64, help="transformer width of both encoders, a multiple of 64 (default 64)")
    parser.add_argument("--layers", type=int, default=2, help="transformer layers of both encoders (default 2)")
    parser.add_argument("--patch", type=int, default=8, help="vision patch size in pixels (default 8)")
    parser.add_argument("--image-size", type=int, default=32, help="input resolution; set INPUT.SIZE to match (default 32)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation (default 0)")
    args = parser.parse_args(argv)

    model = build_tiny_clip(args.embed_dim, args.width, args.layers, args.patch, args.image_size, args.seed)
    save_checkpoint(model, args.out)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"Wrote {args.out}: {n_params:,} parameters, input {args.image_size}px, embed dim {args.embed_dim}")


if __name__ == "__main__":
    main()
