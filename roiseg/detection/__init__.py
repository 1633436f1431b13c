"""A detector's detections: formats as data (:mod:`~roiseg.detection.layouts`), reading them
(:mod:`~roiseg.detection.formats`), the instance metadata (:mod:`~roiseg.detection.props`), the Python
reference of the post-processing (:mod:`~roiseg.detection.reference`, the only torch module here) and the
same as an ONNX graph (:mod:`~roiseg.detection.graph`). Submodules are imported explicitly."""
