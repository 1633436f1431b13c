"""Networks: the ROI mask head (training model) and the paste into full resolution."""

from roiseg.modeling.paste import masks_from_logits, paste_roi_logits, roi_inside_masks
from roiseg.modeling.roi_head import HeadConfig, RoiMaskHead, build_head, count_parameters

__all__ = [
    "HeadConfig", "RoiMaskHead", "build_head", "count_parameters",
    "masks_from_logits", "paste_roi_logits", "roi_inside_masks",
]
