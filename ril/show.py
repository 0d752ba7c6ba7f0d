"""Pictures of a table (`python -m ril show`): images with their regions, each box coloured by its
information weight and labelled with the top class of the table's (teacher's) distribution.

Drawn with PIL's ImageDraw (exact pixels, no plotting dependency): each image is scaled to fit a
square panel (centred on grey), its first R regions drawn in order of increasing weight, so the
most informative boxes end on top; panels are laid out four per row.
"""
import math
import os

import numpy as np
import torch
from PIL import Image, ImageDraw

from trainers.losses import information_weight

from .crops import box_to_pixels, load_rgb
from .format import RILTableError

COLUMNS = 4
DEFAULT_REGIONS = 8
BACKGROUND = (128, 128, 128)
LINE_WIDTH = 2
UNINFORMATIVE, INFORMATIVE = (40, 90, 255), (255, 40, 40)  # colours of information weight 0 and 1


def weight_colour(weight):
    """RGB of an information weight in [0, 1]: blue (0, uniform teacher) to red (1, one-hot teacher)."""
    weight = min(max(float(weight), 0.0), 1.0)
    return tuple(round(low + weight * (high - low)) for low, high in zip(UNINFORMATIVE, INFORMATIVE))


def shown_images(table, count):
    """`count` done images spread evenly from the first to the last (tables are often sorted by class)."""
    if count < 1:
        raise ValueError(f"--images {count} must be at least 1")
    done = np.flatnonzero(table.done)
    if not len(done):
        raise RILTableError(f"RIL table {table.path} has no finished image to show")
    return done[np.linspace(0, len(done) - 1, min(count, len(done))).round().astype(np.int64)]


def fitted(size, panel):
    """(left, top, width, height) in a square panel of side `panel` of an image of `size` (H, W) scaled to fit."""
    height, width = (int(value) for value in size)
    scale = panel / max(height, width)
    fit_w, fit_h = max(1, round(width * scale)), max(1, round(height * scale))
    return (panel - fit_w) // 2, (panel - fit_h) // 2, fit_w, fit_h


def draw_panel(table, index, image_root, regions, panel):
    """One image (grey without `image_root`) with its first `regions` regions, as a PIL image panel x panel."""
    rows = table.read_image(index, np.arange(regions))
    left, top, width, height = fitted(table.array("images/size")[index], panel)
    canvas = Image.new("RGB", (panel, panel), BACKGROUND)
    if image_root:
        image = load_rgb(os.path.join(image_root, table.image_paths[index]))
        canvas.paste(image.resize((width, height), Image.Resampling.BICUBIC), (left, top))
    draw = ImageDraw.Draw(canvas)
    weights = information_weight(torch.from_numpy(rows["entropy"].astype(np.float32)), table.num_classes).numpy()
    for region in np.argsort(weights, kind="stable"):
        box_top, box_left, box_h, box_w = box_to_pixels(rows["box"][region], width, height)
        x0, y0 = left + box_left, top + box_top
        colour = weight_colour(weights[region])
        draw.rectangle([x0, y0, x0 + box_w - 1, y0 + box_h - 1], outline=colour, width=LINE_WIDTH)
        label = table.classnames[int(rows["topk_index"][region][0])]
        corner = (x0 + LINE_WIDTH, y0 + LINE_WIDTH)
        draw.rectangle(draw.textbbox(corner, label), fill=colour)
        draw.text(corner, label, fill=(0, 0, 0))
    return canvas


def draw_table(table, image_root, images=4, regions=None, panel=256):
    """A PIL image of `images` panels (COLUMNS per row) of `regions` regions each (default DEFAULT_REGIONS,
    or M if fewer); see the module docstring."""
    regions = min(DEFAULT_REGIONS, table.num_regions) if regions is None else regions
    if not 1 <= regions <= table.num_regions:
        raise ValueError(f"--regions {regions} must be between 1 and the table's M={table.num_regions}")
    if panel < 16:
        raise ValueError(f"--panel {panel} must be at least 16 pixels")
    shown = shown_images(table, images)
    columns = min(len(shown), COLUMNS)
    sheet = Image.new("RGB", (columns * panel, math.ceil(len(shown) / columns) * panel), BACKGROUND)
    for position, index in enumerate(shown):
        row, column = divmod(position, columns)
        sheet.paste(draw_panel(table, int(index), image_root, regions, panel), (column * panel, row * panel))
    return sheet
