"""``python -m lisa_probe.intervene runs/<name> --out causal/<name>/``: where and when the side branch steers.

For one source (a run, a checkpoint-N directory, or a diffusers ControlNet with ``--main``): each site's spatial map
of its contribution to the prediction (add-one-in, leave-one-out, its residual; beside them the full contribution,
the LISA decoder's output and the oracle) at ``--map-timesteps`` noise levels, with the share inside the condition's
support; and the causal effect on control fidelity of gating each site (and all) off in each of ``--windows`` noise
windows of the sampling trajectory, or keeping all sites only inside a window — paired with the full model on the
same noise, with 95 % t-intervals across ``--samples``. Writes ``maps.csv``, ``maps_summary.csv``,
``interventions.csv``, ``figures/`` and ``intervene.json``. How: ``lisa_probe.causal``.
"""

from __future__ import annotations

import sys

from lisa_probe.causal.config import InterveneConfig
from lisa_probe.options import parse_inputs, run_reporting

PROG = "python -m lisa_probe.intervene"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    source, config, command = parse_inputs(PROG, __doc__, "source", "a run, a checkpoint-N directory or a diffusers "
                                           "ControlNet directory", InterveneConfig, argv)
    from lisa_probe.causal.run import intervene  # once the options parsed: --help stays quick

    out = run_reporting(PROG, intervene, source, config, command)
    print(f"results written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
