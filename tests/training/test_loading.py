"""Loading runs: the main net and the side net attached in two steps equal the one-call build, and a run saved
before the LISA site was recorded gets the same default site once, at load."""

from dataclasses import replace

import torch

from lisa_probe.options import read_config
from lisa_probe.rundir import read_run_config, write_run_config
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.loading import attach_side, build_dual_branch, load_main_net, load_run
from lisa_probe.training.side_net import train
from tests.training.test_side_net import tiny_config


def test_loading_in_two_steps_equals_the_one_call_build(tmp_path):
    config = tiny_config(tmp_path)
    net, kwargs = load_main_net(config)
    two_steps = attach_side(net, config, cond_channels=1)
    one_call, one_kwargs = build_dual_branch(config)
    assert kwargs == one_kwargs and two_steps.site_names == one_call.site_names
    x, t, c = torch.randn(2, 3, 16, 16), torch.tensor([3, 500]), torch.rand(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(two_steps(x, t, c).pred_full, one_call(x, t, c).pred_full, rtol=0, atol=0)


def test_a_run_without_a_recorded_site_gets_the_default_site_once_at_load(tmp_path):
    run = train(tiny_config(tmp_path, name="old", steps=1))
    saved = read_run_config(run, TrainConfig, "train")
    write_run_config(run, replace(saved, lisa_site=None), kind="train")  # as runs saved before the site was
    assert read_config(run / "config.yaml")["config"]["lisa_site"] is None
    config, model, decoder, _ = load_run(run)
    assert decoder is not None and config.lisa_site == model.default_lisa_site() == saved.lisa_site
