"""Procedural shapes with known generating factors, rendered on the fly.

Each sample is one anti-aliased shape on a flat grey background. Its factors are drawn from
``np.random.default_rng([seed, split_code, index])``, so a sample is identical in every process and on every
machine, and the same index at two resolutions shows the same scene. Geometry lives in normalised image
coordinates (``u`` right, ``v`` down, both in [0, 1]); the renderer evaluates exact signed distance functions (SDF,
negative inside) on the pixel-centre grid, vectorised with numpy.

Factors (all continuous ones in [0, 1]):

* carried by every condition: ``kind`` (triangle, square, ellipse 2:1, cross), ``x``, ``y`` (position),
  ``size`` and ``rotation`` (fraction of the kind's symmetry period, so every value is a distinct pose);
* not carried: ``hue`` (shape colour), ``background`` (grey level) and ``texture`` (solid, coarse or fine
  horizontal stripes modulating the colour only, never the silhouette).

Conditions, each (1, H, W) in [0, 1]: ``edges`` (outline: a tent of half-width 1 px on the SDF, i.e. non-zero
where |SDF| < 1 px), ``mask`` (anti-aliased silhouette), ``distance`` (inside distance to the outline divided by
the shape's inradius: 0 on and outside the outline, 1 at the deepest point) and ``pose`` (a ring of the shape's
circumradius around its centre and a clock hand from the centre at angle 2π·rotation, both tents of half-width 1
px: it carries position, size and rotation but neither kind nor colour).

Label prompts (``label_prompts=True``): each sample also has ``"text"``, its colour and kind as two words
(``"red square"``; the hue's nearest of ``COLOUR_NAMES``), what a main net pretrained with ``--label-prompts``
is conditioned on. The prompt then carries ``kind`` and ``hue`` (``factor_specs``): with the ``pose`` condition,
the setting where the prior (main net + prompt) knows what to draw and the condition only where.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import replace

import numpy as np
import torch

from lisa_probe.data import SPLITS, FactorSpec, check_index, check_resolution, make_sample
from lisa_probe.data.condition_kinds import check_dataset_condition, kinds_of_dataset
from lisa_probe.options import check_choice

SHAPE_KINDS = ("triangle", "square", "ellipse", "cross")
TEXTURES = ("solid", "coarse_stripes", "fine_stripes")
CONDITIONS = kinds_of_dataset("shapes")  # ("edges", "mask", "distance"), from the registry
DEFAULT_SIZES = {"train": 50_000, "val": 1_000, "test": 1_000}
COLOUR_NAMES = ("red", "orange", "lime", "green", "cyan", "blue", "violet", "pink")  # hue bins centred on k/8
LABEL_WORDS = (*COLOUR_NAMES, *SHAPE_KINDS)  # every word of a label prompt

# Rotation symmetry period (radians) of each kind: rotation factor r in [0, 1) -> angle r * period.
SYMMETRY_PERIOD = {"triangle": 2 * math.pi / 3, "square": math.pi / 2, "ellipse": math.pi, "cross": math.pi / 2}
# Largest inside distance of each kind, as a fraction of its circumradius (normalises the distance condition).
INRADIUS = {"triangle": 0.5, "square": 1 / math.sqrt(2), "ellipse": 0.5, "cross": 1 / math.sqrt(5)}
RADIUS_RANGE = (0.12, 0.24)  # circumradius, fraction of the image side, for size = 0 .. 1
MARGIN = 0.03  # free border between the largest shape and the frame, fraction of the image side
POSITION_RANGE = (RADIUS_RANGE[1] + MARGIN, 1 - RADIUS_RANGE[1] - MARGIN)  # centre u (v) for x (y) = 0 .. 1
BACKGROUND_RANGE = (0.05, 0.45)  # grey level for background = 0 .. 1
STRIPE_PERIOD = {"coarse_stripes": 1 / 4, "fine_stripes": 1 / 8}  # fraction of the image side
STRIPE_DEPTH = 0.4  # darkest stripe keeps 1 - STRIPE_DEPTH of the shape colour
EDGE_HALF_WIDTH = 1.0  # pixels
FAR_PX = 2.0  # the SDF is evaluated up to this many pixels outside the circumcircle, +inf beyond

FACTOR_SPECS = {
    "kind": FactorSpec("kind", "categorical", True, len(SHAPE_KINDS), f"shape kind, classes {SHAPE_KINDS}",
                       levels=SHAPE_KINDS),
    "x": FactorSpec("x", "continuous", True, None, f"horizontal position in [0, 1]: centre u in {POSITION_RANGE}"),
    "y": FactorSpec("y", "continuous", True, None, f"vertical position in [0, 1] (down): centre v in {POSITION_RANGE}"),
    "size": FactorSpec("size", "continuous", True, None, f"size in [0, 1]: circumradius in {RADIUS_RANGE} of the side"),
    "rotation": FactorSpec("rotation", "continuous", True, None,
                           "rotation in [0, 1) as a fraction of the kind's symmetry period", period=1.0),
    "hue": FactorSpec("hue", "continuous", False, None, "hue of the shape colour in [0, 1)", period=1.0),
    "background": FactorSpec("background", "continuous", False, None,
                             f"background brightness in [0, 1]: grey level in {BACKGROUND_RANGE}"),
    "texture": FactorSpec("texture", "categorical", False, len(TEXTURES), f"colour texture, classes {TEXTURES}",
                          levels=TEXTURES),
}


def factor_specs_for(condition: str, label_prompts: bool = False) -> dict[str, FactorSpec]:
    """``FACTOR_SPECS`` with ``carried`` as a sample's conditioning (its condition, and its label prompt when there
    is one) makes it: the ``pose`` condition does not carry ``kind``; a label prompt carries ``kind`` and ``hue``."""
    by_prompt = {"kind", "hue"} if label_prompts else set()
    not_by_condition = {"kind"} if condition == "pose" else set()
    return {name: replace(spec, carried=(spec.carried and name not in not_by_condition) or name in by_prompt)
            for name, spec in FACTOR_SPECS.items()}


def colour_name(hue: float) -> str:
    """The nearest of ``COLOUR_NAMES`` (hues k/8) to ``hue`` in [0, 1)."""
    return COLOUR_NAMES[int(math.floor(hue * len(COLOUR_NAMES) + 0.5)) % len(COLOUR_NAMES)]


def label_prompt(factors: dict) -> str:
    """The label prompt of a sample: its colour name and kind, e.g. ``"red square"``."""
    return f"{colour_name(factors['hue'])} {SHAPE_KINDS[factors['kind']]}"


def draw_factors(seed: int, split: str, index: int) -> dict:
    """Draw the factors of sample ``index`` of ``split`` for ``seed`` (python numbers, see ``FACTOR_SPECS``)."""
    check_choice("split", split, SPLITS)
    u = np.random.default_rng([seed, SPLITS.index(split), index]).random(8)
    return {"kind": int(u[0] * len(SHAPE_KINDS)), "x": float(u[1]), "y": float(u[2]), "size": float(u[3]),
            "rotation": float(u[4]), "hue": float(u[5]), "background": float(u[6]),
            "texture": int(u[7] * len(TEXTURES))}


def _window(centre: float, reach: float, resolution: int) -> tuple[int, int]:
    """Pixel index range [start, stop) whose centres lie within ``reach`` of ``centre`` (normalised units)."""
    start = max(math.ceil((centre - reach) * resolution - 0.5), 0)
    stop = min(math.floor((centre + reach) * resolution - 0.5) + 1, resolution)
    return start, stop


def _norm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise sqrt(a^2 + b^2) (faster than ``np.hypot``; the arguments here never overflow)."""
    return np.sqrt(a * a + b * b)


