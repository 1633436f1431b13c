"""COCO person datasets: one item per image (all its ROIs together) and one item per ROI.

Features are computed per image, so training iterates :class:`CocoPersonImages` and batches with
:func:`collate_images`.

Per image: the image is read with OpenCV and turned into the model input by
:func:`roiseg.conventions.preprocess`; each person mask is rasterised once at original
resolution by pycocotools and resized to the input ``(H, W)`` with nearest neighbour; ROIs are the
persons' COCO boxes normalised to ``[0, 1]`` (``x1, y1, x2, y2``), optionally jittered; targets are
built by :func:`roiseg.data.targets.roi_targets` on the input grid.

An image file that is truncated or corrupt (:func:`roiseg.conventions.read_image`) is skipped with
a warning naming it: ``dataset[i]`` is ``None`` and :func:`collate_images` leaves it out and counts
it in ``ImageBatch.skipped``, so an epoch trains on the readable images and reports how many it skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset

from roiseg.conventions import DEFAULT_PREPROCESSING, Preprocessing, coco_bbox_to_roi, preprocess, read_image
from roiseg.data.coco import decode_mask, load_coco_json
from roiseg.data.prepare import select_persons
from roiseg.data.targets import boxes_overlap, hflip_rois, jitter_rois, roi_targets
from roiseg.data.zoom import Window, zoom_image, zoom_masks, zoom_rois, zoom_window
from roiseg.errors import InputError
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

FLIP_STREAM: int = 1
"""Extra seed word of the flip draw, so it never shares a stream with the ROI jitter."""
ZOOM_STREAM: int = 2
"""Extra seed word of the zoom draws."""
ZOOM_PROBABILITY: float = 0.5
"""Share of the train items seen through a zoom window when ``zoom > 0`` (the others as they are)."""


@dataclass
class ImageItem:
    """All ROIs of one image. ``H, W`` is the model input size."""

    index: int  # position in the dataset
    image_id: int
    path: str  # image file path
    orig_hw: tuple[int, int]  # original (H, W) pixels
    image: torch.Tensor  # [3, H, W] float32, conventions.preprocess output
    rois: torch.Tensor  # [K, 4] float32 normalised x1y1x2y2 (jittered when jitter > 0), K >= 1
    targets: torch.Tensor  # [K, H, W] uint8 class ids (0/1/2) for the (possibly jittered) rois
    areas: torch.Tensor  # [K] float32 COCO annotation area (original pixels)
    ann_ids: torch.Tensor  # [K] int64
    flipped: bool = False  # the image (and its ROIs, targets) is horizontally mirrored
    zoomed: bool = False  # seen through a zoom window (data.zoom): its features are not cacheable
    person: torch.Tensor | None = None  # [H, W] uint8: 1 where any person of the image is (all its instances)


@dataclass
class SkippedImage:
    """What ``dataset[i]`` gives for an image file that cannot be decoded (truncated, corrupt)."""

    index: int
    path: str
    reason: str


@dataclass
class ImageBatch:
    """A batch of images with their ROIs concatenated; ``batch_idx`` maps each ROI to its image."""

    images: torch.Tensor  # [B, 3, H, W] float32
    rois: torch.Tensor  # [K_total, 4] float32 normalised x1y1x2y2
    batch_idx: torch.Tensor  # [K_total] int64 image index in the batch of each ROI
    targets: torch.Tensor  # [K_total, H, W] uint8
    areas: torch.Tensor  # [K_total] float32
    ann_ids: torch.Tensor  # [K_total] int64
    paths: list[str]
    image_ids: list[int]
    orig_hw: list[tuple[int, int]]
    indices: list[int]
    skipped: list[str] = field(default_factory=list)
    """Paths of the batch's images that were skipped as unreadable (not in the tensors above)."""
    flipped: list[bool] = field(default_factory=list)
    """Per image: horizontally mirrored (its features are another feature-cache entry)."""
    zoomed: list[bool] = field(default_factory=list)
    """Per image: seen through a zoom window (its features are extracted, not cached)."""
    person: torch.Tensor | None = None
    """[B, H, W] uint8: 1 where any person of the image is (the union of its instance masks)."""

    def _map(self, fn) -> "ImageBatch":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return ImageBatch(**{k: fn(v) if isinstance(v, torch.Tensor) else v for k, v in values.items()})

    def to(self, device: torch.device | str) -> "ImageBatch":
        """Copy of the batch with every tensor on ``device`` (non-blocking from pinned memory)."""
        return self._map(lambda t: t.to(device, non_blocking=True))

    def pin_memory(self) -> "ImageBatch":
        """Used by ``DataLoader(pin_memory=True)`` for fast host-to-GPU copies."""
        return self._map(lambda t: t.pin_memory())


