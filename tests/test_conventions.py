import numpy as np
import pytest

from roiseg import conventions as C


def test_checkpoint_name_floors_miou():
    assert C.checkpoint_name(3, (640, 640), 0.7532) == "checkpoint_epoch_0003_640x640_7532.pth"
    assert C.checkpoint_name(12, (480, 640), 0.99999) == "checkpoint_epoch_0012_480x640_9999.pth"


def test_person_only_names():
    assert C.person_only_name("instances_train2017") == "instances_train2017_person_only_no_crowd.json"
    assert C.person_only_name("instances_train2017", 500) == "instances_train2017_person_only_no_crowd_500.json"


def test_inside_mask_uses_pixel_centres():
    # box x in [1.5, 3.5) px on a 4-wide grid: centres 1.5, 2.5 are inside; 3.5 is not (half-open)
    m = C.roi_inside_mask([1.5 / 4, 0.0, 3.5 / 4, 1.0], (2, 4))
    assert m.tolist() == [[False, True, True, False], [False, True, True, False]]
    # a box thinner than a pixel that covers no centre is empty
    assert not C.roi_inside_mask([0.1 / 4, 0, 0.3 / 4, 1], (2, 4)).any()
    # whole image
    assert C.roi_inside_mask([0, 0, 1, 1], (3, 5)).all()


def test_coco_bbox_to_roi():
    roi = C.coco_bbox_to_roi([10, 20, 30, 40], (100, 200))
    np.testing.assert_allclose(roi, [0.05, 0.2, 0.2, 0.6])


def test_preprocess_rgb_resize_scale():
    img = np.zeros((10, 20, 3), dtype=np.uint8)
    img[..., 0] = 255  # blue in BGR
    x = C.preprocess(img, (8, 8))
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32
    assert np.allclose(x[0, 2], 1.0) and np.allclose(x[0, 0], 0.0)  # blue ends in channel 2 (RGB)
    with pytest.raises(ValueError):
        C.preprocess(np.zeros((4, 4), dtype=np.uint8), (8, 8))


def test_atomic_write_leaves_no_file_on_failure_and_normal_permissions(tmp_path):
    import os

    from roiseg.utils.atomic import atomic_write

    target = tmp_path / "out.json"

    def boom(p):
        p.write_text("half")
        raise RuntimeError("crash")

    with pytest.raises(RuntimeError):
        atomic_write(target, boom)
    assert not target.exists() and list(tmp_path.iterdir()) == []
    atomic_write(target, lambda p: p.write_text("ok"))
    assert target.read_text() == "ok"
    mask = os.umask(0)
    os.umask(mask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~mask)
