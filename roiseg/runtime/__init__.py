"""Running a fused ONNX model: its metadata (:mod:`~roiseg.runtime.metadata`), the one session
(:mod:`~roiseg.runtime.session`: providers, TensorRT profiles, the input contract, the feed, masks at the
original size), the ROI predictor (:mod:`~roiseg.runtime.predict`), the instance predictor
(:mod:`~roiseg.runtime.instances`) and pictures (:mod:`~roiseg.runtime.draw`).

Imports no torch, no ``roiseg.modeling`` and no ``roiseg.training`` (``tests/test_architecture.py``
checks it on the transitive imports): a model is run with the light install. Submodules are imported
explicitly.
"""
