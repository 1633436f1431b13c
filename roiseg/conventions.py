"""The one place that holds roiseg's conventions.

Everything that two modules must agree on lives here and nowhere else: class ids and names,
the ROI format, the image preprocessing, the default feature tensor, default paths and the
file-name patterns of what roiseg writes.

Units used throughout the project:

* **ROIs** are *normalised* ``x1, y1, x2, y2`` in ``[0, 1]`` relative to the image
  (so the same ROI is valid for the original image and for the resized model input).
* **Pixel boxes** (COCO ``bbox`` is pixel ``x, y, w, h``) are converted with
  :func:`coco_bbox_to_roi`.
* A pixel ``(row, col)`` is **inside** a ROI when its centre ``(col + 0.5, row + 0.5)`` lies in
  the half-open box ``[x1, x2) x [y1, y2)`` measured in pixels of the grid at hand.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Iterable, Literal, Sequence

import cv2
import numpy as np

from roiseg.errors import InputError

# --------------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------------
BACKGROUND: int = 0
"""Class id of everything that is neither the ROI's own person nor another person inside it."""
TARGET: int = 1
"""Class id of the ROI's own person."""
NON_TARGET: int = 2
"""Class id of other persons' pixels inside the ROI."""
CLASS_NAMES: tuple[str, str, str] = ("background", "target", "non_target")
NUM_CLASSES: int = len(CLASS_NAMES)

COCO_PERSON_CATEGORY_ID: int = 1

# COCO size buckets (annotation area in original pixels), as in pycocotools' COCOeval.
COCO_SMALL_MAX_AREA: float = 32.0**2
COCO_MEDIUM_MAX_AREA: float = 96.0**2
SIZE_BUCKETS: tuple[str, str, str] = ("small", "medium", "large")

# --------------------------------------------------------------------------------------------
# Detector / feature defaults
# --------------------------------------------------------------------------------------------
DEFAULT_FEATURE_TENSOR: str = "/model.34/Concat_output_0"
DEFAULT_EXTRACTOR: str = "ext_extractor/yolov9_e_wholebody25_0100_1x3x640x640_featext.onnx"
DEFAULT_IMAGE_INPUT: str = "images"
"""Name of the image input of the detector and of the fused model."""
FUSED_ROIS_INPUT: str = "rois"
FUSED_MASKS_OUTPUT: str = "masks"
FUSED_LABELS_OUTPUT: str = "labels"
FUSED_TARGET_OUTPUT: str = "target"
FUSED_ROI_LOGITS_OUTPUT: str = "roi_logits"
FUSED_ROI_BOXES_OUTPUT: str = "roi_boxes"
OUTPUT_MODES: dict[str, tuple[str, ...]] = {
    "probs": (FUSED_MASKS_OUTPUT,),
    "labels": (FUSED_LABELS_OUTPUT,),
    "target": (FUSED_TARGET_OUTPUT,),
    "roi_logits": (FUSED_ROI_LOGITS_OUTPUT, FUSED_ROI_BOXES_OUTPUT),
}
"""Output modes of the fused model (chosen at fuse time, in this order) and the tensors each adds:
``probs`` [N, 3, H, W] float32 probabilities; ``labels`` [N, H, W] uint8 argmax class; ``target``
[N, H, W] float32 target probability; ``roi_logits`` [N, 3, M, M] ROI-grid logits + ``roi_boxes``
[N, 4] the sanitised normalised boxes they cover (for clients that paste themselves)."""
DEFAULT_OUTPUTS: tuple[str, ...] = ("probs",)
RAW_IMAGE_INPUT: str = "image"
"""Input of a raw-image fused model (``--image-input raw``): the original uint8 BGR image [H0, W0, 3]."""
RAW_HEIGHT_AXIS, RAW_WIDTH_AXIS = "height", "width"
"""Names of the dynamic image dimensions of a raw-image model (its input and its mask outputs)."""
PREPROCESSED_TENSOR: str = "roiseg_pre/images"
"""Inside a raw-image fused model: the preprocessed image [1, 3, H, W] the detector and the head read."""


