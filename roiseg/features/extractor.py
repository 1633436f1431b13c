"""Frozen detector features read from a detector ONNX with onnxruntime.

The detector is cut at the feature taps (:mod:`roiseg.features.info`) so only the part that feeds
them runs, all taps in one run. The batch dim is made dynamic so a static batch-1 model can run
batches; the first batched call checks that against one-by-one runs and loops if it does not hold.

On CUDA (TensorRT or CUDA execution provider) inputs and outputs are bound to torch CUDA tensors
with onnxruntime's IOBinding, so features never visit the host.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from graph_tools import batch_consistent, create_session, elem_type_of, load_model, make_batch_dynamic
from roiseg.conventions import DEFAULT_FEATURE_TENSOR, DEFAULT_PREPROCESSING, Preprocessing, preprocess
from roiseg.errors import translate_graph_errors
from roiseg.features.info import ExtractorInfo, cut_at_taps, describe_extractor, describe_graph, feature_graph
from roiseg.features.providers import choose_providers, prepare_trt_cache, session_device
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

__all__ = ["ExtractorInfo", "OnnxFeatureExtractor", "describe_extractor", "feature_graph"]


def _torch_dtype(dt: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dt)).dtype


# --------------------------------------------------------------------------------------------
# The extractor
# --------------------------------------------------------------------------------------------
class OnnxFeatureExtractor:
    """Preprocessed images [B, 3, H, W] float32 -> features [B, C, h, w] float32 on :attr:`device`.

    ``extra_tensors`` (names or ``"auto"``) adds taps read in the same run: :meth:`extract` returns
    every tap, calling the extractor returns the primary one.

    ``device`` is ``"auto"`` (TensorRT > CUDA > CPU by availability), ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"``; see :func:`roiseg.features.providers.choose_providers`. :attr:`calls` counts
    onnxruntime runs (a batch on a dynamic-batch graph is one run; a looped batch is B runs).
    ``io_binding`` (default: on exactly when the features live on CUDA) binds input and output to
    torch memory instead of copying through numpy.
    """

    @translate_graph_errors
    def __init__(
        self,
        path: str | Path,
        feature_tensor: str = DEFAULT_FEATURE_TENSOR,
        device: str = "auto",
        preprocessing: Preprocessing = DEFAULT_PREPROCESSING,
        *,
        trt_fp16: bool = False,
        trt_cache_dir: str | Path | None = None,
        dynamic_batch: bool = True,
        io_binding: bool | None = None,
        extra_tensors: str | Sequence[str] = (),
    ) -> None:
        path = Path(path)
        model = load_model(path)
        graph, extras = cut_at_taps(model, path, feature_tensor, extra_tensors)
        self.info: ExtractorInfo = describe_graph(path, model, graph, feature_tensor, preprocessing, extras)
        self.preprocessing = preprocessing
        self._in_dtype = elem_type_of(graph, self.info.input_name)
        self._out_dtypes = [elem_type_of(graph, t) for t in self.info.tensors]
        if dynamic_batch:
            graph = make_batch_dynamic(graph)
        # None: not yet checked; True: batches run in one call; False: batches are looped.
        self._batched: bool | None = None if dynamic_batch else False

        choice = choose_providers(device, trt_fp16=trt_fp16, trt_cache_dir=trt_cache_dir)
        prepare_trt_cache(choice)
        self.session = create_session(graph, choice.providers, what=f"{path} cut at {feature_tensor!r}")
        self.device: torch.device = session_device(self.session, choice)
        self.providers: list[str] = self.session.get_providers()
        self.calls: int = 0
        # IOBinding: always on CUDA (no host round trip); on CPU only when asked (same results).
        self.io_binding: bool = self.device.type == "cuda" if io_binding is None else bool(io_binding)
        taps = ", ".join(f"{t} {list(shape)} (stride {s})" for t, shape, s in
                         zip(self.info.tensors, self.info.tap_shapes, [self.info.stride, *self.info.extra_strides]))
        LOG.info("feature extractor %s: %s %s -> %s; providers %s", path.name, self.info.input_name,
                 list(self.info.input_hw), taps, ", ".join(self.providers))

    # ---------------------------------------------------------------------------------------
    @property
    def out_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one image's features."""
        return (self.info.channels, *self.info.feature_hw)

    @property
    def num_taps(self) -> int:
        """Taps per run: the primary one and the extra ones."""
        return 1 + len(self.info.extra_tensors)

    @property
    def batched(self) -> bool | None:
        """Whether batches run in one call (``None`` until the first batch checked it)."""
        return self._batched

    def __call__(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """[B, 3, H, W] preprocessed images (``conventions.preprocess``) -> [B, C, h, w] float32 on :attr:`device`."""
        return self.extract(images)[0]

    def extract(self, images: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
        """[B, 3, H, W] preprocessed images -> every tap [B, C_i, h_i, w_i] float32 on :attr:`device`, primary first."""
        x = self._as_input(images)
        n = int(x.shape[0])
        if n == 1 or self._batched:
            return self._run(x)
        singles = [self._run(x[i : i + 1]) for i in range(n)]
        if self._batched is None:
            batched = self._check_batched(x, singles)
            self._batched = batched is not None
            if batched is not None:
                return batched
        return [torch.cat([s[k] for s in singles], dim=0) for k in range(self.num_taps)]

    def extract_bgr(self, image_bgr: np.ndarray) -> torch.Tensor:
        """One [H0, W0, 3] uint8 BGR image -> [1, C, h, w] float32 features on :attr:`device`."""
        return self(preprocess(image_bgr, self.info.input_hw, self.preprocessing))

    # ---------------------------------------------------------------------------------------
    def _as_input(self, images: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
        expected = (3, *self.info.input_hw)
        if tuple(images.shape[1:]) != expected or images.ndim != 4 or images.shape[0] < 1:
            raise ValueError(
                f"expected images [B, {expected[0]}, {expected[1]}, {expected[2]}] for {self.info.path}, "
                f"got {list(images.shape)}"
            )
        if self.io_binding:
            t = torch.as_tensor(images)
            return t.to(device=self.device, dtype=_torch_dtype(self._in_dtype)).contiguous()
        if isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        return np.ascontiguousarray(images, dtype=self._in_dtype)

    def _run(self, x: torch.Tensor | np.ndarray) -> list[torch.Tensor]:
        outs = self._run_bound(x) if self.io_binding else self._run_cpu(x)
        self.calls += 1
        return [o.float() for o in outs]

    def _run_cpu(self, x: np.ndarray) -> list[torch.Tensor]:
        outs = self.session.run(self.info.tensors, {self.info.input_name: x})
        return [torch.from_numpy(o) for o in outs]

    def _run_bound(self, x: torch.Tensor) -> list[torch.Tensor]:
        """IOBinding run: input read from, outputs written into torch memory on :attr:`device` (no host copy on CUDA)."""
        kind, index = self.device.type, self.device.index or 0
        binding = self.session.io_binding()
        binding.bind_input(self.info.input_name, kind, index, self._in_dtype, tuple(x.shape), x.data_ptr())
        outs = []
        for name, shape, dtype in zip(self.info.tensors, self.info.tap_shapes, self._out_dtypes):
            out = torch.empty((int(x.shape[0]), *shape), dtype=_torch_dtype(dtype), device=self.device)
            binding.bind_output(name, kind, index, dtype, tuple(out.shape), out.data_ptr())
            outs.append(out)
        if kind == "cuda":  # onnxruntime computes on its own stream: torch must have finished writing the input
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return outs

    def _check_batched(self, x: torch.Tensor | np.ndarray,
                       singles: list[list[torch.Tensor]]) -> list[torch.Tensor] | None:
        """Run the batch once; its result when it equals the one-by-one results, else None (loop from now on)."""
        try:
            batched = self._run(x)
        except Exception as exc:  # onnxruntime raises its own types, e.g. for a hard-coded Reshape
            LOG.warning("%s does not run batches (%s); extracting one image at a time",
                        Path(self.info.path).name, str(exc).splitlines()[0][:200])
            return None
        ok = all(batch_consistent(batched[k].cpu().numpy(), [s[k].cpu().numpy() for s in singles])
                 for k in range(self.num_taps))
        if not ok:
            LOG.warning("%s gives different results in a batch than one by one; extracting one image at a time",
                        Path(self.info.path).name)
            return None
        LOG.info("batched extraction verified against one-by-one runs")
        return batched
