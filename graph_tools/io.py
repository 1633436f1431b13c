"""Saving ONNX models: atomically, with external data when the model would pass protobuf's 2 GB limit."""

from __future__ import annotations

from pathlib import Path

import onnx

from roiseg.utils.atomic import atomic_path

PROTOBUF_LIMIT_BYTES: int = 2**31 - 1
EXTERNAL_MARGIN_BYTES: int = 64 * 2**20


def uses_external_data(model: onnx.ModelProto) -> bool:
    return any(i.data_location == onnx.TensorProto.EXTERNAL for i in model.graph.initializer)


def needs_external_data(model: onnx.ModelProto) -> bool:
    """True when the serialised model would not fit in one protobuf (2 GB)."""
    return model.ByteSize() > PROTOBUF_LIMIT_BYTES - EXTERNAL_MARGIN_BYTES


def save_model(model: onnx.ModelProto, path: str | Path, external: bool | None = None) -> Path:
    """Write ``model`` to ``path`` atomically.

    ``external=None`` chooses external data (weights in ``<name>.data`` beside the file) only when
    the model is too big for one protobuf. The data file is written before the ``.onnx`` file is
    renamed into place, so a reader never sees an ``.onnx`` whose data is missing.
    """
    path = Path(path)
    if external is None:
        external = needs_external_data(model)
    with atomic_path(path) as tmp:
        if external:
            data_name = f"{path.name}.data"
            (path.parent / data_name).unlink(missing_ok=True)
            onnx.save_model(model, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            # onnx writes the data next to tmp under data_name, i.e. already at its final place.
        else:
            onnx.save_model(model, str(tmp))
    return path