def _lerp(lo_hi: tuple[float, float], t: float) -> float:
    return lo_hi[0] + (lo_hi[1] - lo_hi[0]) * t


def circumradius(factors: dict) -> float:
    """Circumradius of the shape, as a fraction of the image side."""
    return _lerp(RADIUS_RANGE, factors["size"])


def _sdf_triangle(px: np.ndarray, py: np.ndarray, r: float) -> np.ndarray:
    """Exact SDF of an equilateral triangle with circumradius ``r`` centred on its centroid (after I. Quilez)."""
    k = math.sqrt(3.0)
    half_side = r * k / 2
    qx = np.abs(px) - half_side
    qy = py + half_side / k
    fold = qx + k * qy > 0
    qx, qy = np.where(fold, (qx - k * qy) / 2, qx), np.where(fold, (-k * qx - qy) / 2, qy)
    qx = qx - np.clip(qx, -2 * half_side, 0.0)
    return -_norm(qx, qy) * np.sign(qy)


def _sdf_square(px: np.ndarray, py: np.ndarray, r: float) -> np.ndarray:
    """Exact SDF of an axis-aligned square with circumradius ``r``."""
    half_side = r / math.sqrt(2)
    dx, dy = np.abs(px) - half_side, np.abs(py) - half_side
    return _norm(np.maximum(dx, 0), np.maximum(dy, 0)) + np.minimum(np.maximum(dx, dy), 0)


