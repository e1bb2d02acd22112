"""A study file (YAML, ``safe_load``): its shape checked key by key, every planned run's configs built and checked
against its setting's main net before anything runs, the quick overrides, and the plan (``planned_runs``)."""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields
from pathlib import Path

import yaml

from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.models.build import build_main, build_side, make_dual_branch, null_context_for, set_resolution
from lisa_probe.options import SEED_MAX, config_from_dict
from lisa_probe.training.config import PretrainConfig, TrainConfig

ARM_SEEDS = "seeds"  # the one key of an arm that is not a train option: the study seeds this arm runs at
# an arm that changes only these (and keeps lisa_weight 0) belongs to the learning-rate sweep with the baseline
LR_SWEEP_OPTIONS = {"lr", "steps", "eval_schedule", "eval_every", "checkpoint_every", "lisa_weight", ARM_SEEDS}


# The study file's sections, checked by the same machinery as every command's settings (options.config_from_dict:
# unknown keys refused naming the allowed ones, each value's type), then for what only the whole file can say.
@dataclass
class StudySpec:
    """A study file: its ``name``, ``settings`` (name -> ``SettingSpec``), ``arms`` (name -> train-option overrides,
    optionally with the ``seeds`` the arm runs at), ``seeds``, and optional ``sweep``, ``extract``, ``quick``,
    ``out_dir`` and ``results_dir``."""

    name: str
    settings: dict
    arms: dict
    seeds: list
    sweep: dict | None = None
    extract: dict | None = None
    quick: dict | None = None
    out_dir: str | None = None
    results_dir: str | None = None


@dataclass
class SettingSpec:
    """One setting: a main net to pretrain (``pretrain``: PretrainConfig options), its side nets' training options
    (``train``) and the arms it runs (default: all)."""

    pretrain: dict
    train: dict
    arms: list | None = None


@dataclass
class ExtractSpec:
    """What to extract from each run (``ExtractConfig`` options) and from which arms (default: all)."""

    samples: int | None = None
    timesteps: int | None = None
    batch_size: int | None = None
    arms: list | None = None


@dataclass
class SweepSpec:
    """A one-setting sweep: each value of each option (``values``: option -> list) on top of ``base``."""

    setting: str
    seed: int
    values: dict
    base: dict | None = None


@dataclass
class QuickSpec:
    """``--quick``'s overrides: a subset of settings, arms and seeds, and options merged into every setting."""

    settings: list | None = None
    arms: list | None = None
    seeds: list | None = None
    pretrain: dict | None = None
    train: dict | None = None
    extract: dict | None = None
    sweep: dict | None = None


def spec_from_dict(cls, values, where: str):
    """``cls`` (a spec dataclass) from ``values`` read at ``where``: ValueError naming ``where`` for a value that is
    not a mapping or lacks a required key, and ``config_from_dict``'s for unknown keys and wrong types."""
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping, got {values!r}")
    required = [item.name for item in fields(cls) if item.default is MISSING]
    missing = [name for name in required if name not in values]
    if missing:
        raise ValueError(f"{where} lacks {missing[0]!r}")
    return config_from_dict(cls, values, where)


def _expect_mapping(value, where: str) -> None:
    """``value`` is a mapping (of options)."""
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a mapping, got {value!r}")


def _expect_seeds(value, where: str) -> None:
    if not isinstance(value, list):
        raise ValueError(f"{where} must be a list of seeds, e.g. [0, 1, 2], got {value!r}")
    if not value:
        raise ValueError(f"{where} is empty")
    for seed in value:
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= SEED_MAX:
            raise ValueError(f"{where} must be a list of integer seeds in [0, {SEED_MAX}], got {seed!r}")


def expect_names(names, known: dict, where: str, what: str) -> None:
    """``names`` is a list of keys of ``known`` (the study's settings or arms)."""
    if not isinstance(names, list):
        raise ValueError(f"{where} must be a list of {what[:-1]} names, got {names!r}")
    missing = [name for name in names if name not in known]
    if missing:
        raise ValueError(f"{where} names unknown {what} {missing}; known: {', '.join(known)}")


def check_study(study, path: Path) -> None:
    """Refuse a study of the wrong shape, naming the file and the key: what ``load_study`` promises before anything
    is trained. Each section is read into its spec dataclass (``spec_from_dict``), then the file is checked as a
    whole (names that must exist, seeds)."""
    spec = spec_from_dict(StudySpec, study, f"study file {path}")
    for key in ("settings", "arms"):
        _expect_mapping(getattr(spec, key), f"{path}: {key}")
        if not getattr(spec, key):
            raise ValueError(f"{path}: {key} is empty")
    for name, setting in spec.settings.items():
        setting = spec_from_dict(SettingSpec, setting, f"{path}: settings.{name}")
        _expect_mapping(setting.pretrain, f"{path}: settings.{name}.pretrain")
        _expect_mapping(setting.train, f"{path}: settings.{name}.train")
        if setting.arms is not None:
            expect_names(setting.arms, spec.arms, f"{path}: settings.{name}.arms", "arms")
    _expect_seeds(spec.seeds, f"{path}: seeds")
    for name, overrides in spec.arms.items():
        _expect_mapping(overrides, f"{path}: arms.{name}")
        if ARM_SEEDS in overrides:
            _expect_seeds(overrides[ARM_SEEDS], f"{path}: arms.{name}.seeds")
            outside = sorted(set(overrides[ARM_SEEDS]) - set(spec.seeds))
            if outside:
                raise ValueError(f"{path}: arms.{name}.seeds {outside} are not among the study's seeds {spec.seeds}")
    extract = spec_from_dict(ExtractSpec, spec.extract or {}, f"{path}: extract")
    quick = spec_from_dict(QuickSpec, spec.quick or {}, f"{path}: quick")
    quick_extract = spec_from_dict(ExtractSpec, quick.extract or {}, f"{path}: quick.extract")
    for where, names, part in ((f"{path}: quick.settings", quick.settings, "settings"),
                               (f"{path}: quick.arms", quick.arms, "arms"),
                               (f"{path}: extract.arms", extract.arms, "arms"),
                               (f"{path}: quick.extract.arms", quick_extract.arms, "arms")):
        if names is not None:
            expect_names(names, getattr(spec, part), where, part)
    if quick.seeds is not None:
        _expect_seeds(quick.seeds, f"{path}: quick.seeds")
    for where, sweep in ((f"{path}: sweep", spec.sweep), (f"{path}: quick.sweep", quick.sweep)):
        if sweep:
            sweep = spec_from_dict(SweepSpec, sweep, where)
            if sweep.setting not in spec.settings:
                raise ValueError(f"{where}.setting {sweep.setting!r} is not a setting; known: "
                                 f"{', '.join(spec.settings)}")
            _expect_seeds([sweep.seed], f"{where}.seed")
            for option, values in sweep.values.items():
                if not isinstance(values, list):
                    raise ValueError(f"{where}.values.{option} must be a list of values, got {values!r}")


