"""Per-image cache of frozen detector features (fp16 ``.npy`` files).

The detector is frozen and training images are not augmented, so an image's features never change
while the extractor, the tensor, the preprocessing and the image file stay the same. The cache key
is the sha256 of exactly these: extractor file sha256, tensor name, preprocessing JSON, absolute
image path and its mtime (ns). Files live at ``<root>/<key[:2]>/<key>.npy`` ([C, h, w] float16;
``C * h * w * 2`` bytes, 13.1 MB for 1024 x 80 x 80). They are written atomically, so several
data-loader workers may share one cache; an unreadable or mis-shaped file is recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from roiseg.conventions import preprocess, read_image
from roiseg.errors import InputError
from roiseg.features.extractor import OnnxFeatureExtractor
from roiseg.utils.atomic import atomic_path, ensure_writable_dir
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

CACHE_SUFFIX = ".npy"
_FP16_MAX = float(np.finfo(np.float16).max)


CACHE_DISABLED = "none"
"""``--cache none``: extract on the fly, store nothing."""


def parse_cache_dir(value: str | Path | None) -> Path | None:
    """``--cache DIR|none`` -> the cache folder, or ``None`` for on-the-fly extraction."""
    if value is None or str(value).strip().lower() == CACHE_DISABLED:
        return None
    return Path(value)


class FeatureCache:
    """Features of images by path: read from ``root`` when cached, else extracted and stored.

    ``root=None`` disables the cache (on-the-fly extraction every time). :attr:`hits` and
    :attr:`misses` count images served from disk and images that ran the extractor.
    """

    def __init__(self, extractor: OnnxFeatureExtractor, root: str | Path | None) -> None:
        self.extractor = extractor
        self.root: Path | None = None if root is None else ensure_writable_dir(root)
        self.hits: int = 0
        self.misses: int = 0
        info = extractor.info
        self._key_head = [info.sha256, info.feature_tensor, info.preprocessing]
        if self.root is not None:
            LOG.info("feature cache at %s: %.1f MB per image (fp16 [%d, %d, %d])", self.root,
                     info.feature_bytes_fp16 / 1e6, info.channels, *info.feature_hw)

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def key(self, path: str | Path) -> str:
        """sha256 hex of (extractor sha256, tensor, preprocessing JSON, absolute image path, mtime_ns)."""
        p = os.path.abspath(path)
        try:
            mtime = os.stat(p).st_mtime_ns
        except FileNotFoundError:
            raise InputError(f"image not found: {path}") from None
        payload = json.dumps(self._key_head + [p, mtime])
        return hashlib.sha256(payload.encode()).hexdigest()

    def file_for(self, path: str | Path) -> Path:
        """The cache file of image ``path`` (whether or not it exists yet)."""
        if self.root is None:
            raise ValueError("the feature cache is disabled (root=None)")
        key = self.key(path)
        return self.root / key[:2] / f"{key}{CACHE_SUFFIX}"

    def features(
        self, paths: Sequence[str | Path], images: torch.Tensor | np.ndarray | None = None
    ) -> torch.Tensor:
        """[B, C, h, w] float32 features on ``extractor.device`` for the images at ``paths``.

        ``images`` are those images preprocessed ([B, 3, H, W], ``conventions.preprocess``);
        with ``None`` only the misses are read from disk and preprocessed. Misses run the
        extractor as one batch and are stored; they are returned as stored (fp16-rounded), so
        every epoch sees the same values.
        """
        if images is not None and len(images) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(images)} images")
        if self.root is None:
            self.misses += len(paths)
            return self.extractor(images if images is not None else self._load_images(paths))
        ext = self.extractor
        out = torch.empty((len(paths), *ext.out_shape), dtype=torch.float32, device=ext.device)
        files = [self.file_for(p) for p in paths]
        missing: list[int] = []
        for i, f in enumerate(files):
            arr = self._read(f)
            if arr is None:
                missing.append(i)
            else:
                out[i] = torch.from_numpy(arr).to(ext.device, non_blocking=True)
        self.hits += len(paths) - len(missing)
        if missing:
            x = images[missing] if images is not None else self._load_images([paths[i] for i in missing])
            feats = ext(x)
            for j, i in enumerate(missing):
                out[i] = torch.from_numpy(self._write(files[i], feats[j])).to(ext.device)
            self.misses += len(missing)
        return out

    # ---------------------------------------------------------------------------------------
    def _load_images(self, paths: Sequence[str | Path]) -> np.ndarray:
        ext = self.extractor
        return np.concatenate([preprocess(read_image(p), ext.info.input_hw, ext.preprocessing) for p in paths])

    def _read(self, file: Path) -> np.ndarray | None:
        """A cached [C, h, w] array, or None when absent or unusable (an unusable file is removed)."""
        if not file.is_file():
            return None
        try:
            arr = np.load(file, allow_pickle=False)
            if arr.shape != self.extractor.out_shape or arr.dtype not in (np.float16, np.float32):
                raise ValueError(f"shape {arr.shape} dtype {arr.dtype}, expected {self.extractor.out_shape}")
        except (ValueError, OSError, EOFError) as exc:
            LOG.warning("unusable feature-cache file %s (%s); recomputing", file, str(exc)[:120])
            file.unlink(missing_ok=True)
            return None
        return arr

    def _write(self, file: Path, feats: torch.Tensor) -> np.ndarray:
        """Store one image's [C, h, w] features as fp16 (fp32 if fp16 would overflow), atomically.

        Returns the stored array, so a miss yields exactly what later hits will read.
        """
        t = feats.detach()
        lo, hi = torch.aminmax(t)
        if float(hi) <= _FP16_MAX and float(lo) >= -_FP16_MAX:  # False for NaN too
            arr = t.to(torch.float16).cpu().numpy()  # cast where the features are (GPU: half the bytes to copy)
        else:
            LOG.warning("features not representable in fp16 (range %.3g..%.3g); caching %s as float32",
                        float(lo), float(hi), file.name)
            arr = t.to("cpu", torch.float32).numpy()
        with atomic_path(file) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, arr, allow_pickle=False)
        return arr