def _sdf_ellipse(px: np.ndarray, py: np.ndarray, r: float, iterations: int = 3) -> np.ndarray:
    """SDF of an ellipse with semi-axes (r, r/2): nearest boundary point by the trig-free evolute iteration.

    Three iterations leave an error below 1e-4 of ``r`` (0.003 px for the largest shape at 64 px).
    """
    a, b = r, r / 2
    x, y = np.abs(px), np.abs(py)
    tx = np.full_like(x, math.sqrt(0.5))
    ty = tx.copy()
    for _ in range(iterations):
        ex, ey = (a * a - b * b) / a * tx * tx * tx, (b * b - a * a) / b * ty * ty * ty
        arc = _norm(a * tx - ex, b * ty - ey)
        dist = np.maximum(_norm(x - ex, y - ey), 1e-12)
        tx = np.clip(((x - ex) * arc / dist + ex) / a, 0, 1)
        ty = np.clip(((y - ey) * arc / dist + ey) / b, 0, 1)
        norm = _norm(tx, ty)
        tx, ty = tx / norm, ty / norm
    inside = (x / a) ** 2 + (y / b) ** 2 < 1
    return _norm(x - a * tx, y - b * ty) * np.where(inside, -1.0, 1.0)


def _sdf_cross(px: np.ndarray, py: np.ndarray, r: float) -> np.ndarray:
    """Exact SDF of a plus sign with circumradius ``r`` and arm width 2/3 of the arm half-length (after I. Quilez)."""
    length = 3 * r / math.sqrt(10)
    width = length / 3
    x, y = np.abs(px), np.abs(py)
    x, y = np.maximum(x, y), np.minimum(x, y)
    qx, qy = x - length, y - width
    k = np.maximum(qx, qy)
    wx = np.where(k > 0, qx, width - x)
    wy = np.where(k > 0, qy, -k)
    return np.sign(k) * _norm(np.maximum(wx, 0), np.maximum(wy, 0))


_SDF = {"triangle": _sdf_triangle, "square": _sdf_square, "ellipse": _sdf_ellipse, "cross": _sdf_cross}


