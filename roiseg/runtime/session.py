"""The one way roiseg runs a fused ONNX model: :class:`FusedSession`, and masks back at the original size.

:class:`FusedSession` reads the model's metadata (:mod:`roiseg.runtime.metadata`), picks the
providers (TensorRT > CUDA > CPU by availability, :func:`graph_tools.execution_providers`, with
TensorRT optimisation profiles for the dynamic inputs), creates the onnxruntime session and checks
the input contract: a ROI model takes its image (``images`` [1, 3, H, W] preprocessed, or the raw
``image`` uint8 [H0, W0, 3] BGR with ``--image-input raw``) and ``rois`` [N, 4]; an instance model
takes the image only. It feeds an image as the metadata says (:meth:`FusedSession.image_feed`) and
runs the output modes the model has. Predict, evaluate and the demo all go through it; nothing here
imports torch, ``roiseg.modeling`` or ``roiseg.training``.

:func:`to_original_size`: [N, K, H, W] probabilities at the model's input size -> the original
``(H0, W0)``: each ROI's K maps resized bilinearly (``cv2.resize``, OpenCV's pixel-centre geometry),
then the class is their argmax (first class on ties, :func:`graph_tools.class_map`). A raw-image
model pastes at the original size itself; its masks pass through unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

import graph_tools as gt
from roiseg.conventions import (
    FUSED_ROIS_INPUT, INSTANCE_OUTPUTS, OUTPUT_MODES, ImageInput, default_trt_cache_dir, normalised_rois_to_pixels, output_tensors, preprocess,
)
from roiseg.errors import InputError, graph_errors
from roiseg.runtime.engines import TRT_ROIS, trt_profiles
from roiseg.runtime.masks import mask_source, probabilities_from
from roiseg.runtime.metadata import FusedMetadata, read_metadata
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

Feed = dict[str, np.ndarray]


def session_providers(device: str, profiles: dict[str, str] | None = None) -> list[gt.ProviderSpec]:
    """onnxruntime providers for ``device`` (``auto``, ``cpu``, ``cuda``, ``cuda:N``) without torch:
    CUDA is usable when onnxruntime has its provider and the CUDA driver sees a device."""
    with graph_errors():
        kind, _ = gt.parse_device(device)
        reason = None if kind == "cpu" else gt.cuda_unusable_reason()
        count = gt.cuda_device_count() if reason is None and kind != "cpu" else 0
        providers = gt.execution_providers(device, reason, count, default_trt_cache_dir(), trt_profiles=profiles)
    LOG.info("onnxruntime providers requested: %s (device=%s)", ", ".join(gt.provider_names(providers)), device)
    return providers


def to_original_size(probs: np.ndarray, orig_hw: tuple[int, int],
                     keep: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """[N, K, H, W] probabilities -> ([N, C, H0, W0] float32 resized probabilities of the ``keep`` classes
    (all K when ``None``: C = K), [N, H0, W0] uint8 argmax class ids) at ``orig_hw`` = ``(H0, W0)`` pixels.

    One ROI at a time (module docstring): only the kept classes of every ROI are held at the original size.
    """
    h0, w0 = int(orig_hw[0]), int(orig_hw[1])
    n, k = probs.shape[:2]
    channels = list(range(k)) if keep is None else list(keep)
    kept = np.empty((n, len(channels), h0, w0), dtype=np.float32)
    labels = np.empty((n, h0, w0), dtype=np.uint8)
    for i in range(n):
        if tuple(probs.shape[2:]) == (h0, w0):  # pasted at the original size already (raw-image model)
            full = np.asarray(probs[i], dtype=np.float32)
        else:
            hwk = cv2.resize(np.ascontiguousarray(probs[i].transpose(1, 2, 0)), (w0, h0), interpolation=cv2.INTER_LINEAR)
            full = hwk.reshape(h0, w0, k).transpose(2, 0, 1)
        labels[i] = gt.class_map(full[None])[0]
        kept[i] = full[channels]
    return kept, labels


@dataclass
class RawInstances:
    """An instance model's outputs for one image: ``boxes`` [K, 4] pixel x1y1x2y2 of the original image,
    ``scores`` [K] (decreasing), ``classes`` [K] int64 and ``masks`` [K, 3, h, w] probabilities as the
    model gives them (input size; the original size for a raw-image model)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    masks: np.ndarray


