"""The notebooks' inputs: real runs and feature stores when they are named, tiny ones built in seconds otherwise.

A notebook names ``STORES`` (feature stores, baseline first, then LISA — any store the toolkit writes, a foreign
ControlNet's too) and/or ``RUN_DIRS`` (their runs, same order). ``runs_and_stores`` refuses a named path that does
not exist (naming it), takes the runs of named stores from the stores themselves when no runs are named (None
where a store's run is not here: the analyses that need a model skip it, saying so), extracts the stores of named
runs, and builds tiny demo runs only when nothing is named — so a typo never turns into an analysis of demo data.
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


def run_of_store(store: str | Path) -> str | None:
    """The lisa_probe run directory a store was extracted from, when it is found here: its ``run`` attr, relative
    to the store's directory (stores written before it: ``extract_args["ckpt"]``); None for a side net extracted
    with ``--controlnet`` (a ControlNet we did not train) or a store moved from another machine."""
    attrs = FeatureStore(store).attrs
    run = str(resolved_path(attrs["run"], Path(store).parent)) if attrs.get("run") else \
        attrs.get("extract_args", {}).get("ckpt")
    return run if run and is_run(run) else None


def tiny_runs(work: Path, lisa_weight: float, steps: int) -> list[str]:
    """A baseline and a LISA side net on a tiny UNet main net under ``work`` (reused when already trained)."""
    main_dir = work / "main"
    if not is_main_net_ready(main_dir):
        save_main(main_dir, "unet", build_main("unet", "tiny", 16), Parameterization("eps"))
    configs = [TrainConfig(main=str(main_dir), out_dir=str(work / "runs"), lisa_weight=weight, steps=steps,
                           batch_size=4, eval_samples=0, checkpoint_every=0) for weight in (0.0, lisa_weight)]
    return [str(c.run_dir if is_finished(c.run_dir) else train(c)) for c in configs]


def check_paths(paths: list[str], what: str, exists) -> None:
    """FileNotFoundError naming every path in ``paths`` that ``exists`` refuses (a typo is never replaced by demo
    data)."""
    missing = [str(path) for path in paths if not exists(path)]
    if missing:
        raise FileNotFoundError(f"{what} not found: {', '.join(missing)} (working directory {Path.cwd()})")


def runs_and_stores(run_dirs: list[str], stores: list[str], work_dir: str | Path, lisa_weight: float = 0.2,
                    steps: int = 3, samples: int = 8, timesteps: str = "2",
                    decompose: bool = True) -> tuple[list[str | None], list[str]]:
    """``(run_dirs, stores)`` for a notebook: one run directory (None where the store's run is not here: a foreign
    ControlNet's store, or one moved from another machine) per store.

    * ``stores`` named: each must exist (FileNotFoundError naming those that do not); the runs are ``run_dirs``
      when named (each must exist), else each store's own run where it is found (``run_of_store``).
    * only ``run_dirs`` named: each must be a run; their stores are extracted under ``work_dir`` (``samples`` x
      ``timesteps`` rows, ``decompose`` rows too).
    * neither: tiny demo runs (a baseline and a LISA side net, ``steps`` training steps) and their stores are built
      under ``work_dir``, and a line says so.
    """
    work = Path(work_dir).resolve()
    if run_dirs:
        check_paths(run_dirs, "RUN_DIRS", is_run)
    if stores:
        check_paths(stores, "STORES", lambda path: Path(path).is_file())
        if run_dirs and len(run_dirs) != len(stores):
            raise ValueError(f"RUN_DIRS names {len(run_dirs)} runs for {len(stores)} STORES (one per store)")
        return (list(run_dirs) if run_dirs else [run_of_store(store) for store in stores]), list(stores)
    work.mkdir(parents=True, exist_ok=True)
    if not run_dirs:
        print(f"no STORES or RUN_DIRS named: building tiny demo runs and stores under {work}")
        run_dirs = tiny_runs(work, lisa_weight, steps)
    stores = [str(extract(ExtractConfig(out=str(work / f"{Path(d).name}.h5"), ckpt=str(d), samples=samples,
                                        timesteps=timesteps, decompose=decompose, overwrite=True)))
              for d in run_dirs]
    return list(run_dirs), stores
