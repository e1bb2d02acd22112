"""``python -m lisa_probe``: one entry point listing and dispatching to every command line."""

import importlib
import subprocess
import sys

import pytest

from lisa_probe.__main__ import COMMANDS, main
from tests.test_layout import CLI_MODULES


def test_every_command_line_is_listed_and_dispatched():
    modules = {module for module, _ in COMMANDS.values()}
    assert modules >= CLI_MODULES - {"lisa_probe.study.__main__", "lisa_probe.study.restate", "lisa_probe.__main__"}
    for module in modules:
        assert callable(importlib.import_module(module).main), module


def test_top_level_help_lists_the_commands_without_loading_torch():
    result = subprocess.run([sys.executable, "-c", "import sys, runpy; sys.argv = ['lisa_probe', '--help']; "
                             "runpy.run_module('lisa_probe', run_name='__main__')\n"], capture_output=True, text=True)
    probe = subprocess.run([sys.executable, "-c", "import sys; sys.argv=['x']; import lisa_probe.__main__ as m; "
                            "m.usage(); print('torch' in sys.modules)"], capture_output=True, text=True)
    assert all(name in result.stdout for name in COMMANDS) and probe.stdout.strip() == "False"


def test_a_command_gets_its_arguments_and_a_bad_one_is_named(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["sample", "--help"])
    assert stop.value.code == 0 and "usage: python -m lisa_probe.sample" in capsys.readouterr().out
    assert main(["nope"]) == 2
    assert "unknown command 'nope'; choose from pretrain, train" in capsys.readouterr().err
