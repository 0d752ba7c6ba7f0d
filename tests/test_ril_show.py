"""`python -m ril show`: a PNG of the expected size, with each box drawn where the table says."""
import math

import numpy as np
import pytest
from PIL import Image

from ril.__main__ import main
from ril.reader import RILTable
from ril.show import BACKGROUND, COLUMNS, draw_table, weight_colour
from tests.test_ril_format import build_table


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_teacher):
    return build_table(str(tmp_path_factory.mktemp("show")), tiny_teacher, count=6, regions=5, topk=2)


@pytest.mark.parametrize("images, size", [(4, (4 * 96, 96)), (6, (4 * 96, 2 * 96)), (1, (96, 96))])
def test_show_writes_a_png_of_the_expected_size(built, tmp_path, images, size):
    out = tmp_path / "regions.png"
    args = ["show", built[0], "--images", str(images), "--out", str(out), "--root", built[1], "--panel", "96"]
    assert main(args) == 0
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size == size


def test_boxes_are_drawn_where_the_table_says(built):
    """One region per image on grey panels: its outline, in its weight's colour, lies exactly on the
    stored box (image scaled to fit the panel and centred), and nothing is drawn just outside it."""
    table, panel = RILTable(built[0]), 120
    sheet = np.asarray(draw_table(table, None, images=6, regions=1, panel=panel))
    for index in range(6):
        row, column = divmod(index, COLUMNS)
        height, width = table.array("images/size")[index]
        scale = panel / max(height, width)
        left = column * panel + (panel - round(width * scale)) // 2
        top = row * panel + (panel - round(height * scale)) // 2
        box = table.read_image(index, [0])["box"][0]
        x0, y0 = left + round(box[1] * round(width * scale)), top + round(box[0] * round(height * scale))
        x1, y1 = x0 + round(box[3] * round(width * scale)) - 1, y0 + round(box[2] * round(height * scale)) - 1
        weight = 1 - table.read_image(index, [0])["entropy"][0] / math.log(table.num_classes)
        colour = weight_colour(weight)
        assert tuple(sheet[y1, (x0 + x1) // 2]) == colour, index  # bottom edge
        assert tuple(sheet[y1 - 1, x1]) == colour, index  # right edge, below the label
        below_label = (y0 + 20, (x0 + x1) // 2) if y1 - y0 > 24 else (y1 + 1, (x0 + x1) // 2)
        for y, x in ((y1 + 1, (x0 + x1) // 2), (y1 - 1, x1 + 1), below_label):
            if row * panel <= y < (row + 1) * panel and column * panel <= x < (column + 1) * panel:
                assert tuple(sheet[y, x]) == BACKGROUND, (index, y, x)  # outside, and inside an unfilled box


def test_show_refuses_bad_requests_naming_the_flag(built, tmp_path, capsys):
    out = str(tmp_path / "r.png")
    assert main(["show", built[0], "--images", "0", "--out", out]) == 2
    assert "--images 0 must be at least 1" in capsys.readouterr().err
    assert main(["show", built[0], "--regions", "6", "--out", out]) == 2
    assert "--regions 6 must be between 1 and the table's M=5" in capsys.readouterr().err
    assert main(["show", built[0] + ".absent", "--out", out]) == 2
    assert "does not exist" in capsys.readouterr().err
