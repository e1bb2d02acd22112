"""Single-process throughput of the built-in datasets: ``python bench/bench_data.py [--seconds 2]``.

Prints one line per (dataset, resolution, condition) with samples per second, measured by indexing consecutive
samples (as a DataLoader worker does) for a fixed wall-clock budget after one warm-up sample.
"""

from __future__ import annotations

import argparse
import time

import torch

from lisa_probe.data import build_dataset

CASES = [("shapes", 32, "edges"), ("shapes", 32, "mask"), ("shapes", 32, "distance"), ("shapes", 64, "edges"),
         ("digits", 32, "stroke"), ("digits", 32, "edges")]


def samples_per_second(name: str, resolution: int, condition: str, seconds: float) -> float:
    """Samples per second of ``build_dataset(name, ...)[i]`` for i = 0, 1, ... during ``seconds``."""
    dataset = build_dataset(name, split="train", resolution=resolution, condition=condition)
    dataset[0]
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        dataset[count % len(dataset)]
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per case")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for name, resolution, condition in CASES:
        rate = samples_per_second(name, resolution, condition, args.seconds)
        print(f"{name:7s} {resolution:3d}px {condition:9s} {rate:8.0f} samples/s")


if __name__ == "__main__":
    main()
