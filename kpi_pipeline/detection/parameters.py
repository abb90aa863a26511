"""Per-KPI parameter overrides: ``DetectorConfig`` fields by dotted name, checked and applied.

An override set is a dict such as ``{"threshold": 4.0, "prophet.changepoint_prior_scale": 0.3}``:
a top-level field of ``DetectorConfig`` by its name, a field of one of its nested configs
(``prophet``, ``iforest``) as ``<field>.<name>``. Keys and values are checked against the
dataclasses' type annotations, so a field added to ``DetectorConfig`` can be overridden without
touching this module.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal

from kpi_pipeline.detection.config import DetectorConfig


class InvalidParameter(ValueError):
    """An override names no field of ``DetectorConfig`` or has a value its field cannot take."""


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _is_config(hint: Any) -> bool:
    return isinstance(hint, type) and dataclasses.is_dataclass(hint)


@cache
def parameter_types() -> dict[str, Any]:
    """Every overridable key with its type annotation: each scalar field of ``DetectorConfig``
    and each field of its nested configs as ``<nested>.<field>``, in declaration order."""
    found: dict[str, Any] = {}
    hints = _hints(DetectorConfig)
    for field in dataclasses.fields(DetectorConfig):
        hint = hints[field.name]
        if _is_config(hint):
            nested = _hints(hint)
            for inner in dataclasses.fields(hint):
                found[f"{field.name}.{inner.name}"] = nested[inner.name]
        else:
            found[field.name] = hint
    return found


def describe_type(hint: Any) -> str:
    """What values a type annotation takes, as a person reads it ("float", "'a' or 'b'")."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " or ".join(repr(arg) for arg in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(arg) for arg in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        inner = describe_type(args[0]) if args else "value"
        return f"a list of {inner}" if len(args) == 2 and args[1] is Ellipsis else f"a list of {len(args)} {inner}"
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any) -> Any:
    """``value`` as the type ``hint`` describes; raises ``ValueError`` if it is not one."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        if value in typing.get_args(hint) and type(value) in {type(arg) for arg in typing.get_args(hint)}:
            return value
        raise ValueError
    if origin in (typing.Union, types.UnionType):
        for arm in typing.get_args(hint):
            try:
                return _coerce(value, arm)
            except ValueError:
                continue
        raise ValueError
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ValueError
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(item, args[0]) for item in value)
        if len(value) != len(args):
            raise ValueError
        return tuple(_coerce(item, arm) for item, arm in zip(value, args))
    if hint is type(None):
        if value is None:
            return None
        raise ValueError
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ValueError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ValueError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise ValueError
    if hint is str:
        if isinstance(value, str):
            return value
        raise ValueError
    raise ValueError


def check_parameter(key: str, value: Any) -> Any:
    """``value`` as the field ``key`` takes it (a list as a tuple, 3 as 3.0 for a float);
    raises ``InvalidParameter`` naming the key and what it takes."""
    known = parameter_types()
    if key not in known:
        nested = [name for name in known if name.startswith(f"{key}.")]
        hint = f"; set one of its fields: {', '.join(nested)}" if nested else ""
        raise InvalidParameter(f"unknown parameter {key!r}{hint} (see `kpi-pipeline params keys`)")
    try:
        return _coerce(value, known[key])
    except ValueError:
        raise InvalidParameter(f"{key} must be {describe_type(known[key])}, not {value!r}") from None


def check_parameters(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Every override checked (``check_parameter``), sorted by key."""
    return {key: check_parameter(key, overrides[key]) for key in sorted(overrides)}


def parse_assignment(text: str) -> tuple[str, Any]:
    """``key=value`` as typed on a command line: the value read as JSON (``4``, ``true``,
    ``null``, ``[1, 2]``), else as a plain string (``multiplicative``), then checked."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise InvalidParameter(f"expected key=value, not {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw.strip()
    return key, check_parameter(key, value)


def apply_parameters(config: DetectorConfig, overrides: Mapping[str, Any]) -> DetectorConfig:
    """``config`` with ``overrides`` (checked here) applied; the same object if there are none."""
    checked = check_parameters(overrides)
    if not checked:
        return config
    top: dict[str, Any] = {}
    nested: dict[str, dict[str, Any]] = {}
    for key, value in checked.items():
        outer, _, inner = key.partition(".")
        if inner:
            nested.setdefault(outer, {})[inner] = value
        else:
            top[key] = value
    for outer, values in nested.items():
        top[outer] = dataclasses.replace(getattr(config, outer), **values)
    return dataclasses.replace(config, **top)


def as_json(overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Overrides as JSON values (tuples as lists), for storage and display."""
    return {key: list(value) if isinstance(value, tuple) else value for key, value in overrides.items()}
