"""Training-step cost of LISA vs the baseline, and of our LISA vs the reference code's way.

    python bench/bench_train.py [--presets small] [--batch-size 16] [--repeats 20]

Arms, all on the same DualBranch and batch, timed round-robin in one process (median of ``--repeats`` steps after
warm-up) so that machine noise hits them alike:

* ``baseline``: side net trained with the diffusion loss only (``--lisa-weight 0``);
* ``lisa``: our LISA step (UNet: down path shared between pred_full and pred_main), whole batch in the LISA term;
* ``lisa-half``: our LISA step with ``--lisa-fraction 0.5``;
* ``lisa-batched``, ``lisa-batched-half``: the same with ``--lisa-main-pass batched`` (pred_main's rows appended to
  pred_full's batch: fewer kernel launches, more FLOPs and activation memory);
* ``reference``: LISA as the reference code does it: a separate full no-grad main-net forward.

One more row, ``unshared-main-alone``, times only the part of the main net that the separate pass runs a second time
for ``pred_main`` (UNet: the up path; DiT: blocks 1..N and the output), without gradients on the whole batch, in the
same round-robin: the floor of the separate pass's extra cost.

Peak memory: each arm is also run alone in a child process and its peak resident memory (CPU) or peak CUDA memory
is reported as a ratio to the baseline's.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.models import build_main, build_side, make_dual_branch
from lisa_probe.models.build import default_prediction_type, null_context_for
from lisa_probe.models.hooks import capture
from lisa_probe.provenance import code_version
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.lisa import lisa_distance, lisa_target
from lisa_probe.training.side_net import SideNetObjective, build_decoder

ARMS = ("baseline", "lisa", "lisa-half", "lisa-batched", "lisa-batched-half", "reference")
UNSHARED = "unshared-main-alone"


class ReferenceObjective(SideNetObjective):
    """LISA computed the reference code's way: full forward with residuals, then a separate main-net forward."""

    def forward(self, x0, cond, noise, timesteps, step):
        p = self.model.parameterization
        x_t, target = p.add_noise(x0, noise, timesteps), p.target(x0, noise, timesteps)
        with capture(self.model, [self.site]) as records:
            pred_full = self.model.predict_full_reference(x_t, timesteps, cond)
        with torch.no_grad():
            pred_main = self.model.predict_main(x_t, timesteps)
        feature = self.model.feature_to_map(self.site, records[self.site]["feature"])
        lisa = lisa_distance(self.decoder(feature, timesteps), lisa_target(target, pred_main))
        return {"loss": F.mse_loss(pred_full, target) + self.config.lisa_weight * lisa}


def make_arm(arm: str, family: str, preset: str, resolution: int, device: str):
    main = build_main(family, preset, resolution, seed=0)
    model = make_dual_branch(family, main, build_side(main, family, 1, seed=0),
                             Parameterization(default_prediction_type(family)), null_context_for(main, family))
    weight = 0.0 if arm == "baseline" else 0.2
    config = TrainConfig(main="unused", lisa_weight=weight, lisa_fraction=0.5 if arm.endswith("-half") else 1.0,
                         lisa_main_pass="batched" if arm.startswith("lisa-batched") else "separate")
    site = model.default_lisa_site()
    decoder = build_decoder(model, site, 0) if weight else None
    objective = (ReferenceObjective if arm == "reference" else SideNetObjective)(model, decoder, config, site)
    objective.to(device)
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-5)
    return objective, optimizer


def make_batch(batch_size: int, resolution: int) -> dict:
    generator = torch.Generator().manual_seed(0)
    return {"image": torch.rand(batch_size, 3, resolution, resolution, generator=generator) * 2 - 1,
            "cond": torch.rand(batch_size, 1, resolution, resolution, generator=generator)}