def signed_distance(factors: dict, resolution: int) -> np.ndarray:
    """Signed distance in pixels from each pixel centre to the shape outline, (H, W) float64, negative inside.

    Only the square of pixels within ``FAR_PX`` pixels of the shape's circumcircle is evaluated (exactly); pixels
    beyond it, farther than ``FAR_PX`` from the shape, hold ``+inf``. Every map derived here vanishes there anyway.
    """
    kind = SHAPE_KINDS[factors["kind"]]
    radius = circumradius(factors)
    centre_u, centre_v = _lerp(POSITION_RANGE, factors["x"]), _lerp(POSITION_RANGE, factors["y"])
    reach = radius + FAR_PX / resolution
    (col0, col1), (row0, row1) = _window(centre_u, reach, resolution), _window(centre_v, reach, resolution)
    du = ((np.arange(col0, col1) + 0.5) / resolution - centre_u)[None, :]
    dv = ((np.arange(row0, row1) + 0.5) / resolution - centre_v)[:, None]
    angle = factors["rotation"] * SYMMETRY_PERIOD[kind]
    cos, sin = math.cos(angle), math.sin(angle)
    px, py = cos * du + sin * dv, -sin * du + cos * dv  # into the shape's frame, (rows, cols)
    sdf = np.full((resolution, resolution), np.inf)
    sdf[row0:row1, col0:col1] = _SDF[kind](px, py, radius) * resolution
    return sdf


def mask_from_sdf(sdf: np.ndarray, factors: dict) -> np.ndarray:
    """Anti-aliased silhouette (H, W) in [0, 1] from the SDF in pixels."""
    return np.clip(0.5 - sdf, 0.0, 1.0)


def edges_from_sdf(sdf: np.ndarray, factors: dict) -> np.ndarray:
    """Outline (H, W) in [0, 1]: a tent of half-width ``EDGE_HALF_WIDTH`` pixels around SDF = 0."""
    return np.clip(1.0 - np.abs(sdf) / EDGE_HALF_WIDTH, 0.0, 1.0)


def distance_from_sdf(sdf: np.ndarray, factors: dict) -> np.ndarray:
    """Depth-like map (H, W) in [0, 1]: inside distance divided by the shape's inradius."""
    resolution = sdf.shape[0]
    inradius_px = INRADIUS[SHAPE_KINDS[factors["kind"]]] * circumradius(factors) * resolution
    return np.clip(-sdf / inradius_px, 0.0, 1.0)


def pose_from_sdf(sdf: np.ndarray, factors: dict) -> np.ndarray:
    """Pose map (H, W) in [0, 1] from the geometric factors alone (``sdf`` gives only the resolution): tents of
    half-width ``EDGE_HALF_WIDTH`` pixels around the circumcircle and around the segment from the centre to it at
    angle 2π·rotation (``u`` right, ``v`` down)."""
    resolution = sdf.shape[0]
    radius = circumradius(factors)
    grid = (np.arange(resolution) + 0.5) / resolution
    du = (grid - _lerp(POSITION_RANGE, factors["x"]))[None, :]
    dv = (grid - _lerp(POSITION_RANGE, factors["y"]))[:, None]
    angle = 2 * math.pi * factors["rotation"]
    cos, sin = math.cos(angle), math.sin(angle)
    along = np.clip(du * cos + dv * sin, 0.0, radius)  # the nearest point of the hand, as a distance from the centre
    ring = np.abs(_norm(du, dv) - radius)
    hand = _norm(du - along * cos, dv - along * sin)
    return np.clip(1.0 - np.minimum(ring, hand) * resolution / EDGE_HALF_WIDTH, 0.0, 1.0)


_CONDITION_FNS = {"edges": edges_from_sdf, "mask": mask_from_sdf, "distance": distance_from_sdf,
                  "pose": pose_from_sdf}


def _colour_field(factors: dict, resolution: int) -> np.ndarray:
    """Shape colour per pixel, broadcastable to (H, W, 3): (H, 1, 3) for stripes, (1, 1, 3) for a solid."""
    colour = np.array(colorsys.hsv_to_rgb(factors["hue"], 0.8, 1.0))
    texture = TEXTURES[factors["texture"]]
    if texture == "solid":
        return colour[None, None, :]
    period = STRIPE_PERIOD[texture]
    v = (np.arange(resolution) + 0.5) / resolution
    # Box-filtered sine over the pixel's height: the exact pixel average, hence no aliasing of the stripes.
    phase = math.pi / (resolution * period)
    attenuation = math.sin(phase) / phase
    stripe = 0.5 + 0.5 * attenuation * np.sin(2 * math.pi * v / period)
    return colour[None, None, :] * (1.0 - STRIPE_DEPTH * stripe)[:, None, None]


