"""Networks: the ROI mask heads (training models) and the paste into full resolution."""

from roiseg.modeling.build import MaskHead, build_head, count_parameters
from roiseg.modeling.config import VARIANTS, HeadConfig
from roiseg.modeling.paste import class_ids, masks_from_logits, paste_roi_logits, roi_inside_masks
from roiseg.modeling.query_head import QueryMaskHead
from roiseg.modeling.roi_head import RoiMaskHead

__all__ = [
    "VARIANTS", "HeadConfig", "MaskHead", "QueryMaskHead", "RoiMaskHead", "build_head", "count_parameters",
    "class_ids", "masks_from_logits", "paste_roi_logits", "roi_inside_masks",
]
