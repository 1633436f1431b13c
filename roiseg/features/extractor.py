"""Frozen detector features read from a detector ONNX with onnxruntime.

The detector is cut at the feature tensor (``/model.34/Concat_output_0`` for the reference
YOLOv9, [1, 1024, 80, 80] from a [1, 3, 640, 640] input) with :func:`graph_tools.trim.trim_at_tensor`
so only the part that feeds the features runs. Input size, channels, feature size and stride are
read from the graph, never assumed. The batch dim is made dynamic so a static batch-1 model can
run batches; the first batched call checks that against one-by-one runs and loops if it does not hold.

On CUDA (TensorRT or CUDA execution provider) inputs and outputs are bound to torch CUDA tensors
with onnxruntime's IOBinding, so features never visit the host.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from graph_tools import (
    batch_consistent, create_session, dims, elem_type_of, file_sha256, graph_inputs, load_model,
    make_batch_dynamic, opset_version, require_tensor, tensor_shapes, trim_at_tensor,
)
from roiseg.conventions import DEFAULT_FEATURE_TENSOR, DEFAULT_PREPROCESSING, Preprocessing, preprocess
from roiseg.errors import InputError, translate_graph_errors
from roiseg.features.providers import choose_providers, prepare_trt_cache, session_device
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)


@dataclass(frozen=True)
class ExtractorInfo:
    """What a feature extractor is, as read from its graph; stored in checkpoints and fused models.

    ``input_hw`` is the detector input ``(H, W)`` in pixels, ``feature_hw`` the feature map
    ``(h, w)`` in cells, ``stride = H // h`` (pixels per cell, equal on both axes).
    ``preprocessing`` is :meth:`Preprocessing.to_json`.
    """

    path: str
    sha256: str
    feature_tensor: str
    input_name: str
    input_hw: tuple[int, int]
    channels: int
    feature_hw: tuple[int, int]
    stride: int
    opset: int
    preprocessing: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = asdict(self)
        d["input_hw"] = list(self.input_hw)
        d["feature_hw"] = list(self.feature_hw)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ExtractorInfo":
        """Inverse of :meth:`to_dict`."""
        fields = dict(d)
        if "tensor" in fields:  # checkpoints written before the field was named feature_tensor
            fields["feature_tensor"] = fields.pop("tensor")
        fields["input_hw"] = tuple(int(v) for v in fields["input_hw"])
        fields["feature_hw"] = tuple(int(v) for v in fields["feature_hw"])
        return cls(**fields)

    @property
    def feature_bytes_fp16(self) -> int:
        """Bytes of one image's features stored as fp16: ``C * h * w * 2``."""
        return self.channels * self.feature_hw[0] * self.feature_hw[1] * 2


# --------------------------------------------------------------------------------------------
# Reading the graph
# --------------------------------------------------------------------------------------------
def feature_graph(model: onnx.ModelProto, feature_tensor: str, model_path: str | Path | None = None) -> onnx.ModelProto:
    """``model`` reduced to the part that computes ``tensor``, with ``tensor`` its only output.

    Returned unchanged when ``tensor`` already is the only output. InputError listing the nearest
    tensors (name, shape) when ``tensor`` is not in the graph.
    """
    require_tensor(model, feature_tensor, model_path)
    if [o.name for o in model.graph.output] == [feature_tensor]:
        return model
    return trim_at_tensor(model, feature_tensor, keep_original_outputs=False)


def _image_input(graph: onnx.ModelProto, path: str | Path) -> tuple[onnx.ValueInfoProto, tuple[int, int]]:
    """The one image input of the feature graph and its static ``(H, W)``."""
    inputs = graph_inputs(graph)
    if len(inputs) != 1:
        names = ", ".join(vi.name for vi in inputs)
        raise InputError(f"{path}: the feature tensor depends on {len(inputs)} inputs ({names}); expected one image input")
    vi = inputs[0]
    shape = dims(vi)
    if len(shape) != 4 or not all(isinstance(d, int) for d in shape[1:]) or shape[1] != 3:
        raise InputError(
            f"{path}: input {vi.name!r} has shape {shape}; expected [N, 3, H, W] with static H and W "
            "(the input size is read from the graph)"
        )
    return vi, (int(shape[2]), int(shape[3]))


def _feature_shape(graph: onnx.ModelProto, feature_tensor: str, input_vi: onnx.ValueInfoProto,
                   input_hw: tuple[int, int]) -> tuple[int, int, int]:
    """``(C, h, w)`` of ``tensor`` from shape inference, or from one CPU run when inference cannot tell."""
    dims = tensor_shapes(graph).get(feature_tensor)
    if dims is not None and len(dims) == 4 and all(isinstance(d, int) for d in dims[1:]):
        return int(dims[1]), int(dims[2]), int(dims[3])
    LOG.info("shape of %s not inferable from the graph; probing with one CPU run", feature_tensor)
    session = create_session(graph)
    x = np.zeros((1, 3, *input_hw), dtype=elem_type_of(graph, input_vi.name))
    out = session.run([feature_tensor], {input_vi.name: x})[0]
    if out.ndim != 4:
        raise InputError(f"feature tensor {feature_tensor!r} has shape {list(out.shape)}; expected [N, C, h, w]")
    return int(out.shape[1]), int(out.shape[2]), int(out.shape[3])


