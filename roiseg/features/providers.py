"""The torch side of provider selection: TensorRT > CUDA > CPU, and the torch device the features land on.

The choice itself is :func:`graph_tools.execution_providers` (torch-free; ``roiseg.runtime`` runs fused
models with it). For feature extraction a GPU provider is chosen only when a CUDA device is really
usable by torch (``torch.cuda.is_available()``) *and* onnxruntime was built with it
(``onnxruntime.get_available_providers()``): the features are handed to torch on that device
without a host round trip, so both libraries must see it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort
import torch

import graph_tools as gt
from graph_tools import ProviderSpec
from graph_tools.providers import CPU_EP, CUDA_EP, GPU_EPS, TENSORRT_EP
from roiseg.conventions import default_trt_cache_dir
from roiseg.errors import graph_errors
from roiseg.utils.progress import get_logger

LOG = get_logger(__name__)

__all__ = ["CPU_EP", "CUDA_EP", "GPU_EPS", "TENSORRT_EP", "ProviderChoice", "choose_providers", "cuda_unusable_reason",
           "default_trt_cache_dir", "parse_device", "prepare_trt_cache", "session_device"]


@dataclass(frozen=True)
class ProviderChoice:
    """Providers to hand to ``onnxruntime.InferenceSession`` and the torch device they imply."""

    providers: list[ProviderSpec]
    device: torch.device

    @property
    def names(self) -> list[str]:
        return gt.provider_names(self.providers)


def parse_device(device: str) -> tuple[str, int]:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> ``(kind, device_id)``; InputError otherwise."""
    with graph_errors():
        return gt.parse_device(device)


def cuda_unusable_reason() -> str | None:
    """Why onnxruntime + torch cannot run on CUDA here, or ``None`` when they can."""
    if not torch.cuda.is_available():
        return "torch sees no usable CUDA device (torch.cuda.is_available() is False)"
    available = ort.get_available_providers()
    if CUDA_EP not in available:
        return f"onnxruntime has no {CUDA_EP} (available: {', '.join(available)})"
    return None


def choose_providers(
    device: str = "auto",
    trt_fp16: bool = False,
    trt_cache_dir: str | Path | None = None,
    use_tensorrt: bool = True,
    trt_profiles: dict[str, str] | None = None,
) -> ProviderChoice:
    """:func:`graph_tools.execution_providers` with torch's view of CUDA, and the torch device they imply.

    ``"cpu"``: CPU only; ``"cuda"``/``"cuda:N"``: TensorRT (if onnxruntime has it and ``use_tensorrt``),
    CUDA, CPU (:class:`InputError` when CUDA is not usable); ``"auto"``: as ``"cuda"`` when CUDA is usable,
    else CPU. TensorRT engines are cached in ``trt_cache_dir`` (default :func:`default_trt_cache_dir`).
    """
    kind, device_id = parse_device(device)
    reason = None if kind == "cpu" else cuda_unusable_reason()
    count = torch.cuda.device_count() if reason is None and kind != "cpu" else 0
    cache = Path(trt_cache_dir) if trt_cache_dir is not None else default_trt_cache_dir()
    with graph_errors():
        providers = gt.execution_providers(device, reason, count, cache, use_tensorrt, trt_fp16, trt_profiles)
    gpu = providers[0] != CPU_EP
    choice = ProviderChoice(providers, torch.device("cuda", device_id) if gpu else torch.device("cpu"))
    LOG.info("onnxruntime providers requested: %s (device=%s)", ", ".join(choice.names), device)
    return choice


def prepare_trt_cache(choice: ProviderChoice) -> None:
    """Create the TensorRT engine-cache folder of ``choice`` (if TensorRT is in it)."""
    for spec in choice.providers:
        if isinstance(spec, tuple) and spec[0] == TENSORRT_EP:
            Path(spec[1]["trt_engine_cache_path"]).mkdir(parents=True, exist_ok=True)


def session_device(session: ort.InferenceSession, requested: ProviderChoice) -> torch.device:
    """The torch device matching the providers a session really uses.

    onnxruntime falls back to CPU when a GPU provider fails to load (e.g. missing cuDNN or
    TensorRT libraries); the features then live on the host.
    """
    used = session.get_providers()
    if requested.device.type == "cuda" and any(p in used for p in GPU_EPS):
        return requested.device
    if requested.device.type == "cuda":
        LOG.warning("GPU providers failed to load; onnxruntime runs on %s", ", ".join(used))
    return torch.device("cpu")
