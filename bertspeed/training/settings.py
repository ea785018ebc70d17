"""Command-line settings declared once: a dataclass whose fields carry their help text in metadata.

    @dataclass(kw_only=True)
    class Settings:
        output_dir: str = setting(help="where results go")                   # required: no default
        epochs: float = setting(3.0, help="passes over the data")
        precision: str = setting("auto", help="...", choices=PRECISIONS)
        def __post_init__(self): ...                                        # validation, ValueError

    settings = parse(Settings, argv, prog="...", description="...")

The parser is generated from the fields (type from the annotation; bool fields are switches, with
--no-NAME when the default is true; list fields take several values). Values come from the command
line, else from a JSON file given with --settings_file, else the defaults. (A bool field defaulting to
None has both --NAME and --no-NAME and stays None when neither is given; a field with
`optional_value=X` takes `--NAME` alone as X.) A ValueError from
__post_init__ (or a missing required value) ends with argparse's usage message and exit code 2.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path

SETTINGS_FILE = "settings_file"


def setting(default=dataclasses.MISSING, *, help: str, choices=None, aliases: tuple[str, ...] = (),
            metavar: str | None = None, hidden: bool = False, optional_value=dataclasses.MISSING):
    """A dataclass field that is also a command-line flag --NAME (plus `aliases`, e.g. NVIDIA's
    spelling). Mutable defaults (lists) are copied per instance. With `optional_value`, the flag's
    value may be left out (`--NAME` alone gives `optional_value`, `--NAME VALUE` gives VALUE)."""
    metadata = {"help": help, "choices": choices, "aliases": aliases, "metavar": metavar, "hidden": hidden,
                "optional_value": optional_value}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _base_type(annotation):
    """(element type, is_list, is_optional) of an annotation such as `int | None` or `list[str]`."""
    optional = False
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional, annotation = True, args[0]
        origin = typing.get_origin(annotation)
    if origin is list:
        return typing.get_args(annotation)[0], True, optional
    return annotation, False, optional


def _default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def add_settings(parser: argparse.ArgumentParser, cls) -> argparse.ArgumentParser:
    """Add one flag per field of `cls` (fields without `help` metadata are skipped). Every flag
    defaults to SUPPRESS, so the namespace holds only what the command line gave."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        if "help" not in meta:
            continue
        kind, is_list, _ = _base_type(hints[field.name])
        default = _default(field)
        text = argparse.SUPPRESS if meta["hidden"] else meta["help"]
        if default is dataclasses.MISSING:
            text += " (required)"
        elif default is not None and default != [] and kind is not bool and text is not argparse.SUPPRESS:
            text += f" (default: {default})"
        names = [f"--{field.name}", *meta["aliases"]]
        options = dict(dest=field.name, default=argparse.SUPPRESS, help=text)
        if kind is bool:  # a switch; with a default of True or None (unset), also --no-NAME
            action = "store_true" if default is False else argparse.BooleanOptionalAction
            parser.add_argument(*names, action=action, **options)
            continue
        bare = meta.get("optional_value", dataclasses.MISSING)
        if bare is not dataclasses.MISSING:  # --NAME alone or --NAME VALUE
            options.update(nargs="?", const=bare)
        elif is_list:
            options.update(nargs="+")
        parser.add_argument(*names, type=kind, choices=meta["choices"], metavar=meta["metavar"], **options)
    return parser


def build(cls, values: dict, source: str = "settings"):
    """An instance of `cls` from `values` (unknown names are an error naming them)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ValueError(f"{source}: unknown setting(s) {', '.join(unknown)}")
    missing = [f.name for f in dataclasses.fields(cls)
               if f.name not in values and _default(f) is dataclasses.MISSING]
    if missing:
        raise ValueError(f"{source}: missing required setting(s) {', '.join('--' + m for m in missing)}")
    return cls(**values)


def read_settings_file(path: str) -> dict:
    try:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise ValueError(f"--{SETTINGS_FILE} {path}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"--{SETTINGS_FILE} {path}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"--{SETTINGS_FILE} {path}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"--{SETTINGS_FILE} {path}: expected a JSON object of setting names to values")
    return values


def parser_for(cls, prog: str | None = None, description: str | None = None,
               parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog=prog, description=description,
                                               formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(f"--{SETTINGS_FILE}", metavar="FILE.json",
                        help="a JSON object of settings; flags on the command line override it")
    return add_settings(parser, cls)


def from_namespace(cls, ns: argparse.Namespace):
    """command line (the namespace) > --settings_file > defaults; ValueError names what is wrong."""
    given = {f.name: getattr(ns, f.name) for f in dataclasses.fields(cls) if hasattr(ns, f.name)}
    file_path = getattr(ns, SETTINGS_FILE, None)
    values = {**read_settings_file(file_path), **given} if file_path else given
    return build(cls, values, f"--{SETTINGS_FILE} {file_path}" if file_path else "command line")


def parse(cls, argv=None, prog: str | None = None, description: str | None = None,
          parser: argparse.ArgumentParser | None = None):
    """Parse `argv` into `cls`; bad values exit 2 with the parser's usage line."""
    parser = parser_for(cls, prog, description, parser)
    ns = parser.parse_args(argv)
    try:
        return from_namespace(cls, ns)
    except (ValueError, FileNotFoundError) as e:
        parser.error(str(e))


def as_dict(settings) -> dict:
    """The settings as plain JSON values (for run_config.json)."""
    return json.loads(json.dumps(dataclasses.asdict(settings), default=str))