def collate_images(items: list[ImageItem | SkippedImage]) -> ImageBatch:
    """Stack images and concatenate their ROIs, targets, areas and ids (``DataLoader`` collate_fn).

    Skipped (unreadable) images are left out and listed in ``skipped``; when every image of the
    batch was skipped, the batch is empty (``paths == []``, tensors with 0 rows).
    """
    if not items:
        raise ValueError("cannot collate an empty list of items")
    skipped = [it.path for it in items if isinstance(it, SkippedImage)]
    items = [it for it in items if isinstance(it, ImageItem)]
    if not items:
        return _empty_batch(skipped)
    counts = torch.tensor([len(it.rois) for it in items], dtype=torch.int64)
    return ImageBatch(
        images=torch.stack([it.image for it in items]),
        rois=torch.cat([it.rois for it in items]),
        batch_idx=torch.repeat_interleave(torch.arange(len(items), dtype=torch.int64), counts),
        targets=torch.cat([it.targets for it in items]),
        areas=torch.cat([it.areas for it in items]),
        ann_ids=torch.cat([it.ann_ids for it in items]),
        paths=[it.path for it in items],
        image_ids=[it.image_id for it in items],
        orig_hw=[it.orig_hw for it in items],
        indices=[it.index for it in items],
        skipped=skipped,
        flipped=[it.flipped for it in items],
        zoomed=[it.zoomed for it in items],
        person=torch.stack([it.person for it in items]) if all(it.person is not None for it in items) else None,
    )


