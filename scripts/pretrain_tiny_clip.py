"""Contrastive pretraining of a tiny CLIP on drawn image-caption pairs, on the CPU, in minutes.

Each pair is a scene of datasets/scenes.py (one coloured shape on a grey textured background),
drawn at --draw-size and shrunk to the model's input as Dassl's test transform shrinks Synthetic's
images (bicubic), with a caption that names its colour and shape and, each half the time, its size,
position and background, in varied frames ("a small red circle near the top on a striped
background."). The loss is CLIP's: symmetric InfoNCE over the batch with a learnable temperature,
the logit scale clamped at 100 as OpenAI's is. The checkpoint is an OpenAI state dict in fp16 with
CLIP's BPE vocabulary (49408) and context (77), read by clip.model.build_model and by
trainers/clip_loading.py's load_clip, so class names tokenize as in the real pipeline.

Evaluation images are never training images. Training batch `step` of seed S is drawn from numpy's
default_rng([PRETRAIN_STREAM, S, step]); the probe's images from default_rng([PROBE_STREAM, i]),
the same for every seed; Synthetic's images are seeded by [label, index] with label < 16
(datasets/synthetic.py), never a stream tag. The (colour, shape) pairs in
datasets.scenes.HELD_OUT_COMBOS are never drawn nor named in training; the probe reports them apart.

The same seed, settings and thread count give a bitwise identical checkpoint. The JSON sidecar
(<out>.json: settings, seed, time, loss, accuracies) is written last: a checkpoint without one is
from an unfinished run.

    python scripts/pretrain_tiny_clip.py --preset student --out student.pt
    python scripts/pretrain_tiny_clip.py --preset teacher --out teacher.pt
"""
import argparse
import functools
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if sys.path[0] != REPO_ROOT:
    sys.path.insert(0, REPO_ROOT)

import trainers.dassl_compat  # noqa: E402,F401  (before any Dassl import)
from clip import clip  # noqa: E402
from clip.model import CLIP  # noqa: E402

from datasets import scenes  # noqa: E402
from datasets.common import atomic_write  # noqa: E402
from datasets.synthetic import CLASSES as SYNTHETIC_CLASSES  # noqa: E402
from datasets.synthetic import classname as synthetic_classname  # noqa: E402
from datasets.synthetic import draw_image as draw_synthetic_image  # noqa: E402
from ril.teachers import CLIP_MEAN, CLIP_STD  # noqa: E402
from scripts.make_tiny_clip import CONTEXT_LENGTH, HEAD_WIDTH, VOCAB_SIZE, save_checkpoint  # noqa: E402
from trainers.clip_loading import file_sha256, load_clip  # noqa: E402
from trainers.templates import dataset_template  # noqa: E402
from trainers.text_encoder import TextEncoder, template_text_features  # noqa: E402

PRETRAIN_STREAM, PROBE_STREAM = 7_140_001, 7_140_002  # numpy seed tags of the two image streams
MAX_LOGIT_SCALE = math.log(100)
SYNTHETIC_IMAGE_SIZE = 64  # DATASET.SYNTHETIC.IMAGE_SIZE of configs/datasets/synthetic.yaml
PAIR_NAMES = [scenes.combo_name(*combo) for combo in scenes.ALL_COMBOS]
# The student has make_tiny_clip.py's default shape. In trials, a 128-wide image tower learned per step
# what the student's shape learned in 1.5 times the steps (the same CPU time), a third layer learned
# slower, and a 128-wide text tower added no accuracy for as much time as the image tower takes.
PRESETS = {
    "student": {"embed_dim": 64, "width": 64, "layers": 2, "text_width": 64, "text_layers": 2,
                "steps": 1000, "batch_size": 128, "lr": 2e-3},
    "teacher": {"embed_dim": 128, "width": 128, "layers": 2, "text_width": 64, "text_layers": 2,
                "steps": 1500, "batch_size": 128, "lr": 1e-3},
}


