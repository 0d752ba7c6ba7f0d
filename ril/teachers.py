"""Teachers: frozen CLIP-like models that score image regions against class texts.

Teacher specs (`--teacher`):
    ViT-L/14                              OpenAI CLIP by name (clip.load downloads it)
    /path/to/clip.pt                      OpenAI CLIP checkpoint (state dict or TorchScript)
    open_clip:ViT-H-14-quickgelu/dfn5b    open_clip MODEL/PRETRAINED (a tag, or a local weights file)
    open_clip:hf-hub:ORG/REPO             open_clip model from the Hugging Face hub
open_clip specs need the optional `open_clip_torch` package. Logits are
`logit_scale.exp() * cos(image, class text)`, computed in fp16 autocast on CUDA, fp32 on CPU.
Several teachers form an ensemble (`ensemble_logits`): each scores the regions with its own pixel
normalisation and its own text tower, and the table stores their combined distribution.
"""
import contextlib
import math
import os

import torch
import torch.nn.functional as F
from clip import clip

from trainers.clip_loading import file_sha256, load_clip
from trainers.text_encoder import encode_texts

from .format import ENSEMBLE_MODES

OPEN_CLIP_PREFIX = "open_clip:"
HF_HUB_PREFIX = "hf-hub:"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class FrozenCLIP:
    """A frozen CLIP-like model seen through what the tables need (the teacher in precompute, the
    student in add-features); `encode_text(list[str]) -> (N, D)` normalised.

    Attributes: `teacher_id`, `checkpoint_sha256` ("" unless a local file), `mean`, `std`,
    `input_size` (H, W) the model requires, `logit_scale` (float, already exponentiated).
    """

    def __init__(self, model, encode_text, teacher_id, checkpoint_sha256, mean, std, input_size, device):
        self.model = model
        self.encode_text = encode_text
        self.teacher_id = teacher_id
        self.checkpoint_sha256 = checkpoint_sha256
        self.mean, self.std = tuple(mean), tuple(std)
        self.input_size = tuple(input_size)
        self.device = torch.device(device)
        self.logit_scale = float(model.logit_scale.detach().float().exp().item())

    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def class_features(self, classnames, templates):
        """(C, D) fp32: per class, the renormalised mean over templates of normalised text features."""
        with self.autocast():
            per_template = [
                self.encode_text([template.format(name.replace("_", " ")) for name in classnames]).float()
                for template in templates
            ]
        return F.normalize(torch.stack(per_template).mean(dim=0), dim=-1)

    @torch.no_grad()
    def image_features(self, images):
        """Raw image-encoder output (B, D) fp32 of normalised images (B, 3, H, W)."""
        with self.autocast():
            return self.model.encode_image(images.to(self.device)).float()

    @torch.no_grad()
    def logits(self, images, class_features):
        """(B, C) fp32 teacher logits, scale included."""
        features = F.normalize(self.image_features(images), dim=-1)
        return self.logit_scale * features @ class_features.to(features.device).t()


def parse_teacher_spec(spec):
    """("openai", name_or_path, None) or ("open_clip", model_name, pretrained_or_None)."""
    if not spec.startswith(OPEN_CLIP_PREFIX):
        return "openai", spec, None
    body = spec[len(OPEN_CLIP_PREFIX):]
    if body.startswith(HF_HUB_PREFIX):
        return "open_clip", body, None
    name, _, pretrained = body.partition("/")
    if not name or not pretrained:
        raise ValueError(
            f"teacher {spec!r}: an open_clip teacher is open_clip:MODEL/PRETRAINED "
            "(e.g. open_clip:ViT-H-14-quickgelu/dfn5b) or open_clip:hf-hub:ORG/REPO"
        )
    return "open_clip", name, pretrained


def model_identity(name_or_path):
    """(id, sha256) of an OpenAI CLIP: ("ViT-L/14", "") for a name, ("file:x.pt", <sha256>) for a file."""
    if name_or_path in clip.available_models():
        return name_or_path, ""
    return f"file:{os.path.basename(name_or_path)}", file_sha256(name_or_path)


def teacher_identity(spec):
    """(teacher_id, checkpoint_sha256) the loaded teacher of `spec` will have, without loading it."""
    kind, name, pretrained = parse_teacher_spec(spec)
    if kind == "openai":
        return model_identity(name)
    return _open_clip_identity(name, pretrained)


def _open_clip_identity(name, pretrained):
    teacher_id = OPEN_CLIP_PREFIX + name + (f"/{os.path.basename(pretrained)}" if pretrained else "")
    local_weights = pretrained is not None and os.path.isfile(os.path.expanduser(pretrained))
    return teacher_id, file_sha256(pretrained) if local_weights else ""


def load_openai_clip(name_or_path, device="cpu"):
    """An OpenAI CLIP (name or checkpoint) through `trainers.clip_loading`, fp32 weights."""
    model = load_clip(name_or_path, precision="fp32", device=device)
    resolution = model.visual.input_resolution
    return FrozenCLIP(
        model, lambda texts: encode_texts(model, texts), *model_identity(name_or_path), CLIP_MEAN, CLIP_STD,
        (resolution, resolution), device,
    )


def _import_open_clip(spec):
    try:
        import open_clip
    except ImportError as error:
        raise ImportError(
            f"teacher {spec!r} needs the optional package open_clip_torch, which is not installed: "
            "pip install open_clip_torch (or use an OpenAI CLIP teacher such as ViT-L/14)"
        ) from error
    return open_clip


def _load_open_clip(spec, name, pretrained, device):
    open_clip = _import_open_clip(spec)
    model, _, _ = open_clip.create_model_and_transforms(
        name, pretrained=pretrained, device=device, require_pretrained=True
    )
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    visual = model.visual
    mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
    std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
    size = visual.image_size
    size = (size, size) if isinstance(size, int) else tuple(size)

    def encode_text(texts):
        return F.normalize(model.encode_text(tokenizer(texts).to(device)).float(), dim=-1)

    return FrozenCLIP(model, encode_text, *_open_clip_identity(name, pretrained), mean, std, size, device)


def load_teacher(spec, device="cpu"):
    """A FrozenCLIP from a teacher spec (see the module docstring), in eval mode on `device`."""
    kind, name, pretrained = parse_teacher_spec(spec)
    if kind == "openai":
        return load_openai_clip(name, device)
    return _load_open_clip(spec, name, pretrained, device)


def ensemble_logits(logits, mode):
    """Logits (M, C) float64 of the ensemble of T teachers' logits (T, M, C); one teacher's pass unchanged.

    mean-prob: log(mean_t softmax(z_t)) + mean_t lse(z_t), whose softmax is the mean of the teachers'
    probabilities and whose log-sum-exp the mean of theirs; mean-logit: mean_t z_t.
    """
    if mode not in ENSEMBLE_MODES:
        raise ValueError(f"--ensemble {mode!r} must be one of {', '.join(ENSEMBLE_MODES)}")
    logits = torch.as_tensor(logits).double()
    if len(logits) == 1:
        return logits[0]
    if mode == "mean-logit":
        return logits.mean(dim=0)
    logsumexp = torch.logsumexp(logits, dim=2, keepdim=True)
    return torch.logsumexp(logits - logsumexp, dim=0) - math.log(len(logits)) + logsumexp.mean(dim=0)