class ImageInput(str, Enum):
    """What the fused model takes as its image (``roiseg.image_input`` metadata, ``fuse --image-input``)."""

    TENSOR = "tensor"  # ``images`` [1, 3, H, W] float32, preprocessed by the caller (:func:`preprocess`)
    RAW = "raw"  # ``image`` uint8 [H0, W0, 3] BGR of any size, preprocessed in the graph; masks at H0 x W0

    def __str__(self) -> str:
        return self.value

    @property
    def input_name(self) -> str:
        """The model's image input: ``images`` or ``image``."""
        return RAW_IMAGE_INPUT if self is ImageInput.RAW else DEFAULT_IMAGE_INPUT

    @classmethod
    def parse(cls, value: "str | ImageInput") -> "ImageInput":
        """``"tensor"``/``"raw"`` (or a member) -> the member; InputError naming the value otherwise."""
        try:
            return cls(value)
        except ValueError:
            raise InputError(f"unknown image input {value!r}; expected one of {', '.join(IMAGE_INPUT_MODES)}") from None


IMAGE_INPUT_MODES: tuple[str, ...] = tuple(m.value for m in ImageInput)


def output_modes(modes: str | Iterable[str] | None) -> tuple[str, ...]:
    """The output modes asked for, checked and in the canonical order of :data:`OUTPUT_MODES`.

    ``modes``: names, or strings of comma-separated names. :class:`InputError` for an unknown or no mode.
    """
    names = [m.strip() for item in ([modes] if isinstance(modes, str) else list(modes or [])) for m in item.split(",")]
    names = [m for m in names if m]
    unknown = [m for m in names if m not in OUTPUT_MODES]
    if unknown or not names:
        what = f"unknown output mode {unknown[0]!r}" if unknown else "no output mode given"
        raise InputError(f"{what}; expected one or more of {', '.join(OUTPUT_MODES)}")
    return tuple(m for m in OUTPUT_MODES if m in names)


def output_tensors(modes: str | Iterable[str] | None) -> list[str]:
    """Names of the graph outputs of ``modes`` (checked), in order."""
    return [name for m in output_modes(modes) for name in OUTPUT_MODES[m]]


HEAD_FEATURES_INPUT: str = "features"
"""Input of an exported head that takes the detector's features."""
def extra_features_input(i: int) -> str:
    """Input of an exported head that takes extra detector tap ``i`` (1-based): ``features_1``, ..."""
    return f"{HEAD_FEATURES_INPUT}_{i}"


ROI_AXIS: str = "num_rois"
"""Name of the dynamic ROI dimension of ``rois`` and ``masks``."""
HEAD_PREFIX: str = "roiseg_head/"
"""Prefix of every node, tensor and initializer name that comes from the head in a fused model."""
DETECTOR_PREFIX: str = "detector/"
"""Prefix given to a detector tensor whose name collides with a public name of the fused model."""
MIN_HEAD_OPSET: int = 16
"""RoiAlign with ``coordinate_transformation_mode`` exists from opset 16 on."""
DEFAULT_HEAD_OPSET: int = 17
DEVICE_CHOICES: tuple[str, ...] = ("auto", "cpu", "cuda")
"""``--device`` values (``cuda:N`` is accepted too)."""

