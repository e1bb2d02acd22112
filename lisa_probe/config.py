"""Dataclass configs <-> command line <-> ``config.yaml`` (safe YAML only).

Every field of a config dataclass becomes a ``--kebab-case`` option with the field's type and default; the whole
config is written to the run directory with the code version so that the run can be rebuilt.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import types
import typing
from pathlib import Path

import yaml

from lisa_probe.files import write_text_atomic
from lisa_probe.provenance import code_version


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
    """Add one ``--field-name`` option per field of dataclass ``cls`` (help text from ``metadata['help']``)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        scalar, optional = _field_type(field, hints)
        convert = _parse_bool if scalar is bool else scalar

        def parse(text, convert=convert, optional=optional):
            return None if optional and text.lower() == "none" else convert(text)

        parse.__name__ = scalar.__name__  # argparse names it in "invalid int value: 'abc'"
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        flag = {"nargs": "?", "const": True} if scalar is bool else {}  # a bare --flag means true
        choices = field.metadata.get("choices")
        text = field.metadata.get("help", "")
        if "default" not in text and default != "":  # a help text that explains its own default keeps it
            text += f" (default: {default})"
        parser.add_argument(f"--{field.name.replace('_', '-')}", dest=field.name, type=parse, default=default,
                            choices=choices, metavar=None if choices else scalar.__name__.upper(), help=text,
                            **flag)


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


@contextlib.contextmanager
def cli_errors(prog: str):
    """Report the errors a user's input causes (``ValueError``, ``FileNotFoundError``, ``FileExistsError``: a bad
    site, a missing main net, an existing output, a resume from another config) as ``<prog>: error: <message>``
    with exit status 2, as argparse does for a bad option, instead of a traceback."""
    try:
        yield
    except (ValueError, FileNotFoundError, FileExistsError) as error:
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


def write_config(path: Path, config, kind: str) -> None:
    """Write ``config.yaml``: ``kind``, ``code_version`` and every config field."""
    payload = {"kind": kind, "code_version": code_version(), "config": dataclasses.asdict(config)}
    write_text_atomic(path, yaml.safe_dump(payload, sort_keys=False))


def read_config(path: Path) -> dict:
    """Read a ``config.yaml`` written by ``write_config`` (safe_load)."""
    return yaml.safe_load(Path(path).read_text())
