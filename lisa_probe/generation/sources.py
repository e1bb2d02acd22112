"""The side nets a comparison draws from, on one main net: lisa_probe runs (or their checkpoints) and plain
diffusers ControlNet directories, loaded once each around a main net loaded once."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import NamedTuple

from lisa_probe.data.options import DataOptions
from lisa_probe.extraction.config import ForeignRun
from lisa_probe.files import local_model, model_id_hint
from lisa_probe.models import DualBranch
from lisa_probe.rundir import SIDE_DIR, is_run, read_run_config, run_dir_of
from lisa_probe.training.config import TrainConfig
from lisa_probe.training.loading import MainNet, attach_side


class Source(NamedTuple):
    """One side net of the comparison: its ``label``, ``path`` as given, the side-net directory ``side_dir`` and the
    train config of a run (None for a ControlNet lisa_probe did not train)."""

    label: str
    path: Path
    side_dir: Path
    run_config: TrainConfig | None


def read_source(path: Path, label: str) -> Source:
    """A run or checkpoint directory (its exported ``controlnet/``), or a diffusers side-net directory; ValueError
    naming the path for anything else."""
    if not path.is_dir():
        raise ValueError(f"source {path} does not exist (give a run, a checkpoint-N directory or a ControlNet "
                         f"directory){model_id_hint(path)}")
    if is_run(path) or is_checkpoint(path):
        side_dir = path / SIDE_DIR
        if not (side_dir / "config.json").exists():
            raise ValueError(f"{path} has no {SIDE_DIR}/ (is the run finished? pass a checkpoint-N directory)")
        return Source(label, path, side_dir, read_run_config(run_dir_of(path), TrainConfig, "train"))
    if not (path / "config.json").exists():
        raise ValueError(f"source {path} is neither a lisa_probe run nor a diffusers side-net directory (no "
                         "config.json)")
    return Source(label, path, path, None)


def is_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a ``checkpoint-N`` directory of a run."""
    return path.name.startswith("checkpoint-") and is_run(path.parent)


def default_label(path: Path) -> str:
    """``run`` for a run, ``run/checkpoint-N`` for a checkpoint, the directory name of a ControlNet."""
    return f"{path.parent.name}/{path.name}" if is_checkpoint(path) else path.name


def read_sources(paths: list[str], labels: list[str] | None) -> list[Source]:
    """The sources in the order given, labelled; ValueError for a label count that differs or repeated labels."""
    paths = [Path(local_model(str(path))) for path in paths]  # a ControlNet's model id: its cached snapshot
    labels = labels or [default_label(path) for path in paths]
    if len(labels) != len(paths):
        raise ValueError(f"--labels names {len(labels)} sources, {len(paths)} were given")
    if len(set(labels)) != len(labels):
        raise ValueError(f"labels must differ, got {', '.join(labels)} (name them with --labels)")
    return [read_source(path, label) for path, label in zip(paths, labels)]


def shared_setting(config, sources: list[Source]) -> ForeignRun:
    """The stand-in config every source is drawn under: the main net (``--main``, else the runs' one, which they
    must share), the resolution (the runs', which must agree; else ``--resolution``) and the data (the first run's
    options and seed with those given replacing them; else the options given and seed 0, as ``extract``)."""
    runs = [source for source in sources if source.run_config is not None]
    mains = {str(Path(source.run_config.main).resolve()): source.label for source in runs}
    if config.main is not None:
        mains = {str(Path(config.main).resolve()): "--main", **mains}
    if not mains:
        raise ValueError("ControlNet sources need --main, the main-net (pipeline) directory they were trained for")
    if len(mains) > 1:
        raise ValueError("the sources use different main nets (" + "; ".join(f"{label}: {main}" for main, label in
                                                                           mains.items()) + "); sample them apart")
    resolutions = {source.run_config.resolution for source in runs}
    if len(resolutions) > 1:
        raise ValueError(f"the runs were trained at different resolutions {sorted(map(str, resolutions))}; sample "
                         "them apart")
    if runs and config.resolution is not None:
        raise ValueError(f"--resolution {config.resolution} applies to ControlNet sources only; runs sample at the "
                         "resolution they were trained at")
    data = {f.name: getattr(runs[0].run_config, f.name) for f in fields(DataOptions)} if runs else {}
    data.update(config.data_overrides() if runs else {f.name: getattr(config, f.name) for f in fields(DataOptions)})
    variants = {source.run_config.variant for source in runs} | ({config.variant} if config.variant else set())
    if len(variants) > 1:
        raise ValueError(f"the sources load different weight variants {sorted(map(str, variants))}; sample them "
                         "apart")
    setting = ForeignRun(main=next(iter(mains)), seed=runs[0].run_config.seed if runs else 0,
                         resolution=next(iter(resolutions)) if runs else config.resolution,
                         variant=next(iter(variants), None), **data)
    setting.check_data_options()
    return setting


def attach_sources(net: MainNet, setting: ForeignRun, sources: list[Source], cond_channels: int) -> list[DualBranch]:
    """A DualBranch per source around the one main net ``net``, in eval mode; ValueError naming a side net that
    cannot take ``cond_channels``-channel conditions."""
    models = []
    for source in sources:
        model = attach_side(net, setting, cond_channels, source.side_dir).eval()
        try:
            model.check_condition(cond_channels)
        except ValueError as error:
            raise ValueError(f"{source.label}: {error}") from None
        models.append(model)
    return models
