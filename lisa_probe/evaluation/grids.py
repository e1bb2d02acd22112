"""Sample grids as PNG (PIL only): rows of images, optionally labelled, optionally captioned per column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

CHAR_WIDTH, LINE_HEIGHT = 6, 11  # PIL's default bitmap font, pixels


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(N, C, H, W) with C in {1, 3} -> (N, H, W, 3) uint8."""
    low, high = value_range
    scaled = ((images.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    if scaled.shape[1] == 1:
        scaled = scaled.repeat(1, 3, 1, 1)
    return (scaled[:, :3].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def wrap(text: str, width: int) -> list[str]:
    """``text`` in lines of at most ``width`` characters, broken between words (a longer word stands alone)."""
    lines: list[str] = []
    for word in text.split():
        if lines and len(lines[-1]) + 1 + len(word) <= width:
            lines[-1] += " " + word
        else:
            lines.append(word)
    return lines


def save_grid(rows: list[tuple[str, np.ndarray]], path: Path, scale: int = 2, pad: int = 2,
              label_width: int = 64, captions: list[str] | None = None) -> Path:
    """Write rows of equally sized uint8 images (N, H, W, 3), each with a text label on its left, to a PNG; with
    ``captions`` (one per column, e.g. the prompts the columns were generated from), a header of wrapped text
    above the columns."""
    n = max(len(images) for _, images in rows)
    height, width = rows[0][1].shape[1:3]
    cell_h, cell_w = height * scale + pad, width * scale + pad
    wrapped = [wrap(caption, max(1, cell_w // CHAR_WIDTH)) for caption in captions or []]
    header = (max((len(lines) for lines in wrapped), default=0) * LINE_HEIGHT + pad) if wrapped else 0
    canvas = Image.new("RGB", (label_width + n * cell_w, header + len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for c, lines in enumerate(wrapped[:n]):
        for i, line in enumerate(lines):
            draw.text((label_width + c * cell_w, i * LINE_HEIGHT), line, fill="black")
    for r, (label, images) in enumerate(rows):
        draw.text((2, header + r * cell_h + cell_h // 3), label, fill="black")
        for c, image in enumerate(images):
            tile = Image.fromarray(image).resize((width * scale, height * scale), Image.NEAREST)
            canvas.paste(tile, (label_width + c * cell_w, header + r * cell_h))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
