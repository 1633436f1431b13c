"""Per-image cache of frozen detector features (fp16 ``.npy`` / ``.npz`` files).

The detector is frozen, so an image's features never change while the extractor, the taps, the
preprocessing, the image file and its orientation stay the same. The cache key is the sha256 of
exactly these: extractor file sha256, tap names (primary tensor first), preprocessing JSON,
absolute image path, its mtime (ns), and for a horizontally flipped image the word ``"hflip"``
(the flipped image's features are a second entry). Files live at ``<root>/<key[:2]>/<key>.npy``
([C, h, w] float16; ``C * h * w * 2`` bytes, 13.1 MB for 1024 x 80 x 80) or, with extra taps,
``<key>.npz`` holding every tap under one key (``tap0`` primary, ``tap1`` ...). They are written
atomically, so several data-loader workers may share one cache; an unreadable or mis-shaped file
is recomputed.
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
MULTI_TAP_SUFFIX = ".npz"
FLIP_KEY = "hflip"
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
        # One tap: [sha, tensor, pre] as in roiseg 0.1, so existing caches stay valid.
        self._key_head = [info.sha256, *info.tensors, info.preprocessing]
        self._shapes = info.tap_shapes
        if self.root is not None:
            LOG.info("feature cache at %s: %.1f MB per image (fp16 %s)", self.root, info.feature_bytes_fp16 / 1e6,
                     ", ".join(str(list(s)) for s in self._shapes))

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def key(self, path: str | Path, flipped: bool = False) -> str:
        """sha256 hex of (extractor sha256, taps, preprocessing JSON, absolute image path, mtime_ns[, "hflip"])."""
        p = os.path.abspath(path)
        try:
            mtime = os.stat(p).st_mtime_ns
        except FileNotFoundError:
            raise InputError(f"image not found: {path}") from None
        payload = json.dumps(self._key_head + [p, mtime] + ([FLIP_KEY] if flipped else []))
        return hashlib.sha256(payload.encode()).hexdigest()

    def file_for(self, path: str | Path, flipped: bool = False) -> Path:
        """The cache file of image ``path`` (whether or not it exists yet)."""
        if self.root is None:
            raise ValueError("the feature cache is disabled (root=None)")
        key = self.key(path, flipped)
        return self.root / key[:2] / f"{key}{CACHE_SUFFIX if len(self._shapes) == 1 else MULTI_TAP_SUFFIX}"

    def features(self, paths: Sequence[str | Path], images: torch.Tensor | np.ndarray | None = None,
                 flipped: bool | Sequence[bool] = False, fresh: Sequence[bool] = ()) -> torch.Tensor:
        """[B, C, h, w] float32 primary-tap features on ``extractor.device`` (see :meth:`taps`)."""
        return self.taps(paths, images, flipped, fresh)[0]

    def taps(self, paths: Sequence[str | Path], images: torch.Tensor | np.ndarray | None = None,
             flipped: bool | Sequence[bool] = False, fresh: Sequence[bool] = ()) -> list[torch.Tensor]:
        """Every tap [B, C_i, h_i, w_i] float32 on ``extractor.device`` for the images at ``paths``.

        ``images`` are those images preprocessed ([B, 3, H, W], ``conventions.preprocess``), already
        mirrored where ``flipped`` (one flag for all, or one per image) says so; with ``None`` only the misses are read from disk, preprocessed (and
        flipped). Misses run the extractor as one batch and are stored; they are returned as stored
        (fp16-rounded), so every epoch sees the same values. ``fresh`` (per image, needs ``images``): views
        that are never seen twice (a zoomed train image) are extracted, rounded like a stored entry, and
        neither read from nor written to the cache.
        """
        if images is not None and len(images) != len(paths):
            raise ValueError(f"{len(paths)} paths but {len(images)} images")
        flips = _flags(flipped, len(paths), "flipped")
        if any(fresh) and images is None:
            raise ValueError("fresh views need their preprocessed images")
        if self.root is None:
            self.misses += len(paths)
            return self.extractor.extract(images if images is not None else self._load_images(paths, flips))
        ext = self.extractor
        outs = [torch.empty((len(paths), *shape), dtype=torch.float32, device=ext.device) for shape in self._shapes]
        files = [None if new else self.file_for(p, f) for p, f, new in zip(paths, flips, _flags(fresh, len(paths), "fresh"))]
        missing: list[int] = []
        for i, f in enumerate(files):
            arrays = None if f is None else self._read(f)
            if arrays is None:
                missing.append(i)
                continue
            for out, arr in zip(outs, arrays):
                out[i] = torch.from_numpy(arr).to(ext.device, non_blocking=True)
        self.hits += len(paths) - len(missing)
        if missing:
            x = images[missing] if images is not None else self._load_images([paths[i] for i in missing],
                                                                            [flips[i] for i in missing])
            feats = ext.extract(x)
            for j, i in enumerate(missing):
                arrays = [f[j] for f in feats]
                stored = [_storable(t, paths[i]) for t in arrays] if files[i] is None else self._write(files[i], arrays)
                for out, arr in zip(outs, stored):
                    out[i] = torch.from_numpy(arr).to(ext.device)
            self.misses += len(missing)
        return outs

    # ---------------------------------------------------------------------------------------
    def _load_images(self, paths: Sequence[str | Path], flips: Sequence[bool]) -> np.ndarray:
        ext = self.extractor
        images = [read_image(p) for p in paths]
        images = [np.ascontiguousarray(img[:, ::-1]) if f else img for img, f in zip(images, flips)]
        return np.concatenate([preprocess(img, ext.info.input_hw, ext.preprocessing) for img in images])

    def _read(self, file: Path) -> list[np.ndarray] | None:
        """The cached [C_i, h_i, w_i] arrays, or None when absent or unusable (an unusable file is removed)."""
        if not file.is_file():
            return None
        try:
            if file.suffix == MULTI_TAP_SUFFIX:
                with np.load(file, allow_pickle=False) as npz:
                    arrays = [npz[f"tap{k}"] for k in range(len(self._shapes))]
            else:
                arrays = [np.load(file, allow_pickle=False)]
            for arr, shape in zip(arrays, self._shapes):
                if arr.shape != shape or arr.dtype not in (np.float16, np.float32):
                    raise ValueError(f"shape {arr.shape} dtype {arr.dtype}, expected {shape}")
        except (ValueError, OSError, EOFError, KeyError) as exc:
            LOG.warning("unusable feature-cache file %s (%s); recomputing", file, str(exc)[:120])
            file.unlink(missing_ok=True)
            return None
        return arrays

    def _write(self, file: Path, feats: Sequence[torch.Tensor]) -> list[np.ndarray]:
        """Store one image's taps [C_i, h_i, w_i] as fp16 (fp32 if fp16 would overflow), atomically.

        Returns the stored arrays, so a miss yields exactly what later hits will read.
        """
        arrays = [_storable(t, file) for t in feats]
        with atomic_path(file) as tmp:
            with open(tmp, "wb") as fh:
                if file.suffix == MULTI_TAP_SUFFIX:
                    np.savez(fh, **{f"tap{k}": a for k, a in enumerate(arrays)})
                else:
                    np.save(fh, arrays[0], allow_pickle=False)
        return arrays


def _flags(value: bool | Sequence[bool], n: int, name: str) -> list[bool]:
    """One flag for each of ``n`` images from one flag for all or one per image (empty: all False)."""
    if isinstance(value, bool):
        return [value] * n
    if len(value) and len(value) != n:
        raise ValueError(f"{n} paths but {len(value)} {name} flags")
    return [bool(f) for f in value] if len(value) else [False] * n


def _storable(feats: torch.Tensor, file: Path | str) -> np.ndarray:
    """fp16 copy of ``feats`` on the host, or float32 when fp16 would overflow (or hold NaN)."""
    t = feats.detach()
    lo, hi = torch.aminmax(t)
    if float(hi) <= _FP16_MAX and float(lo) >= -_FP16_MAX:  # False for NaN too
        return t.to(torch.float16).cpu().numpy()  # cast where the features are (GPU: half the bytes to copy)
    LOG.warning("features not representable in fp16 (range %.3g..%.3g); keeping %s as float32",
                float(lo), float(hi), Path(file).name)
    return t.to("cpu", torch.float32).numpy()
