"""Dotted overrides and TOML values for a sectioned dataclass schema.

A *schema* is a dataclass whose fields are themselves dataclasses (the *sections*); a key is
``"section.key"``. This module reads TOML files, parses ``section.key=value`` strings (values in
TOML syntax), flattens ``{section: {key: value}}`` tables to dotted keys and sets them on a schema
instance, converting each value to its field's annotated type (int, float, bool, str, list/tuple
of those, Optional). It knows nothing of any particular schema.

Fields may carry command-line metadata (:func:`flag`); :func:`flag_fields` lists them, so a CLI can
build its options from the schema instead of keeping its own list.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from roiseg.errors import InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib


def read_toml(path: str | Path) -> dict[str, Any]:
    """Parse a TOML file; InputError naming the file on a missing file or a syntax error."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file not found: {p}")
    try:
        with open(p, "rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: invalid TOML: {exc}") from exc


def parse_value(text: str) -> Any:
    """A TOML value (``3e-4``, ``true``, ``[1, 2]``, ``"x"``); anything else is taken as a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``["section.key=value", ...]`` -> ``{"section.key": value}`` with TOML-parsed values."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or "." not in key:
            raise InputError(f"override {item!r}: expected section.key=value (e.g. optim.lr=3e-4)")
        out[key.strip()] = parse_value(text.strip())
    return out


def flatten(d: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``{section: {key: value}}`` -> ``{"section.key": value}``; InputError when a section is not a table."""
    out: dict[str, Any] = {}
    for section, values in d.items():
        if not isinstance(values, Mapping):
            raise InputError(f"{source}: {section!r} must be a [section] table, got {type(values).__name__}")
        for key, value in values.items():
            out[f"{section}.{key}"] = value
    return out


def section_names(schema: Any) -> tuple[str, ...]:
    """The section field names of a schema class or instance."""
    return tuple(f.name for f in dataclasses.fields(schema))


def field_types(cls: type) -> dict[str, Any]:
    """Resolved annotations of a dataclass's fields (``from __future__ import annotations`` safe)."""
    return {k: v for k, v in typing.get_type_hints(cls).items() if k in cls.__dataclass_fields__}


def section_to_dict(section: Any) -> dict[str, Any]:
    """A section as a plain dict: sequences become lists, ``None`` becomes ``[]`` (TOML has no null)."""
    out = {}
    for f in dataclasses.fields(section):
        v = getattr(section, f.name)
        out[f.name] = list(v) if isinstance(v, (tuple, list)) else ([] if v is None else v)
    return out


def to_dict(schema: Any) -> dict[str, dict[str, Any]]:
    """A schema instance as nested plain dicts (:func:`section_to_dict` per section)."""
    return {name: section_to_dict(getattr(schema, name)) for name in section_names(schema)}


def apply_overrides(
    schema: Any, items: Mapping[str, Any], source: str, aliases: Mapping[str, str] | None = None,
) -> Any:
    """Set ``schema.<section>.<key> = value`` for each ``"section.key"``, converted to the field type.

    ``aliases`` maps old dotted keys to their current names. InputError naming ``source`` and the
    key for an unknown section or key or a value of the wrong type. Returns ``schema``.
    """
    sections = section_names(schema)
    for dotted, value in items.items():
        dotted = (aliases or {}).get(dotted, dotted)
        section_name, _, key = dotted.partition(".")
        if section_name not in sections:
            raise InputError(f"{source}: unknown config section {section_name!r} in {dotted!r} "
                             f"(sections: {', '.join(sections)})")
        section = getattr(schema, section_name)
        hints = field_types(type(section))
        if key not in hints:
            raise InputError(f"{source}: unknown config key {dotted!r} "
                             f"(keys of [{section_name}]: {', '.join(hints)})")
        setattr(section, key, coerce(value, hints[key], f"{source}: {dotted}"))
    return schema


def coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` converted to the annotated type ``tp`` (int, float, bool, str, list/tuple of those, Optional)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, list) and not value and type(None) in args):
            return None  # TOML has no null: an empty list stands for "not set"
        inner = [a for a in args if a is not type(None)]
        for candidate in inner[:-1]:  # e.g. ``str | list[str]``: the first type the value fits
            try:
                return coerce(value, candidate, where)
            except InputError:
                continue
        return coerce(value, inner[-1], where)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise InputError(f"{where} must be a list, got {value!r}")
        item = args[0] if args else Any
        seq = [coerce(v, item, where) for v in value]
        return tuple(seq) if origin is tuple else seq
    return _coerce_scalar(value, tp, where)


def _coerce_scalar(value: Any, tp: Any, where: str) -> Any:
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise InputError(f"{where} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise InputError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


# --------------------------------------------------------------------------------------------
# Command-line metadata on fields
# --------------------------------------------------------------------------------------------
def flag(name: str, help: str, metavar: str | None = None) -> dict[str, Any]:
    """Field metadata giving a schema field a command-line flag: ``field(..., metadata=flag("--lr", "..."))``."""
    meta: dict[str, Any] = {"flag": name, "help": help}
    if metavar is not None:
        meta["metavar"] = metavar
    return meta


@dataclasses.dataclass(frozen=True)
class FlagField:
    """A schema field with a flag: its dotted key, value type, choices (from a ``Literal``) and metadata."""

    section: str
    key: str
    type: Any
    choices: tuple[Any, ...] | None
    flag: str
    help: str
    metavar: str | None

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.key}"


def flag_fields(schema_cls: type) -> Iterator[FlagField]:
    """The fields of ``schema_cls``'s sections that carry :func:`flag` metadata, in schema order."""
    sections = field_types(schema_cls)
    for section in dataclasses.fields(schema_cls):
        section_cls = sections[section.name]
        hints = field_types(section_cls)
        for f in dataclasses.fields(section_cls):
            if "flag" not in f.metadata:
                continue
            tp = hints[f.name]
            choices = typing.get_args(tp) if typing.get_origin(tp) is typing.Literal else None
            yield FlagField(section.name, f.name, tp, choices, f.metadata["flag"], f.metadata.get("help", ""),
                            f.metadata.get("metavar"))


__all__ = [
    "FlagField", "apply_overrides", "coerce", "field_types", "flag", "flag_fields", "flatten", "parse_set",
    "parse_value", "read_toml", "section_names", "section_to_dict", "to_dict",
]
