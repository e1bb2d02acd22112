"""Sample grids as PNG (PIL only): rows of images, optionally labelled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """(N, C, H, W) with C in {1, 3} -> (N, H, W, 3) uint8."""
    low, high = value_range
    scaled = ((images.detach().float().cpu() - low) / (high - low)).clamp(0, 1)
    if scaled.shape[1] == 1:
        scaled = scaled.repeat(1, 3, 1, 1)
    return (scaled[:, :3].permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def save_grid(rows: list[tuple[str, np.ndarray]], path: Path, scale: int = 2, pad: int = 2,
              label_width: int = 64) -> Path:
    """Write rows of equally sized uint8 images (N, H, W, 3), each with a text label on its left, to a PNG."""
    n = max(len(images) for _, images in rows)
    height, width = rows[0][1].shape[1:3]
    cell_h, cell_w = height * scale + pad, width * scale + pad
    canvas = Image.new("RGB", (label_width + n * cell_w, len(rows) * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        draw.text((2, r * cell_h + cell_h // 3), label, fill="black")
        for c, image in enumerate(images):
            tile = Image.fromarray(image).resize((width * scale, height * scale), Image.NEAREST)
            canvas.paste(tile, (label_width + c * cell_w, r * cell_h))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
