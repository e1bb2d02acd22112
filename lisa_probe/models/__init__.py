"""Dual-branch backbones (main net + side net), presets, and their loading/saving."""

from lisa_probe.models.build import (
    build_main,
    build_side,
    check_side_matches,
    detect_family,
    load_main,
    load_side,
    make_dual_branch,
    save_main,
)
from lisa_probe.models.dual_branch import MAIN_PASSES, DualBranch, DualOutput, Site

__all__ = [
    "MAIN_PASSES", "DualBranch", "DualOutput", "Site", "build_main", "build_side", "check_side_matches", "detect_family",
    "load_main", "load_side", "make_dual_branch", "save_main",
]
