"""Building and loading main and side nets: the sizes a main net takes, a side net of another main net refused by
name, the family read from a directory's layout, a saved main net loaded back the same."""

import pytest
import torch

from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.models.build import (
    build_main,
    build_side,
    check_side_matches,
    detect_family,
    load_main,
    save_main,
    set_resolution,
)


@pytest.mark.parametrize("family,resolution,message", [
    ("unet", 15, "takes multiples of"), ("unet", 2, "from"), ("dit", 3, "takes multiples of 2"),
    ("dit", 64, "up to")])
def test_sizes_a_main_net_cannot_take_are_refused_naming_the_ones_it_can(family, resolution, message):
    main = build_main(family, "tiny", 16)
    with pytest.raises(ValueError, match=f"--resolution {resolution} does not fit this main net: .*{message}"):
        set_resolution(family, main, None, resolution)


def test_a_unet_takes_sizes_whose_deepest_map_is_at_least_2x2():
    main = build_main("unet", "tiny", 16)
    factor = 2 ** (len(main.config.block_out_channels) - 1)
    set_resolution("unet", main, None, 2 * factor)
    assert main.config.sample_size == 2 * factor
    with pytest.raises(ValueError, match=f"from {2 * factor}"):
        set_resolution("unet", main, None, factor)


def test_a_side_net_of_another_main_net_is_refused_naming_the_difference():
    small, tiny = build_main("unet", "small", 16), build_main("unet", "tiny", 16)
    with pytest.raises(ValueError, match="side net does not match the main net .*block_out_channels"):
        check_side_matches("unet", tiny, build_side(small, "unet", 1))
    check_side_matches("unet", tiny, build_side(tiny, "unet", 1))


def test_a_saved_main_net_is_found_by_its_layout_and_loads_back_the_same(tmp_path):
    for family, kind in (("unet", "v"), ("dit", "flow")):
        main = build_main(family, "tiny", 16, seed=3)
        save_main(tmp_path / family, family, main, Parameterization(kind))
        assert detect_family(tmp_path / family) == family
        loaded_family, loaded, parameterization, _, vae = load_main(tmp_path / family)
        assert loaded_family == family and parameterization.prediction_type == kind and vae is None
        for (name, a), (_, b) in zip(main.state_dict().items(), loaded.state_dict().items()):
            assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="is not a diffusers main-net directory"):
        detect_family(tmp_path)
