"""``python -m lisa_probe.dictionary features/<name>.h5 --out dict/<name>/``: a dictionary of one site's features.

Trains a TopK sparse autoencoder on every position of a site's features in a store (seeded; ``--resume`` continues
an interrupted training to the same weights), then ranks its latents by how their activation maps follow the side
branch's likelihood-score estimate and by their mutual information with the store's factors (carried or not), and
draws the top latents' most active rows. How: ``lisa_probe.causal.dictionary``.
"""

from __future__ import annotations

import sys

from lisa_probe.causal.config import DictionaryConfig
from lisa_probe.options import parse_inputs, run_reporting

PROG = "python -m lisa_probe.dictionary"


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    store, config, command = parse_inputs(PROG, __doc__, "store", "a feature store (.h5) written by "
                                          "lisa_probe.extract", DictionaryConfig, argv)
    from lisa_probe.causal.dictionary_run import build_dictionary  # once the options parsed: --help stays quick

    out = run_reporting(PROG, build_dictionary, store, config, command)
    print(f"dictionary written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
