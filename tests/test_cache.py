"""The per-image feature cache: hits skip the extractor, keys follow the inputs, bad files are recomputed."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from roiseg.errors import InputError
from roiseg.features.cache import FeatureCache, parse_cache_dir
from roiseg.features.extractor import OnnxFeatureExtractor, describe_extractor


@pytest.fixture(scope="module")
def extractor(stand_in_featext) -> OnnxFeatureExtractor:
    return OnnxFeatureExtractor(stand_in_featext, device="cpu")


@pytest.fixture
def images(tmp_path, extractor):
    """Three PNG files and their preprocessed tensors (computed here: RGB, resize, /255, NCHW)."""
    rng = np.random.default_rng(0)
    h, w = extractor.info.input_hw
    paths, tensors = [], []
    for i in range(3):
        bgr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # already at input size: no resize
        p = tmp_path / f"img{i}.png"
        cv2.imwrite(str(p), bgr)
        paths.append(str(p))
        tensors.append(bgr[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) / 255.0)
    return paths, torch.from_numpy(np.stack(tensors))


def test_second_epoch_does_not_run_the_extractor(tmp_path, extractor, images):
    paths, x = images
    cache = FeatureCache(extractor, tmp_path / "cache")
    first = cache.features(paths, x)
    calls = extractor.calls
    assert (cache.hits, cache.misses) == (0, 3)
    second = cache.features(paths, x)
    assert extractor.calls == calls  # served from disk
    assert (cache.hits, cache.misses) == (3, 3)
    assert second.dtype == torch.float32 and torch.equal(first, second)  # a miss returns what is stored
    # Only the misses of a mixed batch run the extractor.
    cache.file_for(paths[1]).unlink()
    third = cache.features(paths, x)
    assert (cache.hits, cache.misses) == (5, 4)
    assert torch.equal(third, second)


def test_fp16_storage_error_is_small(tmp_path, extractor, images):
    paths, x = images
    cache = FeatureCache(extractor, tmp_path / "cache")
    fresh = extractor(x).numpy()
    cache.features(paths, x)
    cached = cache.features(paths, x).numpy()
    stored = np.load(cache.file_for(paths[0]))
    assert stored.dtype == np.float16 and stored.shape == fresh.shape[1:]
    c, h, w = fresh.shape[1:]
    assert cache.file_for(paths[0]).stat().st_size < c * h * w * 2 + 256  # npy header only on top
    rel = np.abs(cached - fresh) / np.maximum(np.abs(fresh), 1e-3)
    assert rel.max() < 2.0**-10  # fp16 keeps 11 significant bits
    assert np.abs(cached - fresh).max() > 0  # it really went through fp16


def test_key_changes_with_mtime(tmp_path, extractor, images):
    paths, x = images
    cache = FeatureCache(extractor, tmp_path / "cache")
    before = cache.key(paths[0])
    assert cache.key(os.path.relpath(paths[0])) == before  # absolute path in the key
    cache.features(paths[:1], x[:1])
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert cache.key(paths[0]) != before
    calls = extractor.calls
    cache.features(paths[:1], x[:1])
    assert extractor.calls == calls + 1 and cache.misses == 2


def test_key_depends_on_extractor(tmp_path, extractor, stand_in_full, images):
    paths, _ = images
    other = OnnxFeatureExtractor(stand_in_full, device="cpu")
    assert FeatureCache(extractor, tmp_path / "c").key(paths[0]) != FeatureCache(other, tmp_path / "c").key(paths[0])


def test_corrupt_file_is_recomputed(tmp_path, extractor, images):
    paths, x = images
    cache = FeatureCache(extractor, tmp_path / "cache")
    good = cache.features(paths[:2], x[:2])
    cache.file_for(paths[0]).write_bytes(b"\x93NUMPY garbage")
    np.save(cache.file_for(paths[1]), np.zeros((2, 2), np.float16))  # wrong shape
    calls = extractor.calls
    again = cache.features(paths[:2], x[:2])
    assert extractor.calls == calls + 1 and cache.misses == 4  # both recomputed in one batch
    assert torch.equal(again, good)
    assert np.load(cache.file_for(paths[0])).shape == tuple(good.shape[1:])
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file() and p.suffix != ".npy"]


def test_misses_read_images_from_disk(tmp_path, extractor, images):
    paths, x = images
    cache = FeatureCache(extractor, tmp_path / "cache")
    from_disk = cache.features(paths)
    np.testing.assert_allclose(from_disk.numpy(), extractor(x).numpy(), rtol=1e-3, atol=1e-3)


def test_no_cache_runs_every_time(extractor, images):
    paths, x = images
    cache = FeatureCache(extractor, None)
    calls = extractor.calls
    cache.features(paths, x)
    cache.features(paths, x)
    assert extractor.calls > calls + 1 and cache.hits == 0 and not cache.enabled


def test_missing_image_is_an_input_error(tmp_path, extractor):
    cache = FeatureCache(extractor, tmp_path / "cache")
    with pytest.raises(InputError, match="nothere.jpg"):
        cache.features([str(tmp_path / "nothere.jpg")])


class _LargeFeatures:
    """Duck-typed extractor whose features exceed the fp16 range (max 65504)."""

    def __init__(self, info):
        self.info, self.device, self.calls = info, torch.device("cpu"), 0
        self.out_shape = (info.channels, *info.feature_hw)
        self.preprocessing = None

    def extract(self, images):
        self.calls += 1
        return [torch.full((len(images), *self.out_shape), 1.0e5)]


def test_values_beyond_fp16_are_stored_as_float32(tmp_path, stand_in_featext, images):
    paths, x = images
    ext = _LargeFeatures(describe_extractor(stand_in_featext))
    cache = FeatureCache(ext, tmp_path / "cache")
    first = cache.features(paths[:1], x[:1])
    assert np.load(cache.file_for(paths[0])).dtype == np.float32
    second = cache.features(paths[:1], x[:1])
    assert ext.calls == 1 and float(second.max()) == 1.0e5 and torch.equal(first, second)


def test_parse_cache_dir():
    assert parse_cache_dir("none") is None and parse_cache_dir("None") is None and parse_cache_dir(None) is None
    assert parse_cache_dir("runs/feature_cache") == Path("runs/feature_cache")


def test_mirrored_images_are_a_second_entry_and_all_taps_share_one_key(tmp_path, stand_in_featext, images):
    paths, x = images
    ext = OnnxFeatureExtractor(stand_in_featext, device="cpu", extra_tensors="auto")
    cache = FeatureCache(ext, tmp_path / "cache")
    mirrored = torch.from_numpy(np.ascontiguousarray(np.asarray(x)[:, :, :, ::-1]))
    plain = cache.taps(paths[:2], x[:2])
    flipped = cache.taps(paths[:2], None, flipped=[True, True])  # read and mirrored from disk on the miss
    assert cache.file_for(paths[0]) != cache.file_for(paths[0], flipped=True)
    assert cache.file_for(paths[0]).suffix == ".npz" and len(plain) == 1 + len(ext.info.extra_tensors)
    want = ext.extract(mirrored[:2])
    for got, ref in zip(flipped, want):
        torch.testing.assert_close(got, ref.half().float())  # stored as fp16
    calls = ext.calls
    mixed = cache.taps(paths[:2], None, flipped=[False, True])
    assert ext.calls == calls  # both entries were hits
    torch.testing.assert_close(mixed[0][0], plain[0][0]) and torch.testing.assert_close(mixed[0][1], flipped[0][1])


def test_fresh_views_are_extracted_and_never_stored(tmp_path, extractor, images):
    """A zoomed train view (``fresh``) is not the file's image: it must neither hit nor fill the cache entry."""
    paths, x = images
    cache = FeatureCache(extractor, tmp_path / "cache")
    cache.features(paths[:1], x[:1])  # the plain view of image 0 is stored
    zoomed = x.flip(-2)  # stands for another view of the same files
    got = cache.features(paths, zoomed, fresh=[True, False, True])
    files = sorted(p.name for p in (tmp_path / "cache").rglob("*.np*"))
    assert files == sorted(cache.file_for(p).name for p in paths[:2])  # image 2's fresh view left no file
    expected = extractor(zoomed).to(torch.float16).float()
    assert torch.equal(got[0], expected[0]) and torch.equal(got[2], expected[2])  # not the stored plain view
    assert torch.equal(got[1], expected[1])  # a plain miss, computed and stored
    stored = extractor(x[:1]).to(torch.float16).float()
    assert torch.equal(cache.features(paths[:1], None), stored)  # entry 0 still holds the plain view
    with pytest.raises(ValueError, match="fresh views need"):
        cache.features(paths, None, fresh=[True, False, False])
