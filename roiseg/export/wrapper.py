"""Export the ROI mask head to ONNX, in the style of segment-anything's ``utils/onnx.py``.

:class:`HeadOnnxWrapper` wraps a trained :class:`roiseg.modeling.RoiMaskHead` (which stays the
training model) into the deployment signature::

    features [1, C, h, w] float32   detector features at stride cfg.stride
    rois     [N, 4]       float32   normalised x1, y1, x2, y2 in [0, 1]; N may be 0
    images   [1, 3, H, W] float32   preprocessed input (only for the "detail" variant)
    ->
    masks    [N, 3, H, W] float32   per-class probabilities at input resolution,
                                    background (class 0) with p = 1 outside each ROI

or any of the other output modes of :data:`roiseg.conventions.OUTPUT_MODES` (``labels``,
``target``, ``roi_logits`` + ``roi_boxes``), chosen at export time (:func:`deployed_outputs`).

The ROIs are sanitised inside the graph (:func:`sanitize_rois`; the boxes it must survive are
:data:`roiseg.export.probes.AWKWARD_ROIS`): clipped to [0, 1], each axis
ordered, and a ROI with a non-finite coordinate becomes all background without touching the others.
The PyTorch reference of parity runs the same functions (:func:`deployed_roi_logits`, :func:`outputs_from_logits`).

``torchvision.ops.roi_align(aligned=True)`` exports (legacy TorchScript exporter, opset >= 16) to a
native ``RoiAlign`` with ``coordinate_transformation_mode="half_pixel"`` and
``spatial_scale = 1 / stride``; :func:`export_head` checks that on the written graph. It traces with
several ROIs and declares the ROI axis dynamic (``num_rois``).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import onnx
import torch
from torch import nn

from graph_tools import convert_opset, node_attributes, nodes_of_type, set_prop, validate_opset
from roiseg.conventions import (
    BACKGROUND, DEFAULT_HEAD_OPSET, DEFAULT_IMAGE_INPUT, DEFAULT_OUTPUTS, FUSED_ROIS_INPUT, HEAD_FEATURES_INPUT,
    MIN_HEAD_OPSET, NUM_CLASSES, OUTPUT_MODES, RAW_HEIGHT_AXIS, RAW_IMAGE_INPUT, RAW_WIDTH_AXIS, ROI_AXIS, TARGET,
    extra_features_input, output_modes, output_tensors,
)
from roiseg.runtime.metadata import KEY_EXTRACTOR, KEY_HEAD_CONFIG, KEY_OUTPUTS
from roiseg.errors import translate_graph_errors
from roiseg.modeling import HeadConfig, MaskHead
from roiseg.modeling.paste import class_ids, masks_from_logits, paste_roi_logits, roi_inside_masks
from roiseg.utils.atomic import atomic_path

HEAD_OPSET_REASON: str = "RoiAlign with coordinate_transformation_mode=half_pixel"
"""Why the head needs opset >= ``MIN_HEAD_OPSET`` (named in the error)."""
TORCHSCRIPT_MAX_OPSET: int = 20
"""Highest opset the legacy TorchScript exporter writes (torch.onnx._constants)."""
TRACE_ROIS: tuple[tuple[float, float, float, float], ...] = (
    (0.10, 0.15, 0.55, 0.95),
    (0.40, 0.05, 0.90, 0.60),
    (0.00, 0.00, 1.00, 1.00),
)
"""Normalised boxes used to trace the export (more than one, so the ROI axis stays symbolic)."""
INVALID_ROI_LOGITS: tuple[float, ...] = (0.0, -1e4, -1e4)
"""``roi_logits`` of a ROI with a non-finite box: background everywhere (finite, also in float16)."""


def sanitize_rois(rois: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """[N, 4] ROIs as given -> ([N, 4] boxes the head can take, [N] bool: the ROI was finite).

    A ROI with a NaN or infinite coordinate becomes the empty box ``(0, 0, 0, 0)`` (and is flagged);
    the others are clipped to [0, 1] and ordered so that ``x1 <= x2`` and ``y1 <= y2``. Exports to
    ``IsNaN``/``IsInf``/``Where``/``Clip``/``Min``/``Max``, so the fused graph does the same.
    """
    finite = torch.isfinite(rois).all(dim=1, keepdim=True)  # [N, 1]
    r = torch.where(finite, rois, torch.zeros_like(rois)).clamp(0.0, 1.0)
    lo = torch.minimum(r[:, 0:2], r[:, 2:4])
    hi = torch.maximum(r[:, 0:2], r[:, 2:4])
    return torch.cat([lo, hi], dim=1), finite[:, 0]


def background_where_invalid(masks: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[N, K, ...] class probabilities with every ROI whose ``valid`` [N] is false set to background (p = 1)."""
    onehot = (torch.arange(NUM_CLASSES, device=masks.device) == BACKGROUND).to(masks.dtype)
    shape = [1, NUM_CLASSES] + [1] * (masks.dim() - 2)
    return torch.where(valid.reshape([-1] + [1] * (masks.dim() - 1)), masks, onehot.reshape(shape))


