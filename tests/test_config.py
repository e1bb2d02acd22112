"""Dataclass configs on the command line and in config.yaml."""

import argparse
from dataclasses import dataclass, field

import pytest

from lisa_probe.config import add_dataclass_arguments, config_defaults, config_from_args, read_config, write_config


@dataclass
class Example:
    steps: int = field(default=3, metadata={"help": "steps"})
    name: str | None = None
    flag: bool = False
    mode: str = field(default="a", metadata={"choices": ("a", "b")})
    sizes: list = field(default_factory=lambda: [1, 2])


def parse(argv):
    parser = argparse.ArgumentParser()
    add_dataclass_arguments(parser, Example)
    return config_from_args(Example, parser.parse_args(argv))


def test_types_defaults_flags_and_none():
    assert parse([]) == Example()
    assert parse(["--steps", "7", "--name", "x", "--flag", "--mode", "b"]) == Example(7, "x", True, "b")
    assert parse(["--name", "none", "--flag", "false"]) == Example(name=None, flag=False)


def test_bad_values_are_rejected():
    with pytest.raises(SystemExit):
        parse(["--steps", "three"])
    with pytest.raises(SystemExit):
        parse(["--mode", "c"])


def test_yaml_round_trip_with_code_version(tmp_path):
    write_config(tmp_path / "config.yaml", Example(steps=9), kind="demo")
    payload = read_config(tmp_path / "config.yaml")
    assert payload["kind"] == "demo" and payload["config"]["steps"] == 9 and payload["code_version"]


def test_config_defaults_are_the_declared_ones():
    assert config_defaults(Example) == {"steps": 3, "name": None, "flag": False, "mode": "a", "sizes": [1, 2]}