def synchronize(device) -> None:
    """Wait for queued GPU work (``cuda``, ``cuda:0``, ...); nothing on the CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def train_step(objective, optimizer, batch, generator, device) -> None:
    inputs = {k: v.to(device) for k, v in objective.draw(batch, generator).items()}
    objective(**inputs, step=0)["loss"].backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    synchronize(device)


@torch.no_grad()
def time_unshared_main(objective, batch, generator, device) -> float:
    """Seconds of the main net's unshared part alone (``DualBranch._rest`` without residuals, no grad)."""
    model = objective.model
    inputs = {k: v.to(device) for k, v in objective.draw(batch, generator).items()}
    state = model._shared_prefix(model.parameterization.add_noise(inputs["x0"], inputs["noise"], inputs["timesteps"]),
                                 inputs["timesteps"], model.context(len(inputs["x0"])))
    synchronize(device)  # the shared prefix, queued on a GPU, must not count
    start = time.perf_counter()
    model._rest(state, None)
    synchronize(device)
    return time.perf_counter() - start


def time_arms(family, preset, resolution, batch_size, repeats, warmup, device) -> dict[str, float]:
    """Median seconds per training step for every arm (and of the unshared main part alone), timed round-robin."""
    arms = {arm: make_arm(arm, family, preset, resolution, device) for arm in ARMS}
    batch = make_batch(batch_size, resolution)
    generator = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {arm: [] for arm in (*ARMS, UNSHARED)}
    for i in range(warmup + repeats):
        for arm, (objective, optimizer) in arms.items():
            start = time.perf_counter()
            train_step(objective, optimizer, batch, generator, device)
            if i >= warmup:
                times[arm].append(time.perf_counter() - start)
        unshared = time_unshared_main(arms["lisa"][0], batch, generator, device)
        if i >= warmup:
            times[UNSHARED].append(unshared)
    return {arm: statistics.median(values) for arm, values in times.items()}


def peak_memory_child(arm, family, preset, resolution, batch_size, device) -> float:
    """Run a few steps of one arm (in this process) and return its peak memory in MiB."""
    objective, optimizer = make_arm(arm, family, preset, resolution, device)
    batch = make_batch(batch_size, resolution)
    generator = torch.Generator().manual_seed(0)
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        train_step(objective, optimizer, batch, generator, device)
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_memory(arm, family, preset, resolution, batch_size, device) -> float:
    command = [sys.executable, __file__, "--memory-child", arm, "--families", family, "--presets", preset,
               "--resolution", str(resolution), "--batch-size", str(batch_size), "--device", device]
    return float(json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)["peak"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", default="unet,dit", help="comma-separated backbones (%(default)s)")
    parser.add_argument("--presets", default="small", help="comma-separated presets (%(default)s)")
    parser.add_argument("--resolution", type=int, default=32, help="image size in pixels (%(default)s)")
    parser.add_argument("--batch-size", type=int, default=16, help="rows per training step (%(default)s)")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per arm; the median is reported "
                                                                 "(%(default)s)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per arm first (%(default)s)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="torch device (%(default)s)")
    parser.add_argument("--memory-child", choices=ARMS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        peak = peak_memory_child(args.memory_child, args.families, args.presets, args.resolution, args.batch_size,
                                 args.device)
        print(json.dumps({"peak": peak}))
        return
    print(f"device={args.device} batch={args.batch_size} resolution={args.resolution} "
          f"threads={torch.get_num_threads()} torch={torch.__version__} code={code_version()}")
    print("| backbone | preset | arm | s/step | time ratio vs baseline | peak memory ratio vs baseline |")
    print("|---|---|---|---|---|---|")
    for family in args.families.split(","):
        for preset in args.presets.split(","):
            seconds = time_arms(family, preset, args.resolution, args.batch_size, args.repeats, args.warmup,
                                args.device)
            memory = {arm: peak_memory(arm, family, preset, args.resolution, args.batch_size, args.device)
                      for arm in ARMS}
            for arm in ARMS:
                print(f"| {family} | {preset} | {arm} | {seconds[arm]:.3f} | "
                      f"{seconds[arm] / seconds['baseline']:.2f} | {memory[arm] / memory['baseline']:.2f} |")
            print(f"| {family} | {preset} | {UNSHARED} | {seconds[UNSHARED]:.3f} | "
                  f"{seconds[UNSHARED] / seconds['baseline']:.2f} | — |")
            sys.stdout.flush()


if __name__ == "__main__":
    main()
