"""The notebooks' inputs: real runs and feature stores when they are named, tiny ones built in seconds otherwise.

A notebook names ``RUN_DIRS`` (baseline first, then LISA) and/or ``STORES`` (their feature stores, same order).
``runs_and_stores`` keeps what exists, takes the runs of named stores from the stores' own ``extract_args`` when no
runs are named, extracts missing stores from the runs, and builds tiny runs (a tiny UNet main net, a baseline and a
LISA side net) only when neither is named — so the analyses never mix tiny runs with real stores.
"""

from __future__ import annotations

from pathlib import Path

from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.extraction.config import ExtractConfig
from lisa_probe.extraction.extractor import extract
from lisa_probe.models import build_main, save_main
from lisa_probe.rundir import is_finished, is_main_net_ready, is_run, resolved_path
from lisa_probe.store import FeatureStore
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.side_net import train


def run_of_store(store: str | Path) -> str:
    """The run directory a store was extracted from: its ``run`` attr, relative to the store's directory (stores
    written before it: ``extract_args["ckpt"]`` as given, relative to that extraction's working directory); "" for
    a side net extracted with ``--controlnet``."""
    attrs = FeatureStore(store).attrs
    if attrs.get("run"):
        return str(resolved_path(attrs["run"], Path(store).parent))
    return attrs.get("extract_args", {}).get("ckpt") or ""


def runs_of_stores(stores: list[str]) -> list[str]:
    """The run directory of each store (``run_of_store``); ValueError naming the stores whose run is not found."""
    runs = [run_of_store(store) for store in stores]
    missing = [store for store, run in zip(stores, runs) if not (run and is_run(run))]
    if missing:
        raise ValueError(f"the runs of {missing} are not found (extracted from another machine, or with "
                         "--controlnet): name them in RUN_DIRS")
    return runs


def tiny_runs(work: Path, lisa_weight: float, steps: int) -> list[str]:
    """A baseline and a LISA side net on a tiny UNet main net under ``work`` (reused when already trained)."""
    main_dir = work / "main"
    if not is_main_net_ready(main_dir):
        save_main(main_dir, "unet", build_main("unet", "tiny", 16), Parameterization("eps"))
    configs = [TrainConfig(main=str(main_dir), out_dir=str(work / "runs"), lisa_weight=weight, steps=steps,
                           batch_size=4, eval_samples=0, checkpoint_every=0) for weight in (0.0, lisa_weight)]
    return [str(c.run_dir if is_finished(c.run_dir) else train(c)) for c in configs]


def runs_and_stores(run_dirs: list[str], stores: list[str], work_dir: str | Path, lisa_weight: float = 0.2,
                    steps: int = 3, samples: int = 8, timesteps: str = "2",
                    decompose: bool = True) -> tuple[list[str], list[str]]:
    """``(run_dirs, stores)`` for a notebook (see the module docstring); tiny runs and stores go under
    ``work_dir`` (``steps`` training steps; ``samples`` x ``timesteps`` extraction rows, ``decompose`` rows too)."""
    work = Path(work_dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    have_runs = bool(run_dirs) and all(is_run(d) for d in run_dirs)
    have_stores = bool(stores) and all(Path(s).exists() for s in stores)
    if have_stores and not have_runs:
        return runs_of_stores(stores), list(stores)
    if not have_runs:
        run_dirs = tiny_runs(work, lisa_weight, steps)
    if not have_stores:
        stores = [str(extract(ExtractConfig(out=str(work / f"{Path(d).name}.h5"), ckpt=str(d), samples=samples,
                                            timesteps=timesteps, decompose=decompose, overwrite=True)))
                  for d in run_dirs]
    return list(run_dirs), list(stores)