def check_run_configs(study: dict, path: Path) -> None:
    """Build the pretraining and training config of every planned run, and check each training config against its
    setting's main net (built untrained: its sites and the sizes it takes), so that an unknown option, a bad value
    or an option that does not fit the setting (named with its run) stops the study before any main net is
    pretrained."""
    checked = set()
    for plan in planned_runs(study):
        setting = study["settings"][plan["setting"]]
        where = f"{path}: run {plan['setting']}-{plan['arm']}-s{plan['seed']}"
        pretrain_config = config_from_dict(PretrainConfig, {**setting["pretrain"], "name": "check"},
                                           f"{where}, pretrain")
        train_config = config_from_dict(TrainConfig, {**setting["train"], **plan["overrides"], "main": "check",
                                                      "name": "check", "seed": plan["seed"]}, f"{where}, train")
        fit_key = (plan["setting"], train_config.lisa_site, train_config.resolution)
        if fit_key not in checked:
            try:
                check_train_fits_main(pretrain_config, train_config)
            except ValueError as error:
                raise ValueError(f"{where}, train: {error}") from error
            checked.add(fit_key)


def check_train_fits_main(pretrain_config: PretrainConfig, train_config: TrainConfig) -> None:
    """ValueError when the training options name a site or a resolution that the main net ``pretrain_config`` makes
    does not have (checked on an untrained net of the same architecture)."""
    family = pretrain_config.backbone
    main = build_main(family, pretrain_config.preset, pretrain_config.resolution)
    if train_config.resolution is not None:
        set_resolution(family, main, None, train_config.resolution)
    model = make_dual_branch(family, main, build_side(main, family, cond_channels=1),
                             Parameterization(pretrain_config.prediction_type), null_context_for(main, family))
    if train_config.lisa_site is not None:
        model.site(train_config.lisa_site)


def load_study(path: Path, quick: bool = False) -> dict:
    """Read and validate a study file (shape, then every run's configs); with ``quick`` its ``quick`` section
    overrides the rest. ValueError naming the file and key for anything wrong."""
    try:
        study = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"study file {path} is not valid YAML: {' '.join(str(error).split())}") from error
    check_study(study, path)
    if quick:
        overrides = study.get("quick", {})
        if "settings" in overrides:
            study["settings"] = {name: study["settings"][name] for name in overrides["settings"]}
        if "arms" in overrides:
            study["arms"] = {name: study["arms"][name] for name in overrides["arms"]}
            for setting in study["settings"].values():
                if "arms" in setting:
                    setting["arms"] = [arm for arm in setting["arms"] if arm in study["arms"]]
        study["seeds"] = overrides.get("seeds", study["seeds"])
        study["arms"] = {name: {key: value for key, value in arm.items() if key != ARM_SEEDS}
                         for name, arm in study["arms"].items()}
        for name, setting in study["settings"].items():
            setting["pretrain"] = {**setting["pretrain"], **overrides.get("pretrain", {})}
            setting["train"] = {**setting["train"], **overrides.get("train", {})}
        study["extract"] = {**study.get("extract", {}), **overrides.get("extract", {})}
        study["sweep"] = overrides.get("sweep", study.get("sweep"))
        study["name"] = f"{study['name']}-quick"
    check_run_configs(study, path)
    return study


def planned_runs(study: dict) -> list[dict]:
    """Every (setting, arm, seed) run plus the sweep runs, as {setting, arm, seed, overrides}; a setting with its
    own ``arms`` runs those only, an arm with its own ``seeds`` (in quick mode: ignored) runs at those only.

    Seeds are the outer loop, so a study stopped part-way has every setting and arm at the seeds it reached."""
    runs = [{"setting": setting, "arm": arm, "seed": seed,
             "overrides": {key: value for key, value in overrides.items() if key != ARM_SEEDS}}
            for seed in study["seeds"] for setting, options in study["settings"].items()
            for arm, overrides in study["arms"].items()
            if seed in overrides.get(ARM_SEEDS, study["seeds"]) and arm in options.get("arms", study["arms"])]
    sweep = study.get("sweep")
    if sweep:
        for option, values in sweep["values"].items():
            for value in values:
                runs.append({"setting": sweep["setting"], "arm": f"sweep-{option}={value}", "seed": sweep["seed"],
                             "overrides": {**sweep.get("base", {}), option: value}})
    return runs
