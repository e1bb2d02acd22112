"""A study file (YAML, ``safe_load``): its shape checked key by key, every planned run's configs built and checked
against its setting's main net before anything runs, the quick overrides, and the plan (``planned_runs``)."""

from __future__ import annotations

from pathlib import Path

import yaml

from lisa_probe.diffusion.parameterization import Parameterization
from lisa_probe.models.build import build_main, build_side, make_dual_branch, null_context_for, set_resolution
from lisa_probe.options import SEED_MAX, config_from_dict
from lisa_probe.training.config import PretrainConfig, TrainConfig

STUDY_KEYS = ("name", "settings", "arms", "seeds", "sweep", "extract", "quick", "out_dir", "results_dir")


SETTING_KEYS = ("pretrain", "train", "arms")  # arms: the arms this setting runs (default: all)
EXTRACT_KEYS = ("samples", "timesteps", "batch_size", "arms")
QUICK_KEYS = ("settings", "arms", "seeds", "pretrain", "train", "extract", "sweep")
ARM_SEEDS = "seeds"  # the one key of an arm that is not a train option: the study seeds this arm runs at
# an arm that changes only these (and keeps lisa_weight 0) belongs to the learning-rate sweep with the baseline
LR_SWEEP_OPTIONS = {"lr", "steps", "eval_schedule", "eval_every", "checkpoint_every", "lisa_weight", ARM_SEEDS}
SWEEP_KEYS = ("setting", "seed", "base", "values")


def _expect(value, kind: type | tuple[type, ...], where: str, what: str) -> None:
    """ValueError naming ``where`` (file and key) unless ``value`` is a ``kind`` (bools are not numbers)."""
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple)
                                                                                 else (kind,))):
        raise ValueError(f"{where} must be {what}, got {value!r}")


def _expect_mapping(value, where: str, allowed: tuple[str, ...] | None = None) -> None:
    """``value`` is a mapping with string keys (only ``allowed`` ones, when given)."""
    _expect(value, dict, where, "a mapping")
    unknown = sorted(str(key) for key in value if allowed is not None and key not in allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {', '.join(allowed)}")


def _expect_seeds(value, where: str) -> None:
    _expect(value, list, where, "a list of seeds, e.g. [0, 1, 2]")
    if not value:
        raise ValueError(f"{where} is empty")
    for seed in value:
        _expect(seed, int, where, f"a list of integer seeds in [0, {SEED_MAX}]")
        if not 0 <= seed <= SEED_MAX:
            raise ValueError(f"{where}: seed {seed} outside [0, {SEED_MAX}]")


def expect_names(names, known: dict, where: str, what: str) -> None:
    """``names`` is a list of keys of ``known`` (the study's settings or arms)."""
    _expect(names, list, where, f"a list of {what[:-1]} names")
    missing = [name for name in names if name not in known]
    if missing:
        raise ValueError(f"{where} names unknown {what} {missing}; known: {', '.join(known)}")


def check_study(study, path: Path) -> None:
    """Refuse a study of the wrong shape, naming the file and the key: what ``load_study`` promises before anything
    is trained."""
    _expect_mapping(study, f"study file {path}", STUDY_KEYS)
    for key in ("name", "settings", "arms", "seeds"):
        if key not in study:
            raise ValueError(f"study file {path} lacks {key!r}")
    _expect(study["name"], str, f"{path}: name", "a string")
    for key in ("settings", "arms"):
        _expect_mapping(study[key], f"{path}: {key}")
        if not study[key]:
            raise ValueError(f"{path}: {key} is empty")
    for name, setting in study["settings"].items():
        _expect_mapping(setting, f"{path}: settings.{name}", SETTING_KEYS)
        for part in ("pretrain", "train"):
            if part not in setting:
                raise ValueError(f"{path}: settings.{name} lacks {part!r}")
            _expect_mapping(setting[part], f"{path}: settings.{name}.{part}")
        if "arms" in setting:
            expect_names(setting["arms"], study["arms"], f"{path}: settings.{name}.arms", "arms")
    _expect_seeds(study["seeds"], f"{path}: seeds")
    for name, overrides in study["arms"].items():
        _expect_mapping(overrides, f"{path}: arms.{name}")
        if ARM_SEEDS in overrides:
            _expect_seeds(overrides[ARM_SEEDS], f"{path}: arms.{name}.seeds")
            outside = sorted(set(overrides[ARM_SEEDS]) - set(study["seeds"]))
            if outside:
                raise ValueError(f"{path}: arms.{name}.seeds {outside} are not among the study's seeds "
                                 f"{study['seeds']}")
    extract = study.get("extract") or {}
    _expect_mapping(extract, f"{path}: extract", EXTRACT_KEYS)
    quick = study.get("quick") or {}
    _expect_mapping(quick, f"{path}: quick", QUICK_KEYS)
    for key in ("pretrain", "train", "extract"):
        _expect_mapping(quick.get(key) or {}, f"{path}: quick.{key}", EXTRACT_KEYS if key == "extract" else None)
    for where, names, part in ((f"{path}: quick.settings", quick.get("settings"), "settings"),
                               (f"{path}: quick.arms", quick.get("arms"), "arms"),
                               (f"{path}: extract.arms", extract.get("arms"), "arms"),
                               (f"{path}: quick.extract.arms", (quick.get("extract") or {}).get("arms"), "arms")):
        if names is not None:
            expect_names(names, study[part], where, part)
    if "seeds" in quick:
        _expect_seeds(quick["seeds"], f"{path}: quick.seeds")
    for where, sweep in ((f"{path}: sweep", study.get("sweep")), (f"{path}: quick.sweep", quick.get("sweep"))):
        if sweep:
            _expect_mapping(sweep, where, SWEEP_KEYS)
            if sweep.get("setting") not in study["settings"]:
                raise ValueError(f"{where}.setting {sweep.get('setting')!r} is not a setting; known: "
                                 f"{', '.join(study['settings'])}")
            _expect_seeds([sweep.get("seed")], f"{where}.seed")
            _expect_mapping(sweep.get("base") or {}, f"{where}.base")
            _expect_mapping(sweep.get("values"), f"{where}.values")
            for option, values in sweep["values"].items():
                _expect(values, list, f"{where}.values.{option}", "a list of values")


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
