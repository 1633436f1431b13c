"""Run an instance model (``roiseg fuse --instances``) on an image: the persons it finds, masks at the original size.

:class:`InstanceSession` is the one way roiseg runs such a model (``predict`` and ``evaluate --rois
detector``): the image is fed as the model's metadata says (preprocessed ``images``, or the raw
``image``); ``boxes`` come back in pixels of the original image (normalised boxes times its size;
a raw-image model gives pixels itself); the ``[K, 3, H, W]`` probabilities are resized to the
original ``(H0, W0)`` as :func:`roiseg.deploy.predict.masks_to_original` does (a raw-image model
pastes them at that size itself). Instances are numbered from 1, best score first.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from graph_tools import create_session
from roiseg.conventions import (
    DEFAULT_IMAGE_INPUT, FUSED_BOXES_OUTPUT, FUSED_CLASSES_OUTPUT, FUSED_MASKS_OUTPUT, FUSED_SCORES_OUTPUT,
    RAW_IMAGE_INPUT, normalised_rois_to_pixels, preprocess, read_image,
)
from roiseg.deploy.engines import trt_profiles
from roiseg.deploy.instances import InstanceProps, parse_instances
from roiseg.deploy.metadata import FusedMetadata, read_metadata
from roiseg.deploy.predict import check_outputs, draw_overlay, masks_to_original, save_masks, write_image
from roiseg.errors import InputError, graph_errors
from roiseg.features.providers import choose_providers

OUTPUTS: tuple[str, ...] = (FUSED_BOXES_OUTPUT, FUSED_SCORES_OUTPUT, FUSED_CLASSES_OUTPUT, FUSED_MASKS_OUTPUT)


@dataclass
class InstancePrediction:
    """The persons found on one image, best first: ``rois_px`` [K, 4] pixel x1y1x2y2 of the original
    image, ``scores`` [K], ``classes`` [K] (the detector's class ids), ``probs`` [K, 3, H0, W0],
    ``labels`` [K, H0, W0] uint8 class ids."""

    rois_px: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    probs: np.ndarray
    labels: np.ndarray


def is_instance_model(model: str | Path) -> bool:
    """Whether ``model`` is a roiseg instance model (InputError when it is no roiseg model at all)."""
    return bool(read_metadata(model).instances)


class InstanceSession:
    """An instance model in onnxruntime (providers by ``device``)."""

    def __init__(self, model: str | Path, device: str = "auto") -> None:
        self.path = Path(model)
        self.meta: FusedMetadata = read_metadata(self.path)
        if not self.meta.instances:
            raise InputError(f"{self.path} is a ROI model (images + rois); it needs boxes (predict --roi)")
        self.props: InstanceProps = parse_instances(self.meta.instances)
        self.raw = self.meta.image_input == "raw"
        profiles = trt_profiles(self.meta.input_hw, self.meta.image_input, has_rois=False)
        with graph_errors():
            self.session = create_session(self.path, choose_providers(device, trt_profiles=profiles).providers)
        image_input = RAW_IMAGE_INPUT if self.raw else DEFAULT_IMAGE_INPUT
        names = {i.name for i in self.session.get_inputs()}
        if names != {image_input}:
            raise InputError(f"{self.path} has inputs {sorted(names)}; an instance model takes {image_input} only")
        if "probs" not in self.meta.outputs:
            raise InputError(f"{self.path} has no probabilities output (its outputs: {', '.join(self.meta.outputs)}); "
                             "fuse it with the probs output to run it here")

    def feed(self, image_bgr: np.ndarray) -> dict[str, np.ndarray]:
        """The model's input for an [H0, W0, 3] uint8 BGR image."""
        if self.raw:
            return {RAW_IMAGE_INPUT: np.ascontiguousarray(image_bgr, np.uint8)}
        return {DEFAULT_IMAGE_INPUT: preprocess(image_bgr, self.meta.input_hw, self.meta.preprocessing)}

    def run(self, feed: dict[str, np.ndarray], orig_hw: tuple[int, int]) -> tuple[np.ndarray, ...]:
        """``boxes`` in original pixels, ``scores``, ``classes`` and the ``masks`` as the model gives them
        ([K, 3, H, W] at the input size; at ``orig_hw`` for a raw-image model)."""
        boxes, scores, classes, masks = self.session.run(list(OUTPUTS), feed)
        if not self.raw:
            boxes = normalised_rois_to_pixels(boxes, orig_hw)
        return boxes.astype(np.float32), scores, classes, masks

    def predict(self, image_bgr: np.ndarray) -> InstancePrediction:
        """The persons on an [H0, W0, 3] uint8 BGR image, masks at ``(H0, W0)``."""
        orig_hw = (int(image_bgr.shape[0]), int(image_bgr.shape[1]))
        boxes, scores, classes, masks = self.run(self.feed(image_bgr), orig_hw)
        if self.raw:
            probs, labels = masks, masks.argmax(axis=1).astype(np.uint8)
        else:
            probs, labels = masks_to_original(masks, orig_hw)
        return InstancePrediction(boxes, scores, classes, probs, labels)


def predict_instances(model: str | Path, image: str | Path, out: str | Path | None = None,
                      masks_dir: str | Path | None = None, device: str = "auto") -> tuple[InstancePrediction, list[Path]]:
    """Library function behind ``roiseg predict`` on an instance model: the prediction and the files
    written (the overlay: every person's box, mask and ``#i score``; per person ``<stem>_person<i>_*.png``)."""
    check_outputs(out, masks_dir, Path(image).stem, 0)
    try:
        bgr = read_image(image)
    except (FileNotFoundError, ValueError) as exc:
        raise InputError(str(exc)) from exc
    pred = InstanceSession(model, device).predict(bgr)
    written: list[Path] = []
    if out is not None:
        captions = [f"#{i} {s:.2f}" for i, s in enumerate(pred.scores, start=1)]
        written.append(write_image(out, draw_overlay(bgr, pred, captions)))
    if masks_dir is not None:
        written += save_masks(pred, masks_dir, Path(image).stem, kind="person")
    return pred, written
