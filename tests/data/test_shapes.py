"""Tests of the procedural shapes dataset and of build_dataset's argument checks."""

import hashlib
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_dilation, binary_erosion
from torch.utils.data import default_collate

from lisa_probe.data import DATASET_NAMES, build_dataset, circular_distance
from lisa_probe.data import shapes as S

CARRIED = {"kind", "x", "y", "size", "rotation"}
NOT_CARRIED = {"hue", "background", "texture"}
BASE = {"kind": 1, "x": 0.5, "y": 0.5, "size": 0.5, "rotation": 0.2, "hue": 0.3, "background": 0.5, "texture": 0}

DIGEST_CODE = """
import hashlib
from lisa_probe.data import build_dataset
ds = build_dataset("shapes", split="val", resolution=32, condition="edges", seed=7)
h = hashlib.sha256()
for i in (0, 5, 999):
    s = ds[i]
    h.update(s["image"].numpy().tobytes()); h.update(s["cond"].numpy().tobytes()); h.update(repr(s["factors"]).encode())
print(h.hexdigest())
"""


def _digest(ds, indices=(0, 5, 999)) -> str:
    h = hashlib.sha256()
    for i in indices:
        s = ds[i]
        h.update(s["image"].numpy().tobytes())
        h.update(s["cond"].numpy().tobytes())
        h.update(repr(s["factors"]).encode())
    return h.hexdigest()


