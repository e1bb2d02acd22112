"""Where a training step's time goes: cProfile over ``training.side_net.train`` on a pipeline and captioned dataset.

    python bench/profile_train_step.py --main /tmp/peer/pipe --data-root /tmp/peer/data [--batch-size 16] \
        [--lisa-weight 0] [--steps 40] [--cache-latents] [--top 45]

The pipeline and data are the peer harness's (``../shared/peer/build_pipeline.py OUT``, ``build_dataset.py OUT``).
A short run first warms the prompt and latent caches (and the read-back of nothing: evaluation is off); the profiled
run then trains ``--steps`` steps and the functions are printed by cumulative time (``docs/benchmarks.md`` reads the
backward, the forward's parts, the data loading and the optimizer step from them).
"""

from __future__ import annotations

import argparse
import cProfile
import dataclasses
import pstats
import tempfile

from lisa_probe.training.config import TrainConfig
from lisa_probe.training.side_net import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--main", required=True, help="pipeline directory (diffusers layout)")
    parser.add_argument("--data-root", required=True, help="captioned dataset directory")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lisa-weight", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--cache-latents", action="store_true")
    parser.add_argument("--top", type=int, default=45, help="functions printed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(main=args.main, dataset="captioned", data_root=args.data_root,
                             batch_size=args.batch_size, steps=5, seed=0, out_dir=out, name="warm", eval_samples=0,
                             checkpoint_every=0, log_every=1, lr=5e-6, lisa_weight=args.lisa_weight,
                             cache_latents=args.cache_latents)
        train(config)
        profiled = dataclasses.replace(config, name="profiled", steps=args.steps)
        profile = cProfile.Profile()
        profile.enable()
        train(profiled)
        profile.disable()
    pstats.Stats(profile).sort_stats("cumulative").print_stats(args.top)


if __name__ == "__main__":
    main()
