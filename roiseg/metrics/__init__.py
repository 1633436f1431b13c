"""Mask metrics shared by training validation and ``roiseg evaluate``.

* :mod:`roiseg.metrics.masks`: per-ROI IoU of a class and Boundary IoU on torch ``[N, H, W]`` tensors.
* :mod:`roiseg.metrics.coco_ap`: COCO mask AP with pycocotools' ``COCOeval``.
"""