def image_from_sdf(sdf: np.ndarray, factors: dict) -> np.ndarray:
    """RGB image (H, W, 3) float in [0, 1]: the textured, coloured silhouette over a grey background."""
    coverage = mask_from_sdf(sdf, factors)[:, :, None]
    grey = _lerp(BACKGROUND_RANGE, factors["background"])
    return grey + coverage * (_colour_field(factors, sdf.shape[0]) - grey)


def render(factors: dict, resolution: int) -> dict:
    """Render a scene from its factors (e.g. to re-create ground truth in evaluators).

    Returns:
        ``{"image": (H, W, 3), "mask": (H, W), "edges": (H, W), "distance": (H, W), "pose": (H, W)}``, float32
        numpy arrays in
        [0, 1], H = W = ``resolution``.
    """
    sdf = signed_distance(factors, check_resolution(resolution))
    maps = {name: fn(sdf, factors) for name, fn in _CONDITION_FNS.items()}
    return {key: value.astype(np.float32) for key, value in {"image": image_from_sdf(sdf, factors), **maps}.items()}


def silhouette(factors: dict, resolution: int) -> np.ndarray:
    """The shape's silhouette (H, W) bool (pixel coverage > 0.5) from its geometric factors alone (``kind``,
    ``x``, ``y``, ``size``, ``rotation``): what the evaluators fit to generated images."""
    return mask_from_sdf(signed_distance(factors, check_resolution(resolution)), factors) > 0.5


class ShapesDataset(torch.utils.data.Dataset):
    """Procedural shapes, generated on the fly; see the module docstring for factors and conditions.

    Items: ``{"image": (3, H, W) in [-1, 1], "cond": (1, H, W) in [0, 1], "factors": dict, "id":
    "shapes/<split>/<index:06d>"}``, and ``"text"`` (the label prompt) with ``label_prompts``.
    """

    name = "shapes"
    cond_channels = 1
    silhouette = staticmethod(silhouette)

    def __init__(self, split: str = "train", resolution: int = 32, condition: str | None = None, seed: int = 0,
                 size: int | None = None, label_prompts: bool = False):
        check_choice("split", split, SPLITS)
        condition = CONDITIONS[0] if condition is None else condition
        check_dataset_condition("shapes", condition)
        self.split, self.condition, self.seed = split, condition, int(seed)
        self.label_prompts = bool(label_prompts)
        self.factor_specs = factor_specs_for(condition, self.label_prompts)
        self.resolution = check_resolution(resolution)
        self.size = DEFAULT_SIZES[split] if size is None else int(size)
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {size!r}")

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict:
        index = check_index(index, self.size)
        factors = draw_factors(self.seed, self.split, index)
        sdf = signed_distance(factors, self.resolution)
        cond = _CONDITION_FNS[self.condition](sdf, factors)
        sample = make_sample(image_from_sdf(sdf, factors), cond, factors, f"shapes/{self.split}/{index:06d}")
        if self.label_prompts:
            sample["text"] = label_prompt(factors)
        return sample

    def condition_from_factors(self, factors: dict) -> torch.Tensor:
        """The (1, H, W) condition in [0, 1] of a scene with these factors (a sample's with some replaced: donors that
        differ from a sample in one factor)."""
        sdf = signed_distance(factors, self.resolution)
        return torch.from_numpy(_CONDITION_FNS[self.condition](sdf, factors).astype(np.float32))[None]

    def captions(self) -> list[str]:
        """Every item's label prompt, in order (no images rendered); empty prompts without ``label_prompts``."""
        if not self.label_prompts:
            return [""] * self.size
        return [label_prompt(draw_factors(self.seed, self.split, index)) for index in range(self.size)]
