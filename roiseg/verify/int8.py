"""Parity of an int8 ROI model (``fuse --int8``): against the float model rebuilt from the same detector
and head, on the probe images, by what int8 can promise: argmax agreement of every pixel and the
per-ROI IoU of the target masks (:data:`roiseg.verify.tolerances.INT8_MIN_ARGMAX`, ``INT8_MIN_ROI_IOU``).
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import onnx

import graph_tools as gt
from roiseg.conventions import FUSED_ROIS_INPUT, TARGET, ImageInput, output_tensors
from roiseg.export.probes import plausible_rois
from roiseg.export.raw_input import raw_from_tensor
from roiseg.runtime.masks import mask_source, probabilities_from
from roiseg.runtime.metadata import FusedMetadata
from roiseg.utils.progress import progress
from roiseg.verify.table import Column, format_rows, verdict
from roiseg.verify.tolerances import INT8_MIN_ARGMAX, INT8_MIN_ROI_IOU


class Int8Agreement:
    """Accumulates argmax agreement and per-ROI target IoU of an int8 model against its float model."""

    KIND = "int8"

    def __init__(self, int8_model: onnx.ModelProto, float_model: onnx.ModelProto, meta: FusedMetadata) -> None:
        self.meta, self.source = meta, mask_source(meta.outputs)
        self.sessions = [gt.create_session(m, arena=False) for m in (int8_model, float_model)]
        self.names = output_tensors([self.source])
        self.rows: list[dict[str, Any]] = []

    def _labels(self, session, feed: dict[str, np.ndarray], hw: tuple[int, int]) -> np.ndarray:
        got = dict(zip(self.names, session.run(self.names, feed)))
        return probabilities_from(got, self.source, hw).argmax(axis=1)

    def image(self, name: str, image: np.ndarray, rois: np.ndarray, raw: np.ndarray | None = None) -> None:
        """One probe: ``image`` [1, 3, H, W] preprocessed (``raw``: the image as read, for a raw-image
        model), ``rois`` [N, 4] normalised."""
        if self.meta.image_input is ImageInput.RAW:
            raw = raw if raw is not None else raw_from_tensor(image, self.meta.preprocessing)
            feed, hw = {ImageInput.RAW.input_name: raw}, raw.shape[:2]
        else:
            feed, hw = {ImageInput.TENSOR.input_name: image}, self.meta.input_hw
        feed[FUSED_ROIS_INPUT] = np.ascontiguousarray(rois, np.float32)
        q, f = (self._labels(s, feed, hw) for s in self.sessions)
        inter = ((q == TARGET) & (f == TARGET)).reshape(len(rois), -1).sum(axis=1)
        union = ((q == TARGET) | (f == TARGET)).reshape(len(rois), -1).sum(axis=1)
        self.rows.append({"image": name, "rois": len(rois), "agree": int((q == f).sum()), "pixels": int(q.size),
                          "ious": [float(i / u) for i, u in zip(inter, union) if u > 0]})

    def report(self) -> dict[str, Any]:
        agree = sum(r["agree"] for r in self.rows) / max(sum(r["pixels"] for r in self.rows), 1)
        ious = [v for r in self.rows for v in r["ious"]]
        mean_iou = float(np.mean(ious)) if ious else 1.0
        passed = agree >= INT8_MIN_ARGMAX and mean_iou >= INT8_MIN_ROI_IOU
        return {"kind": self.KIND, "passed": passed, "argmax_agreement": agree, "mean_roi_target_iou": mean_iou,
                "min_roi_target_iou": float(min(ious)) if ious else 1.0, "rois": len(ious), "mask_source": self.source,
                "tolerances": {"min_argmax": INT8_MIN_ARGMAX, "min_roi_target_iou": INT8_MIN_ROI_IOU},
                "images": [{k: v for k, v in r.items() if k != "ious"} for r in self.rows]}

    @classmethod
    def table(cls, report: dict[str, Any]) -> str:
        columns = [Column("image", 24, lambda r: r["image"][:24], left=True), Column("ROIs", 5, lambda r: str(r["rois"])),
                   Column("argmax", 9, lambda r: f"{100 * r['agree'] / max(r['pixels'], 1):.3f}%")]
        tol = report["tolerances"]
        footer = [f"int8 vs float model: argmax {100 * report['argmax_agreement']:.3f}% (>= {100 * tol['min_argmax']:g}%), "
                  f"per-ROI target IoU mean {report['mean_roi_target_iou']:.4f} (>= {tol['min_roi_target_iou']:g}), "
                  f"min {report['min_roi_target_iou']:.4f} over {report['rois']} ROIs: {verdict(report['passed'])}"]
        return format_rows(columns, report["images"], footer)

    @staticmethod
    def failures(report: dict[str, Any]) -> str:
        tol = report["tolerances"]
        return (f"int8 model: argmax {100 * report['argmax_agreement']:.3f}% (>= {100 * tol['min_argmax']:g}%), "
                f"mean per-ROI target IoU {report['mean_roi_target_iou']:.4f} (>= {tol['min_roi_target_iou']:g})")


def int8_parity(int8_model: onnx.ModelProto, float_model: onnx.ModelProto, meta: FusedMetadata,
                probes: Iterable[Any], n_probes: int | None) -> dict[str, Any]:
    """The :class:`Int8Agreement` report over the probe images (``ProbeImage``: name, image, rois)."""
    agreement = Int8Agreement(int8_model, float_model, meta)
    for probe in progress(probes, desc="int8 parity", total=n_probes, unit="img"):
        rois = probe.gt_rois if len(probe.gt_rois) else plausible_rois(3)
        agreement.image(probe.name, probe.image, rois, probe.raw)
    return agreement.report()
