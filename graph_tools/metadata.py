"""A model's ``metadata_props`` as a ``{key: string}`` dict: read, replace, set one entry."""

from __future__ import annotations

from typing import Mapping

import onnx


def read_props(model: onnx.ModelProto) -> dict[str, str]:
    """``metadata_props`` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def write_props(model: onnx.ModelProto, props: Mapping[str, str]) -> None:
    """Replace ``metadata_props`` with ``props`` (in place)."""
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def set_prop(model: onnx.ModelProto, key: str, value: str) -> None:
    """Set one entry (in place), replacing an existing one of the same key."""
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = value
            return
    model.metadata_props.add(key=key, value=value)
