"""What is roiseg-specific about deployment: the head export wrapper, the ``roiseg.*`` metadata,
probe inputs, the one ``fuse`` build pipeline, parity against the PyTorch path, and ``predict``.

Submodules are imported explicitly (``from roiseg.deploy.fuse import fuse``) so that light
commands do not import torch.
"""
