"""Every parity tolerance, in one place (``parity-check`` and ``fuse --fp16``'s report read them here).

=============================  ===============================================================
float32 model                  max abs ``PARITY_ATOL`` on probabilities (features: times
                               ``max(1, max |ref|)``), argmax agreement ``>= PARITY_MIN_ARGMAX``
float16 model                  no bound on the largest error (``FP16_PARITY_ATOL``: a pixel near a
                               class boundary may flip), mean abs ``<= FP16_PARITY_MEAN_ATOL``,
                               argmax ``>= FP16_PARITY_MIN_ARGMAX``; the ``trim`` stage keeps float32's
raw-image preprocessing        ``RAW_PREPROCESS_ATOL`` (one grey level: OpenCV resizes in fixed point),
                               plus ``FP16_PREPROCESS_SLACK`` in a float16 model
instance model (float32)       boxes and scores ``<= BOX_ATOL``, masks ``<= PARITY_ATOL``
int8 ROI model                 against the float model: argmax ``>= INT8_MIN_ARGMAX``, mean per-ROI
                               target IoU ``>= INT8_MIN_ROI_IOU``
instance model (float16)       matched by box IoU ``>= MATCH_IOU`` (same class), ``>= MIN_MATCHED`` of
                               both sides' instances, masks at the float16 tolerances
=============================  ===============================================================
"""

from __future__ import annotations

from dataclasses import dataclass

PARITY_ATOL: float = 1e-4
"""Absolute tolerance on probabilities between the fused graph and the PyTorch path."""
PARITY_MIN_ARGMAX: float = 0.9999
"""Smallest fraction of pixels whose argmax class agrees between the two paths."""
FP16_PARITY_ATOL: float = 1.0
"""A float16 model: no bound on the largest error (a pixel near a class boundary may flip) ..."""
FP16_PARITY_MEAN_ATOL: float = 1e-2
"""... but the mean absolute error on probabilities must stay within this ..."""
FP16_PARITY_MIN_ARGMAX: float = 0.98
"""... and at least this fraction of pixels must keep their argmax class."""
RAW_PREPROCESS_ATOL: float = 1.0 / 255.0 + 1e-6
"""Largest difference between the in-graph preprocessing and ``conventions.preprocess`` (one grey level)."""
FP16_PREPROCESS_SLACK: float = 1e-3
"""What float16 adds to the preprocessing tolerance of a raw-image model."""
BOX_ATOL: float = 1e-4
"""Largest difference of a normalised box coordinate or a score between the graph and the reference."""
INT8_MIN_ARGMAX: float = 0.97
"""An int8 model: smallest fraction of pixels whose argmax class agrees with the float model's ..."""
INT8_MIN_ROI_IOU: float = 0.95
"""... and smallest mean per-ROI IoU of the two target masks."""
MATCH_IOU: float = 0.5
"""Smallest box IoU (same class) at which a float16 instance counts as the reference's."""
MIN_MATCHED: float = 0.95
"""Smallest fraction of matched instances, of the reference's and of the model's (pooled over the images)."""


@dataclass(frozen=True)
class Tolerances:
    """What a stage comparing probabilities must hold: ``max abs <= atol``, argmax agreement
    ``>= min_argmax`` and, when set, ``mean abs <= mean_atol``."""

    atol: float
    min_argmax: float
    mean_atol: float | None = None

    @classmethod
    def for_model(cls, fp16: bool, atol: float | None = None, min_argmax: float | None = None,
                  mean_atol: float | None = None) -> "Tolerances":
        """The ones given, the others by the model's precision (module docstring)."""
        defaults = (FP16_PARITY_ATOL, FP16_PARITY_MIN_ARGMAX, FP16_PARITY_MEAN_ATOL) if fp16 else \
            (PARITY_ATOL, PARITY_MIN_ARGMAX, None)
        given = (atol, min_argmax, mean_atol)
        return cls(*(g if g is not None else d for g, d in zip(given, defaults)))

    def preprocess_atol(self, fp16: bool) -> float:
        """The tolerance of a raw-image model's ``preprocess`` stage."""
        return RAW_PREPROCESS_ATOL + (FP16_PREPROCESS_SLACK if fp16 else 0.0)