def test_deterministic_across_instances_and_processes():
    first = build_dataset("shapes", split="val", resolution=32, condition="edges", seed=7)
    second = build_dataset("shapes", split="val", resolution=32, condition="edges", seed=7)
    assert _digest(first) == _digest(second)
    out = subprocess.run([sys.executable, "-c", DIGEST_CODE], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == _digest(first)


def test_draws_match_recorded_values():
    """PCG64 streams are platform independent: these values must come out on every machine."""
    factors = S.draw_factors(0, "train", 0)
    assert factors["kind"] == 2 and factors["texture"] == 2
    assert factors["x"] == pytest.approx(0.2697867137638703, abs=1e-15)
    assert factors["background"] == pytest.approx(0.6066357757671799, abs=1e-15)


def test_seed_and_split_change_the_draws():
    draws = {(seed, split): S.draw_factors(seed, split, 3) for seed in (0, 1) for split in ("train", "val")}
    assert len({repr(d) for d in draws.values()}) == 4


@pytest.mark.parametrize("resolution", [16, 64])
@pytest.mark.parametrize("condition", ["edges", "mask", "distance"])
def test_sample_shapes_and_ranges(resolution, condition):
    ds = build_dataset("shapes", split="test", resolution=resolution, condition=condition, size=12)
    assert len(ds) == 12 and ds.cond_channels == 1 and ds.condition == condition
    batch = default_collate([ds[i] for i in range(len(ds))])
    assert batch["image"].shape == (12, 3, resolution, resolution) and batch["image"].dtype == torch.float32
    assert batch["cond"].shape == (12, 1, resolution, resolution) and batch["cond"].dtype == torch.float32
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["cond"].min() >= 0 and batch["cond"].max() <= 1 and batch["cond"].amax(dim=(1, 2, 3)).min() > 0.5
    assert set(batch["factors"]) == set(ds.factor_specs)
    assert batch["id"][3] == "shapes/test/000003"


def test_default_sizes_size_override_and_indexing():
    assert [len(build_dataset("shapes", split=s)) for s in ("train", "val", "test")] == [50_000, 1_000, 1_000]
    ds = build_dataset("shapes", size=5)
    assert len(ds) == 5 and ds[-1]["id"] == ds[4]["id"]
    with pytest.raises(IndexError):
        ds[5]


def test_factor_specs_match_the_factors():
    ds = build_dataset("shapes", size=200)
    assert {n for n, spec in ds.factor_specs.items() if spec.carried} == CARRIED
    assert {n for n, spec in ds.factor_specs.items() if not spec.carried} == NOT_CARRIED
    draws = [ds[i]["factors"] for i in range(len(ds))]
    for name, spec in ds.factor_specs.items():
        values = np.array([d[name] for d in draws])
        if spec.kind == "categorical":
            assert all(isinstance(d[name], int) for d in draws)
            assert set(values) == set(range(spec.n_classes))
        else:
            assert all(isinstance(d[name], float) for d in draws) and spec.n_classes is None
            assert values.min() >= 0 and values.max() < 1 and values.std() > 0.2


def _binary_mask(factors, resolution):
    return S.signed_distance(factors, resolution) < 0


def test_edges_lie_on_the_mask_boundary():
    square = np.ones((3, 3), bool)
    outside_fractions = []
    for index in range(60):
        maps = S.render(S.draw_factors(0, "train", index), 32)
        mask, edges = maps["mask"] > 0.5, maps["edges"]
        band = binary_dilation(mask, square) & ~binary_erosion(mask, square)
        # Sharp vertices may put a little edge mass just beyond the pixel band; most of it lies within.
        outside_fractions.append(edges[~band].sum() / edges.sum())
        inner_boundary = mask & ~binary_erosion(mask)  # a 4-neighbour lies outside: |sdf| < 1 px
        assert (edges[inner_boundary] > 0).all(), index
    assert max(outside_fractions) < 0.1 and np.mean(outside_fractions) < 0.01


@pytest.mark.parametrize("kind", range(len(S.SHAPE_KINDS)))
def test_mask_area_matches_the_analytic_area(kind):
    r = 1.0
    analytic = {"triangle": 3 * math.sqrt(3) / 4 * r**2, "square": 2 * r**2, "ellipse": math.pi * r * r / 2}
    arm = 3 * r / math.sqrt(10)
    analytic["cross"] = 8 * arm * (arm / 3) - 4 * (arm / 3) ** 2
    factors = dict(BASE, kind=kind, size=1.0)
    resolution = 128
    radius_px = S.circumradius(factors) * resolution
    area = S.render(factors, resolution)["mask"].sum() / radius_px**2
    assert area == pytest.approx(analytic[S.SHAPE_KINDS[kind]], rel=0.01)


@pytest.mark.parametrize("kind", range(len(S.SHAPE_KINDS)))
def test_distance_peaks_at_the_centre_and_rotation_is_periodic(kind):
    factors = dict(BASE, kind=kind, x=0.3, y=0.6)
    resolution = 64
    distance = S.render(factors, resolution)["distance"]
    peak = np.unravel_index(distance.argmax(), distance.shape)
    centre_px = (np.array([factors["y"], factors["x"]]) * (S.POSITION_RANGE[1] - S.POSITION_RANGE[0])
                 + S.POSITION_RANGE[0]) * resolution - 0.5
    assert np.abs(np.array(peak) - centre_px).max() <= 1.0 and distance.max() > 0.8
    start = S.render(dict(factors, rotation=0.0), resolution)["mask"]
    assert np.allclose(start, S.render(dict(factors, rotation=1.0), resolution)["mask"], atol=1e-6)
    assert not np.allclose(start, S.render(dict(factors, rotation=0.5), resolution)["mask"], atol=0.1)


def test_sdf_is_only_skipped_far_from_the_shape():
    resolution = 32
    centres = (np.arange(resolution) + 0.5) / resolution
    for index in range(20):
        factors = S.draw_factors(0, "train", index)
        sdf = S.signed_distance(factors, resolution)
        cu, cv = (S.POSITION_RANGE[0] + (S.POSITION_RANGE[1] - S.POSITION_RANGE[0]) * factors[k] for k in "xy")
        from_centre = np.hypot(centres[None, :] - cu, centres[:, None] - cv) * resolution
        skipped = np.isinf(sdf)
        assert skipped.any() and (sdf[skipped] > 0).all()
        assert (from_centre[skipped] > S.circumradius(factors) * resolution + S.FAR_PX).all()
        assert np.isfinite(sdf[from_centre <= S.circumradius(factors) * resolution + S.FAR_PX]).all()


def test_extreme_factors_keep_the_shape_inside_the_frame():
    for kind in range(len(S.SHAPE_KINDS)):
        for x in (0.0, 1.0):
            for y in (0.0, 1.0):
                mask = S.render(dict(BASE, kind=kind, x=x, y=y, size=1.0, rotation=0.37), 32)["mask"]
                assert mask[0].max() == mask[-1].max() == mask[:, 0].max() == mask[:, -1].max() == 0


@pytest.mark.parametrize("condition", ["edges", "mask", "distance"])
def test_only_carried_factors_change_the_condition(condition):
    reference = S.render(BASE, 32)
    changes = {"hue": 0.8, "background": 0.0, "texture": 2, "kind": 3, "x": 0.1, "y": 0.9, "size": 0.0,
               "rotation": 0.6}
    for name, value in changes.items():
        changed = S.render(dict(BASE, **{name: value}), 32)
        assert not np.allclose(changed["image"], reference["image"], atol=1e-3), name
        same = np.array_equal(changed[condition], reference[condition])
        assert same == (name in NOT_CARRIED), name


def test_texture_only_recolours_the_inside():
    plain = S.render(BASE, 32)
    striped = S.render(dict(BASE, texture=1), 32)
    outside = plain["mask"] == 0
    assert np.array_equal(plain["image"][outside], striped["image"][outside])
    assert np.abs(plain["image"] - striped["image"]).max() > 0.1


def test_bad_arguments_name_the_value_and_the_choices():
    with pytest.raises(ValueError, match="'nope'.*'shapes'"):
        build_dataset("nope")
    with pytest.raises(ValueError, match="'dev'.*'train', 'val', 'test'"):
        build_dataset("shapes", split="dev")
    with pytest.raises(ValueError, match="'depth'.*'edges', 'mask', 'distance'"):
        build_dataset("shapes", condition="depth")
    with pytest.raises(ValueError, match="resolution"):
        build_dataset("shapes", resolution=0)
    assert DATASET_NAMES == ("shapes", "digits", "folder", "captioned")


def _pose_brute_force(factors, resolution, points=4001):
    """The pose map drawn point by point: distance of each pixel centre to the circle and to ``points`` samples of
    the clock hand, in pixels, through the same 1-px tent."""
    centre = np.array([S._lerp(S.POSITION_RANGE, factors["x"]), S._lerp(S.POSITION_RANGE, factors["y"])])
    radius = S.circumradius(factors)
    angle = 2 * math.pi * factors["rotation"]
    hand = centre + np.linspace(0, radius, points)[:, None] * np.array([math.cos(angle), math.sin(angle)])
    grid = (np.arange(resolution) + 0.5) / resolution
    pixels = np.stack(np.meshgrid(grid, grid, indexing="xy"), axis=-1).reshape(-1, 2)  # (u, v) per pixel, row-major
    to_ring = np.abs(np.linalg.norm(pixels - centre, axis=1) - radius)
    to_hand = np.linalg.norm(pixels[:, None, :] - hand[None], axis=2).min(axis=1)
    distance = np.minimum(to_ring, to_hand).reshape(resolution, resolution) * resolution
    return np.clip(1 - distance / S.EDGE_HALF_WIDTH, 0, 1)


@pytest.mark.parametrize("rotation", [0.0, 0.13, 0.5, 0.81])
def test_pose_map_matches_a_brute_force_drawing(rotation):
    factors = dict(BASE, rotation=rotation, x=0.3, y=0.7, size=0.8)
    # the hand is sampled every radius/4000: a pixel's distance to it is off by < 0.002 px
    np.testing.assert_allclose(S.render(factors, 32)["pose"], _pose_brute_force(factors, 32), atol=3e-3)


def test_pose_carries_position_size_and_rotation_but_not_kind_or_colour():
    reference = S.render(BASE, 32)["pose"]
    for name, value in {"kind": 3, "hue": 0.8, "background": 0.0, "texture": 2}.items():
        assert np.array_equal(S.render(dict(BASE, **{name: value}), 32)["pose"], reference), name
    for name, value in {"x": 0.1, "y": 0.9, "size": 0.0, "rotation": 0.6}.items():
        assert not np.allclose(S.render(dict(BASE, **{name: value}), 32)["pose"], reference, atol=1e-3), name
    specs = build_dataset("shapes", condition="pose", size=1).factor_specs
    assert {name for name, spec in specs.items() if spec.carried} == {"x", "y", "size", "rotation"}


def test_label_prompts_name_colour_and_kind_and_carry_them():
    ds = build_dataset("shapes", split="val", condition="pose", size=40, label_prompts=True)
    assert ds.captions() == [ds[i]["text"] for i in range(len(ds))]
    for i in range(len(ds)):
        factors = ds[i]["factors"]
        colour, kind = ds[i]["text"].split()
        assert kind == S.SHAPE_KINDS[factors["kind"]]
        # the named hue bin is the nearest of k/8 on the circle
        assert circular_distance(S.COLOUR_NAMES.index(colour) / 8, factors["hue"]) <= 1 / 16 + 1e-12
    assert {name for name, spec in ds.factor_specs.items() if spec.carried} == {"kind", "hue", "x", "y", "size",
                                                                                "rotation"}
    assert [S.colour_name(h) for h in (0.0, 0.06, 0.07, 0.5, 0.93, 0.95)] == ["red", "red", "orange", "cyan",
                                                                             "pink", "red"]
    assert "text" not in build_dataset("shapes", size=1)[0] and build_dataset("shapes", size=2).captions() == ["", ""]