# --------------------------------------------------------------------------------------------
# Instance model (image -> person instances: the detector's boxes, NMS and masks in one graph)
# --------------------------------------------------------------------------------------------
FUSED_BOXES_OUTPUT: str = "boxes"
"""[K, 4] float32 normalised x1, y1, x2, y2 of the kept detections (they are the ROIs of ``masks``)."""
FUSED_SCORES_OUTPUT: str = "scores"
"""[K] float32 detection scores, in decreasing order."""
FUSED_CLASSES_OUTPUT: str = "classes"
"""[K] int64 the detector's class id of each kept detection."""
INSTANCE_OUTPUTS: tuple[str, str, str] = (FUSED_BOXES_OUTPUT, FUSED_SCORES_OUTPUT, FUSED_CLASSES_OUTPUT)
INSTANCE_AXIS: str = "num_instances"
"""Name of the dynamic instance dimension K."""
DETECTION_STRIDES: tuple[int, ...] = (8, 16, 32)
DEFAULT_PERSON_CLASSES: tuple[int, ...] = (0,)
DEFAULT_SCORE_THRESHOLD: float = 0.25
DEFAULT_IOU_THRESHOLD: float = 0.45
DEFAULT_MAX_INSTANCES: int = 100
POST_PREFIX: str = "roiseg_post/"
"""Prefix of the detection post-processing nodes in an instance model."""

# --------------------------------------------------------------------------------------------
# Default paths (the seed data layout)
# --------------------------------------------------------------------------------------------
DEFAULT_DATA_ROOT: str = "data"
PERSON_ONLY_SUFFIX: str = "_person_only_no_crowd"
DEFAULT_TRAIN_ANN: str = "data/annotations/instances_train2017_person_only_no_crowd.json"
DEFAULT_VAL_ANN: str = "data/annotations/instances_val2017_person_only_no_crowd.json"
DEFAULT_TRAIN_IMAGES: str = "data/images/train2017"
DEFAULT_VAL_IMAGES: str = "data/images/val2017"
DEFAULT_ANALYZE_JSON: str = "data_analyze.json"
DEFAULT_CHECKPOINT_DIR: str = "checkpoints"
DEFAULT_FUSED_MODEL: str = "models/roiseg_fused.onnx"
DEFAULT_VALIDATION_IMAGES: tuple[str, ...] = (
    "000000020992.jpg",
    "000000413552.jpg",
    "000000109118.jpg",
    "000000162732.jpg",
)

# --------------------------------------------------------------------------------------------
# File-name patterns
# --------------------------------------------------------------------------------------------
CHECKPOINT_PATTERN: str = "checkpoint_epoch_{epoch:04d}_{height}x{width}_{miou:04d}.pth"
CHECKPOINT_GLOB: str = "checkpoint_epoch_*.pth"
BEST_CHECKPOINT: str = "best.pth"
VALIDATION_PICTURE_PATTERN: str = "validation_all_images_epoch_{epoch:04d}.png"
VALIDATION_PICTURE_GLOB: str = "validation_all_images_epoch_*.png"
METRICS_FILE: str = "metrics.jsonl"
CURVES_FILE: str = "curves.png"
PARITY_REPORT: str = "parity.json"
"""File name of a ``parity-check`` JSON report (the demo writes it in its folder)."""
DEFAULT_PARITY_REPORT: str = f"models/{PARITY_REPORT}"
"""Default file of ``roiseg parity-check --report`` (under the git-ignored ``models/``)."""
DEFAULT_PREDICT_OVERLAY: str = "models/overlay.png"
"""Default file of ``roiseg predict --out`` (under the git-ignored ``models/``)."""
EVALUATE_WORST_PICTURE: str = "models/evaluate_worst_rois.png"
"""Default file of ``roiseg evaluate --worst K`` (under the git-ignored ``models/``)."""
HEAD_ONNX_SUFFIX: str = ".onnx"
"""A ``--head`` file with this suffix is an exported head ONNX; anything else is a checkpoint."""

FEATURE_CACHE_DIR: str = ".cache/features"
"""Default feature-cache folder (``features.cache``)."""

# The demo's folder layout (``roiseg demo --workdir DIR``), relative to DIR.
DEMO_WORKDIR: str = "roiseg_demo"
DEMO_DATA_DIR: str = "data"
DEMO_DETECTOR_DIR: str = "ext_extractor"
DEMO_STAND_IN_PATTERN: str = "stand_in_yolo_1x3x{h}x{w}.onnx"
DEMO_RUN_DIR: str = DEFAULT_CHECKPOINT_DIR
DEMO_OVERLAY: str = "predict_overlay.png"
DEMO_SUMMARY: str = "demo_summary.json"


