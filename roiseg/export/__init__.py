"""Building a fused model: the head export wrapper (:mod:`~roiseg.export.wrapper`), the head source, the
raw-image preprocessing graph, float16 precision, check inputs (:mod:`~roiseg.export.probes`), the one
fuse pipeline (:mod:`~roiseg.export.fuse`, typed :mod:`~roiseg.export.options`) and the instance stage
(:mod:`~roiseg.export.instances`). Needs the ``train`` extra (torch). Submodules are imported explicitly."""