class FusedSession:
    """A fused roiseg model (ROI or instance model) in onnxruntime (module docstring).

    ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``; ``trt_rois``: the ROI counts of TensorRT's
    profile (min, opt, max). Masks come from whichever output mode the model has
    (:attr:`mask_source`, :mod:`roiseg.runtime.masks`). InputError when the file is no roiseg fused
    model or breaks the contract.
    """

    def __init__(self, model: str | Path, device: str = "auto", trt_rois: Sequence[int] = TRT_ROIS) -> None:
        self.path = Path(model)
        self.meta: FusedMetadata = read_metadata(self.path)
        self.image_input: ImageInput = self.meta.image_input
        profiles = trt_profiles(self.meta.input_hw, self.image_input, trt_rois, has_rois=not self.is_instance_model)
        providers = session_providers(device, profiles)
        with graph_errors():
            self.session = gt.create_session(self.path, providers)
        expected = [self.image_input.input_name] + ([] if self.is_instance_model else [FUSED_ROIS_INPUT])
        names = {i.name for i in self.session.get_inputs()}
        if names != set(expected):
            kind = "an instance model takes" if self.is_instance_model else "expected"
            raise InputError(f"{self.path} has inputs {sorted(names)}; {kind} {' and '.join(expected)}")
        try:
            self.mask_source: str = mask_source(self.meta.outputs)
        except InputError as exc:
            raise InputError(f"{self.path}: {exc}") from None

    @property
    def is_instance_model(self) -> bool:
        return self.meta.is_instance_model

    @property
    def input_hw(self) -> tuple[int, int]:
        """The detector's input size ``(H, W)`` in pixels."""
        return self.meta.input_hw

    @property
    def description(self) -> str:
        return f"{'instance model' if self.is_instance_model else 'fused ONNX'} {self.path.name}"

    @property
    def raw(self) -> bool:
        """The model takes the raw image and pastes its masks at the original size."""
        return self.image_input is ImageInput.RAW

    def image_feed(self, image_bgr: np.ndarray) -> Feed:
        """The model's image input for an [H0, W0, 3] uint8 BGR image (thread-safe: prepare it ahead)."""
        if self.raw:
            return {self.image_input.input_name: np.ascontiguousarray(image_bgr, np.uint8)}
        return {self.image_input.input_name: preprocess(image_bgr, self.meta.input_hw, self.meta.preprocessing)}

    def outputs(self, feed: Feed, rois: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """``{output tensor name: array}`` of every output mode of the model (``conventions.OUTPUT_MODES``;
        an instance model's ``boxes``, ``scores``, ``classes`` first); ``rois`` [N, 4] normalised x1y1x2y2
        for a ROI model."""
        names = [*([] if not self.is_instance_model else INSTANCE_OUTPUTS), *output_tensors(self.meta.outputs)]
        return dict(zip(names, self.session.run(names, self._with_rois(feed, rois))))

    def mask_hw(self, feed: Feed) -> tuple[int, int]:
        """``(h, w)`` of the model's masks for ``feed``: the input size, or the original for a raw-image model."""
        image = feed[self.image_input.input_name]
        return (int(image.shape[0]), int(image.shape[1])) if self.raw else self.meta.input_hw

    def _masks(self, feed: Feed, rois: np.ndarray | None, extra: Sequence[str] = ()) -> tuple[list[np.ndarray], np.ndarray]:
        """Run the model once: the ``extra`` outputs and [N, 3, h, w] probabilities from :attr:`mask_source`."""
        names = list(dict.fromkeys([*extra, *OUTPUT_MODES[self.mask_source]]))
        got = dict(zip(names, self.session.run(names, self._with_rois(feed, rois))))
        return [got[n] for n in extra], probabilities_from(got, self.mask_source, self.mask_hw(feed))

    def roi_probabilities(self, feed: Feed, rois: np.ndarray) -> np.ndarray:
        """[N, 3, h, w] class probabilities of a ROI model for ``rois`` [N, 4] normalised x1y1x2y2 (the
        input size, or the original size for a raw-image model), from whichever mask output it has."""
        return self._masks(feed, rois)[1]

    def instances(self, feed: Feed, orig_hw: tuple[int, int]) -> RawInstances:
        """An instance model's persons on the image of ``feed``, boxes in pixels of ``orig_hw`` = ``(H0, W0)``."""
        (boxes, scores, classes), masks = self._masks(feed, None, INSTANCE_OUTPUTS)
        if not self.raw:  # normalised boxes; a raw-image model gives pixels itself
            boxes = normalised_rois_to_pixels(boxes, orig_hw)
        return RawInstances(np.asarray(boxes, np.float32), scores, classes, masks)

    def _with_rois(self, feed: Feed, rois: np.ndarray | None) -> Feed:
        if self.is_instance_model or rois is None:
            return feed
        return {**feed, FUSED_ROIS_INPUT: np.ascontiguousarray(rois, np.float32)}