def person_only_name(stem: str, subset: int | None = None) -> str:
    """File name of a prepared annotation file.

    ``person_only_name("instances_train2017")`` -> ``instances_train2017_person_only_no_crowd.json``;
    with ``subset=500`` -> ``instances_train2017_person_only_no_crowd_500.json``.
    """
    tail = f"_{subset}" if subset is not None else ""
    return f"{stem}{PERSON_ONLY_SUFFIX}{tail}.json"


def checkpoint_name(epoch: int, input_hw: tuple[int, int], miou: float) -> str:
    """Checkpoint file name; ``miou`` in [0, 1] is written as ``floor(miou * 10000)`` (0.7532 -> 7532)."""
    m = int(np.floor(float(miou) * 10000.0 + 1e-9))
    return CHECKPOINT_PATTERN.format(epoch=epoch, height=input_hw[0], width=input_hw[1], miou=m)


def validation_picture_name(epoch: int) -> str:
    return VALIDATION_PICTURE_PATTERN.format(epoch=epoch)


def size_bucket(area: float) -> str:
    """COCO size bucket of an annotation area in original pixels."""
    if area < COCO_SMALL_MAX_AREA:
        return "small"
    if area < COCO_MEDIUM_MAX_AREA:
        return "medium"
    return "large"


# --------------------------------------------------------------------------------------------
# ROI geometry (pure functions)
# --------------------------------------------------------------------------------------------
def coco_bbox_to_roi(bbox: Sequence[float], image_hw: tuple[int, int]) -> np.ndarray:
    """COCO pixel ``[x, y, w, h]`` on an image of ``(H, W)`` pixels -> normalised ``x1, y1, x2, y2``."""
    x, y, w, h = (float(v) for v in bbox)
    height, width = image_hw
    return np.array([x / width, y / height, (x + w) / width, (y + h) / height], dtype=np.float32)


