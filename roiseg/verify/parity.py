"""``parity-check``: a fused model against the path it was built from, chosen from its metadata.

* A ROI model: stage by stage against the PyTorch path (:class:`roiseg.verify.roi.RoiStages`).
* An instance model (``fuse --instances``): per image, its detections against the Python reference and
  its masks against the ROI model rebuilt here (:class:`roiseg.verify.instances.ExactInstances`; a
  float16 one :class:`roiseg.verify.fp16.Fp16Instances`).

Every comparison reports a dict with its ``kind`` and ``passed``; :func:`format_table` and
:func:`failure_summary` read any of them (:data:`COMPARATORS`). Tolerances: :mod:`roiseg.verify.tolerances`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from roiseg.errors import InputError, translate_graph_errors
from roiseg.export.head_source import load_head_source
from roiseg.runtime.engines import ENGINES
from roiseg.runtime.metadata import read_metadata
from roiseg.verify.fp16 import Fp16Instances
from roiseg.verify.instances import ExactInstances, run_instance_parity
from roiseg.verify.int8 import Int8Agreement
from roiseg.verify.roi import LARGE_ROI_SET, RoiStages, run_roi_parity

COMPARATORS: dict[str, Any] = {cls.KIND: cls for cls in (RoiStages, ExactInstances, Fp16Instances, Int8Agreement)}
"""Each comparison by its report's ``kind``: ``table(report)`` and ``failures(report)``."""


def _check_engine(engine: str) -> None:
    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; expected one of {', '.join(ENGINES)}")
    if engine == "openvino" and importlib.util.find_spec("openvino") is None:
        raise InputError("OpenVINO is not installed; it is the optional dependency group 'openvino' (uv sync --group openvino)")


@translate_graph_errors
def run_parity(
    detector: str | Path,
    head: str | Path,
    fused: str | Path | None = None,
    annotations: str | Path | None = None,
    images: str | Path | None = None,
    atol: float | None = None,
    min_argmax: float | None = None,
    max_images: int | None = None,
    feature_tensor: str | None = None,
    large_set: int = LARGE_ROI_SET,
    mean_atol: float | None = None,
    engine: str = "onnxruntime",
) -> dict[str, Any]:
    """Compare the fused model with the path it was built from on real images; the report dict.

    Without ``fused`` a ROI model is built (simplified) as ``fuse`` builds it, in a temporary folder.
    ``head`` must be a checkpoint (the PyTorch path needs the weights). ``annotations`` (COCO JSON)
    needs ``images``; with ``images`` alone every image in the folder is used with plausible boxes; with
    neither a synthetic image stands in (logged; an instance model needs ``images``). ``large_set`` ROIs
    run once, on the first image. Tolerances left ``None`` follow the model's precision. ``engine``: what
    runs the fused model, ``onnxruntime`` or ``openvino`` (CPU, f32 precision).
    """
    _check_engine(engine)
    if annotations is not None and images is None:
        raise InputError("annotations need the folder of the annotated image files (images)")
    if fused is not None and read_metadata(fused).is_instance_model:
        return run_instance_parity(detector, head, fused, annotations, images, max_images, atol, engine)
    probes_from = {"annotations": annotations, "images": images, "max_images": max_images}
    tolerances = {"atol": atol, "min_argmax": min_argmax, "mean_atol": mean_atol}
    report = run_roi_parity(detector, load_head_source(head), fused, probes_from, tolerances, feature_tensor,
                            large_set, engine)
    report.update({"detector": str(detector), "head": str(head)})
    return report


def format_table(report: dict[str, Any]) -> str:
    """The table ``roiseg parity-check`` prints for any parity report."""
    return COMPARATORS[report.get("kind", RoiStages.KIND)].table(report)


def failure_summary(report: dict[str, Any]) -> str:
    """One line naming what failed in any parity report."""
    return COMPARATORS[report.get("kind", RoiStages.KIND)].failures(report)
