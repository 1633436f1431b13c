"""What an instance model records about its detections (``roiseg.instances`` metadata), typed, and its
JSON form: serialised and parsed here only (:class:`roiseg.runtime.metadata.FusedMetadata` holds it)."""

from __future__ import annotations

import json
from typing import NamedTuple

from roiseg.conventions import Preprocessing
from roiseg.detection.formats import DetectionSpec, InstanceParams
from roiseg.detection.layouts import LAYOUTS


class InstanceProps(NamedTuple):
    """How the detections are read and kept, and the detector's preprocessing when it is not the
    head's (``None``: the one ``images`` serves both)."""

    spec: DetectionSpec
    params: InstanceParams
    det_preprocessing: Preprocessing | None = None

    @property
    def detector_runs(self) -> int:
        """1, or 2 with a detector preprocessing of its own (a second detector copy)."""
        return 1 if self.det_preprocessing is None else 2

    @property
    def suppressed(self) -> bool:
        """Whether the graph suppresses (NMS); the row formats' rows are final."""
        return not LAYOUTS[self.spec.format].rows

    def to_json(self) -> str:
        """The ``roiseg.instances`` value: ``{"detections", "params", "det_preprocessing"}``."""
        pre = self.det_preprocessing
        return json.dumps({"detections": json.loads(self.spec.to_json()), "params": json.loads(self.params.to_json()),
                           "det_preprocessing": json.loads(pre.to_json()) if pre is not None else None},
                          sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "InstanceProps":
        """Inverse of :meth:`to_json`; ``ValueError``/``KeyError``/``TypeError`` when malformed."""
        d = json.loads(text)
        p, pre = d["params"], d.get("det_preprocessing")
        return cls(DetectionSpec.from_json(json.dumps(d["detections"])),
                   InstanceParams(tuple(p["person_classes"]), p["score_threshold"], p["iou_threshold"],
                                  p["max_instances"]),
                   Preprocessing.from_json(json.dumps(pre)) if pre is not None else None)

    def summary(self) -> dict:
        """JSON-able dict for reports (the ``roiseg.instances`` content)."""
        return json.loads(self.to_json())
