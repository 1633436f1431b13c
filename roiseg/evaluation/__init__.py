"""Accuracy of a model at each image's original resolution: one loop (:mod:`~roiseg.evaluation.loop`) with a
ROI evaluator (:mod:`~roiseg.evaluation.roi`: per-ROI IoU, boundary IoU, COCO mask AP on the ground-truth
boxes) and an instance evaluator (:mod:`~roiseg.evaluation.instances`: COCO mask AP with the model's own
detections); reports (:mod:`~roiseg.evaluation.report`). Evaluating an ONNX model imports no torch.
Submodules are imported explicitly."""
