"""Streaming error statistics between a candidate and a reference output (parity checks).

Per comparison: max, mean and p99 absolute error, max relative error ``|got - ref| /
max(|ref|, 1e-6)``, and for class-score maps the fraction of positions whose argmax class agrees and,
when the caller names a class (``iou_class``), the IoU of that class's masks (``class_iou``, pooled,
and ``min_item_class_iou``, the lowest over the items of axis 0). p99 comes from a histogram over the float32 bit patterns of the errors
(the upper bin edge is reported: an upper bound within 0.8 %), so memory does not grow with the data.

A comparison passes when ``max abs <= atol`` (for unbounded values: ``atol * max(1, max |ref|)``)
and, for class scores, argmax agreement ``>= min_argmax``. Class maps (integer labels) are compared
by agreement and IoU alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

REL_FLOOR: float = 1e-6
_HIST_SHIFT = 16
_HIST_BINS = 1 << (31 - _HIST_SHIFT)  # float32 bit patterns of values in [0, inf]


def class_map(probs: np.ndarray) -> np.ndarray:
    """[N, K, H, W] -> [N, H, W] int64 argmax over classes (first maximum wins, as ``np.argmax``)."""
    best = np.zeros((probs.shape[0], *probs.shape[2:]), dtype=np.int64)
    best_val = probs[:, 0].copy()
    for k in range(1, probs.shape[1]):
        better = probs[:, k] > best_val
        best[better] = k
        np.maximum(best_val, probs[:, k], out=best_val)
    return best


def _histogram(diff: np.ndarray) -> np.ndarray:
    """Counts of non-negative float32 ``diff`` per bin of its bit pattern's upper 16 bits.

    For non-negative floats the bit pattern orders like the value, so bin ``k`` covers
    ``[bits(k << 16), bits((k + 1) << 16))``: 7 mantissa bits, a relative bin width of 0.8 %.
    """
    keys = np.ascontiguousarray(diff, dtype=np.float32).view(np.int32) >> _HIST_SHIFT
    return np.bincount(keys.ravel(), minlength=_HIST_BINS)


def _bin_upper_edge(k: int) -> float:
    return float(np.array([(k + 1) << _HIST_SHIFT], dtype=np.int32).view(np.float32)[0])


@dataclass
class ErrorStats:
    """Running error statistics of a candidate against a reference (:meth:`update` per batch,
    :meth:`result` at the end), in memory independent of the number of elements.

    With ``probabilities`` the arrays are class scores [N, K, ...] (class axis 1): the fraction of
    positions whose argmax class agrees is kept, and with ``iou_class`` the IoU of the masks ``argmax ==
    iou_class`` (pooled, and the minimum over the N items).
    """

    name: str
    description: str
    probabilities: bool = True
    labels: bool = False
    """The arrays are class maps [N, ...] (integers): only agreement and the IoU are kept, and the
    comparison passes on agreement alone."""
    iou_class: int | None = None
    """Class whose masks' IoU is kept (``None``: none)."""
    count: int = 0
    max_abs: float = 0.0
    sum_abs: float = 0.0
    max_rel: float = 0.0
    max_ref: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(_HIST_BINS, dtype=np.int64))
    agree: int = 0
    pixels: int = 0
    inter: int = 0
    union: int = 0
    min_roi_iou: float = 1.0

    def update(self, ref: np.ndarray, got: np.ndarray) -> None:
        """Add one comparison. For probabilities both are [N, K, H, W] (class axis 1)."""
        if ref.shape != got.shape:
            raise ValueError(f"stage {self.name}: shapes differ, reference {ref.shape} vs candidate {got.shape}")
        if self.labels:
            self.count += ref.size
            self._update_maps(np.asarray(ref), np.asarray(got))
            return
        ref = np.asarray(ref, dtype=np.float32)
        diff = np.subtract(np.asarray(got, dtype=np.float32), ref)
        np.abs(diff, out=diff)
        top = float(diff.max(initial=0.0))
        if not math.isfinite(top):  # NaN or inf somewhere: every non-finite error counts as inf
            diff[~np.isfinite(diff)] = np.inf
            top = math.inf
        self.count += diff.size
        self.max_abs = max(self.max_abs, top)
        self.sum_abs += float(diff.sum(dtype=np.float64))
        mag = np.abs(ref)
        self.max_ref = max(self.max_ref, float(mag.max(initial=0.0)))
        np.maximum(mag, REL_FLOOR, out=mag)
        self.max_rel = max(self.max_rel, float(np.divide(diff, mag, out=mag).max(initial=0.0)))
        self.hist += _histogram(diff)
        if self.probabilities:
            self._update_classes(ref, np.asarray(got, dtype=np.float32))

    def _update_classes(self, ref: np.ndarray, got: np.ndarray) -> None:
        self._update_maps(class_map(ref), class_map(got))  # [N, H, W]

    def _update_maps(self, a: np.ndarray, b: np.ndarray) -> None:
        self.agree += int(np.count_nonzero(a == b))
        self.pixels += a.size
        if self.iou_class is None:
            return
        ta = (a == self.iou_class).reshape(len(a), int(np.prod(a.shape[1:])))  # also for 0 items
        tb = (b == self.iou_class).reshape(len(b), int(np.prod(b.shape[1:])))
        inter = np.count_nonzero(ta & tb, axis=1)
        union = np.count_nonzero(ta | tb, axis=1)
        self.inter += int(inter.sum())
        self.union += int(union.sum())
        per_roi = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
        self.min_roi_iou = min(self.min_roi_iou, float(per_roi.min(initial=1.0)))

    def p99(self) -> float:
        """Upper edge of the histogram bin holding the 99th percentile of the absolute error."""
        if not self.count:
            return 0.0
        k = int(np.searchsorted(np.cumsum(self.hist), math.ceil(0.99 * self.count)))
        return min(_bin_upper_edge(k), self.max_abs)

    def _class_iou(self) -> dict[str, float]:
        if self.iou_class is None:
            return {}
        return {"class_iou": self.inter / self.union if self.union else 1.0, "min_item_class_iou": self.min_roi_iou}

    def result(self, atol: float, min_argmax: float, mean_atol: float | None = None) -> dict[str, Any]:
        """Report dict of the stage, ``passed`` included; with ``mean_atol`` the mean absolute error
        is bounded too (scaled like ``atol`` for unbounded values)."""
        if self.labels:
            agree = self.agree / self.pixels if self.pixels else 0.0
            return {"description": self.description, "elements": self.count, "kind": "labels",
                    "argmax_agreement": agree, **self._class_iou(),
                    "passed": bool(self.count > 0 and agree >= min_argmax)}
        tol = atol * max(1.0, self.max_ref) if not self.probabilities else atol
        out: dict[str, Any] = {
            "description": self.description,
            "elements": self.count,
            "max_abs": self.max_abs,
            "mean_abs": self.sum_abs / self.count if self.count else 0.0,
            "p99_abs": self.p99(),
            "max_rel": self.max_rel,
            "tolerance": tol,
        }
        passed = self.count > 0 and self.max_abs <= tol
        if mean_atol is not None:
            out["mean_tolerance"] = mean_atol * (max(1.0, self.max_ref) if not self.probabilities else 1.0)
            passed = passed and out["mean_abs"] <= out["mean_tolerance"]
        if self.probabilities:
            agree = self.agree / self.pixels if self.pixels else 0.0
            out.update({"argmax_agreement": agree, **self._class_iou()})
            passed = passed and agree >= min_argmax
        else:
            out["max_abs_reference"] = self.max_ref
        out["passed"] = bool(passed)
        return out