def class_labels(probs: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] probabilities -> [N, H, W] uint8 class ids (first class on ties, as ONNX ``ArgMax``).

    Eagerly :func:`roiseg.modeling.paste.class_ids` (the same ids, faster on CPU); exported as a plain ``ArgMax``.
    """
    ids = torch.argmax(probs, dim=1) if torch.onnx.is_in_onnx_export() else class_ids(probs)
    return ids.to(torch.uint8)


def deployed_roi_logits(head: MaskHead, taps, rois: torch.Tensor,
                        images: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The head's part of the fused model for one image: ``rois`` [N, 4] as given -> ([N, 3, M, M] ROI-grid
    logits, [N, 4] sanitised boxes, [N] bool finite). Every ROI at once: a ROI may read the others
    (``HeadConfig.neighbour_map``)."""
    boxes, valid = sanitize_rois(rois)
    batch_idx = torch.zeros_like(boxes[:, 0], dtype=torch.int64)
    return head(taps, boxes, batch_idx, images), boxes, valid


def outputs_from_logits(head: MaskHead, logits: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor,
                        modes: tuple[str, ...] = DEFAULT_OUTPUTS, out_hw=None) -> list[torch.Tensor]:
    """The tensors of ``modes`` from :func:`deployed_roi_logits`' results (or any slice of them, ROI by ROI)."""
    probs = None
    if set(modes) & {"probs", "labels", "target"}:
        hw = head.cfg.input_hw if out_hw is None else out_hw
        pasted = masks_from_logits(paste_roi_logits(logits, boxes, hw), roi_inside_masks(boxes, hw))
        probs = background_where_invalid(pasted, valid)
    out: list[torch.Tensor] = []
    for mode in modes:
        if mode == "probs":
            out.append(probs)
        elif mode == "labels":
            out.append(class_labels(probs))
        elif mode == "target":
            out.append(probs[:, TARGET])
        else:  # roi_logits
            fill = torch.tensor(INVALID_ROI_LOGITS, dtype=logits.dtype, device=logits.device).reshape(1, -1, 1, 1)
            out += [torch.where(valid.reshape(-1, 1, 1, 1), logits, fill), boxes]
    return out


def deployed_outputs(head: MaskHead, taps, rois: torch.Tensor, images: torch.Tensor | None,
                     modes: tuple[str, ...] = DEFAULT_OUTPUTS, out_hw=None) -> list[torch.Tensor]:
    """What the fused model computes for one image: sanitised ROIs -> the tensors of ``modes``.

    ``taps``: the primary feature map [1, C, h, w] or [primary, *extra taps]; ``rois`` [N, 4] as
    given; ``modes`` checked and ordered (:func:`output_modes`); ``out_hw``: size of the pasted masks
    (default the input size; the original image size for a raw-image model, ints or 0-dim tensors).
    Returns the tensors of :func:`output_tensors` in that order (``labels`` uint8, the others float).
    """
    return outputs_from_logits(head, *deployed_roi_logits(head, taps, rois, images), modes, out_hw)


