"""COCO person data: loading and validation, person-only preparation, 3-class ROI targets,
the per-image / per-ROI datasets and pixel statistics (``data_analyze.json``).

Submodules are imported explicitly (``from roiseg.data.dataset import CocoPersonImages``) so that
light commands such as ``roiseg analyze`` do not import torch.
"""
