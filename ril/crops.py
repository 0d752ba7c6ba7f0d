"""Deterministic regions: sampled at precompute time, re-cut identically at training time.

The regions of image i come from one generator seeded by (crop seed, i) only, so a table is the
same whether built in one process, in shards or after a resume. Sampling follows torchvision's
`RandomResizedCrop.get_params` (same draws, same order), then a flip drawn like
`RandomHorizontalFlip`. `crop_region` is the single function that turns a stored box into
pixels, for the teacher and for the student.
"""
import math
import os

import numpy as np
import torch
from PIL import Image

INTERPOLATIONS = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}
MAX_TRIES = 10  # RandomResizedCrop's attempts before the centre-crop fallback


def derived_seed(*keys):
    """A 63-bit seed mixing integer keys, so (s, i) and (s, j) give unrelated streams."""
    entropy = [int(key) & 0xFFFFFFFFFFFFFFFF for key in keys]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def generator_for(*keys):
    return torch.Generator().manual_seed(derived_seed(*keys))


def sample_box(width, height, scale, ratio, generator):
    """(top, left, height, width) in pixels, as RandomResizedCrop.get_params draws them."""
    area = height * width
    log_low, log_high = torch.log(torch.tensor(ratio, dtype=torch.float32)).tolist()
    for _ in range(MAX_TRIES):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_low, log_high, generator=generator)).item()
        crop_w = round(math.sqrt(target_area * aspect))
        crop_h = round(math.sqrt(target_area / aspect))
        if 0 < crop_w <= width and 0 < crop_h <= height:
            top = int(torch.randint(0, height - crop_h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - crop_w + 1, size=(1,), generator=generator).item())
            return top, left, crop_h, crop_w
    in_ratio = width / height
    if in_ratio < min(ratio):
        crop_w, crop_h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        crop_w, crop_h = round(height * max(ratio)), height
    else:
        crop_w, crop_h = width, height
    return (height - crop_h) // 2, (width - crop_w) // 2, crop_h, crop_w


def sample_regions(width, height, num_regions, crop_seed, index, scale, ratio, flip_prob):
    """Regions of image `index`: normalized boxes (M, 4) float32 (top, left, height, width), flips (M,) uint8."""
    generator = generator_for(crop_seed, index)
    boxes = np.empty((num_regions, 4), dtype=np.float32)
    flips = np.empty(num_regions, dtype=np.uint8)
    for region in range(num_regions):
        top, left, crop_h, crop_w = sample_box(width, height, scale, ratio, generator)
        boxes[region] = (top / height, left / width, crop_h / height, crop_w / width)
        flips[region] = torch.rand(1, generator=generator).item() < flip_prob
    return boxes, flips


def box_to_pixels(box, width, height):
    """Integer (top, left, height, width) of a normalized float32 box: exact below 2**23 pixels."""
    top, left, crop_h, crop_w = (float(value) for value in box)
    return round(top * height), round(left * width), round(crop_h * height), round(crop_w * width)


def crop_region(image, box, flip, output_size, interpolation="bicubic"):
    """The region's pixels: crop, resize to output_size (H, W), then flip; a PIL image.

    Same operations as torchvision's `resized_crop` + `hflip` on PIL images.
    """
    top, left, crop_h, crop_w = box_to_pixels(box, *image.size)
    region = image.crop((left, top, left + crop_w, top + crop_h))
    region = region.resize((output_size[1], output_size[0]), INTERPOLATIONS[interpolation])
    return region.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flip else region


def crops_to_uint8(regions):
    """PIL regions -> uint8 tensor (R, 3, H, W)."""
    return torch.from_numpy(np.stack([np.asarray(region, dtype=np.uint8) for region in regions])).permute(0, 3, 1, 2)


def normalize_pixels(pixels, mean, std):
    """uint8 (R, 3, H, W) -> float32 (R, 3, H, W) scaled to [0, 1] then standardized per channel."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def _read_image(path, read):
    """`read(image)` of the PIL image at `path`; a missing or undecodable file is named."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"image {path} is missing: the RIL table lists it relative to the dataset root; "
            "check DATASET.ROOT (--root) or restore the file"
        )
    try:
        with Image.open(path) as image:
            return read(image)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # what PIL decoders raise
        raise OSError(f"image {path} cannot be decoded ({error}): the file is truncated or corrupt; "
                      "restore it from the dataset's archive") from error


def load_rgb(path):
    """Decode an image as RGB, as Dassl's `read_image` does."""
    return _read_image(path, lambda image: image.convert("RGB"))


def image_size(path):
    """(width, height) of an image, from its header (the size `load_rgb` gives, without decoding)."""
    return _read_image(path, lambda image: image.size)


def cut_regions(image, boxes, flips, output_size, interpolation):
    """All regions of one decoded image as uint8 (R, 3, H, W)."""
    return crops_to_uint8(
        [crop_region(image, box, flip, output_size, interpolation) for box, flip in zip(boxes, flips)]
    )