def pixel_rois_to_normalised(boxes_px: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """[N, 4] pixel ``x1, y1, x2, y2`` on an image of ``(H, W)`` -> normalised ``x1, y1, x2, y2``."""
    h, w = image_hw
    scale = np.array([w, h, w, h], dtype=np.float32)
    return np.asarray(boxes_px, dtype=np.float32).reshape(-1, 4) / scale


def normalised_rois_to_pixels(rois: np.ndarray, image_hw: tuple[int, int]) -> np.ndarray:
    """[N, 4] normalised ``x1, y1, x2, y2`` -> pixel ``x1, y1, x2, y2`` on a grid of ``(H, W)``."""
    h, w = image_hw
    scale = np.array([w, h, w, h], dtype=np.float32)
    return np.asarray(rois, dtype=np.float32).reshape(-1, 4) * scale


def roi_pixel_span(roi_px: Sequence[float], size: int, axis: int) -> tuple[int, int]:
    """Index range ``[lo, hi)`` of pixels whose centre lies in ``[roi[axis], roi[axis + 2])``.

    ``axis`` 0 is x (columns), 1 is y (rows); ``size`` is the grid length along that axis.
    Pixel ``i`` is inside when ``lo_edge <= i + 0.5 < hi_edge``.
    """
    lo_edge, hi_edge = float(roi_px[axis]), float(roi_px[axis + 2])
    lo = int(np.ceil(lo_edge - 0.5))
    hi = int(np.ceil(hi_edge - 0.5))
    return max(lo, 0), min(max(hi, 0), size)


def roi_inside_mask(roi: Sequence[float], grid_hw: tuple[int, int]) -> np.ndarray:
    """[H, W] bool: pixels of a ``(H, W)`` grid whose centre lies in the normalised ROI."""
    h, w = grid_hw
    roi_px = normalised_rois_to_pixels(np.asarray(roi), grid_hw)[0]
    x0, x1 = roi_pixel_span(roi_px, w, 0)
    y0, y1 = roi_pixel_span(roi_px, h, 1)
    mask = np.zeros((h, w), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


# --------------------------------------------------------------------------------------------
# Image preprocessing
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the detector's input tensor.

    Default: BGR (OpenCV) -> RGB, direct resize (no letterbox) to the detector's input size with
    bilinear interpolation, float32 scaled to ``[0, 1]``, NCHW. Stored in checkpoints and in the
    fused model's metadata as JSON (:meth:`to_json`).
    """

    color: Literal["rgb", "bgr"] = "rgb"
    resize: Literal["direct"] = "direct"
    interpolation: Literal["linear"] = "linear"
    scale: float = 1.0 / 255.0
    layout: Literal["nchw"] = "nchw"
    dtype: Literal["float32"] = "float32"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Preprocessing":
        return cls(**json.loads(text))

    def key(self) -> str:
        """Short stable hash of the settings (used in feature-cache keys)."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]


DEFAULT_PREPROCESSING = Preprocessing()


def preprocess(
    image_bgr: np.ndarray, input_hw: tuple[int, int], pre: Preprocessing = DEFAULT_PREPROCESSING
) -> np.ndarray:
    """[H0, W0, 3] uint8 BGR (as read by ``cv2.imread``) -> [1, 3, H, W] float32 model input.

    ``input_hw`` is the detector's ``(H, W)``. Used by training, validation, parity and predict.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] BGR image, got shape {image_bgr.shape}")
    img = image_bgr[:, :, ::-1] if pre.color == "rgb" else image_bgr
    h, w = input_hw
    if img.shape[:2] != (h, w):
        img = cv2.resize(np.ascontiguousarray(img), (w, h), interpolation=cv2.INTER_LINEAR)
    chw = np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) * np.float32(pre.scale)
    return chw[None]


JPEG_SOI, JPEG_SOS, JPEG_EOI = b"\xff\xd8", b"\xff\xda", b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def image_truncation(data: bytes) -> str | None:
    """Why the bytes of a JPEG or PNG file are cut short, or ``None`` when complete (other formats: ``None``).

    JPEG: the last scan (``FF DA``) must be followed by the end-of-image marker ``FF D9`` (inside
    a scan ``FF`` is always stuffed, so ``FF D9`` cannot occur there; trailing bytes after the
    marker are allowed). PNG: an ``IEND`` chunk must follow the last ``IDAT`` chunk. OpenCV decodes
    such files without an error, filling the missing part with grey.
    """
    if data.startswith(JPEG_SOI):
        last_scan = data.rfind(JPEG_SOS)
        if last_scan < 0:
            return "JPEG without image data"
        if data.rfind(JPEG_EOI) < last_scan:
            return "truncated JPEG (no end-of-image marker after the last scan)"
    elif data.startswith(PNG_SIGNATURE) and data.rfind(b"IEND") < data.rfind(b"IDAT"):
        return "truncated PNG (no IEND chunk after the image data)"
    return None


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as [H, W, 3] uint8 BGR.

    Raises ``FileNotFoundError`` naming the path when it is absent, ``ValueError`` naming it when
    it is not a readable image or is truncated (:func:`image_truncation`).
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image not found: {p}")
    data = p.read_bytes()
    why = image_truncation(data)
    if why is not None:
        raise ValueError(f"corrupt image: {p} ({why})")
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"not a readable image: {p}")
    return img


def default_trt_cache_dir() -> Path:
    """Where TensorRT engines are cached: ``$XDG_CACHE_HOME/roiseg/trt_engines`` (``~/.cache`` by default)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "roiseg" / "trt_engines"


def read_user_image(path: str | Path) -> np.ndarray:
    """:func:`read_image` with :class:`InputError` (naming the file) for an absent, unreadable or cut file."""
    try:
        return read_image(path)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from exc
