"""onnxruntime execution providers by availability, best first: TensorRT > CUDA > CPU (no torch).

A GPU provider is chosen only when onnxruntime was built with it
(``onnxruntime.get_available_providers()``) and a CUDA device is usable; the caller says why not
(``cuda_reason``), e.g. from :func:`cuda_unusable_reason`, which asks the CUDA driver itself
(``libcuda`` through ctypes), so running a model needs neither torch nor a CUDA toolkit.
"""

from __future__ import annotations

import ctypes
import functools
import re
from pathlib import Path
from typing import Callable

import onnxruntime as ort

from graph_tools.errors import GraphError
from graph_tools.session import CPU_PROVIDER, ProviderSpec

TENSORRT_EP: str = "TensorrtExecutionProvider"
CUDA_EP: str = "CUDAExecutionProvider"
CPU_EP: str = CPU_PROVIDER
GPU_EPS: tuple[str, str] = (TENSORRT_EP, CUDA_EP)
CUDA_DRIVER_LIBRARIES: tuple[str, ...] = ("libcuda.so.1", "libcuda.so", "nvcuda.dll")


def parse_device(device: str) -> tuple[str, int]:
    """``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"`` -> ``(kind, device_id)``; GraphError otherwise."""
    m = re.fullmatch(r"(auto|cpu|cuda)(?::(\d+))?", str(device).strip().lower())
    if m is None or (m.group(2) is not None and m.group(1) != "cuda"):
        raise GraphError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N")
    return m.group(1), int(m.group(2) or 0)


@functools.lru_cache(maxsize=1)
def cuda_device_count() -> int:
    """CUDA devices the driver sees (``cuInit`` + ``cuDeviceGetCount``); 0 without a driver or a device."""
    for name in CUDA_DRIVER_LIBRARIES:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
            return 0
        return int(count.value)
    return 0


def cuda_unusable_reason(device_count: Callable[[], int] = cuda_device_count) -> str | None:
    """Why onnxruntime cannot run on CUDA here (no CUDA provider, or no device), or ``None`` when it can."""
    available = ort.get_available_providers()
    if CUDA_EP not in available:
        return f"onnxruntime has no {CUDA_EP} (available: {', '.join(available)})"
    if device_count() < 1:
        return "the CUDA driver reports no usable device"
    return None


def execution_providers(
    device: str,
    cuda_reason: str | None,
    device_count: int,
    trt_cache_dir: str | Path,
    use_tensorrt: bool = True,
    trt_fp16: bool = False,
    trt_profiles: dict[str, str] | None = None,
) -> list[ProviderSpec]:
    """Providers for ``device``, best first, always ending with CPU (as ``InferenceSession`` takes them).

    * ``"cpu"``: CPU only; ``"auto"``: as ``"cuda"`` when ``cuda_reason`` is ``None``, else CPU;
    * ``"cuda"`` / ``"cuda:N"``: TensorRT (when onnxruntime has it and ``use_tensorrt``), CUDA, CPU;
      GraphError when CUDA is not usable (``cuda_reason``) or ``N >= device_count``.

    TensorRT runs in fp32 unless ``trt_fp16``; its engines and timing cache go to ``trt_cache_dir``
    (building them takes minutes); ``trt_profiles``: optimisation profiles for dynamic inputs
    (``trt_profile_{min,opt,max}_shapes`` options).
    """
    kind, device_id = parse_device(device)
    if kind == "cuda" and cuda_reason is not None:
        raise GraphError(f"device {device} requested but CUDA is not usable: {cuda_reason}")
    if kind == "cpu" or cuda_reason is not None:
        return [CPU_EP]
    if device_id >= device_count:
        raise GraphError(f"device {device}: only {device_count} CUDA device(s) visible")
    providers: list[ProviderSpec] = []
    if use_tensorrt and TENSORRT_EP in ort.get_available_providers():
        cache = str(trt_cache_dir)
        providers.append((TENSORRT_EP, {
            "device_id": device_id, "trt_fp16_enable": bool(trt_fp16),
            "trt_engine_cache_enable": True, "trt_engine_cache_path": cache,
            "trt_timing_cache_enable": True, "trt_timing_cache_path": cache, **(trt_profiles or {}),
        }))
    return [*providers, (CUDA_EP, {"device_id": device_id}), CPU_EP]


def provider_names(providers: list[ProviderSpec]) -> list[str]:
    """The provider names of a provider list."""
    return [p if isinstance(p, str) else p[0] for p in providers]