def build_clip(args):
    """A randomly initialised CLIP in OpenAI's architecture, seeded by --seed. Its towers may differ in
    width and depth, as OpenAI's do (ViT-B/16: 768 and 512); build_model reads both from the state dict."""
    for flag, width in (("--width", args.width), ("--text-width", args.text_width)):
        if width % HEAD_WIDTH:
            raise ValueError(f"{flag} is {width}; expected a multiple of {HEAD_WIDTH} (CLIP infers heads from it)")
    if args.image_size % args.patch:
        raise ValueError(f"--image-size {args.image_size} must be a multiple of --patch {args.patch}")
    torch.manual_seed(args.seed)
    return CLIP(
        embed_dim=args.embed_dim, image_resolution=args.image_size, vision_layers=args.layers,
        vision_width=args.width, vision_patch_size=args.patch, context_length=CONTEXT_LENGTH,
        vocab_size=VOCAB_SIZE, transformer_width=args.text_width,
        transformer_heads=args.text_width // HEAD_WIDTH, transformer_layers=args.text_layers,
    )


def to_model_input(pixels, image_size):
    """(N, 3, s, s) float from uint8 (N, S, S, 3): PIL bicubic resize to s, then CLIP's mean and std,
    as Dassl's test transform (Resize, ToTensor, Normalize) prepares a Synthetic image."""
    if pixels.shape[1] != image_size:
        pixels = np.stack([
            np.asarray(Image.fromarray(image).resize((image_size, image_size), Image.BICUBIC)) for image in pixels
        ])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    return (images - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


@functools.lru_cache(maxsize=1 << 16)  # about 45 MB; the vocabulary allows some 115,000 distinct captions
def _tokens(caption):
    """CLIP's token ids (77,); captions recur, and BPE costs more than the rest of a batch."""
    return clip.tokenize(caption)[0]


class DrawnPairs(torch.utils.data.Dataset):
    """Item `step` is a whole batch, a function of (seed, step) only: (images (B, 3, s, s), tokens (B, 77))."""

    def __init__(self, seed, steps, batch_size, draw_size, image_size):
        self.seed, self.steps, self.batch_size = seed, steps, batch_size
        self.draw_size, self.image_size = draw_size, image_size

    def __len__(self):
        return self.steps

    def __getitem__(self, step):
        rng = np.random.default_rng([PRETRAIN_STREAM, self.seed, step])
        picks = rng.integers(len(scenes.SEEN_COMBOS), size=self.batch_size)
        batch = scenes.sample_scenes(rng, [scenes.SEEN_COMBOS[pick] for pick in picks])
        pixels = scenes.draw_scenes(batch, rng, self.draw_size)
        tokens = torch.stack([_tokens(scenes.describe(scene, rng)) for scene in batch])
        return to_model_input(pixels, self.image_size), tokens


class ZeroShotProbe:
    """Zero-shot accuracy with the Synthetic template ("a photo of a {}.") on three fixed image sets:
    scenes of seen and of held-out (colour, shape) pairs, each classified among all the pairs of the
    vocabulary, and Synthetic's images among its 16 class names."""

    def __init__(self, per_class, draw_size, image_size):
        self.template = dataset_template("Synthetic")
        self.sets = {}
        for name, combos in (("seen_combos", scenes.SEEN_COMBOS), ("held_out_combos", scenes.HELD_OUT_COMBOS)):
            rng = np.random.default_rng([PROBE_STREAM, len(self.sets)])
            wanted = [combo for combo in combos for _ in range(per_class)]
            pixels = scenes.draw_scenes(scenes.sample_scenes(rng, wanted), rng, draw_size)
            labels = [scenes.ALL_COMBOS.index(combo) for combo in wanted]
            self.sets[name] = (to_model_input(pixels, image_size), torch.tensor(labels), PAIR_NAMES)
        pixels = np.stack([
            draw_synthetic_image(label, index, SYNTHETIC_IMAGE_SIZE)
            for label in range(len(SYNTHETIC_CLASSES)) for index in range(per_class)
        ])
        labels = torch.arange(len(SYNTHETIC_CLASSES)).repeat_interleave(per_class)
        names = [synthetic_classname(label) for label in range(len(SYNTHETIC_CLASSES))]
        self.sets["synthetic_16"] = (to_model_input(pixels, image_size), labels, names)

    @torch.no_grad()
    def __call__(self, model):
        """{set name: top-1 accuracy in %}; `model` is left in the mode it came in."""
        was_training = model.training
        model.eval()
        accuracies = {}
        for name, (images, labels, classnames) in self.sets.items():
            text = template_text_features(model, classnames, [self.template])
            image = F.normalize(model.encode_image(images).float(), dim=-1)
            accuracies[name] = 100.0 * ((image @ text.t()).argmax(dim=1) == labels).float().mean().item()
        model.train(was_training)
        return accuracies


def contrastive_loss(model, text_encoder, images, tokens):
    """CLIP's loss: mean of the image-to-text and text-to-image cross-entropies over the batch."""
    image = F.normalize(model.encode_image(images), dim=-1)
    text = F.normalize(text_encoder(model.token_embedding(tokens), tokens), dim=-1)
    logits = model.logit_scale.exp() * image @ text.t()
    target = torch.arange(len(images))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


def build_optimizers(model, lr, weight_decay, warmup, steps):
    """AdamW (decay on matrices only, as CLIP) and SparseAdam for the token table, with warm-up and cosine.

    Only the rows of the few caption words get gradients; a dense (49408, W) gradient and update
    would cost more than the rest of the step, so the table's gradient is sparse.
    """
    model.token_embedding.sparse = True
    named = [(name, p) for name, p in model.named_parameters() if name != "token_embedding.weight"]
    groups = [
        {"params": [p for name, p in named if p.ndim >= 2 and "embedding" not in name], "weight_decay": weight_decay},
        {"params": [p for name, p in named if p.ndim < 2 or "embedding" in name], "weight_decay": 0.0},
    ]
    optimizers = [
        torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6),
        torch.optim.SparseAdam([model.token_embedding.weight], lr=lr, betas=(0.9, 0.98), eps=1e-6),
    ]

    def factor(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    return optimizers, [torch.optim.lr_scheduler.LambdaLR(optimizer, factor) for optimizer in optimizers]


def train(model, args, probe):
    """Pretrain `model` in place; returns (last loss, [{step, loss, accuracies...}] of each probe)."""
    pairs = DrawnPairs(args.seed, args.steps, args.batch_size, args.draw_size, args.image_size)
    # Drawing runs in worker processes, on the cores the training thread leaves free.
    loader = torch.utils.data.DataLoader(pairs, batch_size=None, num_workers=args.workers)
    optimizers, schedulers = build_optimizers(model, args.lr, args.weight_decay, args.warmup, args.steps)
    text_encoder = TextEncoder(model, truncate=True)  # exact: CLIP's text tower is causal
    model.train()
    history = []
    bar = tqdm(loader, total=args.steps, desc="pretraining", unit="step", mininterval=2)
    for step, (images, tokens) in enumerate(bar, 1):
        loss = contrastive_loss(model, text_encoder, images, tokens)
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for optimizer, scheduler in zip(optimizers, schedulers):
            optimizer.step()
            scheduler.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
        bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
        if args.probe_every and (step % args.probe_every == 0 or step == args.steps):
            history.append({"step": step, "loss": round(loss.item(), 4), **_rounded(probe(model))})
            tqdm.write(f"step {step}: loss {loss.item():.3f}, zero-shot {_format(history[-1])}")
    model.token_embedding.sparse = False
    return loss.item(), history


def _rounded(accuracies):
    return {name: round(value, 2) for name, value in accuracies.items()}


def _format(accuracies):
    return ", ".join(f"{name} {accuracies[name]:.1f}%" for name in ("seen_combos", "held_out_combos", "synthetic_16"))


def run(args):
    """Train, write the checkpoint, evaluate the written file, write the sidecar; returns the sidecar dict."""
    if args.threads:
        torch.set_num_threads(args.threads)
    started, started_cpu, load_before = time.perf_counter(), time.process_time(), os.getloadavg()
    model = build_clip(args)
    probe = ZeroShotProbe(args.probe_images, args.draw_size, args.image_size)
    final_loss, history = train(model, args, probe)
    training_seconds, training_cpu_seconds = time.perf_counter() - started, time.process_time() - started_cpu
    save_checkpoint(model, args.out)
    accuracies = probe(load_clip(args.out))  # what a user loads: fp16 weights, read back as fp32
    record = {
        "checkpoint": os.path.basename(args.out),
        "sha256": file_sha256(args.out),
        "command": sys.argv,
        "settings": vars(args),
        "seed": args.seed,
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "training_seconds": round(training_seconds, 1),
        # The machine may be shared: the training process's CPU time (workers excluded) and the load say how much.
        "training_cpu_seconds": round(training_cpu_seconds, 1),
        "load_average_1min": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
        "total_seconds": round(time.perf_counter() - started, 1),
        "final_loss": round(final_loss, 4),
        "zero_shot": _rounded(accuracies),
        "probe_history": history,
        "held_out_combos": [scenes.combo_name(*combo) for combo in scenes.HELD_OUT_COMBOS],
        "streams": {"pretrain": [PRETRAIN_STREAM, "seed", "step"], "probe": [PROBE_STREAM, "set"],
                    "synthetic": ["label", "index"]},
    }
    atomic_write(f"{args.out}.json", "w", lambda file: json.dump(record, file, indent=2))
    return record


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="checkpoint to write; the sidecar goes to <out>.json")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="student",
                        help="sets the defaults of the architecture and optimisation flags below: " + "; ".join(
                            f"{name}: {', '.join(f'{key}={value}' for key, value in values.items())}"
                            for name, values in PRESETS.items()) + " (default student)")
    parser.add_argument("--embed-dim", type=int, help="joint image-text embedding width")
    parser.add_argument("--width", type=int, help="transformer width of the image tower, a multiple of 64")
    parser.add_argument("--layers", type=int, help="transformer layers of the image tower")
    parser.add_argument("--text-width", type=int, help="transformer width of the text tower, a multiple of 64")
    parser.add_argument("--text-layers", type=int, help="transformer layers of the text tower")
    parser.add_argument("--steps", type=int, help="optimisation steps (one drawn batch each)")
    parser.add_argument("--batch-size", type=int, help="image-caption pairs per step (the contrastive negatives)")
    parser.add_argument("--lr", type=float, help="peak learning rate (linear warm-up, then cosine to 0)")
    parser.add_argument("--patch", type=int, default=8, help="vision patch size in pixels (default 8)")
    parser.add_argument("--image-size", type=int, default=32,
                        help="model input side; set INPUT.SIZE to match (default 32)")
    parser.add_argument("--draw-size", type=int, default=SYNTHETIC_IMAGE_SIZE,
                        help="side scenes are drawn at before the bicubic shrink to --image-size; "
                             f"Synthetic's (default {SYNTHETIC_IMAGE_SIZE})")
    parser.add_argument("--warmup", type=int, default=50, help="linear warm-up steps (default 50)")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW decay of weight matrices (default 0.1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the initialisation and of the drawn batches (default 0)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads for training; 0 keeps torch's default. On a shared 2-core machine one "
                             "thread beats two, whose OpenMP barriers stall while another job holds a core (default 1)")
    parser.add_argument("--workers", type=int, default=1, help="processes drawing batches ahead; 0 draws in the "
                                                               "training process (default 1)")
    parser.add_argument("--probe-every", type=int, default=100,
                        help="steps between zero-shot probes, also run after the last step; 0 probes only "
                             "the saved file (default 100)")
    parser.add_argument("--probe-images", type=int, default=24,
                        help="probe images per class in each set; Synthetic's are its images 0 to N-1 of each "
                             "class, of the 40 (20 train, 8 val, 12 test) at the default "
                             "DATASET.SYNTHETIC.IMAGES_PER_CLASS (default 24)")
    return parser


def parse_args(argv):
    """The flags, with the preset's values for those not given; settings that cannot train are refused."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    lowest = {"steps": 1, "batch_size": 2, "probe_images": 1, "warmup": 0, "workers": 0, "probe_every": 0, "threads": 0}
    for key, low in lowest.items():
        if getattr(args, key) < low:
            parser.error(f"--{key.replace('_', '-')} is {getattr(args, key)}; expected at least {low}")
    return args


def main(argv=None):
    args = parse_args(argv)
    record = run(args)
    print(f"Wrote {args.out} ({record['parameters']:,} parameters) in {record['training_seconds']:.0f} s of "
          f"training; zero-shot of the saved file: {_format(record['zero_shot'])}")


if __name__ == "__main__":
    main()