def deployed_masks(head: MaskHead, taps, rois: torch.Tensor, images: torch.Tensor | None) -> torch.Tensor:
    """[N, 3, H, W] probabilities as the fused model's ``masks`` (:func:`deployed_outputs`, ``probs``)."""
    return deployed_outputs(head, taps, rois, images, ("probs",))[0]


class HeadOnnxWrapper(nn.Module):
    """Deployment signature of the head: one image, N ROIs -> [N, 3, H, W] probabilities.

    Inputs, in order: ``features`` (primary tap), ``rois``, then ``images`` for the variants that
    read the image (``detail``, ``query``), then ``features_1`` ... for the extra taps the
    ``query`` variant reads.
    """

    def __init__(self, head: MaskHead, outputs=DEFAULT_OUTPUTS, raw_image: bool = False) -> None:
        super().__init__()
        self.head = head
        self.cfg: HeadConfig = head.cfg
        self.modes: tuple[str, ...] = output_modes(outputs)
        self.raw_image = raw_image
        """The model also takes the original image (``image`` [H0, W0, 3] uint8, last input) and
        pastes the masks at its size."""

    @property
    def needs_images(self) -> bool:
        """True for the variants that RoI-align the input image or encode it (``detail``, ``query``)."""
        return self.cfg.variant in ("detail", "query")

    @property
    def num_extra_taps(self) -> int:
        """Extra detector taps fed to the head (only the ``query`` variant reads them)."""
        return self.cfg.num_extra_taps

    @property
    def input_names(self) -> list[str]:
        names = [HEAD_FEATURES_INPUT, FUSED_ROIS_INPUT] + ([DEFAULT_IMAGE_INPUT] if self.needs_images else [])
        names += [extra_features_input(i) for i in range(1, self.num_extra_taps + 1)]
        return names + ([RAW_IMAGE_INPUT] if self.raw_image else [])

    @property
    def output_names(self) -> list[str]:
        return output_tensors(self.modes)

    @torch.no_grad()
    def forward(self, features: torch.Tensor, rois: torch.Tensor, *rest: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """features [1, C, h, w], rois [N, 4] normalised xyxy, images [1, 3, H, W], extra taps
        [1, C_i, h_i, w_i] -> the outputs of the modes (``masks`` [N, 3, H, W] by default)."""
        out_hw = None
        if self.raw_image:  # the original image: only its size is read
            rest, raw = rest[:-1], rest[-1]
            out_hw = (raw.shape[0], raw.shape[1])
        images = rest[0] if self.needs_images else None
        extras = list(rest[1:]) if self.needs_images else []
        taps = [features, *extras] if extras else features
        return tuple(deployed_outputs(self.head, taps, rois, images, self.modes, out_hw))

    def dummy_inputs(self, num_rois: int = len(TRACE_ROIS)) -> tuple[torch.Tensor, ...]:
        """Trace inputs: random features/image and ``num_rois`` (>= 2) real-looking boxes."""
        cfg = self.cfg
        h, w = cfg.input_hw
        gen = torch.Generator().manual_seed(0)
        feats = torch.randn(1, cfg.in_channels, h // cfg.stride, w // cfg.stride, generator=gen)
        boxes = [TRACE_ROIS[i % len(TRACE_ROIS)] for i in range(max(num_rois, 2))]
        rois = torch.tensor(boxes, dtype=torch.float32)
        raw = (torch.zeros(h + h // 2 + 1, w + w // 3 + 1, 3, dtype=torch.uint8),) if self.raw_image else ()
        if not self.needs_images:
            return (feats, rois, *raw)
        extras = [torch.randn(1, c, h // s, w // s, generator=gen)
                  for c, s in list(zip(cfg.extra_channels, cfg.extra_strides))[: self.num_extra_taps]]
        return (feats, rois, torch.rand(1, 3, h, w, generator=gen), *extras, *raw)


def check_roi_align(model: onnx.ModelProto, cfg: HeadConfig) -> None:
    """Assert every ``RoiAlign`` says ``half_pixel`` explicitly; the feature one has ``1 / stride``.

    Raises ``ValueError`` describing the offending node (an exporter regression, not user input).
    """
    nodes = nodes_of_type(model, "RoiAlign")
    if not nodes:
        raise ValueError("exported head has no RoiAlign node")
    scales = []
    for node in nodes:
        attrs = node_attributes(node)
        if attrs.get("coordinate_transformation_mode") != "half_pixel":
            raise ValueError(f"RoiAlign {node.name!r} lacks coordinate_transformation_mode='half_pixel': {attrs}")
        scales.append(float(attrs.get("spatial_scale", 1.0)))
    if not any(abs(s - 1.0 / cfg.stride) < 1e-9 for s in scales):
        raise ValueError(f"no RoiAlign with spatial_scale 1/{cfg.stride}; found {scales}")


@translate_graph_errors
def export_head(
    head: MaskHead,
    path: str | Path | None = None,
    opset: int = DEFAULT_HEAD_OPSET,
    extractor: dict | None = None,
    outputs=DEFAULT_OUTPUTS,
    raw_image: bool = False,
) -> onnx.ModelProto:
    """Export ``head`` (eval mode) to ONNX and return the model; also write it to ``path`` if given.

    Inputs ``features``, ``rois`` (and ``images`` for the detail variant), outputs those of the
    ``outputs`` modes (``masks`` by default, :func:`output_tensors`); the ROI axis is dynamic.
    ``opset`` must be >= 16 (:class:`InputError` otherwise); above what the TorchScript exporter
    writes, the graph is exported at its maximum and converted. With ``raw_image`` the head also takes
    ``image`` (the original uint8 image, only its size is read) and pastes the masks at that size
    (``height`` x ``width``, dynamic). The head config
    (and ``extractor``, the checkpoint's extractor info, when given) go into ``metadata_props``.
    """
    validate_opset(opset, MIN_HEAD_OPSET, HEAD_OPSET_REASON)
    wrapper = HeadOnnxWrapper(head.eval(), outputs, raw_image).eval()
    names, out_names = wrapper.input_names, wrapper.output_names
    dynamic = {name: {0: ROI_AXIS} for name in [FUSED_ROIS_INPUT, *out_names]}
    if raw_image:
        dynamic[RAW_IMAGE_INPUT] = {0: RAW_HEIGHT_AXIS, 1: RAW_WIDTH_AXIS}
        for mode in wrapper.modes:
            if mode in ("probs", "labels", "target"):
                first = 2 if mode == "probs" else 1
                dynamic[OUTPUT_MODES[mode][0]].update({first: RAW_HEIGHT_AXIS, first + 1: RAW_WIDTH_AXIS})
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, wrapper.dummy_inputs(), buf, opset_version=min(opset, TORCHSCRIPT_MAX_OPSET),
            input_names=names, output_names=out_names, dynamic_axes=dynamic,
            do_constant_folding=True, dynamo=False,
        )
    model = onnx.load_from_string(buf.getvalue())
    if opset > TORCHSCRIPT_MAX_OPSET:
        model = convert_opset(model, opset, "head")
    check_roi_align(model, wrapper.cfg)
    set_prop(model, KEY_HEAD_CONFIG, json.dumps(wrapper.cfg.to_dict(), sort_keys=True))
    set_prop(model, KEY_OUTPUTS, json.dumps(list(wrapper.modes)))
    if extractor is not None:
        set_prop(model, KEY_EXTRACTOR, json.dumps(extractor, sort_keys=True))
    onnx.checker.check_model(model)
    if path is not None:
        with atomic_path(path) as tmp:
            onnx.save_model(model, str(tmp))
    return model
