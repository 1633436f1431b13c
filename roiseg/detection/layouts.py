"""Detection formats as data: one :class:`Layout` per format, the one table every reader uses.

The shape check and the format guess (:mod:`roiseg.detection.formats`), the Python reference
(:mod:`roiseg.detection.reference`) and the ONNX post-processing (:mod:`roiseg.detection.graph`) all
read a format through this table; a new format is a new row here.

*Grid* formats hold one row per anchor (per cell of strides 8, 16 and 32, or ``anchors_per_cell``
per cell): box ``cx, cy, w, h`` in input pixels, an optional objectness, then the class scores (a
class's score is objectness x class score when there is one). *Row* formats hold final detections
(no decoding, no suppression): ``columns`` per row, the four pixel ``x1, y1, x2, y2`` from ``boxes``.

=============  ===========================================  =======================================
format         shape                                        what
=============  ===========================================  =======================================
``ultralytics``  [1, 4 + nc, A] (columns first)               YOLOv8/v9/v11 exports, scores after the sigmoid
``yolox``        [1, A, 5 + nc]                               YOLOX: raw grid boxes (``decoded`` off) or decoded
``yolov5``       [1, 3 A, 5 + nc]                             YOLOv5/v7 anchor-based exports, decoded boxes
``nms``          [K, 7] or [1, K, 7]                          batchno, classid, score, x1, y1, x2, y2
``end2end``      [1, K, 6]                                    x1, y1, x2, y2, score, classid (YOLOv10, YOLO26)
=============  ===========================================  =======================================
"""

from __future__ import annotations

from dataclasses import dataclass

ROWS_AXIS: str = "num_detections"
"""Name of the dynamic row axis of a row format's input in the post-processing graph."""


@dataclass(frozen=True)
class Layout:
    """How one detection format lays out its tensor (module docstring)."""

    name: str
    shape: str
    """The shape as named in messages, e.g. ``[1, 4 + classes, anchors]``."""
    rows: bool = False
    """Final rows (no decoding, no suppression) instead of one row per anchor."""
    transposed: bool = False
    """Grid: ``[1, columns, A]`` (columns first) instead of ``[1, A, columns]``."""
    objectness: bool = False
    """Grid: column 4 is the objectness; the class scores start at column 5 (else 4)."""
    anchors_per_cell: int = 1
    """Grid: boxes per cell; an anchor-based export (> 1) has exactly that many rows per cell."""
    raw_grid: bool = False
    """Grid: the boxes may be raw grid outputs (``DetectionSpec.decoded`` off), decoded with the strides."""
    columns: int = 0
    """Rows: values per row."""
    boxes: int = 0
    score: int = 0
    classid: int = 0
    ranks: tuple[int, ...] = (3,)
    """Rows: tensor ranks the format comes in (``[K, C]`` is rank 2, ``[1, K, C]`` rank 3)."""

    @property
    def first_class(self) -> int:
        """Grid: column of the first class score."""
        return 5 if self.objectness else 4

    def grid_rows(self, anchors: int) -> int:
        """Grid: rows of a tensor over ``anchors`` cells."""
        return self.anchors_per_cell * anchors

    def grid_axes(self) -> tuple[int, int]:
        """Grid: (axis of the rows, axis of the columns) of the 3-D tensor."""
        return (2, 1) if self.transposed else (1, 2)

    def input_shape(self, anchors: int, num_classes: int) -> list[int | str]:
        """The tensor's shape for ``anchors`` cells and ``num_classes`` classes (row formats: dynamic rows)."""
        if self.rows:
            return [ROWS_AXIS, self.columns] if 2 in self.ranks else [1, ROWS_AXIS, self.columns]
        shape: list[int | str] = [1, 0, 0]
        row_axis, col_axis = self.grid_axes()
        shape[row_axis], shape[col_axis] = self.grid_rows(anchors), self.first_class + num_classes
        return shape

    def fits_grid(self, shape: list, anchors: int) -> bool:
        """Grid: a static [1, *, *] ``shape`` with this format's row count over ``anchors`` and a class column."""
        row_axis, col_axis = self.grid_axes()
        return not self.rows and shape[row_axis] == self.grid_rows(anchors) and shape[col_axis] > self.first_class

    def fits_rows(self, shape: list) -> bool:
        """Rows: ``shape`` ends in this format's row width, at a rank it comes in."""
        return self.rows and shape[-1] == self.columns and len(shape) in self.ranks


LAYOUTS: dict[str, Layout] = {
    "ultralytics": Layout("ultralytics", "[1, 4 + classes, anchors]", transposed=True),
    "yolox": Layout("yolox", "[1, anchors, 5 + classes]", objectness=True, raw_grid=True),
    "yolov5": Layout("yolov5", "[1, 3 x anchors, 5 + classes]", objectness=True, anchors_per_cell=3),
    "nms": Layout("nms", "[K, 7] rows batchno, classid, score, x1, y1, x2, y2", rows=True, columns=7, boxes=3,
                  score=2, classid=1, ranks=(2, 3)),
    "end2end": Layout("end2end", "[1, K, 6] rows x1, y1, x2, y2, score, classid", rows=True, columns=6, boxes=0,
                      score=4, classid=5),
}
"""Every detection format, in the order the format guess tries them."""
DETECTION_FORMATS: tuple[str, ...] = tuple(LAYOUTS)
"""The format names (``roiseg fuse --det-format`` choices)."""
