"""Dataclass configs on the command line and in config.yaml."""

import argparse
from dataclasses import dataclass, field

import pytest

from lisa_probe.options import (
    add_dataclass_arguments,
    check_number,
    config_defaults,
    config_from_args,
    config_from_dict,
    read_config,
)
from lisa_probe.rundir import write_run_config


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
    write_run_config(tmp_path, Example(steps=9), kind="demo")
    payload = read_config(tmp_path / "config.yaml")
    assert payload["kind"] == "demo" and payload["config"]["steps"] == 9 and payload["code_version"]
    assert config_from_dict(Example, payload["config"], "config.yaml") == Example(steps=9)


def test_config_files_are_checked_against_the_dataclass():
    """Unknown keys and wrong types are named with the allowed ones; ints pass as floats, bools as nothing else."""
    with pytest.raises(ValueError, match=r"f.yaml: unknown key\(s\) 'stpes'; allowed: steps, name, flag, mode, sizes"):
        config_from_dict(Example, {"stpes": 3}, "f.yaml")
    with pytest.raises(ValueError, match="f.yaml: steps must be int, got 'two'"):
        config_from_dict(Example, {"steps": "two"}, "f.yaml")
    with pytest.raises(ValueError, match="steps must be int, got True"):
        config_from_dict(Example, {"steps": True}, "f.yaml")
    with pytest.raises(ValueError, match="name must be str or null, got 3"):
        config_from_dict(Example, {"name": 3}, "f.yaml")


def test_yaml_that_is_not_a_config_is_refused(tmp_path):
    path = tmp_path / "config.yaml"
    for text in ("config: !!python/object/apply:os.system ['true']\n", "- 1\n", "kind: x\n", "a: [\n"):
        path.write_text(text)
        with pytest.raises(ValueError, match="is not a lisa_probe config.yaml"):
            read_config(path)


@pytest.mark.parametrize("value,bounds,ok", [(0.5, dict(low=0, high=1), True), (1.0, dict(low=0, high=1), True),
                                             (1.0, dict(low=0, high=1, high_open=True), False),
                                             (0.0, dict(low=0, low_open=True), False), (float("nan"), {}, False),
                                             (float("inf"), {}, False), (-1e300, dict(high=0), True)])
def test_check_number(value, bounds, ok):
    if ok:
        check_number("lr", value, **bounds)
    else:
        with pytest.raises(ValueError, match=f"--lr must be a finite number in .*, got {value!r}"):
            check_number("lr", value, **bounds)


def test_config_defaults_are_the_declared_ones():
    assert config_defaults(Example) == {"steps": 3, "name": None, "flag": False, "mode": "a", "sizes": [1, 2]}
