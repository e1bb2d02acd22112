"""Sample grids: rows of labelled images and, with captions, a header of wrapped text above the columns."""

import numpy as np
from PIL import Image

from lisa_probe.evaluation.grids import save_grid, wrap


def test_wrap_breaks_between_words_within_the_width():
    assert wrap("a big red circle on grey", 10) == ["a big red", "circle on", "grey"]
    assert wrap("unbreakableword x", 4) == ["unbreakableword", "x"]


def test_captions_add_a_header_of_text_above_the_columns(tmp_path):
    images = np.full((3, 8, 8, 3), 128, np.uint8)
    plain = Image.open(save_grid([("samples", images)], tmp_path / "plain.png"))
    captioned = Image.open(save_grid([("samples", images)], tmp_path / "captioned.png",
                                     captions=["a big red circle", "a small blue square", ""]))
    assert captioned.width == plain.width and captioned.height > plain.height
    header = np.asarray(captioned)[: captioned.height - plain.height]
    assert (header < 128).any()  # dark text on white
    # the images are the same, moved down by the header
    np.testing.assert_array_equal(np.asarray(captioned)[captioned.height - plain.height:, 64:],
                                  np.asarray(plain)[:, 64:])
