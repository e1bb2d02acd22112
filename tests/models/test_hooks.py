"""The capture context manager: features and residuals of named sites, with or without the graph."""

import pytest
import torch

from lisa_probe.models.hooks import capture, capture_modules


def test_captures_input_and_output_and_removes_hooks():
    layer = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with capture_modules({"lin": layer}, what=("feature", "residual")) as records:
        y = layer(x)
    assert records["lin"]["feature"] is x
    torch.testing.assert_close(records["lin"]["residual"], y)
    assert not layer._forward_hooks
    with pytest.raises(ValueError, match="allowed: feature, residual"):
        with capture_modules({"lin": layer}, what=("weights",)):
            pass


def test_features_keep_or_drop_the_graph(dual_branch):
    site = dual_branch.site_names[0]
    size = dual_branch.main.config.sample_size
    x, c = torch.randn(2, 3, size, size), torch.rand(2, 1, size, size)
    t = dual_branch.parameterization.sample_timesteps(2)
    with capture(dual_branch, [site]) as kept:
        dual_branch(x, t, c)
    with capture(dual_branch, [site], detach=True) as dropped:
        dual_branch(x, t, c)
    assert kept[site]["feature"].requires_grad and not dropped[site]["feature"].requires_grad
    torch.testing.assert_close(kept[site]["feature"].detach(), dropped[site]["feature"])
