"""Parity of a fused model with the path it was built from: the one rebuild (:mod:`~roiseg.verify.rebuild`),
the comparisons (ROI stages :mod:`~roiseg.verify.roi`, exact instances :mod:`~roiseg.verify.instances`,
float16 instances :mod:`~roiseg.verify.fp16`) behind one report interface (:mod:`~roiseg.verify.parity`),
every tolerance (:mod:`~roiseg.verify.tolerances`) and the table printer (:mod:`~roiseg.verify.table`).
Submodules are imported explicitly (the tolerances without torch)."""
