"""Dual-branch backbones (main net + side net), presets, and their loading/saving.

The names below are loaded on first use (PEP 562), so that ``lisa_probe.models.presets`` (the option values the
settings name) imports without torch.
"""

import importlib

_EXPORTS = {
    "build_main": "lisa_probe.models.build", "build_side": "lisa_probe.models.build",
    "check_side_matches": "lisa_probe.models.build", "detect_family": "lisa_probe.models.build",
    "load_main": "lisa_probe.models.build", "load_side": "lisa_probe.models.build",
    "make_dual_branch": "lisa_probe.models.build", "save_main": "lisa_probe.models.build",
    "DualBranch": "lisa_probe.models.dual_branch", "DualOutput": "lisa_probe.models.dual_branch",
    "Site": "lisa_probe.models.dual_branch",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'lisa_probe.models' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
