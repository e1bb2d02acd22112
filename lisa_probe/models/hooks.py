"""One capture mechanism for side-branch features, used by training (LISA), extraction and attribution.

A context manager over ``register_forward_hook`` on named modules (baukit ``TraceDict`` style): no model rewriting.
Each hooked module records ``feature`` (its first input, the side feature before the zero module) and ``residual``
(its output) of the latest call.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

CAPTURABLE = ("feature", "residual")


@contextmanager
def capture_modules(modules: Mapping[str, nn.Module], what: tuple[str, ...] = ("feature",),
                    detach: bool = False) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """Record inputs/outputs of ``modules`` while the block runs.

    Yields a dict ``{name: {"feature": (B, ...), "residual": (B, ...)}}`` filled by each forward call (a later
    call overwrites an earlier one). ``detach=False`` keeps the autograd graph (LISA needs gradients through it).
    """
    unknown = set(what) - set(CAPTURABLE)
    if unknown:
        raise ValueError(f"cannot capture {sorted(unknown)}; allowed: {', '.join(CAPTURABLE)}")
    records: dict[str, dict[str, torch.Tensor]] = {name: {} for name in modules}

    def make_hook(name: str):
        def hook(_module, inputs, output):
            values = {"feature": inputs[0], "residual": output}
            for key in what:
                records[name][key] = values[key].detach() if detach else values[key]
        return hook

    handles = [module.register_forward_hook(make_hook(name)) for name, module in modules.items()]
    try:
        yield records
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture(model, sites: list[str], what: tuple[str, ...] = ("feature",),
            detach: bool = False) -> Iterator[dict[str, dict[str, torch.Tensor]]]:
    """``capture_modules`` over the zero modules of a DualBranch's named sites (unknown names list valid ones)."""
    with capture_modules({name: model.site_module(name) for name in sites}, what, detach) as records:
        yield records