def _stride(input_hw: tuple[int, int], feature_hw: tuple[int, int], feature_tensor: str) -> int:
    sy, sx = input_hw[0] // feature_hw[0], input_hw[1] // feature_hw[1]
    if sy != sx or sy < 1:
        raise InputError(
            f"feature tensor {feature_tensor!r} of size {feature_hw[0]}x{feature_hw[1]} has different strides "
            f"on the two axes for input {input_hw[0]}x{input_hw[1]} ({sy} vs {sx})"
        )
    return sy


def _describe(path: Path, model: onnx.ModelProto, graph: onnx.ModelProto, feature_tensor: str,
              preprocessing: Preprocessing) -> ExtractorInfo:
    input_vi, input_hw = _image_input(graph, path)
    channels, h, w = _feature_shape(graph, feature_tensor, input_vi, input_hw)
    return ExtractorInfo(
        path=str(path), sha256=file_sha256(path), feature_tensor=feature_tensor, input_name=input_vi.name,
        input_hw=input_hw, channels=channels, feature_hw=(h, w), stride=_stride(input_hw, (h, w), feature_tensor),
        opset=opset_version(model), preprocessing=preprocessing.to_json(),
    )


@translate_graph_errors
def describe_extractor(
    path: str | Path, feature_tensor: str = DEFAULT_FEATURE_TENSOR, preprocessing: Preprocessing = DEFAULT_PREPROCESSING
) -> ExtractorInfo:
    """:class:`ExtractorInfo` of ``path`` at ``tensor`` without creating an inference session.

    InputError when the file is missing or unreadable, or the feature tensor is not in the graph.
    """
    path = Path(path)
    model = load_model(path)
    return _describe(path, model, feature_graph(model, feature_tensor, path), feature_tensor, preprocessing)


def _torch_dtype(dt: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dt)).dtype


# --------------------------------------------------------------------------------------------
# The extractor
# --------------------------------------------------------------------------------------------
class OnnxFeatureExtractor:
    """Preprocessed images [B, 3, H, W] float32 -> features [B, C, h, w] float32 on :attr:`device`.

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
    ) -> None:
        path = Path(path)
        model = load_model(path)
        graph = feature_graph(model, feature_tensor, path)
        self.info: ExtractorInfo = _describe(path, model, graph, feature_tensor, preprocessing)
        self.preprocessing = preprocessing
        self._in_dtype = elem_type_of(graph, self.info.input_name)
        self._out_dtype = elem_type_of(graph, self.info.feature_tensor)
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
        LOG.info(
            "feature extractor %s: %s %s -> %s [%d, %d, %d] (stride %d), providers %s",
            path.name, self.info.input_name, list(self.info.input_hw), feature_tensor, self.info.channels,
            *self.info.feature_hw, self.info.stride, ", ".join(self.providers),
        )

    # ---------------------------------------------------------------------------------------
    @property
    def out_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of one image's features."""
        return (self.info.channels, *self.info.feature_hw)

    @property
    def batched(self) -> bool | None:
        """Whether batches run in one call (``None`` until the first batch checked it)."""
        return self._batched

    def __call__(self, images: torch.Tensor | np.ndarray) -> torch.Tensor:
        """[B, 3, H, W] preprocessed images (``conventions.preprocess``) -> [B, C, h, w] float32 on :attr:`device`."""
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
        return torch.cat(singles, dim=0)

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

    def _run(self, x: torch.Tensor | np.ndarray) -> torch.Tensor:
        out = self._run_bound(x) if self.io_binding else self._run_cpu(x)
        self.calls += 1
        return out.float()

    def _run_cpu(self, x: np.ndarray) -> torch.Tensor:
        out = self.session.run([self.info.feature_tensor], {self.info.input_name: x})[0]
        return torch.from_numpy(out)

    def _run_bound(self, x: torch.Tensor) -> torch.Tensor:
        """IOBinding run: input read from, output written into torch memory on :attr:`device` (no host copy on CUDA)."""
        kind, index = self.device.type, self.device.index or 0
        out = torch.empty((int(x.shape[0]), *self.out_shape), dtype=_torch_dtype(self._out_dtype), device=self.device)
        binding = self.session.io_binding()
        binding.bind_input(self.info.input_name, kind, index, self._in_dtype, tuple(x.shape), x.data_ptr())
        binding.bind_output(self.info.feature_tensor, kind, index, self._out_dtype, tuple(out.shape), out.data_ptr())
        if kind == "cuda":  # onnxruntime computes on its own stream: torch must have finished writing the input
            torch.cuda.current_stream(self.device).synchronize()
        self.session.run_with_iobinding(binding)
        return out

    def _check_batched(self, x: torch.Tensor | np.ndarray, singles: list[torch.Tensor]) -> torch.Tensor | None:
        """Run the batch once; its result when it equals the one-by-one results, else None (loop from now on)."""
        try:
            batched = self._run(x)
        except Exception as exc:  # onnxruntime raises its own types, e.g. for a hard-coded Reshape
            LOG.warning("%s does not run batches (%s); extracting one image at a time",
                        Path(self.info.path).name, str(exc).splitlines()[0][:200])
            return None
        ok = batch_consistent(batched.cpu().numpy(), [s.cpu().numpy() for s in singles])
        if not ok:
            LOG.warning("%s gives different results in a batch than one by one; extracting one image at a time",
                        Path(self.info.path).name)
            return None
        LOG.info("batched extraction verified against one-by-one runs")
        return batched
