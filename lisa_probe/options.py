"""Dataclass configs <-> command line <-> ``config.yaml`` (safe YAML only).

Every field of a config dataclass becomes a ``--kebab-case`` option with the field's type and default; the whole
config is written to the run directory with the code version so that the run can be rebuilt.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import shlex
import sys
import types
import typing
from pathlib import Path

import yaml
from safetensors import SafetensorError

from lisa_probe.files import local_model


def option(text: str, **extra) -> dict:
    """Dataclass field metadata: the ``--help`` text plus extras such as ``choices``."""
    return {"help": text, **extra}


def _field_type(field: dataclasses.Field, hints: dict) -> tuple[type, bool]:
    """(scalar type, optional?) of a dataclass field annotated like ``int``, ``str | None``."""
    hint = hints[field.name]
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        scalar = next(a for a in args if a is not type(None))
        return scalar, True
    return hint, False


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (true/false), got {text!r}")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add one ``--field-name`` option per field of dataclass ``cls`` (help text from ``metadata['help']``; a
    ``parse`` entry converts the text instead of the field's type, a ``nargs`` entry takes a list (and ``metavar``
    names its values); a bool field with ``off_flag`` gets that option, which sets it false, instead of
    ``--field-name [BOOL]``). ``cls.option_aliases`` (``{field: ("--other_name",
    ...)}``) adds other spellings of an option (diffusers' trainers' names), shown beside ours in ``--help``; an alias
    in ``cls.alias_implies`` (``{alias: {field: value}}``) also sets those fields (``ImpliedAlias``)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        scalar, optional = _field_type(field, hints)
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        if "off_flag" in field.metadata:
            parser.add_argument(field.metadata["off_flag"], dest=field.name, action="store_false", default=default,
                                help=field.metadata.get("help", ""))
            continue
        convert = field.metadata.get("parse") or (_parse_bool if scalar is bool else scalar)

        def parse(text, convert=convert, optional=optional):
            return None if optional and text.lower() == "none" else convert(text)

        parse.__name__ = getattr(scalar, "__name__", "value")  # argparse names it in "invalid int value: 'abc'"
        bare = {"nargs": "?", "const": True} if scalar is bool else {}  # a bare --flag means true
        if "nargs" in field.metadata:  # a list of values, each converted by ``parse``
            bare = {"nargs": field.metadata["nargs"]}
        choices = field.metadata.get("choices")
        text = field.metadata.get("help", "")
        if "default" not in text and default != "":  # a help text that explains its own default keeps it
            text += f" (default: {default})"
        aliases = getattr(cls, "option_aliases", {}).get(field.name, ())
        plain = [alias for alias in aliases if alias not in getattr(cls, "alias_implies", {})]
        metavar = None if choices else field.metadata.get("metavar", parse.__name__.upper())
        common = dict(dest=field.name, type=parse, choices=choices, metavar=metavar, **bare)
        parser.add_argument(flag(field.name), *plain, default=default, help=text, **common)
        for alias in aliases:
            if alias not in plain:
                implied = cls.alias_implies[alias]
                parser.add_argument(alias, action=ImpliedAlias, implies=implied, default=argparse.SUPPRESS,
                                    help=f"as {flag(field.name)}, with "
                                         + ", ".join(f"{flag(key)} {value}" for key, value in implied.items()),
                                    **common)


class ImpliedAlias(argparse.Action):
    """An alias of another tool's option that also sets options of ours it implies (``implies``: ``{field: value}``),
    e.g. diffusers' ``--train_data_dir DIR``: ``--data-root DIR --dataset captioned``."""

    def __init__(self, option_strings, dest, implies: dict, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.implies = implies

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        for key, value in self.implies.items():
            setattr(namespace, key, value)


def parse_inputs(prog: str, doc: str, name: str, text: str, cls, argv: list[str] | None, nargs: str | None = None):
    """A command line of input path(s) ``name`` (``nargs`` as argparse's) followed by ``cls``'s options; returns
    ``(inputs, config, command)``, the command as typed (for the outputs' provenance). The description is the part
    of ``doc``'s first line after its first ``: ``. A validation error exits with the usage and the message."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0].split(": ", 1)[-1])
    parser.add_argument(name, nargs=nargs, help=text)
    add_dataclass_arguments(parser, cls)
    args = parser.parse_args(argv)
    inputs = args.__dict__.pop(name)
    try:
        config = config_from_args(cls, args)
    except ValueError as error:
        parser.error(str(error))
    module = prog.rsplit(" ", 1)[-1]
    command = " ".join(["python", "-m", module, *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    return inputs, config, command


def run_reporting(prog: str, work, *args):
    """``work(*args) -> (output, lines)`` under ``cli_errors(prog)``; prints the lines and returns the output."""
    with cli_errors(prog):
        out, lines = work(*args)
    print("\n".join(lines))
    return out


def config_from_args(cls, namespace: argparse.Namespace):
    """Build dataclass ``cls`` from the parsed namespace (its ``__post_init__`` validates)."""
    return cls(**{f.name: getattr(namespace, f.name) for f in dataclasses.fields(cls)})


def parse_config(cls, argv: list[str] | None, prog: str, description: str):
    """Parse ``argv`` into dataclass ``cls``; a validation error exits with the usage and the message."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_dataclass_arguments(parser, cls)
    args = parser.parse_args(argv)
    try:
        return config_from_args(cls, args)
    except ValueError as error:
        parser.error(str(error))


SEED_MAX = 2**32 - 1  # numpy's and torch's seeds both take [0, 2**32 - 1]; derived seeds stay within int64


def flag(name: str) -> str:
    """The command-line option of config field ``name``: ``lisa_weight`` -> ``--lisa-weight``."""
    return f"--{name.replace('_', '-')}"


def number_list(text: str, convert, option_name: str, example: str) -> tuple:
    """A comma-separated option as numbers (``convert``: int or float); ValueError naming the option, the text and an
    ``example`` when a part is not a number or there is none."""
    try:
        numbers = tuple(convert(part) for part in text.split(",") if part.strip())
    except ValueError:
        numbers = ()
    if not numbers:
        raise ValueError(f"{option_name} {text!r}: expected numbers, e.g. {example}")
    return numbers


def check_choice(what: str, value, allowed) -> None:
    """Raise ``ValueError`` naming ``value`` and listing ``allowed`` unless ``value`` is one of them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; allowed: {', '.join(map(repr, allowed))}")


def check_number(name: str, value: float, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False) -> None:
    """Refuse a non-finite ``value`` of option ``name`` or one outside [low, high] (``low_open``/``high_open``:
    that end excluded), naming the option, the value and the allowed range."""
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if isinstance(value, bool) or not math.isfinite(value) or below or above:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        interval = f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
        raise ValueError(f"{flag(name)} must be a finite number in {interval}, got {value!r}")


@contextlib.contextmanager
def cli_errors(prog: str):
    """Report the errors a user's input or the machine causes as ``<prog>: error: <message>`` with exit status 2, as
    argparse does for a bad option, instead of a traceback: ``ValueError`` (a bad site, a resume from another
    config), ``OSError`` and its subclasses (a missing, unreadable or corrupt file, an existing output, a full
    disk), ``SafetensorError`` (a damaged weights file) and ``FloatingPointError`` (a non-finite loss). Other exceptions are bugs and keep their
    traceback."""
    try:
        yield
    except (ValueError, OSError, FloatingPointError, SafetensorError) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


def config_defaults(cls) -> dict:
    """The declared defaults of a config dataclass's fields (before ``__post_init__`` fills derived ones)."""
    defaults = {}
    for item in dataclasses.fields(cls):
        if item.default is not dataclasses.MISSING:
            defaults[item.name] = item.default
        elif item.default_factory is not dataclasses.MISSING:
            defaults[item.name] = item.default_factory()
    return defaults


def read_config(path: Path) -> dict:
    """Read a ``config.yaml`` (``rundir.write_run_config``; safe_load); ValueError naming the file when it is not
    valid YAML (a ``!!python`` tag included) or not a mapping with ``kind`` and ``config``."""
    try:
        payload = yaml.safe_load(Path(path).read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path} is not a lisa_probe config.yaml: {error}".splitlines()[0]) from error
    if not isinstance(payload, dict) or not isinstance(payload.get("config"), dict) or "kind" not in payload:
        raise ValueError(f"{path} is not a lisa_probe config.yaml (expected a mapping with 'kind' and 'config')")
    return payload


def config_from_dict(cls, values: dict, source: str):
    """Build dataclass ``cls`` from a mapping read from ``source`` (a file); unknown keys are refused with the
    allowed ones named, and the fields' validation applies."""
    names = [item.name for item in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{source}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(names)}")
    hints = typing.get_type_hints(cls)
    for item in dataclasses.fields(cls):
        if item.name in values:
            scalar, optional = _field_type(item, hints)
            value = values[item.name]
            if typing.get_origin(scalar) is list:  # a list of the element type (--validation-image)
                element = typing.get_args(scalar)[0]
                if not (isinstance(value, list) and all(isinstance(entry, element) for entry in value)):
                    raise ValueError(f"{source}: {item.name} must be a list of {element.__name__}, got {value!r}")
                continue
            allowed = (int, float) if scalar is float else (scalar,)
            if not ((value is None and optional) or (isinstance(value, allowed)
                                                     and not (isinstance(value, bool) and scalar is not bool))):
                raise ValueError(f"{source}: {item.name} must be {scalar.__name__}{' or null' if optional else ''}, "
                                 f"got {value!r}")
    try:
        return cls(**values)
    except TypeError as error:  # a value of the wrong type met an arithmetic check
        raise ValueError(f"{source}: {error}") from error


@dataclasses.dataclass
class ModelFiles:
    """Which files of a main net a command loads, as diffusers' ``--revision`` / ``--variant``: the snapshot a ref
    names for a model id in the local Hugging Face cache, and the weight-file variant (``fp16``)."""

    revision: str | None = dataclasses.field(default=None, metadata=option(
        "the revision (branch, tag or commit) of a --main model id in the local Hugging Face cache, as diffusers' "
        "--revision (default: main)"))
    variant: str | None = dataclasses.field(default=None, metadata=option(
        "the main net's weight-file variant, e.g. fp16 (diffusion_pytorch_model.fp16.safetensors and the text "
        "encoders' model.fp16.safetensors), as diffusers' --variant, upcast to float32 as diffusers loads them"))

    def main_files(self, main: str | None) -> str | None:
        """``main`` as a local directory: a cached model id's snapshot at ``revision`` (``files.local_model``)."""
        return local_model(main, self.revision)