class SkipCounter:
    """``for batch in counter(loader)``: the batches that hold an image; ``count``: images left out so far."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, batches: Iterable[ImageBatch]) -> Iterator[ImageBatch]:
        for batch in batches:
            self.count += len(batch.skipped)
            if batch.paths:
                yield batch


def _empty_batch(skipped: list[str]) -> ImageBatch:
    none = torch.zeros(0, dtype=torch.int64)
    return ImageBatch(images=torch.zeros(0, 3, 0, 0), rois=torch.zeros(0, 4), batch_idx=none,
                      targets=torch.zeros(0, 0, 0, dtype=torch.uint8), areas=torch.zeros(0), ann_ids=none,
                      paths=[], image_ids=[], orig_hw=[], indices=[], skipped=skipped)


class CocoPersonImages(Dataset):
    """One item per image with >= 1 usable person ROI (:class:`ImageItem`).

    ``annotations``: person-only COCO JSON (an original instances JSON works too: the rules of
    :func:`roiseg.data.prepare.select_persons` are applied; skipped annotations are counted in
    ``self.skipped``). ``images_dir``: folder of the image files. ``input_hw``: model input
    ``(H, W)``. ``jitter``: ROI jitter amplitude (0 = off, for validation). ``hflip``: probability
    that an item is mirrored horizontally (image, instance masks and ROIs together, so the targets
    are built on the mirrored data; 0 = off). ``roi_copies``: ROIs per person in an item, each with its
    own jitter draw (Mask R-CNN trains its mask head on several proposals per person; 1 = one ROI per
    person). ``zoom``: scale augmentation; an item is seen, with probability :data:`ZOOM_PROBABILITY`,
    through a window zoomed by a factor drawn log-uniformly in ``[1 / (1 + zoom), 1 + zoom]``
    (:mod:`roiseg.data.zoom`; persons less than a quarter inside lose their ROI but stay as others'
    non-target pixels; 0 = off). ``max_images``: keep the first N images of the file.

    Every kept image must exist on disk: the constructor raises :class:`InputError` naming the
    file and the image id otherwise (run ``prepare-coco --images-dir`` to drop absent images).
    The jitter and the flip of item ``i`` are drawn from ``(seed, epoch, i)``: call :meth:`set_epoch` once per
    epoch (before creating the ``DataLoader`` iterator, so worker processes see it). An image file
    that exists but cannot be decoded (truncated, corrupt) gives a :class:`SkippedImage`, with a
    warning naming the file.
    """

    def __init__(
        self,
        annotations: str | Path,
        images_dir: str | Path,
        input_hw: tuple[int, int],
        preprocessing: Preprocessing = DEFAULT_PREPROCESSING,
        jitter: float = 0.0,
        seed: int = 0,
        max_images: int | None = None,
        hflip: float = 0.0,
        roi_copies: int = 1,
        zoom: float = 0.0,
    ) -> None:
        if not 0.0 <= hflip <= 1.0:
            raise ValueError(f"hflip must be a probability in [0, 1], got {hflip}")
        if zoom < 0:
            raise ValueError(f"zoom must be >= 0, got {zoom}")
        self.zoom = float(zoom)
        self.hflip = float(hflip)
        self.annotations = Path(annotations)
        self.images_dir = Path(images_dir)
        self.input_hw = (int(input_hw[0]), int(input_hw[1]))
        self.preprocessing = preprocessing
        self.jitter = float(jitter)
        self.seed = int(seed)
        self.epoch = 0
        if self.jitter < 0:
            raise ValueError(f"jitter must be >= 0, got {jitter}")
        if roi_copies < 1:
            raise ValueError(f"roi_copies must be >= 1, got {roi_copies}")
        self.roi_copies = int(roi_copies)
        if not self.images_dir.is_dir():
            raise InputError(f"images folder not found: {self.images_dir}")
        data = load_coco_json(self.annotations)
        selection = select_persons(data, self.annotations)
        self.skipped = selection.skipped
        images = selection.images if max_images is None else selection.images[: max(0, max_images)]
        if not images:
            raise InputError(f"{self.annotations}: no image with a usable person annotation")
        by_image = selection.by_image()
        self._images = images
        self._anns = [by_image[img["id"]] for img in images]
        self._by_name = {img["file_name"]: i for i, img in enumerate(images)}
        missing = [img for img in images if not (self.images_dir / img["file_name"]).is_file()]
        if missing:
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise InputError(
                f"{self.images_dir / missing[0]['file_name']}: image id {missing[0]['id']} is listed in "
                f"{self.annotations} but not on disk{more}"
            )
        LOG.debug("%s: %d images, %d ROIs", self.annotations, len(images), self.num_rois)

    # ---------------------------------------------------------------------------------------
    @property
    def num_rois(self) -> int:
        return sum(len(a) for a in self._anns)

    def crowded(self) -> list[bool]:
        """Per image, in dataset order: two of its persons' boxes overlap (where the non-target class lives)."""
        return [boxes_overlap(self.rois(i)) for i in range(len(self))]

    def roi_counts(self) -> list[int]:
        """Number of ROIs of each image, in dataset order."""
        return [len(a) for a in self._anns]

    def set_epoch(self, epoch: int) -> None:
        """Select the jitter stream of ``epoch`` (deterministic, so training can resume)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._images)

    def record(self, i: int) -> dict:
        """``{"id", "file_name", "path", "height", "width"}`` of image ``i`` (no decoding)."""
        img = self._images[i]
        return {"id": img["id"], "file_name": img["file_name"], "path": str(self.images_dir / img["file_name"]),
                "height": img["height"], "width": img["width"]}

    def find(self, file_name: str) -> int | None:
        """Index of the image with this ``file_name`` (base name), or ``None``."""
        return self._by_name.get(Path(file_name).name, self._by_name.get(file_name))

    def rois(self, i: int) -> np.ndarray:
        """[K, 4] float32 normalised x1y1x2y2 boxes of image ``i`` (unjittered), clipped to [0, 1]."""
        img = self._images[i]
        hw = (img["height"], img["width"])
        boxes = np.stack([coco_bbox_to_roi(a["bbox"], hw) for a in self._anns[i]])
        return np.clip(boxes, 0.0, 1.0)

    def instance_masks(self, i: int, out_hw: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """([K, H0, W0] bool masks at original resolution — or at ``out_hw`` by nearest neighbour —,
        [K, 4] normalised unjittered ROIs) of image ``i``."""
        img = self._images[i]
        hw = (img["height"], img["width"])
        try:
            masks = np.stack([decode_mask(a["segmentation"], hw, out_hw, a["id"]) for a in self._anns[i]])
        except ValueError as exc:
            raise InputError(f"{self.annotations}: {exc}") from exc
        return masks, self.rois(i)

    def readable(self, i: int) -> bool:
        """True when image ``i`` decodes (no warning otherwise)."""
        try:
            read_image(self.record(i)["path"])
        except (FileNotFoundError, ValueError):
            return False
        return True

    def _read(self, i: int) -> np.ndarray | SkippedImage:
        rec = self.record(i)
        try:
            image = read_image(rec["path"])
        except FileNotFoundError as exc:
            raise InputError(f"{exc} (image id {rec['id']})") from exc
        except ValueError as exc:  # truncated or corrupt: skip it, say so
            LOG.warning("skipping image id %s: %s", rec["id"], exc)
            return SkippedImage(i, rec["path"], str(exc))
        if image.shape[:2] != (rec["height"], rec["width"]):
            raise InputError(
                f"{rec['path']}: image id {rec['id']} is {image.shape[0]}x{image.shape[1]} on disk but "
                f"{rec['height']}x{rec['width']} in {self.annotations}"
            )
        return image

    def _window(self, i: int, image_hw: tuple[int, int]) -> Window | None:
        """This epoch's zoom window of item ``i`` in original pixels, or ``None`` (zoom off or not drawn)."""
        if self.zoom <= 0:
            return None
        rng = np.random.default_rng((self.seed, self.epoch, i, ZOOM_STREAM))
        draw, window = rng.random(), zoom_window(rng, image_hw, self.zoom)
        return window if draw < ZOOM_PROBABILITY else None

    def _view(self, i: int, bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool, bool]:
        """Item ``i`` as this epoch shows it: (BGR image, [K, H, W] bool masks on the input grid, [K, 4]
        normalised ROIs, [K] bool ROIs kept, flipped, zoomed); mirrored and zoomed as drawn for the epoch
        (a drawn window that would keep no ROI is not used)."""
        flipped = self.hflip > 0 and bool(np.random.default_rng((self.seed, self.epoch, i, FLIP_STREAM)).random() < self.hflip)
        rois = hflip_rois(self.rois(i)) if flipped else self.rois(i)
        keep = np.ones(len(rois), dtype=bool)
        window = self._window(i, bgr.shape[:2])
        if window is not None:
            rois_in_window, keep_in_window = zoom_rois(rois, window, bgr.shape[:2], self.input_hw)
            window = window if keep_in_window.any() else None
        masks = self.instance_masks(i, None if window else self.input_hw)[0]
        if flipped:
            bgr, masks = np.ascontiguousarray(bgr[:, ::-1]), np.ascontiguousarray(masks[:, :, ::-1])
        if window is None:
            return bgr, masks, rois, keep, flipped, False
        return (zoom_image(bgr, window, self.input_hw), zoom_masks(masks, window, self.input_hw), rois_in_window,
                keep_in_window, flipped, True)

    def __getitem__(self, i: int) -> ImageItem | SkippedImage:
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images")
        rec = self.record(i)
        bgr = self._read(i)
        if isinstance(bgr, SkippedImage):
            return bgr
        bgr, masks, rois, keep, flipped, zoomed = self._view(i, bgr)
        owners = np.tile(np.flatnonzero(keep), self.roi_copies)
        image = preprocess(bgr, self.input_hw, self.preprocessing)[0]
        rois = rois[owners]
        if self.jitter > 0:
            rng = np.random.default_rng((self.seed, self.epoch, i))
            rois = jitter_rois(rois, self.jitter, rng, self.input_hw)
        targets = roi_targets(masks, rois, owners)
        anns = [self._anns[i][k] for k in owners]
        return ImageItem(
            index=i,
            image_id=rec["id"],
            path=rec["path"],
            orig_hw=(rec["height"], rec["width"]),
            image=torch.from_numpy(image),
            rois=torch.from_numpy(np.ascontiguousarray(rois, dtype=np.float32)),
            targets=torch.from_numpy(targets),
            areas=torch.tensor([float(a.get("area", a["bbox"][2] * a["bbox"][3])) for a in anns], dtype=torch.float32),
            ann_ids=torch.tensor([int(a["id"]) for a in anns], dtype=torch.int64),
            flipped=flipped,
            zoomed=zoomed,
            person=torch.from_numpy(masks.any(axis=0).astype(np.uint8)),
        )
